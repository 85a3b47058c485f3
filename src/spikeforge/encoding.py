"""Input encoders: images ``[N, ...]`` in [0, 1] → spike or current sequences ``[T, N, ...]``.

* :func:`direct` — the analog image at every step (seed 004's CSNN: the first
  conv-BN-neuron block is the encoder). Returned as an expanded view: no copy.
* :func:`poisson` — rate coding: at each step a pixel fires with probability equal to
  its intensity (Bernoulli per step, the discrete-time Poisson process); seeded.
* :func:`latency` — time-to-first-spike: one spike per pixel at step
  ``round((1 − x)·(T − 1))`` (bright pixels fire first); pixels below ``threshold``
  never fire.
"""

from __future__ import annotations

import torch


def _check(x: torch.Tensor, T: int) -> None:
    if int(T) != T or T < 1:
        raise ValueError(f"T must be a positive number of time steps, got {T!r}")
    if not torch.isfinite(x).all():
        raise ValueError("encoder input contains NaN or infinite values")


def direct(x: torch.Tensor, T: int) -> torch.Tensor:
    """``x`` repeated over T steps, ``[T, N, ...]`` (an expanded view, no copy)."""
    _check(x, T)
    return x.unsqueeze(0).expand(T, *x.shape)


def poisson(x: torch.Tensor, T: int, *, generator: torch.Generator | None = None,
            rows: tuple[int, int, int] | None = None) -> torch.Tensor:
    """Bernoulli spikes with ``P(spike at t) = clamp(x, 0, 1)``, ``[T, N, ...]``.

    The uniform numbers come from ``generator`` on its own device and then move to
    ``x``'s (a CPU generator gives the same spikes on every device). ``rows=(start, end,
    total)`` says that ``x`` holds rows ``start:end`` of a batch of ``total``: the numbers
    of the whole batch are drawn and this share's are kept, so the shares of a
    data-parallel run see the spikes of a one-process run.
    """
    _check(x, T)
    p = x.clamp(0, 1)
    device = generator.device if generator is not None else p.device
    if rows is None:
        u = torch.rand((T, *x.shape), generator=generator, dtype=p.dtype, device=device)
    else:
        start, end, total = rows
        if end - start != x.shape[0] or not 0 <= start <= end <= total:
            raise ValueError(f"rows {rows} do not describe a share of {x.shape[0]} rows")
        u = torch.rand((T, total, *x.shape[1:]), generator=generator, dtype=p.dtype, device=device)[:, start:end]
    return (u.to(p.device) < p).to(x.dtype)


def latency(x: torch.Tensor, T: int, *, threshold: float = 0.01) -> torch.Tensor:
    """One spike per pixel at step ``round((1 − x)(T − 1))``; none where ``x < threshold``."""
    _check(x, T)
    p = x.clamp(0, 1)
    t_fire = torch.round((1 - p) * (T - 1)).long()
    steps = torch.arange(T, device=x.device).view(T, *([1] * x.dim()))
    return ((steps == t_fire.unsqueeze(0)) & (p >= threshold).unsqueeze(0)).to(x.dtype)


ENCODERS = ("direct", "poisson", "latency")
