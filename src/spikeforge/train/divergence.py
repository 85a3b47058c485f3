"""Divergence detection shared by every training loop.

Each loop checks its loss at every step (:func:`check_loss`) and its weights and
buffers before anything is saved and at the end of training (:func:`check_weights`).
The first non-finite value stops training with a :class:`~spikeforge.errors.DivergenceError`
that says where it happened, names the option to change (the learning rate, ``--lr``)
and what was kept, so diverged weights never reach a checkpoint or a cached model.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from spikeforge.errors import ConfigError, DivergenceError

__all__ = ["MAX_LR", "check_loss", "check_lr", "check_weights", "nonfinite_tensors"]

#: Largest learning rate the loops accept: beyond it float32 optimizer arithmetic overflows.
MAX_LR = 1e6


def check_lr(lr: float, name: str = "lr") -> float:
    """``lr`` as a float when it is finite and in ``(0, MAX_LR]``, else :class:`ConfigError`."""
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {lr!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_LR):
        raise ConfigError(f"{name} must be a finite number in (0, {MAX_LR:g}], got {lr!r}")
    return value


def _advice(lr: float | None, option: str) -> str:
    now = f", now {lr:g}" if lr is not None else ""
    return f"lower the learning rate ({option}{now})"


def check_loss(loss: torch.Tensor, *, where: str, lr: float | None = None, option: str = "--lr",
               kept: str = "the diverged weights were not saved") -> None:
    """Raise :class:`DivergenceError` when ``loss`` is NaN or infinite."""
    if not bool(torch.isfinite(loss.detach()).all()):
        value = float(loss.detach().float().reshape(-1)[0])
        raise DivergenceError(f"training diverged: the loss became {value} at {where}; {_advice(lr, option)}; {kept}")


def nonfinite_tensors(*modules: nn.Module) -> list[str]:
    """Names of the parameters and floating-point buffers holding a NaN or an infinity."""
    bad: list[str] = []
    for module in modules:
        tensors: Iterable[tuple[str, torch.Tensor]] = list(module.named_parameters()) + list(module.named_buffers())
        for name, t in tensors:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad.append(name)
    return bad


def check_weights(*modules: nn.Module, where: str, lr: float | None = None, option: str = "--lr",
                  kept: str = "the diverged weights were not saved") -> None:
    """Raise :class:`DivergenceError` naming the layers whose weights are no longer finite."""
    bad = nonfinite_tensors(*modules)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DivergenceError(f"training diverged: the weights of {shown} became NaN or infinite at {where}; "
                              f"{_advice(lr, option)}; {kept}")
