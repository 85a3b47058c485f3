"""Backpropagation through time for directly trained SNNs, resumable and deterministic.

One epoch: shuffle (a generator seeded by ``(seed, epoch)``, so a resumed run draws
the same batches), forward the whole sequence, loss, backward, optimizer step; then
evaluate on the test set. After every epoch a checkpoint (model, optimizer, schedule,
history, RNG state) is written atomically to ``checkpoint.pt``; ``resume=True``
continues from it exactly. A non-finite loss stops training with an error before
anything is written, so the last good checkpoint stays intact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from spikeforge import distributed as D
from spikeforge._native.memory import keep_freed_memory
from spikeforge.data import iterate_batches
from spikeforge.data.augment import random_crop_flip
from spikeforge.errors import ConfigError, DataError
from spikeforge.train.checkpoint import CheckpointError, load_checkpoint, load_state, save_checkpoint
from spikeforge.train.divergence import MAX_LR
from spikeforge.train.engine import Engine, model_device
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
    """(accuracy, mean loss) on a labelled set (Poisson inputs drawn from a fixed seed), on the model's device.

    Inside a process group every batch is split among the ranks (each draws the random
    numbers of the whole batch and keeps its share's) and the sums are added up, so
    every rank returns the figures of a one-process evaluation.
    """
    model.eval()
    device = model_device(model)
    world = D.world_size()
    gen = torch.Generator().manual_seed(seed)
    correct, total, n = 0, 0.0, 0
    for xb, yb in iterate_batches(images, labels, cfg.eval_batch_size, shuffle=False):
        rows: dict[str, Any] = {}
        if world > 1:
            start, end = D.shard_bounds(yb.numel())
            rows = {"rows": (start, end, yb.numel())}
            xb, yb = xb[start:end], yb[start:end]
        xb, yb = xb.to(device), yb.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            out = model(xb, generator=gen, **rows)
        if yb.numel():  # a rank's share of a last batch smaller than the world may be empty
            total += float(loss_of(out, yb, cfg.loss, cfg.label_smoothing)) * yb.numel()
            correct += int((predict(out) == yb).sum())
            n += yb.numel()
    if world > 1:
        correct, total, n = D.all_reduce_sum([correct, total, n])
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


def _distributed_batches(n: int, batch_size: int, world: int) -> None:
    """Under DDP every global batch, the last included, must give every rank at least one image."""
    last = n % batch_size or batch_size
    if world > 1 and min(batch_size, last) < world:
        raise ConfigError(
            f"{world} processes need at least {world} images in every batch: with {n} training images in batches "
            f"of {batch_size} the {'last batch holds' if batch_size >= world else 'batches hold'} "
            f"{min(batch_size, last)}; change --batch-size or --train-limit"
        )


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
    device: torch.device | str | None = None,
    sync_bn: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` with BPTT; returns the per-epoch history.

    ``train``/``test`` are ``(images float [N, ...] in [0, 1], labels int64 [N])``.
    With ``out_dir`` a checkpoint is written there after every epoch; ``resume``
    loads it (it must exist and match ``cfg`` and ``model_config``) and continues.

    ``device``: where to train (default: where the model is). Under ``torchrun`` every
    rank draws the same global batches (order, augmentation, Poisson spikes and dropout
    masks of the whole batch) and trains on its share; DDP averages the gradients, so N
    processes train as one process with the same batch size (``sync_bn``: BatchNorm over
    the global batch too). The evaluation shards every batch alike; only rank 0 writes.
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
    _distributed_batches(len(y_train), cfg.batch_size, D.world_size())
    steps_per_epoch = math.ceil(len(y_train) / cfg.batch_size)
    ckpt = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    eng = Engine(model, lr=cfg.lr, device=device, bf16=cfg.bf16, channels_last=cfg.channels_last, sync_bn=sync_bn,
                 progress=progress, kept=lambda: _last_good(ckpt, eng.epoch))
    opt, sched = _make_optimizer(model, cfg, cfg.epochs * steps_per_epoch)
    eng.attach(opt, sched, every="epoch")
    history: list[dict[str, float]] = []
    start_epoch = 1
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
        eng.load_state(payload, f"{ckpt}: ")
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
        if D.is_main():
            print(f"resumed from {ckpt} after epoch {start_epoch - 1}")
    gen = torch.Generator()

    def batches(epoch: int):
        gen.set_state(_generator(cfg.seed, epoch).get_state())
        return iterate_batches(x_train, y_train, cfg.batch_size, shuffle=True, generator=gen)

    def step(batch, epoch: int, i: int) -> dict[str, float]:
        xb, yb = batch
        if cfg.augment:  # the global batch, alike on every rank
            xb = random_crop_flip(xb, pad=cfg.augment_pad, flip=cfg.augment_flip, generator=gen)
        n = yb.numel()
        start, end = D.shard_bounds(n)
        xb, yb = eng.shard(xb, yb)
        rows = {"rows": (start, end, n)} if eng.world > 1 else {}
        with eng.autocast():
            out = eng.net(xb, generator=gen, **rows)
        loss = loss_of(out, yb, cfg.loss, cfg.label_smoothing)
        eng.update(loss, where=f"epoch {epoch}, batch {i + 1}")
        return {"loss": float(loss.detach()) * yb.numel(), "correct": int((predict(out) == yb).sum()),
                "n": yb.numel()}

    def row(epoch: int, sums: dict[str, float], seconds: float) -> dict[str, float]:
        return {"epoch": epoch, "train_loss": sums["loss"] / sums["n"], "train_accuracy": sums["correct"] / sums["n"],
                "train_seconds": seconds}

    def evaluate() -> dict[str, float]:
        assert test is not None
        acc, loss = evaluate_snn_classifier(model, *test, cfg)
        return {"test_accuracy": acc, "test_loss": loss}

    def after_epoch(epoch: int, r: dict[str, float], done: list[dict[str, float]]) -> None:
        if ckpt is not None:
            save_checkpoint(ckpt, {
                "model": model.state_dict(), **eng.state(), "epoch": epoch, "history": done, "identity": identity,
                "rng": torch.get_rng_state(),
            })
        if on_epoch is not None:
            on_epoch(epoch, r)

    return eng.run_epochs(
        epochs=cfg.epochs, start_epoch=start_epoch, history=history, batches=batches,
        steps_per_epoch=steps_per_epoch, step=step, row=row, evaluate=evaluate if test is not None else None,
        after_epoch=after_epoch, postfix_every=20,
        postfix=lambda s: {"loss": f"{s['loss'] / s['n']:.4f}", "acc": f"{s['correct'] / s['n']:.4f}"},
    )
