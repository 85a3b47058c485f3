"""Backpropagation through time for directly trained SNNs, resumable and deterministic.

One epoch: shuffle (a generator seeded by ``(seed, epoch)``, so a resumed run draws
the same batches), forward the whole sequence, loss, backward, optimizer step; then
evaluate on the test set. After every epoch a checkpoint (model, optimizer, schedule,
history, RNG state) is written atomically to ``checkpoint.pt``; ``resume=True``
continues from it exactly. A non-finite loss stops training with an error before
anything is written, so the last good checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from spikeforge._native.memory import keep_freed_memory
from spikeforge.data import iterate_batches
from spikeforge.data.augment import random_crop_flip
from spikeforge.errors import ConfigError, DataError
from spikeforge.progress import progress as progress_bar
from spikeforge.train.checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from spikeforge.train.divergence import MAX_LR, check_loss, check_weights
from spikeforge.train.losses import LOSSES, MEMBRANE_LOSSES, SMOOTHABLE

CHECKPOINT = "checkpoint.pt"
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class SNNTrainConfig:
    """Hyperparameters of :func:`fit_snn` (saved in the checkpoint; resume needs the same)."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay) | sgd
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"  # none | cosine
    loss: str = "ce-membrane"  # ce-membrane | tet | mse-rate | ce-rate
    label_smoothing: float = 0.0  # cross-entropy losses only (ce-membrane, tet, ce-rate)
    seed: int = 0
    bf16: bool = False  # bfloat16 autocast (CPU)
    channels_last: bool = False
    augment: bool = False  # random shift by up to augment_pad pixels (+ horizontal flip if augment_flip)
    augment_pad: int = 2
    augment_flip: bool = True
    eval_batch_size: int = 500

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("epochs, batch_size and eval_batch_size must be >= 1, got "
                              f"{self.epochs}, {self.batch_size}, {self.eval_batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in ("none", "cosine"):
            raise ConfigError(f"schedule must be 'none' or 'cosine', got {self.schedule!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not (math.isfinite(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing and self.loss not in SMOOTHABLE:
            raise ConfigError(f"label smoothing applies to the cross-entropy losses ({', '.join(SMOOTHABLE)}), "
                              f"not {self.loss!r}")
        if self.augment_pad < 0:
            raise ConfigError(f"augment_pad must be >= 0, got {self.augment_pad}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR):
            raise ConfigError(f"lr must be a finite number in (0, {MAX_LR:g}], got {self.lr}")
        if not (math.isfinite(self.weight_decay) and 0 <= self.weight_decay <= 1e6):
            raise ConfigError(f"weight_decay must be a finite number in [0, 1e6], got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")


def _autocast(cfg: SNNTrainConfig):
    return torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()


def loss_of(out: Any, y: torch.Tensor, loss: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Apply the named loss to a network's :class:`~spikeforge.models.snn.SNNOutput`."""
    kw = {"label_smoothing": label_smoothing} if label_smoothing else {}
    if kw and loss not in SMOOTHABLE:
        raise ValueError(f"label smoothing applies to {', '.join(SMOOTHABLE)}, not {loss!r}")
    if loss in MEMBRANE_LOSSES:
        if out.membrane is None:
            raise ValueError(f"loss {loss!r} needs the output membrane; the network does not keep it")
        return LOSSES[loss](out.membrane, y, **kw)
    return LOSSES[loss](out.spikes, y, **kw)


def predict(out: Any) -> torch.Tensor:
    """Class with the most output spikes; ties broken by the mean output membrane."""
    score = out.spikes.float().sum(0)
    if out.membrane is not None:
        m = out.membrane.detach().float().mean(0)
        score = score + 1e-3 * torch.sigmoid(m)
    return score.argmax(1)


def _last_good(ckpt: Path | None, epoch: int) -> str:
    if ckpt is not None and epoch > 1:
        return f"the last good checkpoint {ckpt} (epoch {epoch - 1}) is intact"
    return "no checkpoint was written"


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries in which two nested configuration dicts differ."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix or "the configuration"] if old != new else []
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        out += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
    return out


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


@torch.no_grad()
def evaluate_snn_classifier(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: SNNTrainConfig, *, seed: int = 12345,
) -> tuple[float, float]:
    """(accuracy, mean loss) on a labelled set (Poisson inputs drawn from a fixed seed)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct, total, n = 0, 0.0, 0
    for xb, yb in iterate_batches(images, labels, cfg.eval_batch_size, shuffle=False):
        with _autocast(cfg):
            out = model(xb, generator=gen)
        total += float(loss_of(out, yb, cfg.loss, cfg.label_smoothing)) * yb.numel()
        correct += int((predict(out) == yb).sum())
        n += yb.numel()
    return correct / n, total / n


def _make_optimizer(model: nn.Module, cfg: SNNTrainConfig, steps_total: int):
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs) if cfg.schedule == "cosine" else None
    return opt, sched


def fit_snn(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: SNNTrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    model_config: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` with BPTT; returns the per-epoch history.

    ``train``/``test`` are ``(images float [N, ...] in [0, 1], labels int64 [N])``.
    With ``out_dir`` a checkpoint is written there after every epoch; ``resume``
    loads it (it must exist and match ``cfg`` and ``model_config``) and continues.
    """
    cfg.validate()
    keep_freed_memory()  # reuse activation buffers across steps instead of page-faulting them in
    x_train, y_train = train
    if x_train.shape[0] != y_train.shape[0]:
        raise DataError(f"{x_train.shape[0]} training images but {y_train.shape[0]} labels")
    if len(y_train) == 0:
        raise DataError("fit_snn: no training images (the training set is empty)")
    if test is not None and len(test[1]) == 0:
        raise DataError("fit_snn: no test images (the evaluation set is empty)")
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    steps_per_epoch = math.ceil(len(y_train) / cfg.batch_size)
    opt, sched = _make_optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    start_epoch = 1
    ckpt = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    identity = {"train": asdict(cfg), "model": model_config or {}}
    if resume:
        if ckpt is None:
            raise ConfigError("resume needs an output folder (out_dir) holding a checkpoint")
        if not ckpt.exists():
            raise CheckpointError(f"cannot resume: no checkpoint at {ckpt}")
        payload = load_checkpoint(ckpt, required=("model", "optimizer", "epoch", "history", "identity"))
        if payload["identity"] != identity:
            raise CheckpointError(
                f"cannot resume from {ckpt}: it was trained with another configuration (differs in "
                f"{', '.join(_differences(payload['identity'], identity)) or 'its layout'}); rerun with the same "
                "options or without --resume"
            )
        load_state(model, payload["model"], ckpt)
        try:
            opt.load_state_dict(payload["optimizer"])
            if sched is not None and payload.get("scheduler") is not None:
                sched.load_state_dict(payload["scheduler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt}: the saved optimizer state does not fit this model "
                                  f"({type(exc).__name__}: {exc})") from exc
        if payload["epoch"] > cfg.epochs:
            raise CheckpointError(f"{ckpt}: saved after epoch {payload['epoch']}, beyond the {cfg.epochs} epochs "
                                  "of this configuration")
        history = list(payload["history"])
        start_epoch = int(payload["epoch"]) + 1
        if "rng" in payload:
            try:
                torch.set_rng_state(payload["rng"])
            except (RuntimeError, TypeError) as exc:
                raise CheckpointError(f"{ckpt}: the saved random-number state is invalid ({exc})") from exc
        print(f"resumed from {ckpt} after epoch {start_epoch - 1}")
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        gen = _generator(cfg.seed, epoch)
        seen, correct, total_loss = 0, 0, 0.0
        t0 = time.perf_counter()
        bar = progress_bar(
            iterate_batches(x_train, y_train, cfg.batch_size, shuffle=True, generator=gen),
            total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", enabled=progress,
        )
        for i, (xb, yb) in enumerate(bar):
            if cfg.augment:
                xb = random_crop_flip(xb, pad=cfg.augment_pad, flip=cfg.augment_flip, generator=gen)
            with _autocast(cfg):
                out = model(xb, generator=gen)
            loss = loss_of(out, yb, cfg.loss, cfg.label_smoothing)
            check_loss(loss, where=f"epoch {epoch}, batch {i + 1}", lr=cfg.lr, kept=_last_good(ckpt, epoch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * yb.numel()
            correct += int((predict(out) == yb).sum())
            seen += yb.numel()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        if sched is not None:
            sched.step()
        check_weights(model, where=f"the end of epoch {epoch}", lr=cfg.lr, kept=_last_good(ckpt, epoch))
        row = {
            "epoch": epoch, "train_loss": total_loss / seen, "train_accuracy": correct / seen,
            "train_seconds": time.perf_counter() - t0,
        }
        if test is not None:
            row["test_accuracy"], row["test_loss"] = evaluate_snn_classifier(model, *test, cfg)
        history.append(row)
        tqdm.write(f"epoch {epoch}/{cfg.epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
        if ckpt is not None:
            save_checkpoint(ckpt, {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "epoch": epoch, "history": history, "identity": identity, "rng": torch.get_rng_state(),
            })
        if on_epoch is not None:
            on_epoch(epoch, row)
    model.eval()
    return history
