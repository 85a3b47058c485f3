"""UNet, its conversion to an SNN, segmentation metrics, training resume, the experiment."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from spikeforge.cli import main as cli_main
from spikeforge.convert import convert
from spikeforge.data.segmentation import PatchSampler, SegmentationSet
from spikeforge.evaluate_segmentation import analog_input_float32, power_of_two_steps, snn_mean_logits
from spikeforge.layers import SpikingMaxPool2d, lipool_reference
from spikeforge.metrics.segmentation import SegmentationScores, binary_counts, dice_score, scores_from_counts
from spikeforge.models import create_model, list_models
from spikeforge.train.segmentation import bce_dice_loss, train_segmenter


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: one thread avoids OpenMP overhead on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


# --- metrics -------------------------------------------------------------------------------


def test_metrics_against_hand_computed_values():
    pred = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    true = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert binary_counts(pred, true) == (2, 1, 1, 4)
    s = scores_from_counts(2, 1, 1, 4)
    assert s["accuracy"] == pytest.approx(6 / 8)
    assert s["jaccard"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(4 / 6)
    assert dice_score(pred, true) == pytest.approx(4 / 6)

    scores = SegmentationScores()
    logits = torch.where(pred, 3.0, -3.0).float()
    scores.add(logits[None, None], true[None, None])  # slice 1: TP 2, FP 1, FN 1
    # slice 2: empty prediction of an empty mask (perfect), all 8 pixels true negatives
    scores.add(torch.full((1, 1, 2, 4), -1.0), torch.zeros(1, 1, 2, 4, dtype=torch.bool))
    r = scores.result()
    assert set(r) == {"accuracy", "dice", "jaccard", "f1", "soft_dice"}
    assert r["accuracy"] == pytest.approx(14 / 16)
    assert r["jaccard"] == pytest.approx(2 / 4)
    assert r["f1"] == pytest.approx(4 / 6)
    assert r["dice"] == pytest.approx((4 / 6 + 1.0) / 2)  # mean of per-slice Dice
    p1, p0 = torch.sigmoid(torch.tensor(3.0)).item(), torch.sigmoid(torch.tensor(-3.0)).item()
    pm = torch.sigmoid(torch.tensor(-1.0)).item()
    num = 2 * (2 * p1 + p0)  # true pixels: two predicted (p1), one missed (p0)
    den = (3 * p1 + 5 * p0) + 8 * pm + 3
    assert r["soft_dice"] == pytest.approx(num / den)
    # the decision is σ(z) > 0.5, i.e. z > 0: a zero logit is background
    edge = SegmentationScores()
    edge.add(torch.zeros(1, 1, 1, 2), torch.tensor([[[[True, False]]]]))
    assert edge.result()["jaccard"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        edge.add(torch.zeros(1, 1, 1, 3), torch.zeros(1, 1, 1, 2, dtype=torch.bool))


# --- model --------------------------------------------------------------------------------


@pytest.mark.parametrize("up", ["transpose", "nearest", "bilinear"])
def test_unet_shapes_and_registry(up):
    assert "unet" in list_models()
    net = create_model("unet", width=4, depth=3, up=up).eval()
    y = net(torch.rand(2, 1, 32, 48))
    assert y.shape == (2, 1, 32, 48)
    assert net.size_multiple == 8
    with pytest.raises(ValueError, match="up must be"):
        create_model("unet", up="pixelshuffle")


# --- conversion ---------------------------------------------------------------------------


@pytest.mark.parametrize("up", ["transpose", "bilinear"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_random_unet_converts_and_error_shrinks_with_T(up, per_channel):
    torch.manual_seed(0)
    net = randomize_bn(create_model("unet", width=4, depth=2, up=up), seed=1)
    calib = torch.rand(32, 1, 16, 16)
    snn = convert(net, calib, percentile=100.0, per_channel=per_channel, batch_size=8)
    kinds = {type(m).__name__ for m in snn.graph_module.modules()}
    assert {"IFNeuron", "SpikingMaxPool2d"} <= kinds
    assert "BatchNorm2d" not in kinds
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        ann = net(x)
    means = snn_mean_logits(snn, x, [16, 256])
    err = [float((m - ann).abs().mean() / ann.abs().mean()) for m in means]
    assert err[1] < 0.35 * err[0], err
    assert err[1] < 0.03, err


@pytest.mark.parametrize("opts", [dict(per_channel=True, max_spikes=3), dict(per_channel=False, max_spikes=1)])
def test_stream_chunks_equal_forward_and_channels_last_matches(opts):
    torch.manual_seed(0)
    net = randomize_bn(create_model("unet", width=4, depth=2), seed=2)
    calib = torch.rand(16, 1, 16, 16)
    snn = convert(net, calib, percentile=99.9, **opts)
    snn_cl = convert(net, calib, percentile=99.9, channels_last=True, **opts)
    x = torch.rand(2, 1, 16, 24)
    whole = snn(x, 12)
    chunks = list(snn.stream(x, 12, chunk=5))
    assert [c.shape[0] for c in chunks] == [5, 5, 2]
    torch.testing.assert_close(torch.cat(chunks), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(snn_cl(x, 12), whole, atol=1e-4, rtol=1e-4)
    means = snn_mean_logits(snn, x, [3, 12, 1])
    cum = whole.cumsum(0)
    torch.testing.assert_close(means[0], cum[2] / 3)
    torch.testing.assert_close(means[1], cum[11] / 12)
    torch.testing.assert_close(means[2], cum[0])


def _native_available() -> bool:
    from spikeforge import _native

    return _native.library() is not None


needs_native = pytest.mark.skipif(not _native_available(), reason="no C compiler")


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kernel, N, H, W", [(2, 2, 9, 13), (3, 2, 12, 10), (2, 1, 6, 8)])
def test_native_lipool_equals_torch_path(dtype, channels_last, kernel, N, H, W, monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = (torch.randint(0, 4, (10, N, 5, H, W), generator=g).float() * 0.37).to(dtype)  # θ·S, S ≤ Γ=3
    if channels_last:  # as a SpikingModel passes them: [K·N, C, H, W] channels-last, viewed as [K, N, ...]
        x = x.reshape(10 * N, 5, H, W).contiguous(memory_format=torch.channels_last).view(10, N, 5, H, W)

    def run() -> torch.Tensor:
        pool = SpikingMaxPool2d(kernel)
        return torch.cat([pool(x[:4]), pool(x[4:7]), pool(x[7:])])  # state carried over chunks

    assert SpikingMaxPool2d(kernel)._lipool_native(x[:2]) is not None
    native = run()
    monkeypatch.setenv("SPIKEFORGE_NATIVE", "0")
    assert SpikingMaxPool2d(kernel)._lipool_native(x[:2]) is None
    reference = run()
    assert native.dtype == dtype and native.shape == (10, N, 5, H // kernel, W // kernel)
    assert torch.equal(native, reference)
    h, w = H // kernel * kernel, W // kernel * kernel
    exact = lipool_reference(x.float()[..., :h, :w], kernel)
    torch.testing.assert_close(native.float(), exact, atol=1e-5 if dtype == torch.float32 else 1e-2, rtol=0)


@needs_native
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("max_spikes", [1, 3])
@pytest.mark.parametrize("constant", [False, True])
def test_bf16_if_neuron_native_equals_torch_path(reset, max_spikes, constant, monkeypatch):
    from spikeforge.functional.neuron import if_seq

    g = torch.Generator().manual_seed(2)
    T = 12
    x = torch.rand(3, 7, 11, generator=g) if constant else torch.rand(T, 3, 7, 11, generator=g)
    x = (x * max_spikes - 0.2).bfloat16()
    kw = dict(threshold=0.7, v_init=0.5, reset=reset, max_spikes=max_spikes, scale_output=True,
              steps=T if constant else None)
    s_native, v_native = if_seq(x, **kw)
    monkeypatch.setenv("SPIKEFORGE_NATIVE", "0")
    s_torch, v_torch = if_seq(x, **kw)
    assert s_native.dtype == torch.bfloat16 and v_native.dtype == v_torch.dtype == torch.float32
    assert s_native.float().sum() > 0
    assert torch.equal(s_native, s_torch) and torch.equal(v_native, v_torch)


def test_bf16_snn_is_close_to_fp32_and_native_equals_torch_path(monkeypatch):
    torch.manual_seed(0)
    net = randomize_bn(create_model("unet", width=4, depth=2), seed=3)
    snn = convert(net, torch.rand(16, 1, 16, 16), percentile=99.9, max_spikes=3, channels_last=True)
    x = torch.rand(2, 1, 16, 24)
    fp32 = snn_mean_logits(snn, x, [8, 32])
    seen: dict[str, torch.dtype] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: None if seen.setdefault(name, a[0].dtype) else None)
             for name, m in snn.neurons().items()]
    bf16 = snn_mean_logits(snn, x, [8, 32], bf16=True)
    for h in hooks:
        h.remove()
    # the first neurons integrate the analog input's float32 current; later ones bfloat16 currents
    first, *later = snn.neurons()
    assert seen[first] == torch.float32 and all(seen[n] == torch.bfloat16 for n in later)
    with analog_input_float32(snn) as names:
        assert names and all(isinstance(snn.graph_module.get_submodule(n), nn.Conv2d) for n in names)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert float((bf16 - fp32).abs().mean() / fp32.abs().mean()) < 0.05
    if _native_available():
        monkeypatch.setenv("SPIKEFORGE_NATIVE", "0")
        assert torch.equal(snn_mean_logits(snn, x, [8, 32]), fp32)
        assert torch.equal(snn_mean_logits(snn, x, [8, 32], bf16=True), bf16)


def test_chunk_size_scales_with_the_input_size():
    net = randomize_bn(create_model("unet", width=4, depth=2))
    snn = convert(net, torch.rand(8, 1, 16, 16), mem_budget_mb=1)
    small = snn.chunk_size(1000, 1, 16 * 16)
    large = snn.chunk_size(1000, 1, 64 * 64)
    assert small > large >= 1
    assert small == pytest.approx(16 * large, rel=0.1) or large == 1


def test_power_of_two_steps():
    assert power_of_two_steps(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert power_of_two_steps(20) == [1, 2, 4, 8, 16, 20]
    assert power_of_two_steps(1) == [1]


# --- training -------------------------------------------------------------------------------


def tiny_data() -> SegmentationSet:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 1, 32, 32, dtype=torch.uint8)
    masks[:, :, 8:20, 10:26] = 1
    images = (masks * 150 + torch.randint(0, 60, (2, 1, 32, 32), generator=g)).to(torch.uint8)
    return SegmentationSet(images, masks, "tiny")


def test_bce_dice_loss():
    target = torch.tensor([[[[1.0, 0.0]]]])
    good = bce_dice_loss(torch.tensor([[[[8.0, -8.0]]]]), target)
    bad = bce_dice_loss(torch.tensor([[[[-8.0, 8.0]]]]), target)
    assert float(good) < 0.01 < 1.0 < float(bad)


def test_training_resumes_to_the_same_weights(tmp_path):
    sampler = PatchSampler(tiny_data(), 16, seed=1)
    kw = dict(steps=6, batch_size=2, lr=1e-2, progress=False, log_every=1, save_every=2)

    torch.manual_seed(0)
    ref = create_model("unet", width=2, depth=2)
    ref_hist, resumed = train_segmenter(ref, sampler, **kw)
    assert not resumed and len(ref_hist) == 6

    class Stop(Exception):
        pass

    def stop_at_3(row):
        if row["step"] == 3:
            raise Stop

    torch.manual_seed(0)
    model = create_model("unet", width=2, depth=2)
    ckpt = tmp_path / "unet.pt"
    with pytest.raises(Stop):
        train_segmenter(model, sampler, checkpoint=ckpt, config={"a": 1}, on_log=stop_at_3, **kw)
    torch.manual_seed(0)
    again = create_model("unet", width=2, depth=2)
    hist, resumed = train_segmenter(again, sampler, checkpoint=ckpt, config={"a": 1}, **kw)
    assert resumed and [h["step"] for h in hist] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(ref.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # finished: loaded without training; another config trains again
    done = create_model("unet", width=2, depth=2)
    _, resumed = train_segmenter(done, sampler, checkpoint=ckpt, config={"a": 1}, **kw)
    assert resumed
    torch.testing.assert_close(done.state_dict()["head.weight"], again.state_dict()["head.weight"])


# --- the experiment ---------------------------------------------------------------------------


def test_quick_experiment_writes_the_contract(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["run", "unet-convert", "--quick", "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    keys = {"accuracy", "dice", "jaccard", "f1"}
    assert keys <= set(m["ann"])
    assert list(m["snn"]) == [str(t) for t in power_of_two_steps(m["config"]["T"])]
    for t, s in m["snn"].items():
        assert keys <= set(s)
        assert all(0.0 <= s[k] <= 1.0 and math.isfinite(s[k]) for k in keys)
    for name in ("report.md", "dice_vs_T.png", "unet.pt", *m["example_images"].values()):
        assert (out / name).is_file(), name
    assert m["example_images"]
    report = (out / "report.md").read_text()
    assert "| SNN | 32 |" in report
    assert not m["checkpoint_reused"]
    # the SNN runs on every test slice at the headline T, the curve on the curve slices
    assert m["eval_split"] == "test" and m["snn_headline_slices"] == m["eval_slices"] == [0, 1]
    assert m["headline_T"] == 32 and m["curve_slices"] == m["snn_slices"] == [0]
    assert "SNN at T=32 on 2 test slices (all)" in report
    # a rerun loads the cached checkpoint instead of training again
    assert cli_main(["run", "unet-convert", "--quick", "--out", str(out), "--no-progress", "--T", "4",
                     "--curve-T", "4"]) == 0
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["checkpoint_reused"] and list(m2["snn"]) == ["1", "2", "4"]
    # the few-step method options reach convert() and are named in the report (checkpoint reused)
    assert cli_main(["run", "unet-convert", "--quick", "--out", str(out), "--no-progress", "--T", "4",
                     "--curve-T", "4", "--threshold", "mse", "--correction", "potential", "--target-T", "4"]) == 0
    m3 = json.loads((out / "metrics.json").read_text())
    assert m3["checkpoint_reused"]
    conv = m3["conversion"]
    assert (conv["threshold"], conv["correction"], conv["target_T"], conv["max_spikes"]) == ("mse", "potential", 4, 3)
    assert "MSE thresholds for T=4; potential correction for T=4" in (out / "report.md").read_text()


def test_unet_method_options_fail_before_work(tmp_path):
    out = tmp_path / "bad"
    assert cli_main(["run", "unet-convert", "--quick", "--out", str(out), "--no-progress", "--target-T", "8"]) == 2
    assert not (out / "unet.pt").exists()


def test_qcfs_unet_trains_and_converts_with_its_ceilings(tmp_path):
    from spikeforge.layers import QCFS

    net = create_model("unet", width=4, depth=2, act="qcfs", levels=4)
    qs = [m for m in net.modules() if isinstance(m, QCFS)]
    assert len(qs) == 10 and not any(isinstance(m, torch.nn.ReLU) for m in net.modules())
    out = tmp_path / "q"
    assert cli_main(["run", "unet-convert", "--quick", "--out", str(out), "--no-progress", "--T", "4",
                     "--curve-T", "4", "--activation", "qcfs", "--levels", "4", "--max-spikes", "3",
                     "--split-threshold"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["activation"] == "qcfs" and m["config"]["levels"] == 4
    assert m["conversion"]["max_spikes"] == 3 and m["conversion"]["split_threshold"] is True
    assert "QCFS-trained ANN (L=4)" in (out / "report.md").read_text()
    # the checkpoint holds one learnt ceiling per activation
    payload = torch.load(out / "unet.pt", weights_only=True)
    lams = sorted(float(v.abs()) for k, v in payload["model"].items() if k.endswith(".threshold"))
    assert len(lams) == 6 * 2 + 2  # depth 3 (quick): 3 down + bottleneck + 3 up blocks of 2
    assert all(0.0 <= s["jaccard"] <= 1.0 for s in m["snn"].values())
