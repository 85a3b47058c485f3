"""Classification metrics for outputs that arrive one time step at a time."""

from __future__ import annotations

import torch


def cumulative_mean(outputs: torch.Tensor) -> torch.Tensor:
    """Running mean over time: ``m_t = (1/t) Σ_{s≤t} y_s`` for ``outputs`` ``[T, N, ...]``."""
    T = outputs.shape[0]
    steps = torch.arange(1, T + 1, dtype=outputs.dtype, device=outputs.device)
    return outputs.cumsum(0) / steps.view(T, *([1] * (outputs.dim() - 1)))


def correct_per_step(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of correct argmax predictions after each step ``[T]`` (running-sum decision)."""
    if outputs.dim() != 3:
        raise ValueError(f"expected per-step logits [T, N, classes], got shape {tuple(outputs.shape)}")
    if labels.shape != outputs.shape[1:2]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match batch {outputs.shape[1]}")
    pred = outputs.cumsum(0).argmax(-1)
    return (pred == labels.view(1, -1)).sum(1)


def accuracy_per_step(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy after each step t = 1..T, from one pass over ``[T, N, classes]`` outputs."""
    return correct_per_step(outputs, labels).double() / labels.numel()


def largest_drop(accuracy: list[float], start: int = 16) -> dict[str, float | int | None]:
    """Largest fall of a per-step accuracy curve below an earlier value, from step ``start`` on.

    ``accuracy[t - 1]`` is the accuracy after step ``t``. Returns ``{"from_step": start,
    "drop": d, "peak_step": t1, "low_step": t2}`` where ``d = acc(t1) − acc(t2)`` is the
    largest over ``start ≤ t1 < t2 ≤ T`` (0 and None steps when the curve never falls).
    This is the "never falls as T grows" check of a converted SNN.
    """
    if start < 1:
        raise ValueError(f"start must be >= 1, got {start}")
    best_t, drop, pair = None, 0.0, (None, None)
    for t in range(start, len(accuracy) + 1):
        a = accuracy[t - 1]
        if best_t is None or a > accuracy[best_t - 1]:
            best_t = t
        elif accuracy[best_t - 1] - a > drop:
            drop, pair = accuracy[best_t - 1] - a, (best_t, t)
    return {"from_step": start, "drop": drop, "peak_step": pair[0], "low_step": pair[1]}
