"""Synthetic electron-microscopy slices with mitochondria masks (dataset ``synthetic-em``).

An offline stand-in for the Lucchi data set (seed 003): grayscale 768×1024 slices of
cytoplasm with

* **mitochondria** (the foreground, about 5–10 % of the pixels): elongated,
  irregular blobs with a dark double membrane, a darker matrix and lamellar cristae;
* **cell membranes**: dark curvy lines between a few cells (a warped Voronoi tiling);
* **vesicles** (small rings with a light lumen), dense granules and tubular
  endoplasmic reticulum — dark, membrane-bound structures that are *not* mitochondria;
* low-frequency shading, granular texture, Gaussian blur, noise and per-slice
  contrast changes.

Every slice is a pure function of ``(seed, split, index)``: generating a subset or in
another order gives the same pixels. Rendering is vectorized (whole-image numpy/torch
passes plus small per-object boxes); a 768×1024 slice takes a few tens of ms.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from spikeforge.data.errors import DataError

__all__ = ["SLICE_SHAPE", "synthetic_em_slice", "synthetic_em_stack"]

#: Height and width of a Lucchi slice.
SLICE_SHAPE: tuple[int, int] = (768, 1024)
_SPLIT_CODE = {"train": 1, "test": 2}


def _smooth_noise(rng: np.random.Generator, H: int, W: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-scale noise smooth on the scale of ``cell`` pixels (bilinear upsampling)."""
    h, w = max(2, math.ceil(H / cell) + 1), max(2, math.ceil(W / cell) + 1)
    low = torch.from_numpy(rng.standard_normal((1, 1, h, w)).astype(np.float32))
    up = F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (weighted sums of shifted views)."""
    if sigma <= 0:
        return img
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).tolist()
    H, W = img.shape
    x = F.pad(torch.from_numpy(img)[None, None], (r, r, r, r), mode="reflect")[0, 0]
    rows = x[:, 0:W] * k[0]
    for i in range(1, 2 * r + 1):
        rows.add_(x[:, i : i + W], alpha=k[i])
    out = rows[0:H] * k[0]
    for i in range(1, 2 * r + 1):
        out.add_(rows[i : i + H], alpha=k[i])
    return out.numpy()


def _box(cy: float, cx: float, radius: float, H: int, W: int) -> tuple[int, int, int, int] | None:
    y0, y1 = max(0, int(cy - radius)), min(H, int(cy + radius) + 2)
    x0, x1 = max(0, int(cx - radius)), min(W, int(cx + radius) + 2)
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, y1, x0, x1


def _blob_distance(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    cy: float,
    cx: float,
    a: float,
    b: float,
    theta: float,
    wobble: float,
    bend: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (pixels, > 0 inside) to an irregular, bent ellipse.

    The boundary radius is modulated by a few angular harmonics:
    ``r(φ) = 1 + Σ_k c_k cos(kφ + φ_k)``, and the shape is bent along its long axis
    (``v → v − bend·u²/a``); returns ``(distance, u)`` with ``u`` the coordinate along
    the long axis.
    """
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(theta), math.sin(theta)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    if bend:
        v = v - bend * u * u / a
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    phi = np.arctan2(v / b, u / a)
    r = np.ones_like(rho)
    for k in (2, 3, 4):
        r += wobble * rng.uniform(-1, 1) / k * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    # (r − ρ) is in units of the local radius; scale by the local radius in pixels.
    local = 1.0 / np.sqrt((np.cos(phi) / a) ** 2 + (np.sin(phi) / b) ** 2)
    return (r - rho) * local, u


def _cell_membranes(rng: np.random.Generator, H: int, W: int) -> np.ndarray:
    """Darkening of cell membranes: the edges of a warped Voronoi tiling.

    The distance to the nearest cell edge (the bisector of the two nearest seeds) is
    piecewise smooth, so it is computed on a 4× coarser grid and upsampled.
    """
    n = int(rng.integers(3, 8))
    seeds = np.stack([rng.uniform(-0.1 * H, 1.1 * H, n), rng.uniform(-0.1 * W, 1.1 * W, n)], 1).astype(np.float32)
    f = 4
    h, w = -(-H // f), -(-W // f)
    yy = (np.arange(h, dtype=np.float32)[:, None] + 0.5) * f - 0.5 + 12 * _smooth_noise(rng, h, w, 40)
    xx = (np.arange(w, dtype=np.float32)[None, :] + 0.5) * f - 0.5 + 12 * _smooth_noise(rng, h, w, 40)
    d1 = np.full((h, w), np.inf, dtype=np.float32)
    d2 = np.full((h, w), np.inf, dtype=np.float32)
    i1 = np.zeros((h, w), dtype=np.int64)
    i2 = np.zeros((h, w), dtype=np.int64)
    for j, (sy, sx) in enumerate(seeds):  # nearest and second-nearest seed per pixel
        d = (yy - sy) ** 2 + (xx - sx) ** 2
        closer = d < d1
        second = ~closer & (d < d2)
        d2 = np.where(closer, d1, np.where(second, d, d2))
        i2 = np.where(closer, i1, np.where(second, j, i2))
        d1 = np.where(closer, d, d1)
        i1 = np.where(closer, j, i1)
    diff = seeds[i1] - seeds[i2]
    dist = (d2 - d1) / (2 * np.maximum(np.sqrt((diff**2).sum(-1)), 1.0))  # distance to the bisector
    up = F.interpolate(torch.from_numpy(dist)[None, None], scale_factor=f, mode="bilinear", align_corners=False)
    dist = up[0, 0, :H, :W].numpy()
    width = rng.uniform(1.2, 2.2)
    return 0.28 * np.exp(-((dist / width) ** 2))


def synthetic_em_slice(
    index: int,
    *,
    seed: int = 0,
    split: str = "train",
    height: int = SLICE_SHAPE[0],
    width: int = SLICE_SHAPE[1],
) -> tuple[np.ndarray, np.ndarray]:
    """Render one slice: ``(image uint8 [H, W], mask uint8 [H, W] in {0, 1})``."""
    if split not in _SPLIT_CODE:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
    if height < 32 or width < 32:
        raise DataError(f"synthetic EM slices must be at least 32×32, got {height}×{width}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _SPLIT_CODE[split], int(index)])
    H, W = height, width
    img = (
        0.60
        + 0.07 * _smooth_noise(rng, H, W, 180)
        + 0.03 * _smooth_noise(rng, H, W, 6)
    ).astype(np.float32)
    img -= _cell_membranes(rng, H, W)
    mask = np.zeros((H, W), dtype=bool)
    occupied = np.zeros((H, W), dtype=bool)

    # Mitochondria until the target foreground fraction is reached.
    target = rng.uniform(0.05, 0.10) * H * W
    area, tries = 0.0, 0
    matrix_level = rng.uniform(0.40, 0.48)
    while area < target and tries < 400:
        tries += 1
        a = rng.uniform(22, 65)
        b = rng.uniform(11, min(24, 0.8 * a))
        cy, cx = rng.uniform(-0.2 * b, H + 0.2 * b), rng.uniform(-0.2 * b, W + 0.2 * b)
        box = _box(cy, cx, 1.3 * a + 4, H, W)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        d, u = _blob_distance(
            rng, yy, xx, cy, cx, a, b, rng.uniform(0, math.pi), rng.uniform(0.05, 0.3),
            bend=rng.uniform(-0.25, 0.25) if a > 1.8 * b else 0.0,
        )
        inside = d >= 0
        if not inside.any() or (occupied[y0:y1, x0:x1] & (d >= -4)).any():
            continue
        sub = img[y0:y1, x0:x1]
        period = rng.uniform(6, 11)
        cristae = np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi))
        cristae = cristae * (0.5 + 0.5 * np.sin(u / rng.uniform(8, 20) + rng.uniform(0, 6)))
        matrix = matrix_level + rng.uniform(-0.04, 0.04) + 0.09 * cristae * (d > 4)
        sub[...] = np.where(inside, matrix, sub)
        membrane = 0.32 * np.exp(-(((d - 1.0) / 1.0) ** 2)) + 0.25 * np.exp(-(((d - 4.0) / 1.0) ** 2))
        sub -= membrane * (d > -2.5)
        mask[y0:y1, x0:x1] |= inside
        occupied[y0:y1, x0:x1] |= d >= -6
        area += float(inside.sum())

    # Confusers: vesicles (light lumen, dark ring), dense granules, tubular ER.
    n_small = int(rng.integers(30, 80) * H * W / (768 * 1024)) + 1
    for _ in range(n_small):
        kind = rng.uniform()
        if kind < 0.15:  # endoplasmic reticulum: thin elongated double membrane
            a, b = rng.uniform(30, 80), rng.uniform(2.5, 5)
        elif kind < 0.35:  # dense granule
            a = b = rng.uniform(3, 7)
        else:  # vesicle
            a = rng.uniform(5, 16)
            b = a * rng.uniform(0.75, 1.0)
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        box = _box(cy, cx, a + 4, H, W)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        yy = np.arange(y0, y1, dtype=np.float32)[:, None]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :]
        d, _ = _blob_distance(rng, yy, xx, cy, cx, a, b, rng.uniform(0, math.pi), 0.1)
        if (occupied[y0:y1, x0:x1] & (d >= -3)).any():
            continue
        sub = img[y0:y1, x0:x1]
        if 0.15 <= kind < 0.35:
            sub -= 0.30 * np.clip(d + 1.0, 0, 1.5) / 1.5
        else:
            lumen = 0.05 if kind >= 0.35 else 0.0
            sub += lumen * (d > 1.5)
            sub -= 0.30 * np.exp(-(((d - 0.8) / 1.0) ** 2))
        occupied[y0:y1, x0:x1] |= d >= -3

    img = _gaussian_blur(img, rng.uniform(0.7, 1.4))
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.06, 0.06)
    img += rng.uniform(0.03, 0.06) * rng.standard_normal((H, W), dtype=np.float32)
    image = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8)


def synthetic_em_stack(
    split: str,
    n_slices: int,
    *,
    seed: int = 0,
    height: int = SLICE_SHAPE[0],
    width: int = SLICE_SHAPE[1],
) -> tuple[np.ndarray, np.ndarray]:
    """``n_slices`` slices of one split: ``(images uint8 [N, H, W], masks uint8 [N, H, W])``."""
    if n_slices < 1:
        raise DataError(f"n_slices must be >= 1, got {n_slices}")
    images = np.empty((n_slices, height, width), dtype=np.uint8)
    masks = np.empty((n_slices, height, width), dtype=np.uint8)
    for i in range(n_slices):
        images[i], masks[i] = synthetic_em_slice(i, seed=seed, split=split, height=height, width=width)
    return images, masks
