"""Pure integrate-and-fire dynamics over time sequences.

Layout: a sequence is a tensor ``[T, N, ...]``; time is the first dimension. Every
function here is stateless: the membrane potential goes in and comes out explicitly,
so the module wrappers in :mod:`spikeforge.neurons` only hold tensors.

Integrate-and-fire with threshold ``θ`` (scalar or a tensor broadcastable to one
time slice), for each step ``t``::

    V_t = V_{t-1} + X_t                      (integrate)
    S_t = clamp(floor(V_t / θ), 0, Γ)        (fire: Γ = max_spikes, 1 = ordinary spikes)
    V_t = V_t - θ·S_t                        (reset="subtract", the soft reset)
    V_t = 0          where S_t > 0           (reset="zero", the hard reset)

With ``Γ = 1`` the fire rule is the Heaviside step ``S_t = [V_t ≥ θ]``. With
``Γ > 1`` (burst spikes, Li & Zeng 2022) a neuron may emit up to Γ spikes in one step.
"""

from __future__ import annotations

from typing import Literal

import torch

Reset = Literal["subtract", "zero"]
RESETS: tuple[str, ...] = ("subtract", "zero")


def _check(reset: str, max_spikes: int) -> None:
    if reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    if int(max_spikes) != max_spikes or max_spikes < 1:
        raise ValueError(f"max_spikes (Γ) must be an integer >= 1, got {max_spikes!r}")


def if_fire(v: torch.Tensor, threshold: torch.Tensor | float, max_spikes: int = 1) -> torch.Tensor:
    """Spike count of one step: ``clamp(floor(v/θ), 0, Γ)`` (``[v ≥ θ]`` when Γ=1)."""
    if max_spikes == 1:
        return (v >= threshold).to(v.dtype)
    return torch.floor(v / threshold).clamp_(0, max_spikes)


def if_step(
    v: torch.Tensor,
    x: torch.Tensor,
    *,
    threshold: torch.Tensor | float = 1.0,
    reset: Reset = "subtract",
    max_spikes: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One integrate-and-fire step (reference implementation, not in-place).

    Returns ``(S_t, V_t)``: the spike count and the membrane after reset.
    """
    _check(reset, max_spikes)
    v = v + x
    s = if_fire(v, threshold, max_spikes)
    if reset == "subtract":
        v = v - s * threshold
    else:
        v = torch.where(s > 0, torch.zeros_like(v), v)
    return s, v


def initial_membrane(
    like: torch.Tensor, threshold: torch.Tensor | float, v_init: float
) -> torch.Tensor:
    """Membrane at t=0: ``v_init · θ`` broadcast to the shape of one time slice.

    The membrane has the memory layout of ``like`` (e.g. channels-last).
    """
    v = torch.zeros_like(like)
    if v_init:
        v.add_(v_init * threshold if isinstance(threshold, torch.Tensor) else v_init * float(threshold))
    return v


def empty_sequence(T: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uninitialized ``[T, *like.shape]`` whose slices have the memory layout of ``like``
    (contiguous or channels-last), in ``dtype`` (default: ``like``'s)."""
    dtype = dtype or like.dtype
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        flat = torch.empty(
            (T * like.shape[0], *like.shape[1:]), dtype=dtype, device=like.device,
            memory_format=torch.channels_last,
        )
        return flat.view(T, *like.shape)
    return torch.empty((T, *like.shape), dtype=dtype, device=like.device)


def if_seq(
    x: torch.Tensor,
    *,
    threshold: torch.Tensor | float = 1.0,
    v: torch.Tensor | None = None,
    v_init: float = 0.0,
    reset: Reset = "subtract",
    max_spikes: int = 1,
    steps: int | None = None,
    scale_output: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate-and-fire over a whole sequence in one call (the fast path).

    Args:
        x: input currents ``[T, N, ...]``; or, when ``steps`` is given, one slice
            ``[N, ...]`` that is the same at every step (constant input is then never
            copied T times).
        threshold: θ, a float or a tensor broadcastable to ``[N, ...]`` (per channel).
        v: membrane carried over from an earlier call; ``None`` starts at ``v_init·θ``.
        v_init: initial membrane as a fraction of θ (0.5 halves the rounding error of
            rate coding); used only when ``v`` is None.
        reset: ``"subtract"`` (soft) or ``"zero"`` (hard).
        max_spikes: Γ, the most spikes one step may emit (1 = ordinary spikes).
        steps: number of steps when ``x`` is a constant slice.
        scale_output: return ``θ·S_t`` (spike values) instead of counts ``S_t``.

    Returns:
        ``(S, V)``: spikes ``[T, N, ...]`` (counts, or θ-scaled values) and the final
        membrane ``[N, ...]``.
    """
    _check(reset, max_spikes)
    if not isinstance(threshold, torch.Tensor) or threshold.numel() == 1:
        from spikeforge.functional.lif import if_forward_native

        fast = if_forward_native(
            x, threshold=float(threshold), v=v, v_init=v_init, reset=reset, steps=steps, scale_output=scale_output,
            max_spikes=max_spikes,
        )
        if fast is not None:
            return fast
    constant = steps is not None
    T = int(steps) if constant else x.shape[0]
    slice_like = x if constant else x[0]
    # bfloat16 input: membrane and spike arithmetic in float32 (as the native kernel),
    # spikes rounded to bfloat16 once when stored.
    low = x.dtype == torch.bfloat16
    if v is None:
        v = initial_membrane(torch.empty_like(slice_like, dtype=torch.float32) if low else slice_like,
                             threshold, v_init)
    else:
        v = v.to(torch.float32, copy=True) if low else v.clone()
    out = empty_sequence(T, slice_like)
    scratch = torch.empty_like(v) if low else None
    th = threshold
    for t in range(T):
        v.add_(x if constant else x[t])
        o = out[t] if scratch is None else scratch
        if max_spikes == 1:
            torch.ge(v, th, out=o)  # float output: much faster than a bool mask
        else:
            torch.div(v, th, out=o)
            o.floor_().clamp_(0, max_spikes)
        if reset == "subtract":
            if scale_output:
                o.mul_(th)
                v.sub_(o)
            else:
                v.sub_(o if isinstance(th, (int, float)) and th == 1.0 else o * th)
        else:
            v.masked_fill_(o > 0, 0.0)
            if scale_output:
                o.mul_(th)
        if scratch is not None:
            out[t].copy_(o)
    return out, v
