"""The fast CIFAR network, its conversion rewrites, validation splits and cifar-convert."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from spikeforge import convert
from spikeforge.convert import fold_batchnorm, trace
from spikeforge.convert.graph import move_relu_before_maxpool
from spikeforge.data.split import stratified_split
from spikeforge.models import create_model
from spikeforge.models.fastnet import init_whitening
from spikeforge.train.ann import train_classifier


def _random_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def test_stratified_split_is_balanced_seeded_and_disjoint():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    tr, va = stratified_split(labels, 20, seed=3)
    assert len(va) == 20 and len(tr) == 80
    assert set(tr.tolist()).isdisjoint(va.tolist()) and len(set(tr.tolist()) | set(va.tolist())) == 100
    assert torch.bincount(labels[va], minlength=3).tolist() == [12, 6, 2]
    tr2, va2 = stratified_split(labels, 20, seed=3)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert not torch.equal(stratified_split(labels, 20, seed=4)[1], va)
    # the rounding remainder is spread so that exactly n_val images are held out
    assert len(stratified_split(labels, 7)[1]) == 7
    for bad in (0, 100, -1):
        with pytest.raises(ValueError, match="validation split"):
            stratified_split(labels, bad)


def test_whitening_decorrelates_patches():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(64, 1, 16, 16, generator=g)
    images = torch.cat([base, 0.5 * base + 0.1 * torch.rand(64, 1, 16, 16, generator=g), torch.rand(64, 1, 16, 16, generator=g)], 1)
    model = create_model("cifar-fast", widths=(8, 8, 8))
    init_whitening(model, images)
    with torch.no_grad():
        y = model.whiten(images)  # [N, 24, 15, 15]
    half = y[:, :12].permute(1, 0, 2, 3).reshape(12, -1)
    assert half.mean(1).abs().max() < 1e-3  # centred by the bias
    cov = torch.cov(half)
    off = cov - torch.diag(torch.diag(cov))
    assert off.abs().max() < 0.05 * torch.diag(cov).max()
    assert torch.allclose(y[:, 12:], -y[:, :12], atol=1e-5)  # each filter beside its negative
    assert not model.whiten.weight.requires_grad
    with pytest.raises(ValueError, match="images"):
        init_whitening(model, torch.rand(4, 1, 8, 8))


def test_fold_bn_through_maxpool_and_relu_moved_behind_it():
    model = _random_stats(create_model("cifar-fast", widths=(8, 16, 16)))
    x = torch.rand(6, 3, 32, 32)
    gm = trace(model)
    folded = fold_batchnorm(gm)
    assert folded == 6  # all BNs, including the three behind a max-pool
    moved = move_relu_before_maxpool(gm)
    assert moved == 3
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-5)
    # every max-pool now reads an activation's output
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.MaxPool2d):
            src = node.args[0]
            assert src.op == "call_module" and isinstance(gm.get_submodule(str(src.target)), nn.ReLU)


def test_bn_with_a_negative_scale_is_not_folded_through_a_maxpool():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.BatchNorm2d(2), nn.ReLU())
    net[2].weight.data = torch.tensor([1.0, -1.0])
    net[2].running_var.fill_(2.0)
    net.eval()
    gm = trace(net)
    assert fold_batchnorm(gm) == 0
    x = torch.randn(3, 1, 9, 9)
    with torch.no_grad():
        assert torch.allclose(gm(x), net(x), atol=1e-6)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_fastnet_converts_with_small_error(pool):
    torch.manual_seed(0)
    model = _random_stats(create_model("cifar-fast", widths=(8, 16, 16), pool=pool))
    x = torch.rand(16, 3, 32, 32)
    init_whitening(model, x)
    model.eval()
    snn = convert(model, x, percentile=100.0)
    with torch.no_grad():
        ref = model(x)
        out = snn(x, 256).mean(0)
    err = (out - ref).norm() / ref.norm()
    assert err < 0.1, float(err)
    assert len(snn.neurons()) == 7


def test_fastnet_options_are_checked():
    with pytest.raises(ValueError, match="pool"):
        create_model("cifar-fast", pool="min")
    with pytest.raises(ValueError, match="widths"):
        create_model("cifar-fast", widths=(8, 8))
    with pytest.raises(ValueError, match="activation"):
        create_model("cifar-fast", act="gelu")


@pytest.mark.parametrize("lookahead", [False, True])
def test_sgd_recipe_resumes_exactly(lookahead):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g)
    kw = dict(epochs=4, batch_size=16, lr=0.05, weight_decay=1e-3, optimizer="sgd", schedule="linear",
              label_smoothing=0.2, bias_lr_scale=8, augment_shift=2, flip=True, progress=False, seed=1,
              lookahead=lookahead)

    def fresh():
        torch.manual_seed(5)
        return create_model("cifar-fast", in_channels=1, widths=(4, 8, 8))

    full = fresh()
    states = {}
    h_full = train_classifier(full, (x, y), **kw,
                              on_state=lambda e, s: states.setdefault(e, copy.deepcopy((s, full.state_dict()))))
    for epoch in (1, 2):  # before and after the averaging starts (step 6 of 24)
        resumed = fresh()
        state, weights = states[epoch]
        resumed.load_state_dict(weights)
        h_res = train_classifier(resumed, (x, y), **kw, start_epoch=epoch + 1, history=state["history"], opt_state=state)
        assert [r["train_loss"] for r in h_res] == pytest.approx([r["train_loss"] for r in h_full])
        for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
            assert torch.equal(a, b)
    if lookahead:  # the averaging did change the weights
        plain = fresh()
        train_classifier(plain, (x, y), **{**kw, "lookahead": False})
        assert not torch.equal(plain.fc.weight, full.fc.weight)


def _write_cifar(folder, n_per_batch=60, with_test=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)

    def batch(n):
        labels = np.arange(n) % 10
        imgs = rng.integers(0, 60, size=(n, 3, 32, 32), dtype=np.uint8)
        for i, c in enumerate(labels):  # a learnable class cue: brightness of one channel band
            imgs[i, c % 3, (c // 3) * 8:(c // 3) * 8 + 8] += 150
        out = bytearray()
        for im, lab in zip(imgs, labels):
            out.append(int(lab))
            out += im.tobytes()
        return bytes(out)

    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(batch(n_per_batch))
    if with_test:
        (folder / "test_batch.bin").write_bytes(batch(n_per_batch))
    return folder


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    from spikeforge.data import cifar as cifar_mod
    from spikeforge.data import download as download_mod

    monkeypatch.delenv("SPIKEFORGE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(download_mod, "fetch_url", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    cifar_mod._load_cached.cache_clear()


def test_cifar_convert_with_val_split_end_to_end(tmp_path, no_network):
    from spikeforge.cli import main

    data = _write_cifar(tmp_path / "cifar-10-batches-bin", with_test=False)
    out = tmp_path / "run"
    args = ["run", "cifar-convert", "--data-dir", str(data), "--val-split", "100", "--epochs", "2",
            "--widths", "8,16,16", "--T", "12", "--calib-batches", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval_split"] == "val" and m["n_test"] == 100 and m["n_train"] == 200
    assert sorted(m["snn_accuracy"], key=int) == [str(t) for t in range(1, 13)]
    assert 0 <= m["ann_accuracy"] <= 1 and not m["checkpoint_reused"] and len(m["history"]) == 2
    for name in ("report.md", "accuracy_vs_T.png", "firing_rates.png", "training_curves.png", "model.pt", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0
    assert "held-out validation" in (out / "report.md").read_text()
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["checkpoint_reused"]
    # resume from the per-epoch checkpoint continues after the last finished epoch
    (out / "model.pt").unlink()
    assert main(args + ["--resume"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 2
    # weight averaging is a training option: a new training, named in the report
    assert main(args + ["--lookahead"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["training"]["lookahead"] is True and not m["checkpoint_reused"]
    assert "weight averaging (lookahead)" in (out / "report.md").read_text()


def test_cifar_without_test_batch_needs_val_split(tmp_path, no_network, capsys):
    from spikeforge.cli import main

    data = _write_cifar(tmp_path / "cifar-10-batches-bin", with_test=False)
    rc = main(["run", "cifar-convert", "--data-dir", str(data), "--epochs", "1", "--out", str(tmp_path / "r")])
    assert rc != 0
    err = capsys.readouterr().err
    assert "test_batch.bin" in err and "--val-split" in err


def test_lenet5_convert_val_split_and_few_step_method(tmp_path):
    from spikeforge.cli import main

    out = tmp_path / "run"
    args = ["run", "lenet5-convert", "--epochs", "1", "--T", "8", "--calib-batches", "1", "--val-split", "500",
            "--threshold", "mse", "--correction", "bias", "--target-T", "4", "--out", str(out), "--no-progress",
            "--weight-iters", "3", "--weight-refresh", "2"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval_split"] == "val" and m["n_test"] == 500 and m["n_train"] == 3500
    assert m["conversion"]["threshold"] == "mse" and m["conversion"]["target_T"] == 4
    assert m["conversion"]["weight_iters"] == 3 and m["conversion"]["weight_refresh"] == 2
    report = (out / "report.md").read_text()
    assert "bias correction for T=4" in report
    assert "weights calibrated layer by layer (3 steps, true output every 2 steps)" in report
    # without --val-split the sample's own test split is used
    assert main(args[:8] + ["--out", str(tmp_path / "r2"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "r2" / "metrics.json").read_text())["eval_split"] == "test"


def test_target_T_alone_is_refused(tmp_path, capsys):
    from spikeforge.cli import main

    rc = main(["run", "lenet5-convert", "--epochs", "1", "--target-T", "4", "--out", str(tmp_path / "r")])
    assert rc != 0 and "--target-T" in capsys.readouterr().err


def test_cifar_convert_trains_a_backbone_with_its_own_recipe(tmp_path, no_network, monkeypatch):
    from spikeforge import precision
    from spikeforge.cli import main

    data = _write_cifar(tmp_path / "cifar-10-batches-bin", with_test=False)
    out = tmp_path / "run"
    args = ["run", "cifar-convert", "--data-dir", str(data), "--val-split", "100", "--epochs", "1",
            "--model", "resnet18", "--width", "0.0625", "--T", "4", "--calib-batches", "1", "--out", str(out),
            "--no-progress"]
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))  # no native bfloat16
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    tr = m["training"]
    assert tr["precision"] == "fp32" and m["precision_choice"].startswith("fp32 (auto: no native bfloat16")
    assert tr["model"] == "resnet18" and tr["width"] == 0.0625
    # the backbone recipe where no option was given; an explicit option wins
    assert (tr["lr"], tr["weight_decay"], tr["bias_lr_scale"], tr["label_smoothing"]) == (0.2, 5e-4, 1.0, 0.1)
    assert sorted(m["snn_accuracy"], key=int) == ["1", "2", "3", "4"]
    assert m["parameters"] == sum(p.numel() for p in create_model("resnet18", width=0.0625).parameters())
    assert "`resnet18` at width ×0.0625" in (out / "report.md").read_text()
    assert m["snn_precision"] == "fp32"
    # a QCFS twin started from it: each call site's ceiling comes from the ReLU net's activation at
    # that site (the block's one ReLU module gives the inner activation first, then the post-add sum)
    from spikeforge.experiments.cifar_convert import build_model, init_from_run

    qcfg = {**tr, "activation": "qcfs", "levels": 4}
    twin = build_model(qcfg, 3, 10, 32)
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    lams = init_from_run(twin, qcfg, out, images, 10, percentile=100.0)
    assert len(lams) == 17 and "layer2.0.relu_out" in lams
    src = build_model(tr, 3, 10, 32).eval()
    src.load_state_dict(torch.load(out / "model.pt", weights_only=True)["model"])
    calls: list[float] = []
    hook = src.layer2[0].relu.register_forward_hook(lambda m, a, y: calls.append(float(y.max())))
    with torch.no_grad():
        src(images)
    hook.remove()
    assert len(calls) == 2 and calls[0] != calls[1]
    assert lams["layer2.0.relu"] == pytest.approx(calls[0], rel=1e-5)
    assert lams["layer2.0.relu_out"] == pytest.approx(calls[1], rel=1e-5)
    # on a machine with native bfloat16, --precision auto reuses the float32 network trained here
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert main(args + ["--snn-bf16"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoint_reused"] and m["snn_precision"] == "bf16" and len(m["snn_accuracy"]) == 4
    assert m["training"]["precision"] == "fp32" and "stored in --out" in m["precision_choice"]
    assert "bfloat16 convolutions" in (out / "report.md").read_text()
    assert main(args + ["--lr", "0.05"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["training"]["lr"] == 0.05 and not m["checkpoint_reused"]


@pytest.mark.parametrize("extra, needle", [(["--width", "0.5"], "--width"),
                                           (["--model", "vgg11", "--widths", "8,8,8"], "--widths")])
def test_cifar_convert_refuses_options_of_the_other_kind_of_net(tmp_path, capsys, extra, needle):
    from spikeforge.cli import main

    rc = main(["run", "cifar-convert", "--epochs", "1", *extra, "--out", str(tmp_path / "r")])
    assert rc != 0 and needle in capsys.readouterr().err


def test_cached_model_from_before_the_model_option_is_reused():
    from spikeforge.experiments.cifar_convert import _stored_config, build_model

    old = {"dataset": "cifar10", "widths": [8, 16, 16], "pool": "max", "activation": "relu", "levels": 8}
    assert _stored_config({"config": old})["model"] == "cifar-fast"
    assert isinstance(build_model(old, 3, 10), type(create_model("cifar-fast")))


def test_bf16_snn_evaluation_follows_the_float32_snn():
    """evaluate_snn(bf16=True): bfloat16 convolutions, float32 analog input and membranes."""
    from spikeforge.convert import convert
    from spikeforge.evaluate import evaluate_snn
    from test_convert import randomize_bn

    torch.manual_seed(0)
    net = randomize_bn(create_model("cifar-fast", widths=(8, 16, 16)), seed=1).eval()
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    snn = convert(net, x, percentile=99.9, channels_last=True)
    T = 24
    fp32_out = snn(x, T).float().cumsum(0).argmax(-1)  # [T, N] running-sum decisions
    labels = fp32_out[-1]
    seen: dict[str, torch.dtype] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: None if seen.setdefault(name, a[0].dtype) else None)
             for name, m in snn.neurons().items()]
    res = evaluate_snn(snn, x, labels, T, batch_size=20, bf16=True, spike_stats=False)
    for h in hooks:
        h.remove()
    first, *later = snn.neurons()
    assert seen[first] == torch.float32 and later and all(seen[n] == torch.bfloat16 for n in later)
    ref = evaluate_snn(snn, x, labels, T, batch_size=20, spike_stats=False)
    assert ref["accuracy"][-1] == 1.0  # labels are the float32 SNN's own decisions
    assert len(res["accuracy"]) == T and res["accuracy"][-1] >= 0.85
    assert torch.is_autocast_enabled("cpu") is False  # nothing left switched on


def test_lookahead_moves_the_average_and_puts_it_in_the_net():
    from spikeforge.train.ann import Lookahead

    net = torch.nn.Linear(2, 1, bias=False)
    net.weight.data.fill_(1.0)
    la = Lookahead(net, total_steps=20, start_step=4, every=5, base=0.9, power=1.0)
    la.after_step(4)  # not yet
    assert la.avg is None
    la.after_step(9)  # the average starts here, from the current weights
    net.weight.data.fill_(3.0)
    la.after_step(12)  # between updates: nothing
    assert torch.all(net.weight == 3.0)
    la.after_step(14)
    rho = 0.9 ** 5 * (14 / 20)
    assert torch.allclose(net.weight, torch.full_like(net.weight, rho * 1.0 + (1 - rho) * 3.0))
    net.weight.data.fill_(7.0)
    la.end_epoch()  # the net gets the average back
    assert torch.allclose(net.weight, torch.full_like(net.weight, rho * 1.0 + (1 - rho) * 3.0))


def test_cifar_convert_init_from_a_relu_run_fine_tunes_with_qcfs(tmp_path, no_network, capsys):
    from spikeforge.cli import main
    from spikeforge.experiments.cifar_convert import build_model, init_from_run
    from spikeforge.layers import QCFS

    data = _write_cifar(tmp_path / "cifar-10-batches-bin", with_test=False)
    base = ["run", "cifar-convert", "--data-dir", str(data), "--val-split", "100", "--widths", "8,16,16",
            "--T", "4", "--calib-batches", "1", "--no-progress"]
    relu = tmp_path / "relu"
    assert main(base + ["--epochs", "1", "--out", str(relu)]) == 0
    # the ceilings start at the ReLU net's activation percentiles, the weights are the ReLU net's
    cfg = json.loads((relu / "metrics.json").read_text())["training"]
    qcfg = {**cfg, "activation": "qcfs", "levels": 4}
    net = build_model(qcfg, 3, 10, 32)
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lams = init_from_run(net, qcfg, relu, images, 10)
    qcfs = {n for n, m in net.named_modules() if isinstance(m, QCFS)}
    assert set(lams) == qcfs and all(v > 0 for v in lams.values()) and len(set(lams.values())) > 1
    src = torch.load(relu / "model.pt", weights_only=True)["model"]
    assert torch.equal(net.state_dict()["groups.1.conv2.weight"], src["groups.1.conv2.weight"])
    out = tmp_path / "qcfs"
    assert main(base + ["--epochs", "1", "--activation", "qcfs", "--levels", "4", "--init-from", str(relu),
                        "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["training"]["init_from"] == str(relu) and m["training"]["activation"] == "qcfs"
    assert "started from" in capsys.readouterr().out
    # another layout is refused, naming what differs
    rc = main(base + ["--epochs", "1", "--widths", "8,16,32", "--init-from", str(relu), "--out", str(tmp_path / "x")])
    assert rc != 0 and "widths" in capsys.readouterr().err
    rc = main(base + ["--epochs", "1", "--init-from", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")])
    assert rc != 0 and "nowhere" in capsys.readouterr().err and not (tmp_path / "y" / "checkpoint.pt").exists()


def test_engine_keeps_the_contiguous_layout_where_onednn_fails_channels_last():
    # a strided 1x1 convolution with 4 input channels: oneDNN's AVX2 weight gradient segfaults
    # (one thread) or hangs (two) in channels-last, so the engine must train it contiguous
    from spikeforge.train.engine import Engine, channels_last_hazard

    toy = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 1, stride=2))
    assert "2 is a strided 1x1 convolution with 4 input channels" in channels_last_hazard(toy)
    with pytest.warns(UserWarning, match="contiguous layout instead of channels-last"):
        eng = Engine(toy, channels_last=True, progress=False)
    assert not eng.channels_last and toy[2].weight.is_contiguous()
    x = torch.rand(8, 3, 16, 16)
    toy(x).sum().backward()  # the contiguous path: no crash
    wide = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1, stride=2))
    assert channels_last_hazard(wide) is None
    eng = Engine(wide, channels_last=True, progress=False)
    assert eng.channels_last and wide[2].weight.is_contiguous(memory_format=torch.channels_last)
