"""The one training engine: what every training loop shares, written once.

A loop (ANN classification, segmentation, SimCLR, BPTT) builds its model, optimizer and
learning-rate schedule, then hands them to an :class:`Engine` and supplies only

* its *step*: a function of one global batch that computes the loss (on this rank's
  share, :meth:`Engine.shard`), calls :meth:`Engine.update` and returns additive sums
  for the history (``{"loss": ..., "correct": ..., "n": ...}``), and
* its *evaluation* and how a history row is made from the sums.

The engine does the rest: the device and memory layout of model and batches, bfloat16
autocast, the epoch or step loop with progress bars, the optimizer/schedule step, the
divergence stop (a non-finite loss at once, non-finite weights before anything is saved
and at the end), the history, atomic checkpoints through a ``save`` callback, exact
resume (optimizer, schedule and generator states), and data parallelism: inside a
``torchrun`` process group the model is wrapped in DistributedDataParallel (optionally
with BatchNorm synchronized over the global batch), each rank trains on its share of
every global batch, the loss is weighted so that the averaged gradient is the gradient
of the global batch, the history sums are all-reduced, and only rank 0 prints or writes.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from tqdm import tqdm

from spikeforge import distributed as D
from spikeforge.errors import CheckpointError
from spikeforge.progress import progress as progress_bar
from spikeforge.train.divergence import check_loss, check_weights

__all__ = ["Engine", "channels_last_hazard", "model_device", "seed_everything"]

Sums = dict[str, float]


def seed_everything(seed: int) -> torch.Generator:
    """Seed PyTorch's global generator (every device) and return a CPU generator seeded alike."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module without any)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


# oneDNN's AVX2 kernel for the weight gradient of a strided 1x1 convolution in the channels-last
# layout crashes (one thread: segmentation fault) or hangs (two threads, about one run in four) when
# the convolution has fewer input channels than a vector register holds floats (torch 2.13.0,
# measured on an AVX2 EPYC: 2-7 input channels fail, 8 and more pass). 16 covers AVX-512's width.
_CL_MIN_STRIDED_1X1_IN = 16


def channels_last_hazard(model: nn.Module) -> str | None:
    """Why training ``model`` channels-last on a CPU is unsafe, or None when it is safe.

    The hazard is a strided 1x1 convolution with few input channels (e.g. the shortcut of
    a ResNet at width x0.0625); such toy widths gain nothing from the layout anyway.
    """
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
                and m.in_channels < _CL_MIN_STRIDED_1X1_IN):
            return (f"{name or 'the model'} is a strided 1x1 convolution with {m.in_channels} input channels "
                    f"(< {_CL_MIN_STRIDED_1X1_IN}), whose channels-last weight gradient crashes or hangs "
                    "in oneDNN on CPUs")
    return None


class Engine:
    """Shared machinery of the training loops (see the module docstring).

    ``model`` is moved to ``device`` (default: where it is) and, with ``channels_last``,
    to that memory layout before the optimizer is made (:meth:`attach`). ``lr`` and
    ``option`` name the learning rate in divergence messages; ``kept`` says what a
    divergence leaves behind (a string, or a function of nothing returning one).
    ``sync_bn`` normalizes BatchNorm over the global batch under DDP;
    ``find_unused_parameters`` is passed to DDP (modules with parameters the loss does
    not reach, e.g. a classifier head during contrastive pretraining).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float | None = None,
        option: str = "--lr",
        device: torch.device | str | None = None,
        bf16: bool = False,
        channels_last: bool = False,
        sync_bn: bool = False,
        progress: bool = True,
        kept: str | Callable[[], str] = "the diverged weights were not saved",
        find_unused_parameters: bool = False,
    ) -> None:
        self.model = model
        self.device = model_device(model) if device is None else D.resolve_device(device)
        self.bf16 = bool(bf16)
        self.channels_last = bool(channels_last)
        if self.channels_last and self.device.type == "cpu":
            hazard = channels_last_hazard(model)
            if hazard is not None:
                warnings.warn(f"training in the contiguous layout instead of channels-last: {hazard}", stacklevel=2)
                self.channels_last = False
        self.lr = lr
        self.option = option
        self._kept = kept
        self.show = bool(progress) and D.is_main()
        self.world = D.world_size()
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.net: nn.Module = model
        self._sync = D.sync_batchnorm(model, enabled=sync_bn and self.world > 1)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.schedule_every = "step"
        self._weight = 1.0
        self.epoch = 0

    # ------------------------------------------------------------------ setup
    def attach(self, optimizer: torch.optim.Optimizer, scheduler: Any = None, *, every: str = "step") -> "Engine":
        """The optimizer and schedule to step; ``every`` is ``"step"`` or ``"epoch"`` (the schedule's unit)."""
        if every not in ("step", "epoch"):
            raise ValueError(f"every must be 'step' or 'epoch', got {every!r}")
        self.optimizer, self.scheduler, self.schedule_every = optimizer, scheduler, every
        return self

    def state(self, **extra: Any) -> dict[str, Any]:
        """Optimizer and schedule state (plus ``extra``, e.g. a generator's state) for a checkpoint."""
        assert self.optimizer is not None
        out = {"optimizer": self.optimizer.state_dict(),
               "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}
        out.update(extra)
        return out

    def load_state(self, state: Mapping[str, Any], where: str, *, generator: torch.Generator | None = None,
                   what: str = "the saved optimizer state does not fit this model") -> None:
        """Restore :meth:`state` (and ``state["generator"]`` into ``generator``); failures are CheckpointErrors."""
        assert self.optimizer is not None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if generator is not None:
                generator.set_state(state["generator"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{where}{what} ({type(exc).__name__}: {exc})") from exc

    # ------------------------------------------------------------------ per batch
    def autocast(self):
        """bfloat16 autocast on the engine's device when ``bf16``, else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the engine's device (channels-last for images when the engine trains so)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def shard(self, *tensors: torch.Tensor, weight: bool = True) -> tuple[torch.Tensor, ...]:
        """This rank's contiguous share of a global batch, on the device.

        With ``weight`` the next :meth:`update` scales the loss (a mean over the share) by
        ``world · n_share / n_global``: DDP's averaged gradient is then the gradient of
        the mean over the global batch, whatever the shares' sizes. One process: the
        tensors themselves (moved), weight 1.
        """
        n = tensors[0].shape[0]
        if self.world > 1:
            start, end = D.shard_bounds(n)
            tensors = tuple(t[start:end] for t in tensors)
            self._weight = self.world * (end - start) / n if weight else 1.0
        else:
            self._weight = 1.0
        return tuple(self.to_device(t) for t in tensors)

    @property
    def share(self) -> float:
        """Fraction of the global batch this rank holds (1 in one process)."""
        return self._weight / self.world

    def kept(self) -> str:
        return self._kept() if callable(self._kept) else self._kept

    def update(self, loss: torch.Tensor, *, where: str) -> None:
        """Stop on a non-finite loss, else backward, optimizer step and (per-step) schedule step."""
        assert self.optimizer is not None
        if not bool(torch.isfinite(loss.detach()).all()):
            check_loss(loss, where=where, lr=self.lr, option=self.option, kept=self.kept())
        self.optimizer.zero_grad(set_to_none=True)
        (loss * self._weight if self._weight != 1.0 else loss).backward()
        self.optimizer.step()
        if self.scheduler is not None and self.schedule_every == "step":
            self.scheduler.step()
        self._weight = 1.0

    def check_weights(self, *modules: nn.Module, where: str) -> None:
        check_weights(*(modules or (self.model,)), where=where, lr=self.lr, option=self.option, kept=self.kept())

    def log(self, message: str) -> None:
        """A line for the user (rank 0 only), between progress bars."""
        if D.is_main():
            tqdm.write(message)

    def reduce(self, sums: Mapping[str, float]) -> Sums:
        """The sums of every rank added up (the same dict in one process)."""
        if self.world == 1:
            return dict(sums)
        keys = sorted(sums)
        return dict(zip(keys, D.all_reduce_sum([sums[k] for k in keys])))

    # ------------------------------------------------------------------ loops
    def run_epochs(
        self,
        *,
        epochs: int,
        batches: Callable[[int], Iterable[Any]],
        steps_per_epoch: int,
        step: Callable[[Any, int, int], Mapping[str, float]],
        row: Callable[[int, Sums, float], dict[str, float]],
        start_epoch: int = 1,
        history: list[dict[str, float]] | None = None,
        evaluate: Callable[[], Mapping[str, float]] | None = None,
        desc: str = "epoch",
        postfix: Callable[[Sums], dict[str, str]] | None = None,
        postfix_every: int = 25,
        check_modules: tuple[nn.Module, ...] = (),
        check_where: str = "the end of epoch {epoch}",
        message: Callable[[int, dict[str, float]], str] | None = None,
        after_epoch: Callable[[int, dict[str, float], list[dict[str, float]]], None] | None = None,
    ) -> list[dict[str, float]]:
        """Epochs ``start_epoch..epochs``; returns the history (earlier rows first).

        Per epoch: ``batches(epoch)`` yields global batches, ``step(batch, epoch, i)`` trains
        on one and returns its additive sums; then the schedule steps (per-epoch
        schedules), the weights are checked, the sums of all ranks are added and
        ``row(epoch, sums, seconds)`` makes the history row, ``evaluate()`` adds its
        entries, a line is logged and ``after_epoch(epoch, row, history)`` runs (saving
        a checkpoint, user callbacks).
        """
        history = list(history or [])
        for epoch in range(start_epoch, epochs + 1):
            self.epoch = epoch
            self.net.train()
            sums: Sums = {}
            t0 = time.perf_counter()
            bar = progress_bar(batches(epoch), total=steps_per_epoch, desc=f"{desc} {epoch}/{epochs}",
                               enabled=self.show)
            with self._sync:
                for i, batch in enumerate(bar):
                    for k, v in step(batch, epoch, i).items():
                        sums[k] = sums.get(k, 0.0) + v
                    if postfix is not None and self.show and i % postfix_every == 0:
                        bar.set_postfix(postfix(sums), refresh=False)
            if self.scheduler is not None and self.schedule_every == "epoch":
                self.scheduler.step()
            self.check_weights(*check_modules, where=check_where.format(epoch=epoch))
            seconds = time.perf_counter() - t0
            r = row(epoch, self.reduce(sums), seconds)
            if evaluate is not None:
                r.update(evaluate())
            history.append(r)
            self.log(message(epoch, r) if message is not None else
                     f"{desc} {epoch}/{epochs}: " + ", ".join(f"{k}={v:.4f}" for k, v in r.items() if k != "epoch"))
            if after_epoch is not None:
                after_epoch(epoch, r, history)
        self.finish()
        return history

    def run_steps(
        self,
        *,
        steps: int,
        batch: Callable[[int], Any],
        step: Callable[[Any, int], Mapping[str, float]],
        start: int = 0,
        history: list[dict[str, float]] | None = None,
        log_every: int = 50,
        row: Callable[[int, Sums, float], dict[str, float]],
        on_log: Callable[[dict[str, float]], None] | None = None,
        save_every: int | None = None,
        save: Callable[[int, bool], None] | None = None,
        desc: str = "train",
        postfix: Callable[[dict[str, float]], dict[str, str]] | None = None,
        seconds_before: float = 0.0,
    ) -> list[dict[str, float]]:
        """Optimizer steps ``start..steps-1`` on ``batch(step)``; a history row every ``log_every`` steps.

        The rows are appended to ``history`` in place (a ``save`` callback sees them).

        ``step(batch, i)`` returns additive sums; the sums of all ranks since the last row
        go to ``row(done_steps, sums, seconds)``. ``save(done, False)`` runs every
        ``save_every`` steps before the last; the caller saves the final state.
        """
        history = [] if history is None else history
        self.net.train()
        t0 = time.perf_counter() - seconds_before
        sums: Sums = {}
        bar = progress_bar(range(start, steps), total=steps, initial=start, desc=desc, enabled=self.show,
                           mininterval=2.0)
        with self._sync:
            for i in bar:
                for k, v in step(batch(i), i).items():
                    sums[k] = sums.get(k, 0.0) + v
                done = i + 1
                if done % log_every == 0 or done == steps:
                    r = row(done, self.reduce(sums), time.perf_counter() - t0)
                    history.append(r)
                    sums = {}
                    if postfix is not None and self.show:
                        bar.set_postfix(postfix(r), refresh=False)
                    if on_log is not None:
                        on_log(r)
                if save is not None and save_every is not None and done % save_every == 0 and done < steps:
                    save(done, False)
        self.finish()
        return history

    def finish(self) -> None:
        """Back to the contiguous layout and eval mode (the model as the caller gave it, on the device)."""
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        self.model.eval()

