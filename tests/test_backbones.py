"""VGG/ResNet backbones, residual conversion, the shared-neuron ablation, SimCLR and the study runner."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import fx

from spikeforge.cli import main
from spikeforge.convert import convert
from spikeforge.data.augment import random_crop_flip, random_shift
from spikeforge.errors import ConfigError
from spikeforge.experiments.backbone_study import load_state_dict_file
from spikeforge.models import create_model, list_models
from spikeforge.train import CheckpointError
from spikeforge.train.simclr import nt_xent, pretrain_simclr, random_views

# Input of each registered model at a small size: (kwargs, input shape, output kind).
SMALL = {
    "cifar-fast": ({"widths": (4, 8, 8)}, (3, 3, 32, 32)),
    "lenet5": ({}, (3, 1, 28, 28)),
    "unet": ({"width": 4, "depth": 2}, (2, 1, 32, 32)),
    "fc-lif": ({"hidden": 16, "T": 3}, (3, 1, 28, 28)),
    "fc-poisson": ({"T": 3}, (3, 1, 28, 28)),
    "csnn": ({"channels": 4, "T": 2}, (3, 1, 28, 28)),
}
for _n in ("vgg11", "vgg13", "vgg16", "vgg18", "resnet18", "resnet34", "resnet50", "resnet101",
           "plain-resnet18", "plain-resnet34", "plain-resnet50", "plain-resnet101"):
    SMALL[_n] = ({"in_channels": 1, "width": 1 / 16, "image_size": 28}, (2, 1, 28, 28))


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_runs_forward_and_backward(name):
    assert name in SMALL, f"add a small configuration of the new model {name!r} to this test"
    kwargs, shape = SMALL[name]
    torch.manual_seed(0)
    model = create_model(name, **kwargs).train()
    out = model(torch.rand(shape))
    y = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(y.float()).all()
    loss = (out.membrane if hasattr(out, "membrane") and out.membrane is not None else y.float()).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_backbone_shapes_and_options():
    # CIFAR input: 5 pools in VGG, 10 classes; 28x28 input keeps only the pools that fit
    v32 = create_model("vgg11", in_channels=3, width=0.125, image_size=32)
    v28 = create_model("vgg11", in_channels=1, width=0.125, image_size=28)
    pools = lambda m: sum(isinstance(x, torch.nn.MaxPool2d) for x in m.modules())  # noqa: E731
    assert pools(v32) == 5 and pools(v28) == 4
    assert v32(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    r = create_model("resnet50", in_channels=3, width=0.25)
    assert r.conv1.in_channels == 3 and r.conv1.out_channels == 16 and r.fc.in_features == 512  # 128*4
    assert r(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="width"):
        create_model("resnet18", width=0)


def _adds(model) -> int:
    gm = fx.symbolic_trace(model)
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and "add" in getattr(n.target, "__name__", ""))


def test_plain_twins_have_the_same_layers_without_skips():
    r, p = create_model("resnet18", width=0.125), create_model("plain-resnet18", width=0.125)
    assert _adds(r) == 8 and _adds(p) == 0
    convs = lambda m: [x.weight.shape for x in m.modules() if isinstance(x, torch.nn.Conv2d)]  # noqa: E731
    # the plain twin lacks only the 1x1 shortcut convolutions
    assert [s for s in convs(r) if s[-1] != 1] == convs(p)
    assert create_model("vgg18", width=0.125).plain


@pytest.mark.parametrize("name,sites,shared", [("resnet18", 1 + 8 * 2, 1 + 8), ("resnet50", 1 + 16 * 3, 1 + 16)])
def test_every_relu_call_site_of_a_resnet_block_gets_its_own_neuron(name, sites, shared):
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, width=1 / 16).eval()
    x = torch.rand(8, 1, 16, 16)
    assert len(convert(model, x).neurons()) == sites
    # the seed's fault: one neuron per nn.ReLU module, whatever its number of call sites
    ablated = convert(model, x, share_reused_relu=True)
    assert len(ablated.neurons()) == shared
    assert torch.isfinite(ablated(x, 4)).all()  # bottleneck sites of different shapes still run


def _rel_error(snn, x, ref, T):
    out = snn(x, T).cumsum(0) / torch.arange(1, T + 1).view(-1, 1, 1)
    return [float((out[t - 1] - ref).abs().mean() / ref.abs().mean()) for t in (16, 64, T)]


def test_random_resnet18_converts_and_its_error_shrinks_with_T():
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, width=1 / 16).eval()
    # non-trivial BatchNorm statistics, so that folding matters
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    x = torch.rand(32, 1, 16, 16)
    with torch.no_grad():
        ref = model(x[:8])
    e16, e64, e256 = _rel_error(convert(model, x, percentile=99.99), x[:8], ref, 256)
    assert e256 < e64 < e16
    assert e256 < 0.35 * e16 and e256 < 0.01
    # the shared neuron does not converge: its error stays far above the per-site one
    s16, s64, s256 = _rel_error(convert(model, x, share_reused_relu=True), x[:8], ref, 256)
    assert s256 > 5 * e256


def test_load_external_state_dict(tmp_path):
    model = create_model("resnet18", in_channels=1, width=1 / 16)
    good = tmp_path / "w.pt"
    torch.save({"state_dict": model.state_dict()}, good)
    other = create_model("resnet18", in_channels=1, width=1 / 16)
    load_state_dict_file(other, good)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    wrong = tmp_path / "wrong.pt"
    torch.save(create_model("resnet18", in_channels=3, width=1 / 16).state_dict(), wrong)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_state_dict_file(other, wrong)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_state_dict_file(other, junk)


# --- augmentation and SimCLR ----------------------------------------------------------


def test_random_crop_flip_shifts_and_flips_each_image():
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 3] = 1.0  # one bright pixel left of the centre
    g = torch.Generator().manual_seed(0)
    y = random_crop_flip(x, pad=2, generator=g)
    assert y.shape == x.shape and torch.equal(y.sum((1, 2, 3)), x.sum((1, 2, 3)))  # content never leaves
    cols = y[:, 0].sum(1).argmax(1)
    rows = y[:, 0].sum(2).argmax(1)
    assert set(rows.tolist()) == {2, 3, 4, 5, 6}
    # unflipped column 3 ± 2; flipped 8 − 3 = 5 ± 2 → columns 1..7 all occur
    assert set(cols.tolist()) == set(range(1, 8))
    only_flip = random_crop_flip(x, pad=0, generator=torch.Generator().manual_seed(1))
    assert set(only_flip[:, 0].sum(1).argmax(1).tolist()) == {3, 5}
    assert torch.equal(random_shift(x, 0), x)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        random_crop_flip(torch.rand(3, 9, 9))


def test_nt_xent_matches_the_hand_computed_value():
    n, tau = 4, 0.5
    z = torch.eye(8)[:n]  # orthonormal: partner similarity 1, all others 0
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * n - 2))
    assert float(nt_xent(z, z.clone(), temperature=tau)) == pytest.approx(expected, rel=1e-6)
    worse = nt_xent(z, torch.roll(z, 1, 0), temperature=tau)  # partners point elsewhere
    assert float(worse) > expected + 1


def test_random_views_are_seeded_valid_images():
    x = torch.rand(16, 1, 12, 12)
    a = random_views(x, torch.Generator().manual_seed(3))
    b = random_views(x, torch.Generator().manual_seed(3))
    c = random_views(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("bf16", [False, True])
def test_simclr_pretraining_lowers_the_contrastive_loss(bf16):
    torch.manual_seed(0)
    x = torch.rand(8, 1, 12, 12).repeat(16, 1, 1, 1) * torch.rand(128, 1, 1, 1)  # 8 patterns, varied brightness
    model = create_model("resnet18", in_channels=1, width=1 / 16)
    hist = pretrain_simclr(model, x, epochs=4, batch_size=64, lr=5e-3, progress=False, bf16=bf16, channels_last=bf16)
    assert hist[-1]["contrastive_loss"] < hist[0]["contrastive_loss"]


# --- the study runner --------------------------------------------------------------------


def test_study_smoke_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["study", "backbones", "--dataset", "mnist-sample", "--preset", "smoke", "--out", str(out),
            "--models", "vgg11,resnet18-shared-neuron,resnet18-simclr", "--T", "6", "--no-progress"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the ablation pulls in its source model
    assert list(metrics) == ["vgg11", "resnet18", "resnet18-simclr", "resnet18-shared-neuron"]  # study order
    for r in metrics.values():
        assert 0 <= r["ann_accuracy"] <= 1
        assert sorted(map(int, r["snn_accuracy"])) == list(range(1, 7))
    assert metrics["resnet18"]["neuron_layers"] == 17 and metrics["resnet18-shared-neuron"]["neuron_layers"] == 9
    for fig in ("architecture.png", "size.png", "pretraining.png", "ablation.png"):
        assert (out / fig).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| resnet18-shared-neuron |" in report and "collapse" in report
    assert json.loads((out / "study.json").read_text())["preset_name"] == "smoke"
    capsys.readouterr()
    # a rerun trains nothing and evaluates nothing again
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "training" not in log and log.count("reused") == 4
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_study_method_comes_from_the_preset_unless_the_command_line_names_one():
    from argparse import Namespace

    from spikeforge.experiments.backbone_study import PRESETS, study_method

    quick, cpu = PRESETS["quick"], PRESETS["cpu"]
    none = Namespace(threshold=None, correction=None, target_T=None)
    assert study_method(none, quick) == {"threshold": "mse", "correction": "potential", "target_T": 16}
    assert study_method(none, cpu) == {}  # percentile thresholds, as before (old caches stay valid)
    # a method on the command line replaces the preset's, including the plain default
    assert study_method(Namespace(threshold="percentile", correction=None, target_T=None), quick) == {}
    assert study_method(Namespace(threshold=None, correction="bias", target_T=8), quick) == {
        "threshold": "percentile", "correction": "bias", "target_T": 8}
    assert study_method(Namespace(threshold=None, correction=None, target_T=32), quick)["target_T"] == 32
    with pytest.raises(ConfigError, match="--target-T"):
        study_method(Namespace(threshold=None, correction=None, target_T=8), cpu)
    assert quick.max_spikes == 1 and quick.test_limit >= 2000 and quick.T == 64


def test_study_with_the_sgd_bf16_binary_recipe(tmp_path, capsys, monkeypatch):
    """The quick preset's ways (SGD recipe, bf16 training, binary spikes, MSE + potential) on the smoke scale."""
    from dataclasses import replace

    from spikeforge import precision
    from spikeforge.experiments import backbone_study as bs

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"amx_bf16"}))  # the preset's bf16 is kept
    monkeypatch.setitem(bs.PRESETS, "smoke", replace(bs.PRESETS["smoke"], recipe="sgd", lr=0.05, bf16=True,
                                                     max_spikes=1, threshold="mse", correction="potential",
                                                     target_T=4))
    out = tmp_path / "study"
    args = ["study", "backbones", "--dataset", "mnist-sample", "--preset", "smoke", "--out", str(out),
            "--models", "resnet18-shared-neuron,resnet18-simclr", "--T", "4", "--no-progress"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["resnet18", "resnet18-simclr", "resnet18-shared-neuron"]
    for r in metrics.values():
        assert 0 <= r["ann_accuracy"] <= 1 and len(r["snn_accuracy"]) == 4
    study = json.loads((out / "study.json").read_text())
    assert study["method"] == {"threshold": "mse", "correction": "potential", "target_T": 4}
    report = (out / "report.md").read_text()
    assert "binary spikes (Γ=1)" in report and "MSE thresholds for T=4; potential correction for T=4" in report
    payload = torch.load(out / "models" / "resnet18.pt", weights_only=True)
    assert payload["config"]["recipe"] == "sgd" and payload["config"]["bf16"] is True and study["adjusted"] == {}
    # the preset's method reached the converter (a percentile run would give other thresholds): rerun
    # with the command line's plain method and compare
    capsys.readouterr()
    # ... on a machine without native bf16: the preset trains in float32 there, but the nets
    # trained in bf16 here are reused rather than retrained
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert main(args + ["--threshold", "percentile"]) == 0
    log = capsys.readouterr().out
    # same nets; new evaluations, except the ablation's (it keeps the seed's percentile converter)
    assert "trained weights loaded" in log and log.count("evaluation reused") == 1 and "[resnet18-shared-neuron] evaluation reused" in log
    adjusted = json.loads((out / "study.json").read_text())["adjusted"]
    assert "training again" not in log and "bf16" in adjusted
    assert adjusted["bf16_reused"] == "resnet18, resnet18-simclr reused from the cache as trained, in bfloat16"


def test_study_bad_arguments(tmp_path, capsys):
    base = ["study", "backbones", "--dataset", "mnist-sample", "--preset", "smoke", "--out", str(tmp_path)]
    assert main(base + ["--models", "resnet7"]) == 2
    assert "unknown study model" in capsys.readouterr().err
    assert main(base + ["--load", "resnet18"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert main(base + ["--load", f"resnet18={tmp_path / 'none.pt'}"]) == 2
    assert "no such file" in capsys.readouterr().err


# --- conversion-aware training (QCFS) ------------------------------------------------------


def test_qcfs_forward_and_its_one_layer_conversion_is_exact_after_L_steps():
    from torch import nn

    from spikeforge.layers import QCFS

    act = QCFS(levels=4, threshold=2.0)
    x = torch.tensor([-1.0, 0.0, 0.24, 0.26, 0.74, 1.3, 1.9, 5.0])
    # λ·clip(floor(x·L/λ + 1/2)/L, 0, 1) with λ = 2, L = 4: steps of 0.5, rounded to nearest
    assert torch.allclose(act(x), torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, 1.5, 2.0, 2.0]))
    xg = x.clone().requires_grad_(True)
    act(xg).sum().backward()  # straight-through: gradient 1 inside (0, λ), 0 outside
    assert torch.equal(xg.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), QCFS(levels=4, threshold=1.5), nn.Linear(16, 3)).eval()
    inp = torch.randn(32, 6)
    snn = convert(model, inp)
    # the learnt λ as the ANN uses it (|λ| + 1e-6), no percentile
    assert [float(n.threshold) for n in snn.neurons().values()] == [float(model[1].ceiling.detach())]
    out = snn(inp, 4).mean(0)  # the average over T = L steps
    with torch.no_grad():
        assert torch.allclose(out, model(inp), atol=1e-5)


def test_qcfs_backbones_convert_with_their_learnt_thresholds():
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, width=1 / 16, act="qcfs").eval()
    # one QCFS module, with its own ceiling, per call site (a block's inner and post-add sites differ)
    qcfs = [m for m in model.modules() if m.__class__.__name__ == "QCFS"]
    assert len(qcfs) == 17 and hasattr(model.layer1[0], "relu_out")
    with torch.no_grad():
        for i, m in enumerate(qcfs):
            m.threshold.fill_(1.0 + 0.125 * i)
    lams = [float(m.ceiling.detach()) for m in qcfs]
    x = torch.rand(8, 1, 16, 16)
    snn = convert(model, x)
    assert [round(float(n.threshold), 6) for n in snn.neurons().values()] == [round(v, 6) for v in lams]
    assert len(convert(model, x, share_reused_relu=True).neurons()) == 17
    # the ReLU net keeps one module per block, called at both sites
    relu = create_model("resnet18", in_channels=1, width=1 / 16).eval()
    assert not hasattr(relu.layer1[0], "relu_out")
    assert len(convert(relu, x, share_reused_relu=True).neurons()) == 9


def test_split_threshold_burst_spikes_divide_thresholds_and_converge_faster():
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.rand(64, 10)
    with torch.no_grad():
        ref = model(x)
    plain = convert(model, x)
    split = convert(model, x, max_spikes=4, split_threshold=True)
    for a, b in zip(plain.neurons().values(), split.neurons().values()):
        assert torch.allclose(b.threshold * 4, a.threshold)
    err = lambda snn: float((snn(x, 16).mean(0) - ref).abs().mean())  # noqa: E731
    assert err(split) < 0.5 * err(plain)


def test_study_report_says_when_the_shared_neuron_ablation_cannot_share():
    from spikeforge.experiments.backbone_study import _report

    meta = {"preset": {"T": 8, "width": 0.25, "epochs": 1, "activation": "qcfs", "max_spikes": 1},
            "command": "spikeforge study backbones", "dataset": "cifar10", "n_train": 10, "n_test": 10,
            "preset_name": "quick", "wall_seconds": 60.0}
    row = {"parameters": 1, "ann_accuracy": 0.5, "snn_accuracy": {str(t): 0.5 for t in range(1, 9)}}
    qcfs = {"resnet18": {**row, "neuron_layers": 17}, "resnet18-shared-neuron": {**row, "neuron_layers": 17}}
    assert "Not reproduced by this run" in _report(qcfs, meta)
    relu = {"resnet18": {**row, "neuron_layers": 17}, "resnet18-shared-neuron": {**row, "neuron_layers": 9}}
    text = _report(relu, {**meta, "preset": {**meta["preset"], "activation": "relu"}})
    assert "Not reproduced" not in text and "9 neuron layers instead of 17" in text
