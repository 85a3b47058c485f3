"""Segmentation data: Lucchi layouts, synthetic EM, patch sampling, tiled inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikeforge.data import DataError
from spikeforge.data.errors import DataFileNotFoundError
from spikeforge.data.lucchi import load_lucchi, read_tiff_stack
from spikeforge.data.segmentation import (
    PatchSampler,
    SegmentationSet,
    load_segmentation,
    tile_windows,
    tiled_predict,
)
from spikeforge.data.synthetic_em import synthetic_em_slice, synthetic_em_stack


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.delenv("SPIKEFORGE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def fake_stack(n: int = 3, h: int = 24, w: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    masks = (rng.random((n, h, w)) < 0.2).astype(np.uint8)
    return images, masks


def write_tiff(path: Path, pages: np.ndarray) -> None:
    frames = [Image.fromarray(p) for p in pages]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def write_release(root: Path, split: str, images: np.ndarray, masks: np.ndarray) -> None:
    names = {"train": ("training.tif", "training_groundtruth.tif"), "test": ("testing.tif", "testing_groundtruth.tif")}
    root.mkdir(parents=True, exist_ok=True)
    write_tiff(root / names[split][0], images)
    write_tiff(root / names[split][1], masks * 255)


def write_slices(root: Path, split: str, images: np.ndarray, masks: np.ndarray, scale: int = 255) -> None:
    for sub in ("images", "masks"):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    for i, (img, msk) in enumerate(zip(images, masks)):
        Image.fromarray(img).save(root / split / "images" / f"{i:04d}.png")
        Image.fromarray((msk * scale).astype(np.uint8)).save(root / split / "masks" / f"{i:04d}.png")


# --- Lucchi: both layouts ---------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_tiff_release_round_trip(tmp_path, split):
    images, masks = fake_stack(4)
    write_release(tmp_path, split, images, masks)
    data = load_lucchi(split, tmp_path)
    assert data.images.shape == (4, 1, 24, 32) and data.name == f"lucchi/{split}"
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert np.array_equal(data.masks[:, 0].numpy(), masks)


@pytest.mark.parametrize("scale", [255, 1])
def test_slice_folders_round_trip(tmp_path, scale):
    images, masks = fake_stack(3, seed=1)
    write_slices(tmp_path / "lucchi", "test", images, masks, scale=scale)
    data = load_segmentation("lucchi", "test", data_dir=tmp_path)  # found in the lucchi/ subfolder
    assert np.array_equal(data.images[:, 0].numpy(), images)
    assert np.array_equal(data.masks[:, 0].numpy(), masks)
    assert len(load_segmentation("lucchi", "test", data_dir=tmp_path, n_slices=2)) == 2


def test_environment_variable_is_searched(tmp_path, monkeypatch):
    images, masks = fake_stack(2)
    write_release(tmp_path / "somewhere", "train", images, masks)
    monkeypatch.setenv("SPIKEFORGE_DATA", str(tmp_path / "somewhere"))
    assert len(load_lucchi("train")) == 2


def test_missing_data_lists_searched_directories(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="training.tif") as err:
        load_lucchi("train", tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(err.value)


def test_page_count_mismatch(tmp_path):
    images, masks = fake_stack(3)
    write_release(tmp_path, "train", images, masks)
    write_tiff(tmp_path / "training_groundtruth.tif", masks[:2] * 255)
    with pytest.raises(DataError, match=r"training.tif has 3 slices but .*training_groundtruth.tif has 2"):
        load_lucchi("train", tmp_path)


def test_size_mismatch_between_images_and_masks(tmp_path):
    images, masks = fake_stack(2)
    write_release(tmp_path, "train", images, masks)
    write_tiff(tmp_path / "training_groundtruth.tif", masks[:, :20] * 255)
    with pytest.raises(DataError, match="training_groundtruth.tif: masks are 32×20"):
        load_lucchi("train", tmp_path)


def test_pages_of_different_size(tmp_path):
    frames = [Image.fromarray(np.zeros((10, 12), np.uint8)), Image.fromarray(np.zeros((8, 12), np.uint8))]
    frames[0].save(tmp_path / "training.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"training.tif \(page 1\): size 12×8 differs from page 0 \(12×10\)"):
        read_tiff_stack(tmp_path / "training.tif")


def test_bad_mask_values_name_file_and_page(tmp_path):
    images, masks = fake_stack(3)
    bad = masks * 255
    bad[1, 0, 0] = 128
    write_release(tmp_path, "train", images, masks)
    write_tiff(tmp_path / "training_groundtruth.tif", bad)
    with pytest.raises(DataError, match=r"training_groundtruth.tif \(page 1\): mask values must be 0/255 or 0/1, found 0, 128, 255"):
        load_lucchi("train", tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupt_and_truncated_tiff(tmp_path):
    images, masks = fake_stack(2)
    write_release(tmp_path, "train", images, masks)
    (tmp_path / "training.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(DataError, match=r"training.tif: cannot read TIFF"):
        load_lucchi("train", tmp_path)
    write_release(tmp_path, "train", images, masks)
    raw = (tmp_path / "training.tif").read_bytes()
    (tmp_path / "training.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="training.tif"):
        load_lucchi("train", tmp_path)


def test_missing_ground_truth_file(tmp_path):
    images, masks = fake_stack(2)
    write_release(tmp_path, "test", images, masks)
    (tmp_path / "testing_groundtruth.tif").unlink()
    with pytest.raises(DataFileNotFoundError, match="testing_groundtruth.tif: file not found"):
        load_lucchi("test", tmp_path)


def test_unpaired_slice_files(tmp_path):
    images, masks = fake_stack(3)
    write_slices(tmp_path, "train", images, masks)
    (tmp_path / "train" / "masks" / "0002.png").unlink()
    with pytest.raises(DataError, match=r"no mask for 0002.png"):
        load_lucchi("train", tmp_path)


def test_slice_size_mismatch_and_color(tmp_path):
    images, masks = fake_stack(3)
    write_slices(tmp_path, "train", images, masks)
    Image.fromarray(masks[1, :10] * 255).save(tmp_path / "train" / "masks" / "0001.png")
    with pytest.raises(DataError, match=r"0001.png: mask is 32×10 but its image 0001.png is 32×24"):
        load_lucchi("train", tmp_path)
    write_slices(tmp_path, "train", images, masks)
    Image.fromarray(images[2, :12]).save(tmp_path / "train" / "images" / "0002.png")
    Image.fromarray(masks[2, :12] * 255).save(tmp_path / "train" / "masks" / "0002.png")
    with pytest.raises(DataError, match=r"0002.png: size 32×12 differs from .*0000.png \(32×24\)"):
        load_lucchi("train", tmp_path)
    write_slices(tmp_path, "train", images, masks)
    rgb = np.stack([images[0], images[0] // 2, images[0]], -1)
    Image.fromarray(rgb).save(tmp_path / "train" / "images" / "0000.png")
    with pytest.raises(DataError, match=r"0000.png: image is in color"):
        load_lucchi("train", tmp_path)


def test_gray_rgb_and_16_bit_images_are_accepted(tmp_path):
    images, masks = fake_stack(2)
    write_slices(tmp_path, "train", images, masks)
    Image.fromarray(np.stack([images[0]] * 3, -1)).save(tmp_path / "train" / "images" / "0000.png")
    Image.fromarray(images[1].astype(np.uint16) * 257).save(tmp_path / "train" / "images" / "0001.png")
    data = load_lucchi("train", tmp_path)
    assert np.array_equal(data.images[:, 0].numpy(), images)


def test_mode_1_tiff_masks(tmp_path):
    _, masks = fake_stack(2)
    frames = [Image.fromarray(m.astype(bool)) for m in masks]
    frames[0].save(tmp_path / "m.tif", save_all=True, append_images=frames[1:])
    assert np.array_equal(read_tiff_stack(tmp_path / "m.tif", "mask"), masks)


# --- synthetic EM ---------------------------------------------------------------------------


def test_synthetic_slice_is_deterministic_and_realistic():
    img, mask = synthetic_em_slice(0, seed=3)
    assert img.shape == (768, 1024) and img.dtype == np.uint8 and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert 0.04 <= mask.mean() <= 0.12
    img2, mask2 = synthetic_em_slice(0, seed=3)
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    other, _ = synthetic_em_slice(0, seed=4)
    assert not np.array_equal(img, other)
    test_img, _ = synthetic_em_slice(0, seed=3, split="test")
    assert not np.array_equal(img, test_img)
    # mitochondria are darker than the cytoplasm on average
    assert img[mask == 1].mean() < img[mask == 0].mean() - 15


def test_synthetic_stack_subsets_agree_and_dataset_name():
    a_img, a_mask = synthetic_em_stack("train", 3, seed=1, height=64, width=96)
    b_img, _ = synthetic_em_stack("train", 2, seed=1, height=64, width=96)
    assert np.array_equal(a_img[:2], b_img)
    data = load_segmentation("synthetic-em", "test", n_slices=2, slice_shape=(64, 96), seed=1)
    assert data.images.shape == (2, 1, 64, 96) and data.name == "synthetic-em/test"
    with pytest.raises(DataError, match="unknown segmentation dataset"):
        load_segmentation("nope", "train")
    with pytest.raises(DataError, match="at least 32"):
        synthetic_em_slice(0, height=16, width=64)


# --- patches and tiles -----------------------------------------------------------------------


def test_segmentation_set_validates():
    imgs = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(DataError, match="do not match"):
        SegmentationSet(imgs, torch.zeros(2, 1, 8, 7, dtype=torch.uint8), "x")
    with pytest.raises(DataError, match="0 or 1"):
        SegmentationSet(imgs, torch.full((2, 1, 8, 8), 2, dtype=torch.uint8), "x")


def test_patch_sampler_is_deterministic_and_keeps_masks_aligned():
    masks = (torch.rand(3, 1, 40, 50, generator=torch.Generator().manual_seed(0)) < 0.3).to(torch.uint8)
    data = SegmentationSet(masks * 255, masks.clone(), "aligned")
    sampler = PatchSampler(data, 16, seed=5, jitter=0.0)
    x, y = sampler.batch(7, 6)
    assert x.shape == y.shape == (6, 1, 16, 16)
    assert torch.equal(x, y)  # image = mask, so every flip/rotation must match
    x2, _ = sampler.batch(7, 6)
    assert torch.equal(x, x2)
    x3, _ = sampler.batch(8, 6)
    assert not torch.equal(x, x3)
    with pytest.raises(ValueError, match="larger than the slices"):
        PatchSampler(data, 64)


@pytest.mark.parametrize("length, tile, overlap, multiple", [(100, 30, 5, 1), (96, 40, 8, 8), (64, 0, 8, 4), (64, 64, 8, 4)])
def test_tile_windows_cover_the_axis(length, tile, overlap, multiple):
    wins = tile_windows(length, tile, overlap, multiple)
    covered = []
    for w0, w1, c0, c1 in wins:
        assert 0 <= w0 <= c0 < c1 <= w1 <= length
        assert (w1 - w0) % multiple == 0
        assert c0 - w0 >= min(overlap, c0) and w1 - c1 >= min(overlap, length - c1)
        covered += list(range(c0, c1))
    assert covered == list(range(length))


def test_tiled_prediction_equals_whole_image():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
        torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1),
    ).eval()
    x = torch.rand(2, 1, 50, 70)
    with torch.no_grad():
        whole = net(x)
    tiled = tiled_predict(net, x, tile=20, overlap=4, multiple=1)  # receptive radius 3 < overlap
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)
    # leading dimensions (e.g. time steps) and padding to a multiple
    stacked = tiled_predict(lambda w: torch.stack([w, 2 * w]), x, tile=24, overlap=4, multiple=8)
    assert stacked.shape == (2, 2, 1, 50, 70)
    torch.testing.assert_close(stacked[1], 2 * x)
