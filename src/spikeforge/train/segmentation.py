"""Training of binary segmentation networks (the UNet of seed 003) on random patches.

The loop runs a fixed number of optimizer steps (AdamW; learning-rate schedule
one-cycle, or linear warm-up then cosine or linear decay, or constant) on batches from
a :class:`~spikeforge.data.segmentation.PatchSampler`, optionally with the forward pass
under bfloat16 autocast (the loss and the weights stay float32). With a checkpoint
path it saves model, optimizer, scheduler, step and history atomically every
``save_every`` steps and at the end, and resumes from there when called again with
the same configuration (patches are a pure function of the step, so a resumed run
sees the same data as an uninterrupted one).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from spikeforge import distributed as D
from spikeforge.data.segmentation import PatchSampler
from spikeforge.errors import ConfigError
from spikeforge.train.checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from spikeforge.train.divergence import check_lr
from spikeforge.train.engine import Engine, seed_everything

__all__ = ["SCHEDULES", "bce_dice_loss", "lr_factor", "train_segmenter"]

#: Learning-rate schedules of :func:`train_segmenter`.
SCHEDULES: tuple[str, ...] = ("onecycle", "cosine", "linear", "constant")

_REQUIRED = ("model", "optimizer", "scheduler", "step", "config", "history", "done")


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, dice_weight: float = 1.0, eps: float = 1.0,
                  reduce_sums: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``BCE(σ(z), g) + w · (1 − soft Dice)``, soft Dice ``= (2Σpg + ε) / (Σp + Σg + ε)`` per batch.

    ``reduce_sums`` maps the three sums ``[Σpg, Σp, Σg]`` of this share of a batch to
    those of the whole batch (under DDP :func:`spikeforge.distributed.all_reduce_tensor`):
    the Dice term is then the one of the global batch on every rank.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    bce = F.binary_cross_entropy_with_logits(logits, target)
    if dice_weight == 0:
        return bce
    p = torch.sigmoid(logits)
    if reduce_sums is None:
        dice = (2 * (p * target).sum() + eps) / (p.sum() + target.sum() + eps)
    else:
        inter, total_p, total_g = reduce_sums(torch.stack([(p * target).sum(), p.sum(), target.sum()]))
        dice = (2 * inter + eps) / (total_p + total_g + eps)
    return bce + dice_weight * (1 - dice)


def lr_factor(schedule: str, step: int, steps: int, warmup: float) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based) of ``steps``.

    A linear warm-up over the first ``round(warmup·steps)`` steps (from ``1/w`` to 1), then
    ``"cosine"``: half a cosine down to 0 at the last step; ``"linear"``: a straight line
    down to 0; ``"constant"``: 1. (``"onecycle"`` is PyTorch's OneCycleLR, not this.)
    """
    w = int(round(warmup * steps))
    if step < w:
        return (step + 1) / w
    if schedule == "constant":
        return 1.0
    rest = max(1, steps - w)
    frac = min(1.0, (step - w + 1) / rest)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return 1.0 - frac
    raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


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
    schedule: str = "onecycle",
    warmup: float = 0.1,
    bf16: bool = False,
    on_log: Callable[[dict[str, float]], None] | None = None,
    device: torch.device | str | None = None,
    sync_bn: bool = False,
) -> tuple[list[dict[str, float]], bool]:
    """Train ``model`` in place; returns ``(history, resumed)``.

    ``schedule``: ``"onecycle"`` (PyTorch's OneCycleLR with ``pct_start=warmup``, the
    default) or, after a linear warm-up over the fraction ``warmup`` of the steps,
    ``"cosine"``, ``"linear"`` decay to 0 or ``"constant"`` (see :func:`lr_factor`).
    ``bf16``: forward pass under bfloat16 autocast (CPU); loss and optimizer in float32.

    ``history`` holds one row per ``log_every`` steps (mean loss since the last row,
    learning rate, elapsed seconds). ``config`` (JSON-like) is stored in the
    checkpoint; a checkpoint with another config is ignored (training starts again).
    A finished checkpoint (``done``) is loaded without training.

    ``device``: where to train (default: where the model is). Under ``torchrun`` each
    rank trains on its share of every global batch (:mod:`spikeforge.train.engine`);
    ``sync_bn`` normalizes BatchNorm over the global batch.
    """
    if steps < 1 or batch_size < 1 or save_every < 1 or log_every < 1:
        raise ConfigError(f"steps, batch_size, save_every and log_every must be >= 1, got {steps}, {batch_size}, "
                          f"{save_every}, {log_every}")
    lr = check_lr(lr)
    if not (math.isfinite(dice_weight) and dice_weight >= 0):
        raise ConfigError(f"dice_weight must be a finite number >= 0, got {dice_weight}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {weight_decay}")
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not (math.isfinite(warmup) and 0 <= warmup < 1) or (schedule == "onecycle" and warmup <= 0):
        raise ConfigError(f"warmup must be a fraction of the steps in [0, 1) (> 0 for onecycle), got {warmup}")
    config = dict(config or {})
    seed_everything(seed)
    ckpt = Path(checkpoint) if checkpoint is not None else None

    def kept() -> str:
        return (f"the last good checkpoint {ckpt} is intact" if ckpt is not None and ckpt.exists()
                else "no checkpoint was written")

    eng = Engine(model, lr=lr, device=device, bf16=bf16, channels_last=channels_last, sync_bn=sync_bn,
                 progress=progress, kept=kept)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if schedule == "onecycle":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=warmup)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(schedule, i, steps, warmup))
    eng.attach(opt, sched)
    start, history, resumed = 0, [], False
    if ckpt is not None and ckpt.exists():
        try:
            payload = load_checkpoint(ckpt, required=_REQUIRED)
        except CheckpointError as exc:
            print(f"warning: {exc}; training from scratch")
        else:
            if payload["config"] == config:
                load_state(model, payload["model"], ckpt)
                eng.load_state(payload, f"{ckpt}: ")
                start, history, resumed = int(payload["step"]), list(payload["history"]), True
                if payload["done"]:
                    eng.finish()
                    return history, True
                print(f"resuming training from step {start}/{steps} ({ckpt})")
            else:
                print(f"{ckpt} was trained with another config; training from scratch")

    def save(step: int, done: bool) -> None:
        eng.check_weights(where=f"step {step}")
        if ckpt is not None:
            save_checkpoint(ckpt, {"model": model.state_dict(), **eng.state(), "step": step, "config": config,
                                   "history": history, "done": done})

    def train_step(batch, step: int) -> dict[str, float]:
        xb, yb = eng.shard(*batch)  # the global batch is a pure function of the step, alike on every rank
        share = eng.share
        with eng.autocast():
            logits = eng.net(xb)
        # the Dice term of the global batch: its sums are added over the ranks (differentiably)
        loss = bce_dice_loss(logits.float(), yb, dice_weight=dice_weight,
                             reduce_sums=D.all_reduce_tensor if eng.world > 1 else None)
        eng.update(loss, where=f"step {step + 1}")
        return {"loss": float(loss.detach()) * share, "n": share}

    def row(done: int, sums: dict[str, float], seconds: float) -> dict[str, float]:
        return {"step": done, "loss": sums["loss"] / sums["n"], "lr": sched.get_last_lr()[0], "seconds": seconds}

    eng.run_steps(
        steps=steps, start=start, history=history, batch=lambda i: sampler.batch(i, batch_size), step=train_step, row=row,
        log_every=log_every, on_log=on_log, save_every=save_every, save=save,
        postfix=lambda r: {"loss": f"{r['loss']:.4f}"}, seconds_before=history[-1]["seconds"] if history else 0.0,
    )
    save(steps, True)
    return history, resumed
