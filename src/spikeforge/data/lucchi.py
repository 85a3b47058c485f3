"""The Lucchi et al. mitochondria EM data set (EPFL, CA1 hippocampus, 5 nm voxels).

Two layouts are read, in a directory given with ``--data-dir`` (``data_dir=``), the
environment variable ``SPIKEFORGE_DATA`` or the user cache
(``~/.cache/spikeforge``), directly or in a ``lucchi/`` (``Lucchi/``) subfolder:

1. the original release, four multi-page TIFF files::

       training.tif  training_groundtruth.tif  testing.tif  testing_groundtruth.tif

   (165 slices of 768×1024 in each stack);
2. one PNG per slice::

       train/images/0000.png  train/masks/0000.png  ...  test/images/...  test/masks/...

Images must be 8-bit grayscale (16-bit is rescaled; RGB only when R = G = B); masks
must hold only 0/255 or only 0/1 values. Pairing (same slice count or file names),
sizes and mask values are checked, and every problem raises a
:class:`~spikeforge.data.errors.DataError` naming the file and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from spikeforge.data.datasets import user_data_dirs
from spikeforge.data.errors import DataError, DataFileNotFoundError
from spikeforge.data.segmentation import SegmentationSet

__all__ = [
    "LUCCHI_TIFFS",
    "find_lucchi",
    "load_lucchi",
    "read_image_file",
    "read_tiff_stack",
]

PathArg = Union[str, os.PathLike]

#: File names of the original release: split → (images, ground truth).
LUCCHI_TIFFS: dict[str, tuple[str, str]] = {
    "train": ("training.tif", "training_groundtruth.tif"),
    "test": ("testing.tif", "testing_groundtruth.tif"),
}
_SLICE_SUFFIXES = (".png", ".tif", ".tiff")
_SOURCE_URL = "https://www.epfl.ch/labs/cvlab/data/data-em/"


def _pil():
    try:
        from PIL import Image, ImageSequence
    except ImportError as exc:  # pragma: no cover - Pillow is a dependency
        raise DataError("reading Lucchi files needs Pillow: pip install pillow") from exc
    return Image, ImageSequence


def _to_array(frame, source: str, kind: str) -> np.ndarray:
    """One PIL frame as a 2-D array: uint8 for images; raw values for masks."""
    mode = frame.mode
    if mode == "1":
        return np.asarray(frame, dtype=np.uint8)  # 0/1
    if mode in ("L", "P") or mode.startswith("I;16") or mode == "I":
        if mode == "P":
            frame = frame.convert("L")
        arr = np.asarray(frame)
    elif mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(frame)
        gray = arr[..., 0]
        colors = arr[..., :3] if mode != "LA" else arr[..., :1]
        if not (colors == gray[..., None]).all():
            raise DataError(f"{source}: {kind} is in color ({mode}); expected grayscale")
        arr = gray
    else:
        raise DataError(f"{source}: unsupported image mode {mode!r} for a {kind}; expected 8-bit grayscale")
    if arr.dtype != np.uint8 and kind == "image":
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(f"{source}: image values outside 0..65535")
        arr = (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
    return arr


def _mask_values(arr: np.ndarray, source: str) -> np.ndarray:
    """Masks with only 0/255 or only 0/1 values as uint8 0/1; anything else fails."""
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 1}:
        return arr.astype(np.uint8)
    if set(values.tolist()) <= {0, 255}:
        return (arr == 255).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    raise DataError(f"{source}: mask values must be 0/255 or 0/1, found {shown}")


def read_tiff_stack(path: PathArg, kind: str = "image") -> np.ndarray:
    """Every page of a (multi-page) TIFF as ``[N, H, W]``; masks become 0/1.

    Raises :class:`DataError` naming the file (and page) when it is missing, not an
    image, truncated, of unequal page sizes or holds invalid mask values.
    """
    Image, ImageSequence = _pil()
    path = Path(path)
    if not path.is_file():
        raise DataFileNotFoundError(f"{path}: file not found")
    pages: list[np.ndarray] = []
    try:
        with Image.open(path) as im:
            for i, frame in enumerate(ImageSequence.Iterator(im)):
                src = f"{path} (page {i})"
                arr = _to_array(frame, src, kind)
                if pages and arr.shape != pages[0].shape:
                    h0, w0 = pages[0].shape
                    raise DataError(f"{src}: size {arr.shape[1]}×{arr.shape[0]} differs from page 0 ({w0}×{h0})")
                pages.append(_mask_values(arr, src) if kind == "mask" else arr)
    except DataError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, EOFError...
        raise DataError(f"{path}: cannot read TIFF {kind}s ({type(exc).__name__}: {exc})") from exc
    if not pages:
        raise DataError(f"{path}: no pages")
    return np.stack(pages)


def read_image_file(path: PathArg, kind: str = "image") -> np.ndarray:
    """One single-slice image file (PNG/TIFF) as ``[H, W]``; masks become 0/1."""
    Image, _ = _pil()
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if getattr(im, "n_frames", 1) > 1:
                raise DataError(f"{path}: holds {im.n_frames} pages; expected one slice per file")
            arr = _to_array(im, str(path), kind)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataFileNotFoundError(f"{path}: file not found") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot read {kind} ({type(exc).__name__}: {exc})") from exc
    return _mask_values(arr, str(path)) if kind == "mask" else arr


def _candidate_roots(data_dir: Optional[PathArg]) -> list[Path]:
    roots: list[Path] = []
    for base in user_data_dirs(data_dir):
        for d in (base, base / "lucchi", base / "Lucchi"):
            if d not in roots:
                roots.append(d)
    return roots


def find_lucchi(split: str, data_dir: Optional[PathArg] = None) -> tuple[Path, str]:
    """``(root, layout)`` of the first directory holding ``split``; layout is ``"tiff"`` or ``"slices"``."""
    roots = _candidate_roots(data_dir)
    for root in roots:
        img_name, gt_name = LUCCHI_TIFFS[split]
        if (root / img_name).is_file() or (root / gt_name).is_file():
            return root, "tiff"
        if (root / split / "images").is_dir() or (root / split / "masks").is_dir():
            return root, "slices"
    searched = "\n".join(f"  - {r}" for r in roots)
    img_name, gt_name = LUCCHI_TIFFS[split]
    raise DataFileNotFoundError(
        f"Lucchi data ({split} split) not found. Expected either {img_name} and {gt_name} "
        f"(the original multi-page TIFFs) or the folders {split}/images/ and {split}/masks/ with "
        f"one PNG per slice (0000.png, ...).\nSearched directories:\n{searched}\n"
        f"Fix: download the data set from {_SOURCE_URL} and pass its folder with --data-dir."
    )


def _load_tiffs(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_path, gt_path = (root / n for n in LUCCHI_TIFFS[split])
    images = read_tiff_stack(img_path, "image")
    masks = read_tiff_stack(gt_path, "mask")
    if len(images) != len(masks):
        raise DataError(f"{img_path} has {len(images)} slices but {gt_path} has {len(masks)} masks")
    if images.shape[1:] != masks.shape[1:]:
        raise DataError(
            f"{gt_path}: masks are {masks.shape[2]}×{masks.shape[1]} but the images in "
            f"{img_path} are {images.shape[2]}×{images.shape[1]}"
        )
    return images, masks


def _slice_files(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        raise DataFileNotFoundError(f"{directory}: directory not found")
    files = {p.stem: p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix.lower() in _SLICE_SUFFIXES}
    if not files:
        raise DataError(f"{directory}: no slice files ({', '.join(_SLICE_SUFFIXES)})")
    return files


def _load_slices(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_dir, mask_dir = root / split / "images", root / split / "masks"
    images_f, masks_f = _slice_files(img_dir), _slice_files(mask_dir)
    only_img = sorted(set(images_f) - set(masks_f))
    only_mask = sorted(set(masks_f) - set(images_f))
    if only_img:
        raise DataError(f"{mask_dir}: no mask for {', '.join(images_f[n].name for n in only_img[:5])} of {img_dir}")
    if only_mask:
        raise DataError(f"{img_dir}: no image for {', '.join(masks_f[n].name for n in only_mask[:5])} of {mask_dir}")
    images, masks = [], []
    first: Path | None = None
    for name in sorted(images_f):
        img = read_image_file(images_f[name], "image")
        msk = read_image_file(masks_f[name], "mask")
        if msk.shape != img.shape:
            raise DataError(
                f"{masks_f[name]}: mask is {msk.shape[1]}×{msk.shape[0]} but its image "
                f"{images_f[name].name} is {img.shape[1]}×{img.shape[0]}"
            )
        if images and img.shape != images[0].shape:
            raise DataError(
                f"{images_f[name]}: size {img.shape[1]}×{img.shape[0]} differs from "
                f"{first} ({images[0].shape[1]}×{images[0].shape[0]}); all slices must have one size"
            )
        first = first or images_f[name]
        images.append(img)
        masks.append(msk)
    return np.stack(images), np.stack(masks)


def load_lucchi(split: str, data_dir: Optional[PathArg] = None) -> SegmentationSet:
    """Load the ``"train"`` or ``"test"`` split of the Lucchi data (either layout)."""
    if split not in LUCCHI_TIFFS:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
    root, layout = find_lucchi(split, data_dir)
    images, masks = _load_tiffs(root, split) if layout == "tiff" else _load_slices(root, split)
    return SegmentationSet(
        torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks).unsqueeze(1), f"lucchi/{split}"
    )
