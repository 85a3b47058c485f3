"""Supervised training of ordinary (ANN) classifiers, the first half of conversion."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from spikeforge.data import iterate_batches
from spikeforge.data.augment import random_crop_flip, random_shift


@torch.no_grad()
def evaluate_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode."""
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for xb, yb in iterate_batches(images, labels, batch_size, shuffle=False):
        out = model(xb)
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
        n += yb.numel()
    return correct / n, loss / n


def train_classifier(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    augment_shift: int = 0,
    flip: bool = False,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train with AdamW and a cosine learning-rate schedule; returns per-epoch history.

    ``train``/``test`` are ``(images float [N, C, H, W], labels int64 [N])``.
    ``augment_shift`` translates training images by up to that many pixels (a random
    crop of the padded image); ``flip`` adds random horizontal flips.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = train
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    history: list[dict[str, float]] = []
    for epoch in range(1, epochs + 1):
        model.train()
        seen, correct, total_loss = 0, 0, 0.0
        bar = tqdm(
            iterate_batches(x_train, y_train, batch_size, shuffle=True, generator=gen),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{epochs}",
            disable=not progress,
            leave=False,
            mininterval=1.0,
        )
        for xb, yb in bar:
            xb = random_crop_flip(xb, pad=augment_shift, generator=gen) if flip else random_shift(xb, augment_shift, gen)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * yb.numel()
            correct += int((out.argmax(1) == yb).sum())
            seen += yb.numel()
            if bar.n % 25 == 0:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        row = {"epoch": epoch, "train_loss": total_loss / seen, "train_accuracy": correct / seen}
        if test is not None:
            row["test_accuracy"], row["test_loss"] = evaluate_classifier(model, *test)
        history.append(row)
        msg = ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
        tqdm.write(f"epoch {epoch}/{epochs}: {msg}")
        if on_epoch is not None:
            on_epoch(epoch, row)
    model.eval()
    return history
