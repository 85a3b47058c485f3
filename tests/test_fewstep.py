"""Few-step conversion with binary spikes: QCFS exactness, MSE thresholds, layer-wise corrections."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeforge import ConversionError, convert
from spikeforge.convert.calibrate import ActivationRecorder
from spikeforge.layers import QCFS


class QNet(nn.Module):
    """Conv-QCFS, a residual block (add), max-pool, avg-pool and a linear read-out."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3, padding=1)
        self.b1 = nn.BatchNorm2d(6)
        self.a1 = QCFS(levels, threshold=1.3)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.a2 = QCFS(levels, threshold=0.9)
        self.pool = nn.MaxPool2d(2)
        self.c3 = nn.Conv2d(6, 8, 3, padding=1)
        self.a3 = QCFS(levels, threshold=1.1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.a1(self.b1(self.c1(x)))
        y = self.a2(self.c2(y) + y)
        y = self.pool(y)
        y = self.a3(self.c3(y))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def _qnet(levels: int, seed: int = 0) -> QNet:
    torch.manual_seed(seed)
    net = QNet(levels)
    with torch.no_grad():
        net.b1.running_mean.uniform_(-0.2, 0.2)
        net.b1.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_qcfs_at_T_equal_L_1_is_the_ann_exactly():
    net = _qnet(levels=1)
    x = torch.randn(32, 2, 8, 8)
    snn = convert(net, x)
    with torch.no_grad():
        ann = net(x)
        out = snn(x, 1)[0]
    assert torch.allclose(out, ann, atol=1e-5), float((out - ann).abs().max())
    assert snn.options["maxpool"] == "lipool"


@pytest.mark.parametrize("L", [2, 4, 8])
def test_first_qcfs_layer_is_exact_at_T_equal_L(L):
    net = _qnet(levels=L)
    x = torch.randn(16, 2, 8, 8)
    snn = convert(net, x)
    first = snn.neurons()["sf_neuron0"]
    outs = []
    h = first.register_forward_hook(lambda m, i, o: outs.append(o))
    with torch.no_grad():
        snn(x, L)
        ann = net.a1(net.b1(net.c1(x)))
    h.remove()
    rate = torch.cat(outs).view(L, 16, *ann.shape[1:]).mean(0)
    assert torch.allclose(rate, ann, atol=1e-5)


def test_qcfs_ceiling_stays_positive():
    q = QCFS(4, threshold=1.0)
    with torch.no_grad():
        q.threshold.fill_(-2.0)
    assert float(q.ceiling.detach()) > 0
    assert float(q(torch.tensor([5.0])).detach()) == pytest.approx(2.0, rel=1e-5)


def test_mse_threshold_finds_the_known_optimum():
    # 20,000 activations at a and one at 100a, T=1: a threshold of a codes every small
    # activation exactly and costs (99a)² on the outlier, less than 20,000·a² for λ=100a.
    a = 0.37
    rec, _ = _outlier_recorder(20000, a)
    assert float(rec.mse_threshold(1)) == pytest.approx(a, rel=1e-6)
    # with fewer small activations the outlier wins: λ = max
    rec2, _ = _outlier_recorder(5000, a)
    assert float(rec2.mse_threshold(1)) == pytest.approx(100 * a, rel=1e-6)


def _outlier_recorder(n: int, a: float) -> tuple[ActivationRecorder, torch.Tensor]:
    """A recorder that saw n activations equal to a, one of them replaced by 100a."""
    rec = ActivationRecorder(samples_per_batch=1 << 20)
    vals = torch.full((n,), a)
    vals[0] = 100 * a
    rec.record(vals.view(-1, 1))
    return rec, vals


def test_mse_threshold_with_burst_spikes():
    # Γ=2, T=1: a split threshold λ/2 = a codes the 20,000 small activations exactly (two
    # levels of λ/2); without splitting, θ = λ = a does, and the outlier is clamped at 2a.
    a = 0.37
    rec, vals = _outlier_recorder(20000, a)
    assert float(rec.mse_threshold(1, max_spikes=2, split=True)) == pytest.approx(2 * a, rel=1e-6)
    assert float(rec.mse_threshold(1, max_spikes=2, split=False)) == pytest.approx(a, rel=1e-6)
    # the converted neuron gets θ = λ/Γ = a when split, θ = λ = a when not
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU()).eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    for split in (True, False):
        snn = convert(net, vals.view(-1, 1), threshold="mse", target_T=1, max_spikes=2, batch_size=20000,
                      split_threshold=split)
        assert float(next(iter(snn.neurons().values())).threshold) == pytest.approx(a, rel=1e-6), split


def _relu_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 16, 20), nn.ReLU(), nn.Linear(20, 4),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def _layer_errors(snn, net, x, T):
    """Actual per-layer MSE between the SNN's T-step mean and the ANN's activation."""
    relus = [m for m in net if isinstance(m, nn.ReLU)]
    ann, got = {}, {}
    hs = [r.register_forward_hook(lambda m, i, o, k=k: ann.__setitem__(k, o.detach().clone())) for k, r in enumerate(relus)]
    with torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    neurons = list(snn.neurons().values())
    hs = [n.register_forward_hook(lambda m, i, o, k=k: got.setdefault(k, []).append(o.clone())) for k, n in enumerate(neurons)]
    with torch.no_grad():
        snn(x, T)
    for h in hs:
        h.remove()
    return [float(((torch.cat(got[k]).view(T, x.shape[0], *ann[k].shape[1:]).mean(0) - ann[k]) ** 2).mean())
            for k in range(len(relus))]


@pytest.mark.parametrize("kind,gamma", [("bias", 1), ("potential", 1), ("potential", 3)])
def test_corrections_lower_each_layers_error(kind, gamma):
    net = _relu_net()
    x = torch.randn(64, 3, 8, 8)
    T = 4
    plain = convert(net, x, threshold="mse", target_T=T, batch_size=64, max_spikes=gamma)
    fixed = convert(net, x, threshold="mse", correction=kind, target_T=T, batch_size=64, max_spikes=gamma)
    report = fixed.correction_report
    assert len(report) == 3
    for r in report.values():
        assert r["mse_after"] <= r["mse_before"] + 1e-9
    assert any(r["mse_after"] < 0.9 * r["mse_before"] for r in report.values())
    # the report is what the SNN really does on those images
    actual = _layer_errors(fixed, net, x, T)
    assert actual == pytest.approx([r["mse_after"] for r in report.values()], rel=1e-4, abs=1e-7)
    before = _layer_errors(plain, net, x, T)
    assert sum(actual) < sum(before)


@pytest.mark.parametrize("kind", ["bias", "potential"])
def test_corrections_scored_on_a_subset_of_units_still_never_hurt(kind, monkeypatch):
    core = importlib.import_module("spikeforge.convert.core")  # the package exports a function named convert

    net = _relu_net(seed=1)
    x = torch.randn(64, 3, 8, 8)
    T = 4
    full = convert(net, x, threshold="mse", correction=kind, target_T=T, batch_size=64)
    monkeypatch.setattr(core, "CORRECTION_UNITS", 256)  # 4 of the 64 positions of the first conv layer
    sub_x, _ = core._unit_subset(torch.zeros(T, 64, 8, 8, 8), torch.zeros(64, 8, 8, 8), core.CORRECTION_UNITS)
    assert sub_x.shape == (T, 64, 8, 1, 4)
    fixed = convert(net, x, threshold="mse", correction=kind, target_T=T, batch_size=64)
    report = fixed.correction_report
    for r in report.values():
        assert r["mse_after"] <= r["mse_before"] + 1e-9
    first = next(iter(report))
    assert report[first]["mse_before"] == pytest.approx(full.correction_report[first]["mse_before"])
    # the report is still what the SNN does on every unit, and the choice still helps
    actual = _layer_errors(fixed, net, x, T)
    assert actual == pytest.approx([r["mse_after"] for r in report.values()], rel=1e-4, abs=1e-7)
    assert sum(actual) < sum(_layer_errors(convert(net, x, threshold="mse", target_T=T, batch_size=64), net, x, T))


@pytest.mark.parametrize("kind", ["bias", "potential"])
def test_corrections_scored_in_chunks_of_images_match_one_piece(kind, monkeypatch):
    core = importlib.import_module("spikeforge.convert.core")
    net = _relu_net(seed=2)
    x = torch.randn(64, 3, 8, 8)
    whole = convert(net, x, threshold="mse", correction=kind, target_T=4, batch_size=64)
    calls = []
    real = core.if_seq

    def counting(x, **kw):
        calls.append(tuple(x.shape))
        return real(x, **kw)

    monkeypatch.setattr(core, "if_seq", counting)
    monkeypatch.setattr(core, "ERROR_CHUNK_ELEMENTS", 4 * 8 * 8 * 8 * 10)  # 10 images of the first layer
    chunked = convert(net, x, threshold="mse", correction=kind, target_T=4, batch_size=64)
    first = [c for c in calls if c[2:] == (8, 8, 8)]  # the first layer: [T, N, 8, 8, 8]
    assert first and all(c[1] <= 10 for c in first)  # scored in chunks of at most 10 images
    assert any(c[1] == 64 for c in calls)  # a layer small enough still goes in one piece
    for name, r in whole.correction_report.items():
        assert chunked.correction_report[name] == pytest.approx(r, rel=1e-5, abs=1e-8)
    assert torch.allclose(chunked(x, 4), whole(x, 4), atol=1e-5)


def test_stream_until_a_neuron_layer_yields_its_spikes():
    net = _relu_net()
    x = torch.randn(16, 3, 8, 8)
    snn = convert(net, x, batch_size=16)
    names = list(snn.neurons())
    got = []
    h = snn.neurons()[names[1]].register_forward_hook(lambda m, i, o: got.append(o.clone()))
    out = snn(x, 6, chunk=4)
    h.remove()
    spikes = torch.cat(got).view(6, 16, *got[0].shape[1:])
    cut = torch.cat(list(snn.stream(x, 6, chunk=4, until=names[1])))
    assert torch.equal(cut, spikes)
    assert cut.abs().sum() > 0
    assert torch.equal(snn(x, 6, chunk=4), out)  # the full graph is untouched
    with pytest.raises(ConversionError, match="not a neuron layer"):
        next(snn.stream(x, 2, until="no_such_layer"))


def test_unsupported_combinations_name_themselves():
    net = _relu_net()
    x = torch.randn(8, 3, 8, 8)
    with pytest.raises(ValueError, match="target_T"):
        convert(net, x, threshold="mse")
    with pytest.raises(ConversionError, match="share_reused_relu"):
        convert(net, x, correction="bias", target_T=4, share_reused_relu=True)
    with pytest.raises(ValueError, match="threshold must be one of"):
        convert(net, x, threshold="max")
    with pytest.raises(ValueError, match="correction must be one of"):
        convert(net, x, correction="weights", target_T=4)
    with pytest.raises(TypeError, match="nn.Module"):
        convert("not a model", x)
    with pytest.raises(TypeError, match="calibration data"):
        convert(net, None)


def test_calibration_sees_the_ann_max_pool():
    """While calibrating, a spiking max-pool must act as the ANN's max-pool (no time axis)."""
    net = _relu_net()
    x = torch.randn(32, 3, 8, 8)
    snn = convert(net, x, percentile=100.0)
    with torch.no_grad():
        h = net[5](net[4](net[3](net[2](net[1](net[0](x))))))
    assert float(snn.neurons()["sf_neuron1"].threshold) == pytest.approx(float(h.max()), rel=1e-5)


def test_sgd_decays_qcfs_ceilings_like_weights():
    from spikeforge.models import create_model
    from spikeforge.train.ann import _make_optimizer

    model = create_model("cifar-fast", widths=(4, 8, 8), act="qcfs", levels=4)
    opt = _make_optimizer(model, "sgd", 0.1, 1e-3, 0.9, 64.0)
    ceilings = {id(m.threshold) for m in model.modules() if isinstance(m, QCFS)}
    assert len(ceilings) == 7  # the whitening activation and two per block
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & ceilings:
            assert ceilings <= ids and group["weight_decay"] == 1e-3 and group["lr"] == 0.1
    # one Nesterov step with zero loss gradient shrinks λ by lr · wd · (1 + momentum) · λ
    before = {id(m.threshold): float(m.threshold.detach()) for m in model.modules() if isinstance(m, QCFS)}
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    for m in model.modules():
        if isinstance(m, QCFS):
            assert float(m.threshold.detach()) == pytest.approx(before[id(m.threshold)] * (1 - 0.1 * 1e-3 * 1.9), rel=1e-6)
