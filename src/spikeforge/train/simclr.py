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
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from spikeforge import distributed as D
from spikeforge.data import iterate_batches
from spikeforge.errors import ConfigError, DataError, InputTypeError
from spikeforge.train.divergence import check_loss, check_lr, check_weights
from spikeforge.train.engine import Engine, model_device, seed_everything

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
    target = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
    return F.cross_entropy(sim, target)


class _Contrastive(nn.Module):
    """Encoder features followed by the projection head: the module DDP wraps."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.features(v))


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
    device: torch.device | str | None = None,
    sync_bn: bool = False,
    bf16: bool = False,
    channels_last: bool = False,
) -> list[dict[str, float]]:
    """Contrastive pretraining of ``model.features`` (labels are never used).

    ``model`` must have ``features(x) -> [N, D]`` and ``num_features``. Returns the
    per-epoch history (loss, seconds). ``device``: where to train (default: where the
    model is). Under ``torchrun`` each rank encodes its share of the views and the
    projections of all ranks are gathered, so the loss sees the negatives of the
    whole global batch; ``sync_bn`` normalizes BatchNorm over the global batch. ``bf16``
    trains under bfloat16 autocast (the loss in float32), ``channels_last`` in that layout.
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
    gen = seed_everything(seed)
    d = int(model.num_features)
    head = _Projector(d, max(d, proj_dim), proj_dim)
    both = _Contrastive(model, head)
    eng = Engine(both, lr=lr, device=device, sync_bn=sync_bn, progress=progress, find_unused_parameters=True,
                 bf16=bf16, channels_last=channels_last)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    per_epoch = len(images) // batch_size
    steps = epochs * per_epoch
    if steps < 1:
        raise DataError(f"{len(images)} images are fewer than one batch of {batch_size}")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    eng.attach(opt, sched)
    dummy = torch.zeros(len(images), dtype=torch.long)

    def batches(epoch: int):
        return iterate_batches(images, dummy, batch_size, shuffle=True, generator=gen, drop_last=True)

    def step(batch, epoch: int, i: int) -> dict[str, float]:
        xb = batch[0]
        n = xb.shape[0]
        v1, v2 = eng.shard(random_views(xb, gen), random_views(xb, gen), weight=False)
        with eng.autocast():
            z = eng.net(torch.cat([v1, v2]))
        z1, z2 = z.float().chunk(2)
        # every rank scores all 2N views (the negatives of the global batch), as one process does
        loss = nt_xent(D.gather_rows(z1, n), D.gather_rows(z2, n), temperature=temperature)
        eng.update(loss, where=f"contrastive pretraining epoch {epoch}, batch {i + 1}")
        return {"loss": float(loss.detach()) * v1.shape[0], "n": v1.shape[0]}

    def row(epoch: int, sums: dict[str, float], seconds: float) -> dict[str, float]:
        return {"epoch": epoch, "contrastive_loss": sums["loss"] / sums["n"], "seconds": seconds}

    history = eng.run_epochs(
        epochs=epochs, batches=batches, steps_per_epoch=per_epoch, step=step, row=row, desc="simclr",
        check_modules=(model, head), check_where="the end of contrastive pretraining epoch {epoch}",
        message=lambda epoch, r: f"simclr epoch {epoch}/{epochs}: loss={r['contrastive_loss']:.4f}",
        after_epoch=(lambda epoch, r, h: on_epoch(epoch, r)) if on_epoch is not None else None,
    )
    head.eval()
    return history


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Features of ``images`` on the model's device."""
    model.eval()
    device = model_device(model)
    return torch.cat([model.features(images[i:i + batch_size].to(device)) for i in range(0, len(images), batch_size)])


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
    device = model_device(model)
    feats = extract_features(model, train[0]).cpu()
    y = train[1]
    fc: nn.Linear = model.fc
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(fc.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(y) / batch_size))
    for _ in range(epochs):
        for fb, yb in iterate_batches(feats, y, batch_size, shuffle=True, generator=gen):
            loss = F.cross_entropy(fc(fb.to(device)), yb.to(device))
            check_loss(loss, where="the linear probe", lr=lr, option="the probe's lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    check_weights(fc, where="the end of the linear probe", lr=lr, option="the probe's lr")
    with torch.no_grad():
        return float((fc(feats.to(device)).argmax(1).cpu() == y).float().mean())
