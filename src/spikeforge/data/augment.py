"""Training-time augmentation on in-memory batches: random shift (crop of a padded
image) and horizontal flip, drawn from an explicit generator so runs stay seeded.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["random_shift", "random_crop_flip"]


def random_shift(x: torch.Tensor, max_shift: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels per axis (zero fill), one offset per image.

    The same as a random ``H×W`` crop of the image zero-padded by ``max_shift``.
    """
    if x.dim() != 4:
        raise ValueError(f"random_shift expects images [N, C, H, W], got shape {tuple(x.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return x
    N, C, H, W = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    # offsets drawn on the CPU (a CPU generator), used where the images are
    dy = torch.randint(0, 2 * max_shift + 1, (N,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (N,), generator=generator).to(x.device)
    rows = dy.view(N, 1) + torch.arange(H, device=x.device).view(1, H)  # [N, H]
    cols = dx.view(N, 1) + torch.arange(W, device=x.device).view(1, W)  # [N, W]
    out = padded.gather(2, rows.view(N, 1, H, 1).expand(N, C, H, padded.shape[3]))
    return out.gather(3, cols.view(N, 1, 1, W).expand(N, C, H, W))


def random_crop_flip(
    x: torch.Tensor, *, pad: int = 2, flip: bool = True, generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """:func:`random_shift` by up to ``pad`` pixels, then a horizontal flip with p=0.5 per image.

    Returns a new tensor; ``x`` is not modified.
    """
    out = random_shift(x, pad, generator)
    if out is x:
        out = x.clone()
    if flip:
        f = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
        out = torch.where(f.view(-1, 1, 1, 1), out.flip(-1), out)
    return out
