"""Losses for directly trained SNNs. Outputs are sequences ``[T, N, C]``.

* :func:`ce_membrane` — Σ_t CE(H_t, y): cross-entropy on the output membrane at every
  step, summed over steps (seed 002, snnTorch's tutorial).
* :func:`tet` — (1/T) Σ_t CE(H_t, y): the same per-step loss averaged over the steps,
  the temporal efficient training loss of Deng et al. (ICLR 2022) without its optional
  MSE regulariser. With Adam it trains like ``ce-membrane`` (Adam ignores the scale of
  the loss); with SGD the mean keeps the step size independent of ``T``.
* :func:`mse_rate` — MSE(mean_t S_t, onehot(y)): firing rate against the one-hot label
  (seed 004, SpikingJelly's tutorial).
* :func:`ce_rate` — CE(scale · mean_t S_t, y): cross-entropy on firing rates (spike
  counts / T); ``scale`` sets the logit range.

The cross-entropy losses take ``label_smoothing`` (the target puts ``1 − ε + ε/C`` on
the label and ``ε/C`` on every other class); :data:`SMOOTHABLE` names them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check(out: torch.Tensor, y: torch.Tensor) -> None:
    if out.dim() != 3:
        raise ValueError(f"loss expects outputs [T, N, C], got shape {tuple(out.shape)}")
    if y.shape != (out.shape[1],):
        raise ValueError(f"labels {tuple(y.shape)} do not match the batch of outputs {tuple(out.shape)}")


def _smoothing(label_smoothing: float) -> float:
    if not (math.isfinite(label_smoothing) and 0.0 <= label_smoothing < 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    return float(label_smoothing)


def ce_membrane(membrane: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Σ_t mean_n CE(H_t[n], y[n])."""
    _check(membrane, y)
    T, N, C = membrane.shape
    return F.cross_entropy(membrane.float().reshape(T * N, C), y.repeat(T), reduction="sum",
                           label_smoothing=_smoothing(label_smoothing)) / N


def tet(membrane: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """(1/T) Σ_t mean_n CE(H_t[n], y[n]): the per-step loss of TET, averaged over steps."""
    return ce_membrane(membrane, y, label_smoothing=label_smoothing) / membrane.shape[0]


def mse_rate(spikes: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean over n, c of (mean_t S_t[n, c] − onehot(y)[n, c])²."""
    _check(spikes, y)
    rate = spikes.float().mean(0)
    return F.mse_loss(rate, F.one_hot(y, rate.shape[1]).to(rate.dtype))


def ce_rate(spikes: torch.Tensor, y: torch.Tensor, *, scale: float = 10.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """CE(scale · mean_t S_t, y)."""
    _check(spikes, y)
    return F.cross_entropy(scale * spikes.float().mean(0), y, label_smoothing=_smoothing(label_smoothing))


LOSSES = {"ce-membrane": ce_membrane, "tet": tet, "mse-rate": mse_rate, "ce-rate": ce_rate}
#: Losses on the output membrane (the others take the output spikes).
MEMBRANE_LOSSES = ("ce-membrane", "tet")
#: Losses that accept ``label_smoothing``.
SMOOTHABLE = ("ce-membrane", "tet", "ce-rate")
