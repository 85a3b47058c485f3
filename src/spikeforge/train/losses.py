"""Losses for directly trained SNNs. Outputs are sequences ``[T, N, C]``.

* :func:`ce_membrane` — Σ_t CE(H_t, y): cross-entropy on the output membrane at every
  step, summed over steps (seed 002, snnTorch's tutorial).
* :func:`mse_rate` — MSE(mean_t S_t, onehot(y)): firing rate against the one-hot label
  (seed 004, SpikingJelly's tutorial).
* :func:`ce_rate` — CE(scale · mean_t S_t, y): cross-entropy on firing rates (spike
  counts / T); ``scale`` sets the logit range.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(out: torch.Tensor, y: torch.Tensor) -> None:
    if out.dim() != 3:
        raise ValueError(f"loss expects outputs [T, N, C], got shape {tuple(out.shape)}")
    if y.shape != (out.shape[1],):
        raise ValueError(f"labels {tuple(y.shape)} do not match the batch of outputs {tuple(out.shape)}")


def ce_membrane(membrane: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_t mean_n CE(H_t[n], y[n])."""
    _check(membrane, y)
    T, N, C = membrane.shape
    return F.cross_entropy(membrane.float().reshape(T * N, C), y.repeat(T), reduction="sum") / N


def mse_rate(spikes: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean over n, c of (mean_t S_t[n, c] − onehot(y)[n, c])²."""
    _check(spikes, y)
    rate = spikes.float().mean(0)
    return F.mse_loss(rate, F.one_hot(y, rate.shape[1]).to(rate.dtype))


def ce_rate(spikes: torch.Tensor, y: torch.Tensor, *, scale: float = 10.0) -> torch.Tensor:
    """CE(scale · mean_t S_t, y)."""
    _check(spikes, y)
    return F.cross_entropy(scale * spikes.float().mean(0), y)


LOSSES = {"ce-membrane": ce_membrane, "mse-rate": mse_rate, "ce-rate": ce_rate}
