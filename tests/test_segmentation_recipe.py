"""Issue 13: the real-EM recipe's pieces (augmentation, LR schedules, bf16 training, the
validation split), the SNN on every evaluated slice, and --save-masks.

Everything here writes its own tiny files; nothing reads the shared Lucchi slices.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikeforge.cli import main as cli_main
from spikeforge.data.segmentation import PatchSampler, SegmentationSet
from spikeforge.errors import ConfigError
from spikeforge.experiments.unet_convert import spread
from spikeforge.models import create_model
from spikeforge.precision import native_bf16
from spikeforge.train.segmentation import lr_factor, train_segmenter


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    monkeypatch.delenv("SPIKEFORGE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- augmentation -------------------------------------------------------------------------


def test_augmented_patches_are_seeded_and_keep_labels_aligned():
    g = torch.Generator().manual_seed(3)
    masks = (torch.rand(4, 1, 48, 64, generator=g) < 0.3).to(torch.uint8)
    images = masks * 200 + 20  # foreground bright: the label is recoverable from the image
    data = SegmentationSet(images, masks, "aligned")
    sampler = PatchSampler(data, 24, seed=11, jitter=0.2)
    x, y = sampler.batch(5, 16)
    x_again, y_again = PatchSampler(data, 24, seed=11, jitter=0.2).batch(5, 16)
    assert torch.equal(x, x_again) and torch.equal(y, y_again)  # a pure function of (seed, step)
    assert not torch.equal(x, PatchSampler(data, 24, seed=12, jitter=0.2).batch(5, 16)[0])
    # jitter: one gain and offset per patch (never a constant image), labels untouched
    for b in range(16):
        lo, hi = x[b][y[b] == 0], x[b][y[b] == 1]
        if len(lo) and len(hi):
            assert float(lo.max()) < float(hi.min())  # flips/rotations moved image and label together
            assert torch.allclose(lo, lo[0]) and torch.allclose(hi, hi[0])
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    gains = {round(float(x[b].max() - x[b].min()), 4) for b in range(16) if y[b].any() and not y[b].all()}
    assert len(gains) > 1  # contrast differs between patches
    plain, _ = PatchSampler(data, 24, seed=11, augment=False).batch(5, 16)
    assert torch.equal(plain, plain.clamp(0, 1)) and set(torch.unique(plain * 255).round().tolist()) <= {20.0, 220.0}


def test_augmentation_covers_all_eight_flips_and_rotations():
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    data = SegmentationSet(img, torch.zeros_like(img), "one")
    sampler = PatchSampler(data, 4, seed=0, jitter=0.0)
    seen = {tuple((sampler.batch(s, 1)[0] * 255).round().flatten().tolist()) for s in range(200)}
    assert len(seen) == 8


# --- schedules and bf16 training --------------------------------------------------------------


def test_lr_schedules():
    steps = 100
    for sched in ("cosine", "linear", "constant"):
        f = [lr_factor(sched, i, steps, 0.1) for i in range(steps)]
        assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
        assert all(0 <= v <= 1 for v in f)
    cos = [lr_factor("cosine", i, steps, 0.1) for i in range(steps)]
    lin = [lr_factor("linear", i, steps, 0.1) for i in range(steps)]
    assert cos[-1] == pytest.approx(0.0, abs=1e-12) and lin[-1] == pytest.approx(0.0)
    assert cos[10 + 45] == pytest.approx(0.5 * (1 + math.cos(math.pi * 46 / 90)))
    assert all(a >= b for a, b in zip(cos[9:], cos[10:])) and all(a >= b for a, b in zip(lin[9:], lin[10:]))
    assert lr_factor("constant", 99, steps, 0.0) == 1.0 and lr_factor("cosine", 0, steps, 0.0) < 1.0


def tiny_set() -> SegmentationSet:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 1, 32, 32, dtype=torch.uint8)
    masks[:, :, 8:20, 10:26] = 1
    images = (masks * 150 + torch.randint(0, 60, (2, 1, 32, 32), generator=g)).to(torch.uint8)
    return SegmentationSet(images, masks, "tiny")


@pytest.mark.parametrize("schedule, bf16", [("cosine", True), ("linear", False), ("constant", True)])
def test_training_with_schedules_and_bf16(schedule, bf16, tmp_path):
    sampler = PatchSampler(tiny_set(), 16, seed=1)
    torch.manual_seed(0)
    model = create_model("unet", width=2, depth=2)
    hist, _ = train_segmenter(model, sampler, steps=8, batch_size=2, lr=1e-2, progress=False, log_every=1,
                              schedule=schedule, warmup=0.25, bf16=bf16, channels_last=True,
                              checkpoint=tmp_path / "u.pt", config={"s": schedule})
    lrs = [h["lr"] for h in hist]
    assert len(hist) == 8 and all(math.isfinite(h["loss"]) for h in hist)
    assert lrs[0] == pytest.approx(1e-2 * lr_factor(schedule, 1, 8, 0.25))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ConfigError, match="schedule"):
        train_segmenter(model, sampler, steps=2, schedule="step", progress=False)
    with pytest.raises(ConfigError, match="warmup"):
        train_segmenter(model, sampler, steps=2, schedule="onecycle", warmup=0.0, progress=False)


# --- the experiment: validation split, SNN on every slice, saved masks --------------------------


def test_spread():
    assert spread(20, 3) == [0, 10, 19] and spread(5, 1) == [0] and spread(3, 5) == [0, 1, 2]


def write_lucchi(root: Path, n: int, h: int = 64, w: int = 80) -> None:
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        mask = np.zeros((h, w), dtype=np.uint8)
        y, x = rng.integers(8, h - 24), rng.integers(8, w - 24)
        mask[y : y + 16, x : x + 16] = 1
        img = (mask * 140 + rng.integers(40, 100, size=(h, w))).astype(np.uint8)
        Image.fromarray(img).save(root / "train" / "images" / f"{i:04d}.png")
        Image.fromarray(mask * 255).save(root / "train" / "masks" / f"{i:04d}.png")


def test_lucchi_validation_split_snn_on_every_slice_and_saved_masks(tmp_path):
    data = tmp_path / "lucchi"
    write_lucchi(data, 5)
    out = tmp_path / "run"
    argv = ["run", "unet-convert", "--dataset", "lucchi", "--data-dir", str(data), "--val-slices", "3",
            "--width", "2", "--depth", "2", "--steps", "3", "--batch-size", "2", "--patch", "32", "--T", "4",
            "--curve-T", "8", "--curve-slices", "2", "--tile", "0", "--calib-batches", "1", "--examples", "1",
            "--threads", "1", "--save-masks", "--no-progress", "--out", str(out)]
    assert cli_main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["eval_split"] == "val" and m["n_train"] == 2 and m["n_test"] == 3
    assert m["val_slices"] == m["eval_slices"] == [2, 3, 4]  # the last three training slices, in file order
    assert m["curve_slices"] == m["snn_slices"] == [2, 4] and m["snn_headline_slices"] == [2, 3, 4]
    assert m["headline_T"] == 4 and list(m["snn"]) == ["1", "2", "4", "8"]
    keys = {"accuracy", "dice", "jaccard", "f1", "soft_dice"}
    assert keys <= set(m["snn_headline"]) and keys <= set(m["ann_headline"]) and keys <= set(m["ann"])
    assert m["ann_headline"] == m["ann_full_test"]  # both over all three validation slices
    # the lucchi recipe's training options, overridden where given
    c = m["config"]
    # the recipe trains and runs the SNN in bf16 where the CPU computes it natively (else float32)
    assert c["schedule"] == "cosine" and c["bf16"] is native_bf16() and c["augment"] is True and c["width"] == 2
    assert c["calib_patch"] == 32  # 128 does not fit these 64×80 slices: the training patch is used
    # and its conversion-aware activations: QCFS L=8 converted with Γ=3 at threshold λ/3
    assert (c["activation"], c["levels"], c["max_spikes"], c["split_threshold"], c["snn_bf16"]) == (
        "qcfs", 8, 3, True, native_bf16())
    assert m["conversion"]["split_threshold"] is True and "QCFS activations (L=8)" in (out / "report.md").read_text()
    for kind in ("ann", "snn_T4"):
        files = sorted(p.name for p in (out / "masks" / kind).iterdir())
        assert files == ["0002.png", "0003.png", "0004.png"], kind
        arr = np.asarray(Image.open(out / "masks" / kind / "0003.png"))
        assert arr.shape == (64, 80) and arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= {0, 255}
    assert m["saved_masks"] == {"ann": "masks/ann", "snn": "masks/snn_T4", "count": 3, "ann_count": 3}
    assert (out / "slice_0002.png").is_file() and m["example_images"] == {"2": "slice_0002.png"}
    report = (out / "report.md").read_text()
    assert "training slices 2–4" in report and "SNN at T=4 on 3 validation slices (all)" in report
    assert "| SNN | 8 |" in report and "seed 003 Dice" in report
    # every training slice held out: refused with a one-line error
    assert cli_main([*argv[:-2], "--val-slices", "5", "--out", str(tmp_path / "bad")]) == 2


def test_lucchi_network_keeps_its_precision_on_another_machine(tmp_path, monkeypatch):
    """A unet.pt trained on a machine of the other kind (native bf16 or not) is reused in its
    own precision, not retrained over; --bf16/--no-bf16 still decides when given."""
    from spikeforge.experiments import unet_convert

    data = tmp_path / "lucchi"
    write_lucchi(data, 4)
    out = tmp_path / "run"
    argv = ["run", "unet-convert", "--dataset", "lucchi", "--data-dir", str(data), "--val-slices", "2",
            "--width", "2", "--depth", "2", "--steps", "2", "--batch-size", "2", "--patch", "32", "--T", "2",
            "--curve-T", "2", "--curve-slices", "1", "--tile", "0", "--calib-batches", "1", "--examples", "0",
            "--threads", "1", "--no-progress", "--out", str(out)]
    assert cli_main(argv + ["--bf16"]) == 0
    first = (out / "unet.pt").read_bytes()
    monkeypatch.setattr(unet_convert, "recipe_bf16", lambda want, device=None, option="": (False, "test: no bf16"))
    assert cli_main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoint_reused"] is True and m["config"]["bf16"] is True
    assert "trained in" in m["adjusted"]["bf16"] and (out / "unet.pt").read_bytes() == first
    assert cli_main(argv + ["--no-bf16"]) == 0  # insisting on float32: other options, trained again
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoint_reused"] is False and m["config"]["bf16"] is False and "bf16" not in m["adjusted"]

