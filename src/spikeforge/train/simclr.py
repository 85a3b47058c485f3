"""Self-supervised contrastive pretraining (SimCLR-style) and a linear probe.

The offline stand-in for seed 003's CLIP comparison: an encoder learns from
unlabelled images by making two random views of the same image agree (NT-Xent loss
over a projection head), then a linear classifier is fitted on its frozen features.
The result is an ordinary ReLU network, converted like any supervised one.

Views are made on whole batches with tensor ops (no per-image Python): a random
resized crop and horizontal flip through one ``affine_grid``/``grid_sample``, random
brightness/contrast, and Gaussian noise.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from spikeforge.data import iterate_batches
from spikeforge.errors import ConfigError, DataError, InputTypeError
from spikeforge.progress import progress as progress_bar
from spikeforge.train.divergence import check_loss, check_lr, check_weights

__all__ = ["random_views", "nt_xent", "pretrain_simclr", "linear_probe", "extract_features"]


def random_views(
    x: torch.Tensor, generator: torch.Generator, *, min_scale: float = 0.5, jitter: float = 0.4, noise: float = 0.05,
) -> torch.Tensor:
    """One random view of every image of ``x`` ``[N, C, H, W]`` (values in [0, 1])."""
    N = x.shape[0]
    scale = min_scale + (1 - min_scale) * torch.rand(N, generator=generator)
    zoom = scale.sqrt()  # side length of the crop, as a fraction of the image
    flip = torch.where(torch.rand(N, generator=generator) < 0.5, -1.0, 1.0)
    shift = (1 - zoom).unsqueeze(1) * (2 * torch.rand(N, 2, generator=generator) - 1)
    theta = torch.zeros(N, 2, 3)
    theta[:, 0, 0] = zoom * flip
    theta[:, 1, 1] = zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    bright = 1 + jitter * (2 * torch.rand(N, 1, 1, 1, generator=generator) - 1)
    contrast = 1 + jitter * (2 * torch.rand(N, 1, 1, 1, generator=generator) - 1)
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    v = (v - mean) * contrast + mean * bright
    if noise > 0:
        v = v + noise * torch.randn(v.shape, generator=generator)
    return v.clamp_(0, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Normalized-temperature cross-entropy of SimCLR for two batches of projections.

    Each of the 2N embeddings must pick its partner view among the other 2N − 1.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"projections must be two [N, D] tensors of one shape, got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


class _Projector(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(inplace=True), nn.Linear(d_hidden, d_out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def pretrain_simclr(
    model: nn.Module,
    images: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 2e-3,
    temperature: float = 0.5,
    proj_dim: int = 64,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Contrastive pretraining of ``model.features`` (labels are never used).

    ``model`` must have ``features(x) -> [N, D]`` and ``num_features``. Returns the
    per-epoch history (loss, seconds).
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 2:
        raise ConfigError(f"batch_size must be >= 2 (each image needs other images as negatives), got {batch_size}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a finite number > 0, got {temperature}")
    lr = check_lr(lr)
    if not hasattr(model, "features") or not hasattr(model, "num_features"):
        raise InputTypeError(f"{type(model).__name__} has no features()/num_features for contrastive pretraining")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    d = int(model.num_features)
    head = _Projector(d, max(d, proj_dim), proj_dim)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps = epochs * (len(images) // batch_size)
    if steps < 1:
        raise DataError(f"{len(images)} images are fewer than one batch of {batch_size}")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    dummy = torch.zeros(len(images), dtype=torch.long)
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        model.train()
        head.train()
        t0, total, n = time.perf_counter(), 0.0, 0
        batches = iterate_batches(images, dummy, batch_size, shuffle=True, generator=gen, drop_last=True)
        bar = progress_bar(batches, total=len(images) // batch_size, desc=f"simclr {epoch}/{epochs}",
                           enabled=progress)
        for i, (xb, _) in enumerate(bar):
            v = torch.cat([random_views(xb, gen), random_views(xb, gen)])
            z = head(model.features(v))
            loss = nt_xent(*z.chunk(2), temperature=temperature)
            check_loss(loss, where=f"contrastive pretraining epoch {epoch}, batch {i + 1}", lr=lr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * xb.shape[0]
            n += xb.shape[0]
        check_weights(model, head, where=f"the end of contrastive pretraining epoch {epoch}", lr=lr)
        row = {"epoch": epoch, "contrastive_loss": total / n, "seconds": time.perf_counter() - t0}
        history.append(row)
        tqdm.write(f"simclr epoch {epoch}/{epochs}: loss={row['contrastive_loss']:.4f}")
        if on_epoch is not None:
            on_epoch(epoch, row)
    model.eval()
    return history


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def linear_probe(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int = 30,
    lr: float = 1e-2,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Fit ``model.fc`` on frozen features (computed once); returns the train accuracy."""
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    lr = check_lr(lr)
    if len(train[1]) == 0:
        raise DataError("linear_probe: no training images (the training set is empty)")
    feats = extract_features(model, train[0])
    y = train[1]
    fc: nn.Linear = model.fc
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(fc.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(y) / batch_size))
    for _ in range(epochs):
        for fb, yb in iterate_batches(feats, y, batch_size, shuffle=True, generator=gen):
            loss = F.cross_entropy(fc(fb), yb)
            check_loss(loss, where="the linear probe", lr=lr, option="the probe's lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    check_weights(fc, where="the end of the linear probe", lr=lr, option="the probe's lr")
    with torch.no_grad():
        return float((fc(feats).argmax(1) == y).float().mean())
