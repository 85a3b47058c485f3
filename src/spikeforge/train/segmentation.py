"""Training of binary segmentation networks (the UNet of seed 003) on random patches.

The loop runs a fixed number of optimizer steps (AdamW, one-cycle learning rate) on
batches from a :class:`~spikeforge.data.segmentation.PatchSampler`. With a checkpoint
path it saves model, optimizer, scheduler, step and history atomically every
``save_every`` steps and at the end, and resumes from there when called again with
the same configuration (patches are a pure function of the step, so a resumed run
sees the same data as an uninterrupted one).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from spikeforge.data.segmentation import PatchSampler
from spikeforge.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["bce_dice_loss", "train_segmenter"]

_REQUIRED = ("model", "optimizer", "scheduler", "step", "config", "history", "done")


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """``BCE(σ(z), g) + w · (1 − soft Dice)``, soft Dice ``= (2Σpg + ε) / (Σp + Σg + ε)`` per batch."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    bce = F.binary_cross_entropy_with_logits(logits, target)
    if dice_weight == 0:
        return bce
    p = torch.sigmoid(logits)
    dice = (2 * (p * target).sum() + eps) / (p.sum() + target.sum() + eps)
    return bce + dice_weight * (1 - dice)


def train_segmenter(
    model: nn.Module,
    sampler: PatchSampler,
    *,
    steps: int,
    batch_size: int = 8,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    dice_weight: float = 1.0,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    config: Mapping[str, Any] | None = None,
    save_every: int = 100,
    log_every: int = 50,
    progress: bool = True,
    channels_last: bool = False,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> tuple[list[dict[str, float]], bool]:
    """Train ``model`` in place; returns ``(history, resumed)``.

    ``history`` holds one row per ``log_every`` steps (mean loss since the last row,
    learning rate, elapsed seconds). ``config`` (JSON-like) is stored in the
    checkpoint; a checkpoint with another config is ignored (training starts again).
    A finished checkpoint (``done``) is loaded without training.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    config = dict(config or {})
    torch.manual_seed(seed)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start, history, resumed = 0, [], False
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        try:
            payload = load_checkpoint(ckpt, required=_REQUIRED)
        except CheckpointError as exc:
            print(f"warning: {exc}; training from scratch")
        else:
            if payload["config"] == config:
                model.load_state_dict(payload["model"])
                opt.load_state_dict(payload["optimizer"])
                sched.load_state_dict(payload["scheduler"])
                start, history, resumed = int(payload["step"]), list(payload["history"]), True
                if payload["done"]:
                    model.eval()
                    return history, True
                print(f"resuming training from step {start}/{steps} ({ckpt})")
            else:
                print(f"{ckpt} was trained with another config; training from scratch")

    def save(step: int, done: bool) -> None:
        if ckpt is not None:
            save_checkpoint(ckpt, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "step": step, "config": config, "history": history, "done": done,
            })

    model.train()
    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    loss_sum, n = 0.0, 0
    bar = tqdm(range(start, steps), total=steps, initial=start, desc="train", disable=not progress,
               leave=False, mininterval=2.0)
    for step in bar:
        xb, yb = sampler.batch(step, batch_size)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        logits = model(xb)
        loss = bce_dice_loss(logits, yb, dice_weight=dice_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += float(loss.detach())
        n += 1
        done_steps = step + 1
        if done_steps % log_every == 0 or done_steps == steps:
            row = {"step": done_steps, "loss": loss_sum / n, "lr": sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            loss_sum, n = 0.0, 0
            bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
            if on_log is not None:
                on_log(row)
        if done_steps % save_every == 0 and done_steps < steps:
            save(done_steps, False)
    model.eval()
    save(steps, True)
    return history, resumed
