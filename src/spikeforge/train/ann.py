"""Supervised training of ordinary (ANN) classifiers, the first half of conversion."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from spikeforge import distributed as D
from spikeforge.data import iterate_batches
from spikeforge.data.augment import random_crop_flip, random_shift
from spikeforge.errors import ConfigError, DataError
from spikeforge.layers import QCFS
from spikeforge.train.divergence import check_lr
from spikeforge.train.engine import Engine, model_device, seed_everything


def _warmup_linear(step: int, total: int, warmup: float) -> float:
    """Learning-rate factor: linear 0.1 → 1 over ``warmup``·total steps, then linear 1 → 0."""
    w = max(1, int(round(warmup * total)))
    if step < w:
        return 0.1 + 0.9 * step / w
    return max(0.0, (total - step) / max(1, total - w))


class Lookahead:
    """Weight averaging folded back into the net (a lookahead on an exponential average).

    After ``start_step`` optimizer steps, every ``every`` steps the average
    moves towards the current weights, ``avg ← ρ·avg + (1-ρ)·w``, and the net's weights
    are then set to the average; ``ρ = base^every · (step / total)^power`` grows over
    training, so the late weights are averaged strongly (the schedule of Keller Jordan's
    airbench fast CIFAR-10 recipes). BatchNorm running statistics are averaged too. At
    the end of every epoch the net holds the average, so a run resumed from an epoch
    checkpoint (``done_steps`` steps into the run) takes the saved weights as the average
    and continues exactly.
    """

    def __init__(self, model: nn.Module, total_steps: int, start_step: int, *, done_steps: int = 0,
                 every: int = 5, base: float = 0.95, power: float = 3.0) -> None:
        self.model, self.total, self.start = model, max(1, total_steps), start_step
        self.every, self.base, self.power = every, base, power
        self.avg: dict[str, torch.Tensor] | None = None
        if done_steps > start_step:
            self.avg = {k: v.detach().clone() for k, v in self._tensors().items()}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Call after optimizer step number ``step`` (1-based, counted over the whole run)."""
        if step <= self.start or (step - self.start) % self.every:
            return
        if self.avg is None:
            self.avg = {k: v.detach().clone() for k, v in self._tensors().items()}
            return
        rho = self.base ** self.every * (step / self.total) ** self.power
        for k, v in self._tensors().items():
            self.avg[k].lerp_(v, 1 - rho)
            v.copy_(self.avg[k])

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Leave the average in the net (for the evaluation and the checkpoint)."""
        if self.avg is not None:
            for k, v in self._tensors().items():
                v.copy_(self.avg[k])


def _make_optimizer(model: nn.Module, kind: str, lr: float, weight_decay: float, momentum: float, bias_lr_scale: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    norm_ids, ceiling_ids = set(), set()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            norm_ids.update(id(p) for p in m.parameters())
        elif isinstance(m, QCFS):
            ceiling_ids.add(id(m.threshold))
    # QCFS ceilings λ are decayed like the weights, as in Bu et al.'s training (with no
    # decay, the clipped activations' gradient can keep λ far above the activations).
    weights = [p for p in params if p.dim() > 1 or id(p) in ceiling_ids]
    norm = [p for p in params if id(p) in norm_ids]
    other = [p for p in params if p.dim() <= 1 and id(p) not in norm_ids and id(p) not in ceiling_ids]
    groups = [dict(params=weights, lr=lr, weight_decay=weight_decay)]
    if norm:
        groups.append(dict(params=norm, lr=lr * bias_lr_scale, weight_decay=weight_decay / bias_lr_scale))
    if other:
        groups.append(dict(params=other, lr=lr, weight_decay=0.0))
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000,
    *, bf16: bool = False, channels_last: bool = False,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode, on the model's device.

    Inside a process group each rank evaluates its contiguous share of the images and
    the counts are added up, so every rank returns the figures of the whole set.
    """
    model.eval()
    if len(labels) == 0:
        raise DataError("evaluate_classifier: no images to evaluate (the evaluation set is empty)")
    device = model_device(model)
    start, end = D.shard_bounds(len(labels))
    correct, loss, n = 0, 0.0, 0
    for xb, yb in iterate_batches(images[start:end], labels[start:end], batch_size, shuffle=False):
        xb, yb = xb.to(device), yb.to(device)
        if channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(xb)
        out = out.float()
        loss += float(F.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
        n += yb.numel()
    if D.active():
        correct, loss, n = D.all_reduce_sum([correct, loss, n])
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
    optimizer: str = "adamw",
    momentum: float = 0.9,
    schedule: str = "onecycle",
    warmup: float = 0.15,
    label_smoothing: float = 0.0,
    bias_lr_scale: float = 1.0,
    bf16: bool = False,
    channels_last: bool = False,
    start_epoch: int = 1,
    history: list[dict[str, float]] | None = None,
    opt_state: dict | None = None,
    on_state: Callable[[int, dict], None] | None = None,
    device: torch.device | str | None = None,
    sync_bn: bool = False,
    lookahead: bool = False,
) -> list[dict[str, float]]:
    """Train with AdamW and a cosine learning-rate schedule; returns per-epoch history.

    ``train``/``test`` are ``(images float [N, C, H, W], labels int64 [N])``.
    ``augment_shift`` translates training images by up to that many pixels (a random
    crop of the padded image); ``flip`` adds random horizontal flips.

    The fast-recipe options (defaults keep the AdamW/one-cycle behaviour):
    ``optimizer="sgd"`` is Nesterov SGD with ``momentum``; ``schedule="linear"`` warms
    up linearly over the first ``warmup`` fraction of steps and then decays linearly to
    zero; ``weight_decay`` applies to weights only (not to biases or BatchNorm
    parameters) with SGD; ``bias_lr_scale`` multiplies the learning rate of BatchNorm
    biases (their weight decay is divided by it, so the decay per step stays the same);
    ``label_smoothing`` goes to the cross-entropy; ``bf16`` trains under bfloat16
    autocast and ``channels_last`` in the channels-last memory layout.
    ``lookahead`` averages the weights over the last 70 % of the epochs (:class:`Lookahead`).

    Resuming: ``on_state(epoch, state)`` is called after every epoch with the
    optimizer/scheduler/generator state and the history so far (``state["history"]``);
    pass the state back as ``opt_state`` with ``start_epoch=epoch + 1`` and that
    ``history`` to continue exactly.
    """
    if optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    if schedule not in ("onecycle", "linear"):
        raise ConfigError(f"schedule must be 'onecycle' or 'linear', got {schedule!r}")
    if not 0 <= label_smoothing < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    lr = check_lr(lr)
    if not (math.isfinite(weight_decay) and 0 <= weight_decay <= 1e6):
        raise ConfigError(f"weight_decay must be a finite number in [0, 1e6], got {weight_decay}")
    if not (math.isfinite(bias_lr_scale) and 0 < bias_lr_scale <= 1e6):
        raise ConfigError(f"bias_lr_scale must be a finite number in (0, 1e6], got {bias_lr_scale}")
    if not (0 <= momentum < 1 and 0 <= warmup < 1):
        raise ConfigError(f"momentum and warmup must be in [0, 1), got {momentum}, {warmup}")
    if augment_shift < 0:
        raise ConfigError(f"augment_shift must be >= 0, got {augment_shift}")
    x_train, y_train = train
    if len(y_train) == 0:
        raise DataError("train_classifier: no training images (the training set is empty)")
    if x_train.shape[0] != y_train.shape[0]:
        raise DataError(f"train_classifier: {x_train.shape[0]} training images but {y_train.shape[0]} labels")
    gen = seed_everything(seed)
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total_steps = epochs * steps_per_epoch
    eng = Engine(model, lr=lr, device=device, bf16=bf16, channels_last=channels_last, sync_bn=sync_bn,
                 progress=progress)
    opt = _make_optimizer(model, optimizer, lr, weight_decay, momentum, bias_lr_scale)
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total_steps, pct_start=warmup)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _warmup_linear(step, total_steps, warmup))
    eng.attach(opt, sched)
    if opt_state is not None:
        eng.load_state(opt_state, "", generator=gen, what="the saved optimizer/scheduler state does not fit this training")
    averager = (Lookahead(model, total_steps, int(0.3 * epochs) * steps_per_epoch,
                          done_steps=(start_epoch - 1) * steps_per_epoch) if lookahead else None)

    def batches(epoch: int):
        return iterate_batches(x_train, y_train, batch_size, shuffle=True, generator=gen)

    def step(batch, epoch: int, i: int) -> dict[str, float]:
        xb, yb = batch
        xb = random_crop_flip(xb, pad=augment_shift, generator=gen) if flip else random_shift(xb, augment_shift, gen)
        xb, yb = eng.shard(xb, yb)  # the global batch is drawn and augmented alike on every rank
        with eng.autocast():
            out = eng.net(xb)
        out = out.float()
        loss = F.cross_entropy(out, yb, label_smoothing=label_smoothing)
        eng.update(loss, where=f"epoch {epoch}, batch {i + 1}")
        if averager is not None:
            averager.after_step((epoch - 1) * steps_per_epoch + i + 1)
        return {"loss": float(loss.detach()) * yb.numel(), "correct": int((out.argmax(1) == yb).sum()),
                "n": yb.numel()}

    def evaluate() -> dict[str, float]:
        acc, loss = evaluate_classifier(model, *test, bf16=bf16, channels_last=channels_last)
        return {"test_accuracy": acc, "test_loss": loss}

    def row(epoch: int, sums: dict[str, float], seconds: float) -> dict[str, float]:
        if averager is not None:
            averager.end_epoch()  # before the evaluation and the checkpoint
        return {"epoch": epoch, "train_loss": sums["loss"] / sums["n"], "train_accuracy": sums["correct"] / sums["n"]}

    def after_epoch(epoch: int, r: dict[str, float], done: list[dict[str, float]]) -> None:
        if on_state is not None:
            on_state(epoch, eng.state(generator=gen.get_state(), history=list(done)))
        if on_epoch is not None:
            on_epoch(epoch, r)

    return eng.run_epochs(
        epochs=epochs, start_epoch=start_epoch, history=history, batches=batches, steps_per_epoch=steps_per_epoch,
        step=step, row=row, evaluate=evaluate if test is not None else None, after_epoch=after_epoch,
        postfix=lambda s: {"loss": f"{s['loss'] / s['n']:.4f}", "acc": f"{s['correct'] / s['n']:.4f}"},
    )
