"""Binary segmentation data: image/mask stacks, patch sampling, tiled inference.

Public API::

    from spikeforge.data.segmentation import load_segmentation, PatchSampler, tiled_predict
    train = load_segmentation("synthetic-em", "train", n_slices=165)
    sampler = PatchSampler(train, patch=128, seed=0)
    x, y = sampler.batch(step=0, batch_size=8)          # float [8, 1, 128, 128] each
    logits = tiled_predict(model, train.image(0), tile=512, overlap=32, multiple=8)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from spikeforge.data.errors import DataError
from spikeforge.errors import ConfigError

__all__ = [
    "SEGMENTATION_DATASETS",
    "PatchSampler",
    "SegmentationSet",
    "load_segmentation",
    "tile_windows",
    "tiled_predict",
]

SEGMENTATION_DATASETS: tuple[str, ...] = ("synthetic-em", "lucchi")
PathArg = Union[str, os.PathLike]


@dataclass
class SegmentationSet:
    """Grayscale slices with binary masks, in memory.

    Attributes:
        images: ``uint8`` ``[N, 1, H, W]``.
        masks: ``uint8`` ``[N, 1, H, W]`` with values 0 (background) and 1 (foreground).
        name: dataset and split, e.g. ``"lucchi/test"``.
    """

    images: torch.Tensor
    masks: torch.Tensor
    name: str

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[1] != 1:
            raise DataError(f"{self.name}: images must be [N, 1, H, W], got shape {tuple(self.images.shape)}")
        if self.masks.shape != self.images.shape:
            raise DataError(
                f"{self.name}: masks {tuple(self.masks.shape)} do not match images {tuple(self.images.shape)}"
            )
        if self.images.dtype != torch.uint8 or self.masks.dtype != torch.uint8:
            raise DataError(f"{self.name}: images and masks must be uint8")
        if len(self) == 0:
            raise DataError(f"{self.name}: no slices")
        if int(self.masks.max()) > 1:
            raise DataError(f"{self.name}: mask values must be 0 or 1")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def foreground_fraction(self) -> float:
        return float(self.masks.float().mean())

    def image(self, i: int | slice) -> torch.Tensor:
        """Slice(s) ``i`` as float ``[n, 1, H, W]`` in [0, 1]."""
        x = self.images[i] if isinstance(i, slice) else self.images[i : i + 1]
        return x.float().div_(255.0)

    def mask(self, i: int | slice) -> torch.Tensor:
        """Mask(s) ``i`` as bool ``[n, 1, H, W]``."""
        m = self.masks[i] if isinstance(i, slice) else self.masks[i : i + 1]
        return m.bool()

    def subset(self, indices: list[int]) -> "SegmentationSet":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return SegmentationSet(self.images[idx], self.masks[idx], f"{self.name}[{len(indices)}]")


def load_segmentation(
    name: str,
    split: str,
    *,
    data_dir: Optional[PathArg] = None,
    n_slices: Optional[int] = None,
    slice_shape: Optional[tuple[int, int]] = None,
    seed: int = 0,
) -> SegmentationSet:
    """Load one split of a segmentation dataset.

    Args:
        name: ``"synthetic-em"`` (generated, offline) or ``"lucchi"`` (files, see
            :mod:`spikeforge.data.lucchi`).
        split: ``"train"`` or ``"test"``.
        data_dir: where the Lucchi files are (only there when given; not allowed for
            synthetic data, which is generated).
        n_slices: synthetic: number of slices (default 165, as Lucchi); Lucchi: keep
            only the first ``n_slices`` (None = all). Must be >= 1 when given.
        slice_shape: synthetic only: ``(H, W)`` (default 768×1024).
        seed: synthetic only: the data seed.
    """
    key = name.strip().lower().replace("_", "-")
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
    if n_slices is not None and (isinstance(n_slices, bool) or int(n_slices) != n_slices or n_slices < 1):
        raise ConfigError(f"n_slices must be a positive number of slices (None = all/default), got {n_slices!r}")
    if key == "synthetic-em":
        from spikeforge.data.synthetic_em import SLICE_SHAPE, synthetic_em_stack

        if data_dir is not None:
            raise ConfigError(f"synthetic-em is generated, it reads no files: drop --data-dir / data_dir ({data_dir})")
        H, W = slice_shape or SLICE_SHAPE
        images, masks = synthetic_em_stack(split, 165 if n_slices is None else int(n_slices), seed=seed,
                                           height=H, width=W)
        return SegmentationSet(
            torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks).unsqueeze(1), f"synthetic-em/{split}"
        )
    if key == "lucchi":
        from spikeforge.data.datasets import check_data_dir
        from spikeforge.data.lucchi import load_lucchi

        check_data_dir(data_dir)
        data = load_lucchi(split, data_dir)
        if n_slices is not None and n_slices < len(data):
            data = SegmentationSet(data.images[:n_slices], data.masks[:n_slices], data.name)
        return data
    raise DataError(f"unknown segmentation dataset {name!r}; known: {', '.join(SEGMENTATION_DATASETS)}")


class PatchSampler:
    """Random training patches with flips, 90° rotations and brightness/contrast jitter.

    Batch ``step`` is a pure function of ``(seed, step)``, so a resumed run draws the
    same patches as an uninterrupted one.
    """

    def __init__(
        self,
        data: SegmentationSet,
        patch: int,
        *,
        seed: int = 0,
        augment: bool = True,
        jitter: float = 0.1,
    ) -> None:
        H, W = data.slice_shape
        if patch < 1:
            raise ConfigError(f"patch must be >= 1 pixel, got {patch}")
        if patch > min(H, W):
            raise ConfigError(f"patch {patch} is larger than the slices ({H}×{W}) of {data.name} "
                              "(--patch must fit in a slice)")
        self.data = data
        self.patch = int(patch)
        self.seed = int(seed)
        self.augment = augment
        self.jitter = float(jitter)

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x float [B, 1, p, p] in about [0, 1], y float [B, 1, p, p] in {0, 1})``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        n = len(self.data)
        H, W = self.data.slice_shape
        p = self.patch
        idx = torch.randint(n, (batch_size,), generator=g).tolist()
        ys = torch.randint(H - p + 1, (batch_size,), generator=g).tolist()
        xs = torch.randint(W - p + 1, (batch_size,), generator=g).tolist()
        ops = torch.randint(8, (batch_size,), generator=g).tolist()
        xb = torch.empty(batch_size, 1, p, p)
        yb = torch.empty(batch_size, 1, p, p)
        for b, (i, y0, x0, op) in enumerate(zip(idx, ys, xs, ops)):
            img = self.data.images[i, :, y0 : y0 + p, x0 : x0 + p]
            msk = self.data.masks[i, :, y0 : y0 + p, x0 : x0 + p]
            if self.augment:
                img, msk = _dihedral(img, op), _dihedral(msk, op)
            xb[b] = img
            yb[b] = msk
        xb.div_(255.0)
        if self.augment and self.jitter > 0:
            gain = 1 + self.jitter * (2 * torch.rand(batch_size, 1, 1, 1, generator=g) - 1)
            shift = 0.5 * self.jitter * (2 * torch.rand(batch_size, 1, 1, 1, generator=g) - 1)
            xb = (xb - 0.5) * gain + 0.5 + shift
        return xb, yb


def _dihedral(x: torch.Tensor, op: int) -> torch.Tensor:
    """One of the 8 flips/rotations of the square ``x`` ``[C, p, p]``."""
    if op & 4:
        x = x.transpose(-1, -2)
    if op & 2:
        x = x.flip(-1)
    if op & 1:
        x = x.flip(-2)
    return x


def tile_windows(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int, int, int]]:
    """Split ``[0, length)`` into tiles: ``(window_start, window_end, core_start, core_end)``.

    The cores partition the axis into ``ceil(length / tile)`` near-equal parts; each
    window is its core widened by ``overlap`` on both sides (clipped to the axis) and
    rounded up to a multiple of ``multiple``. Predictions are kept on the cores only,
    so every output pixel sees at least ``overlap`` pixels of context (where the image
    has them). ``length`` must be a multiple of ``multiple``.
    """
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0 pixels, got {overlap}")
    if multiple < 1:
        raise ConfigError(f"multiple must be >= 1, got {multiple}")
    if length % multiple:
        raise ValueError(f"length {length} is not a multiple of {multiple}")
    if tile <= 0 or tile >= length:
        return [(0, length, 0, length)]
    n = math.ceil(length / tile)
    bounds = [round(i * length / n) for i in range(n + 1)]
    out = []
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        size = min(length, c1 - c0 + 2 * overlap)
        size = min(length, -(-size // multiple) * multiple)
        w0 = max(0, min(c0 - overlap, length - size))
        out.append((w0, w0 + size, c0, c1))
    return out


@torch.no_grad()
def tiled_predict(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    tile: int = 512,
    overlap: int = 32,
    multiple: int = 1,
) -> torch.Tensor:
    """Run ``fn`` over overlapping tiles of ``image`` ``[N, C, H, W]`` and stitch the cores.

    ``fn`` maps a window ``[N, C, h, w]`` to an output whose last four dimensions are
    ``[N, K, h, w]``; leading dimensions (e.g. one per time step of an SNN) are kept.
    The image is padded (reflection) to a multiple of ``multiple`` first and the
    output cropped back to ``H × W``. ``tile <= 0`` runs the whole image at once.
    """
    if image.dim() != 4:
        raise ValueError(f"expected an image batch [N, C, H, W], got shape {tuple(image.shape)}")
    H, W = image.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    if ph or pw:
        mode = "reflect" if ph < H and pw < W else "replicate"
        image = F.pad(image, (0, pw, 0, ph), mode=mode)
    Hp, Wp = image.shape[-2:]
    out: torch.Tensor | None = None
    for wy0, wy1, cy0, cy1 in tile_windows(Hp, tile, overlap, multiple):
        for wx0, wx1, cx0, cx1 in tile_windows(Wp, tile, overlap, multiple):
            y = fn(image[..., wy0:wy1, wx0:wx1])
            if y.shape[-2:] != (wy1 - wy0, wx1 - wx0):
                raise ValueError(f"fn returned spatial size {tuple(y.shape[-2:])} for a {wy1 - wy0}×{wx1 - wx0} window")
            if out is None:
                out = y.new_empty((*y.shape[:-2], Hp, Wp))
            out[..., cy0:cy1, cx0:cx1] = y[..., cy0 - wy0 : cy1 - wy0, cx0 - wx0 : cx1 - wx0]
    assert out is not None
    return out[..., :H, :W]
