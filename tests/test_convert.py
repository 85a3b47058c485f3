"""The graph converter: BN folding, statistics, call sites, residuals, errors, state."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeforge import ConversionError, convert
from spikeforge.convert import ActivationRecorder, fold_batchnorm, positive_percentile, trace
from spikeforge.metrics import cumulative_mean
from spikeforge.models import create_model


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.b1(self.c1(x))), 2)
        x = torch.relu(self.b2(self.c2(x)))
        x = F.avg_pool2d(x, 2)
        return self.fc(x.flatten(1))


class ResidualBlock(nn.Module):
    """Calls one nn.ReLU module twice, like the seed's ResNet18."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.short = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.relu = nn.ReLU()
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = self.relu(self.stem(x))
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.short(x)
        out = self.relu(out)
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


class ConcatUp(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 6, 3, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.bnu = nn.BatchNorm2d(4)
        self.fuse = nn.Conv2d(8 + 6, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        a = F.relu(self.c1(x))
        b = F.relu(self.down(F.max_pool2d(a, 2)))
        u = F.relu(self.bnu(self.up(b)))
        up2 = F.interpolate(b, scale_factor=2, mode="nearest")
        y = F.relu(self.fuse(torch.cat([a, u, up2], dim=1)))
        return self.head(y)


def relative_error(snn, model, x, T):
    with torch.no_grad():
        ann = model(x)
    out = snn(x, T)
    return float((cumulative_mean(out)[-1] - ann).abs().mean() / ann.abs().mean())


def test_bn_folding_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(),
        nn.ConvTranspose2d(5, 4, 2, stride=2), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 12 * 12, 7, bias=False), nn.BatchNorm1d(7),
    )
    randomize_bn(model)
    gm = trace(model)
    assert fold_batchnorm(gm) == 3
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gm.modules())
    x = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)


def test_positive_percentile_and_max_over_batches():
    values = torch.cat([torch.zeros(50), torch.arange(1.0, 101.0)]).view(1, -1)
    assert float(positive_percentile(values, 50.0)) == pytest.approx(50.5)
    assert float(positive_percentile(values, 100.0)) == pytest.approx(100.0)
    rows = torch.stack([torch.arange(0.0, 11.0), 2 * torch.arange(0.0, 11.0)])
    assert positive_percentile(rows, 90.0).tolist() == pytest.approx([9.1, 18.2])

    rec = ActivationRecorder()
    rec(torch.full((4, 3), 2.0))
    rec(torch.tensor([[5.0, 1.0, -3.0]]))  # a later batch holds the maximum
    assert float(rec.threshold(100.0)) == 5.0
    assert rec.batches == 2

    chan = ActivationRecorder(per_channel=True)
    chan(torch.arange(24.0).view(2, 3, 4))
    th = chan.threshold(100.0)
    assert th.shape == (3, 1) and th.view(-1).tolist() == [15.0, 19.0, 23.0]


def test_calibration_uses_several_batches():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    data = torch.randn(64, 4)
    snn = convert(model, data, batch_size=8, max_batches=None)
    rec_batches = len(data) // 8
    assert snn.sites[0].threshold_max > 0
    snn4 = convert(model, data, batch_size=8, max_batches=4, percentile=100)
    snn_all = convert(model, data, batch_size=8, max_batches=None, percentile=100)
    with torch.no_grad():
        full_max = torch.relu(model[0](data)).max()
        four_max = torch.relu(model[0](data[:32])).max()
    assert snn_all.sites[0].threshold_max == pytest.approx(float(full_max), rel=1e-6)
    assert snn4.sites[0].threshold_max == pytest.approx(float(four_max), rel=1e-6)
    assert rec_batches == 8


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("factory", [SmallCNN, ResidualBlock, ConcatUp])
def test_snn_error_shrinks_with_T(factory, per_channel):
    torch.manual_seed(1)
    model = randomize_bn(factory())
    in_ch = 2 if factory is SmallCNN else 1
    calib = torch.rand(64, in_ch, 8, 8)
    snn = convert(model, calib, percentile=100.0, per_channel=per_channel)
    x = torch.rand(16, in_ch, 8, 8)
    e16 = relative_error(snn, model, x, 16)
    e256 = relative_error(snn, model, x, 256)
    assert e256 < 0.4 * e16, (e16, e256)
    assert e256 < 0.05


def test_reused_relu_module_gets_one_neuron_per_call_site():
    snn = convert(randomize_bn(ResidualBlock()), torch.rand(8, 1, 8, 8))
    assert len(snn.neurons()) == 3  # stem, inside the block, after the add
    assert len({id(n) for n in snn.neurons().values()}) == 3


@pytest.mark.parametrize("act", [F.relu, torch.relu, lambda x: x.relu()])
def test_functional_relu_is_converted(act):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(act(self.a(x)))

    snn = convert(M().eval(), torch.randn(32, 3))
    assert len(snn.neurons()) == 1


def test_unsupported_operation_names_the_node():
    class Sig(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.sigmoid(self.fc(x))

    with pytest.raises(ConversionError, match="sigmoid"):
        convert(Sig(), torch.randn(4, 3))
    model = nn.Sequential(nn.Linear(3, 3), nn.GELU(), nn.Linear(3, 2))
    with pytest.raises(ConversionError, match=r"module '1' of type GELU"):
        convert(model, torch.randn(4, 3))


def test_state_is_reset_and_batch_size_may_change():
    torch.manual_seed(0)
    snn = convert(randomize_bn(SmallCNN()), torch.rand(32, 2, 8, 8))
    x = torch.rand(5, 2, 8, 8)
    a = snn(x, 20)
    b = snn(x, 20)
    assert torch.equal(a, b)
    c = snn(torch.rand(3, 2, 8, 8), 20)
    assert c.shape == (20, 3, 10)
    torch.testing.assert_close(snn(x, 20), a)
    # chunked over time = all at once
    torch.testing.assert_close(snn(x, 20, chunk=7), a, atol=1e-5, rtol=1e-5)


def test_constant_input_runs_first_layer_once():
    torch.manual_seed(0)
    model = create_model("lenet5").eval()
    snn = convert(model, torch.rand(64, 1, 28, 28))
    seen = []
    first = next(m for m in snn.graph_module.modules() if isinstance(m, nn.Conv2d))
    first.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    out = snn(torch.rand(4, 1, 28, 28), 16)
    assert out.shape == (16, 4, 10)
    assert seen == [4]  # one call with the static batch, not 16·4


def test_sequence_input():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    snn = convert(model, torch.rand(64, 4))
    x = torch.rand(6, 4)
    seq = x.expand(10, 6, 4)
    torch.testing.assert_close(snn(seq, sequence=True), snn(x, 10))


def test_bad_inputs():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    snn = convert(model, torch.rand(16, 4))
    with pytest.raises(ValueError, match="NaN"):
        snn(torch.full((2, 4), float("nan")), 4)
    with pytest.raises(ValueError, match="T must be"):
        snn(torch.rand(2, 4), 0)
    with pytest.raises(ValueError, match="NaN"):
        convert(model, torch.full((4, 4), float("nan")))
    with pytest.raises(ConversionError, match="no ReLU"):
        convert(nn.Sequential(nn.Linear(3, 2)), torch.rand(4, 3))


def test_one_step_chunks_equal_whole_run():
    """Chunks of one step must still pool spike trains with state (not as static)."""
    torch.manual_seed(0)
    model = randomize_bn(ConcatUp())
    snn = convert(model, torch.rand(32, 1, 8, 8))
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(snn(x, 12, chunk=1), snn(x, 12), atol=1e-5, rtol=1e-5)
    lenet = convert(create_model("lenet5").eval(), torch.rand(32, 1, 28, 28))
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(lenet(x, 9, chunk=1), lenet(x, 9, chunk=4), atol=1e-5, rtol=1e-5)


def test_largest_drop_of_an_accuracy_curve():
    from spikeforge.metrics import largest_drop

    acc = [0.1, 0.5, 0.9, 0.8, 0.95, 0.9, 0.93, 0.7, 0.96]
    assert largest_drop(acc, start=1) == pytest.approx({"from_step": 1, "drop": 0.25, "peak_step": 5, "low_step": 8})
    # from step 8 on the curve only rises
    assert largest_drop(acc, start=8) == {"from_step": 8, "drop": 0.0, "peak_step": None, "low_step": None}
    with pytest.raises(ValueError, match="start"):
        largest_drop(acc, start=0)


def test_lenet5_convert_cli_end_to_end(tmp_path):
    import json

    from spikeforge.cli import main

    out = tmp_path / "run"
    args = ["run", "lenet5-convert", "--epochs", "1", "--T", "20", "--calib-batches", "2", "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert 0.5 < m["ann_accuracy"] <= 1.0 and not m["checkpoint_reused"]
    assert sorted(m["snn_accuracy"], key=int) == [str(t) for t in range(1, 21)]
    curve = [m["snn_accuracy"][str(t)] for t in range(1, 21)]
    drop = m["largest_drop_after_T16"]
    assert drop["from_step"] == 16 and drop["drop"] >= 0
    if drop["peak_step"] is not None:
        assert curve[drop["peak_step"] - 1] - curve[drop["low_step"] - 1] == pytest.approx(drop["drop"])
    for name in ("report.md", "accuracy_vs_T.png", "firing_rates.png", "lenet5.pt"):
        assert (out / name).stat().st_size > 0
    assert "Largest fall below an earlier step" in (out / "report.md").read_text()
    # a second run reuses the trained checkpoint
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["checkpoint_reused"]
