"""Leaky integrate-and-fire over whole sequences, trainable with surrogate gradients.

Dynamics for each step ``t`` (``β`` = decay, ``θ`` = threshold)::

    H_t = β·V_{t-1} + α·X_t          α = 1, or α = 1 − β when the input is decayed
    S_t = H(H_t − θ)                  Heaviside: spike when H_t ≥ θ
    V_t = H_t − θ·S_t                 reset="subtract" (soft reset)
    V_t = H_t·(1 − S_t)               reset="zero"     (hard reset)

``β = 1`` gives the integrate-and-fire neuron (the converter's IF neuron of
:mod:`spikeforge.functional.neuron` with ``v_init = 0`` and Γ = 1). With
``decay_input`` the update is SpikingJelly's ``H = V + (X − V)/τ`` with
``β = 1 − 1/τ``.

:func:`lif_seq` runs the time loop of one layer in one autograd node: the forward
pass stores only ``H`` (``[T, N, ...]``, float32); the backward pass evaluates the
surrogate once over the whole sequence and runs the reverse-time recurrence

    dH_t = A_t + β·B_t·dH_{t+1},   A_t = ∂L/∂S_t·f'(H_t − θ) + ∂L/∂H_t

with ``B_t = ∂V_t/∂H_t`` (``1 − θ f'`` for subtract, ``(1 − S_t) − H_t f'`` for zero
reset; ``1`` and ``1 − S_t`` when the reset is detached), one fused multiply-add per
step. :func:`lif_seq_reference` is the plain step-by-step version it is tested against.
Neuron arithmetic is float32 even when the input is bfloat16 (autocast); spikes come
back in the input's dtype (0 and 1 are exact in bfloat16).
"""

from __future__ import annotations

import ctypes
from typing import Literal

import torch

from spikeforge.functional.neuron import empty_sequence
from spikeforge.surrogate import ATan, FastSigmoid, Sigmoid, Surrogate, Triangle

Reset = Literal["subtract", "zero"]


def check_lif(beta: float, threshold: float, reset: str, decay_input: bool) -> None:
    if reset not in ("subtract", "zero"):
        raise ValueError(f"reset must be 'subtract' or 'zero', got {reset!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta (decay) must be in [0, 1], got {beta}")
    if decay_input and beta >= 1.0:
        raise ValueError("decay_input needs beta < 1 (the input is scaled by 1 − beta)")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")


def _forward_loop(
    ax: torch.Tensor, T: int, constant: bool, beta: float, threshold: float, v: torch.Tensor,
    reset: str, out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The time loop: returns (spikes [T, ...] in out_dtype, H [T, ...] float32, V_T)."""
    slice_like = ax if constant else ax[0]
    h = empty_sequence(T, slice_like, ax.dtype)
    s = empty_sequence(T, slice_like, out_dtype)
    for t in range(T):
        ht, st = h[t], s[t]
        xt = ax if constant else ax[t]
        if beta == 1.0:
            torch.add(xt, v, out=ht)
        else:
            torch.add(xt, v, alpha=beta, out=ht)
        torch.ge(ht, threshold, out=st)
        if reset == "subtract":
            torch.sub(ht, st, alpha=threshold, out=v)
        else:
            torch.addcmul(ht, ht, st, value=-1.0, out=v)
    return s, h, v


def _native_surrogate(surrogate: Surrogate) -> tuple[int, float] | None:
    """(kernel id, parameter) of the built-in surrogates the C kernels know."""
    kinds = {ATan: (0, "alpha"), Sigmoid: (1, "alpha"), FastSigmoid: (2, "slope"), Triangle: (3, "width")}
    spec = kinds.get(type(surrogate))
    return None if spec is None else (spec[0], float(getattr(surrogate, spec[1])))


def _dense(x: torch.Tensor, constant: bool) -> torch.Tensor:
    """``x`` if its time slices are dense blocks in contiguous or channels-last order, else a contiguous copy."""
    if x.is_contiguous():
        return x
    sl = x if constant else x[0]
    cl = sl.dim() == 4 and sl.is_contiguous(memory_format=torch.channels_last)
    if cl and (constant or x.stride(0) == sl.numel()):
        return x
    return x.contiguous()


def _like(t: torch.Tensor | None, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` converted to ``dtype`` and laid out exactly like ``ref``."""
    if t is None:
        return None
    if t.dtype == dtype and t.stride() == ref.stride():
        return t
    return torch.empty_like(ref, dtype=dtype).copy_(t)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _choose_native(backend: str, x: torch.Tensor, surrogate: Surrogate):
    if backend == "torch":
        return None
    from spikeforge import _native

    ok = x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and _native_surrogate(surrogate)
    lib = _native.library() if ok else None
    if backend == "native" and lib is None:
        raise RuntimeError(
            "native LIF kernels requested but unavailable (no C compiler, SPIKEFORGE_NATIVE=0, "
            f"or unsupported input: dtype {x.dtype}, device {x.device}, surrogate {surrogate!r})"
        )
    return lib


class _LIFSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, beta_t, v0, steps, threshold, reset, decay_input, surrogate, detach_reset, backend):  # type: ignore[override]
        beta = float(beta_t)
        constant = steps is not None
        T = int(steps) if constant else x.shape[0]
        alpha = 1.0 - beta if decay_input else 1.0
        lib = _choose_native(backend, x, surrogate)
        if lib is not None:
            xd = _dense(x, constant)
            slice_like = xd if constant else xd[0]
            h = empty_sequence(T, slice_like, torch.float32)
            s = empty_sequence(T, slice_like, x.dtype)
            v = torch.empty_like(slice_like, dtype=torch.float32)
            v0m = _like(v0, v, torch.float32)
            fn = lib.sf_lif_forward_bf16 if x.dtype == torch.bfloat16 else lib.sf_lif_forward_f32
            fn(xd.data_ptr(), T, slice_like.numel(), int(constant), beta, alpha, threshold, int(reset == "zero"),
               _ptr(v0m), h.data_ptr(), s.data_ptr(), v.data_ptr(), 1.0, torch.get_num_threads(), 1)
            saved_x = xd
        else:
            x32 = x.float() if x.dtype in (torch.bfloat16, torch.float16) else x
            ax = x32 * alpha if alpha != 1.0 else x32
            v = v0.to(ax.dtype).clone() if v0 is not None else torch.zeros_like(ax if constant else ax[0])
            s, h, v = _forward_loop(ax, T, constant, beta, threshold, v, reset, x.dtype)
            saved_x, v0m = x, v0
        ctx.save_for_backward(h, saved_x, v0m if v0m is not None else torch.empty(0))
        ctx.cfg = (beta, T, constant, threshold, reset, decay_input, surrogate, detach_reset, v0 is not None, lib)
        ctx.mark_non_differentiable(v)
        ctx.set_materialize_grads(False)
        return s, h, v

    @staticmethod
    def backward(ctx, grad_s, grad_h, grad_v):  # type: ignore[override]
        h, x, v0 = ctx.saved_tensors
        beta, T, constant, th, reset, decay_input, surrogate, detach_reset, has_v0, lib = ctx.cfg
        need_x, need_beta, need_v0 = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if lib is not None and not need_v0:
            return _native_backward(lib, ctx, h, x, v0 if has_v0 else None, grad_s, grad_h, need_beta)
        sg = surrogate.derivative_(h - th)  # f'(H − θ), computed once
        B: torch.Tensor | None = None  # ∂V_t/∂H_t (None: identically 1)
        if reset == "subtract":
            if not detach_reset:
                B = torch.mul(sg, -th).add_(1.0)
        else:
            B = (h < th).to(h.dtype)
            if not detach_reset:
                B.addcmul_(h, sg, value=-1.0)
        if grad_s is not None:
            A = sg.mul_(grad_s.to(h.dtype))
            if grad_h is not None:
                A.add_(grad_h)
        else:
            A = grad_h.clone() if grad_h is not None else torch.zeros_like(h)
        # Reverse-time recurrence dH_t = A_t + β·B_t·dH_{t+1}, in place in A.
        if beta != 0.0:
            for t in range(T - 2, -1, -1):
                if B is None:
                    A[t].add_(A[t + 1], alpha=beta)
                else:
                    A[t].addcmul_(B[t], A[t + 1], value=beta)
        dh = A
        alpha = 1.0 - beta if decay_input else 1.0
        gx = None
        if need_x:
            gx = dh.sum(0) if constant else dh
            if alpha != 1.0:
                gx = gx * alpha
            gx = gx.to(x.dtype)
        gbeta = None
        if need_beta:
            fired = (h >= th).to(h.dtype)
            v_after = h - th * fired if reset == "subtract" else h * (1.0 - fired)
            first = v0.to(h.dtype) if has_v0 else torch.zeros_like(h[0])
            v_prev = torch.cat([first.unsqueeze(0), v_after[:-1]], dim=0)
            total = (dh * v_prev).sum()
            if decay_input:
                xs = x.to(h.dtype) if not constant else x.to(h.dtype).unsqueeze(0)
                total = total - (dh * xs).sum()
            gbeta = total.reshape(())
        gv0 = beta * dh[0] if (need_v0 and has_v0) else None
        return gx, gbeta, gv0, None, None, None, None, None, None, None


def _native_backward(lib, ctx, h, x, v0, grad_s, grad_h, need_beta):
    beta, T, constant, th, reset, decay_input, surrogate, detach_reset, _, _ = ctx.cfg
    io = x.dtype
    gs = _like(grad_s, h, io) if grad_s is not None else torch.zeros_like(h, dtype=io)
    gh = _like(grad_h, h, torch.float32)
    gx = torch.empty_like(h[0] if constant else h, dtype=io)
    kind, param = _native_surrogate(surrogate)  # type: ignore[misc]
    gbeta = ctypes.c_double(0.0)
    fn = lib.sf_lif_backward_bf16 if io == torch.bfloat16 else lib.sf_lif_backward_f32
    fn(h.data_ptr(), _ptr(gs), _ptr(gh), gx.data_ptr(), T, h[0].numel(), int(constant), beta,
       1.0 - beta if decay_input else 1.0, th, int(reset == "zero"), int(detach_reset), kind, param,
       x.data_ptr(), _ptr(v0), int(decay_input), ctypes.byref(gbeta) if need_beta else None, torch.get_num_threads())
    gb = torch.tensor(gbeta.value, dtype=torch.float64) if need_beta else None
    return gx, gb, None, None, None, None, None, None, None, None


def lif_seq(
    x: torch.Tensor,
    *,
    beta: float | torch.Tensor = 1.0,
    threshold: float = 1.0,
    v: torch.Tensor | None = None,
    reset: Reset = "subtract",
    decay_input: bool = False,
    surrogate: Surrogate | None = None,
    detach_reset: bool = False,
    steps: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LIF/IF neurons over a sequence, differentiable with a surrogate gradient.

    Args:
        x: input currents ``[T, N, ...]``; or, with ``steps``, one slice ``[N, ...]``
            applied at every step (direct input: never copied T times).
        beta: decay β in [0, 1] (1 = IF); a 0-dim tensor that requires grad learns it.
        threshold: θ > 0.
        v: initial membrane ``[N, ...]`` (zeros when None).
        reset: ``"subtract"`` or ``"zero"``.
        decay_input: scale the input by ``1 − β`` (SpikingJelly's ``decay_input``).
        surrogate: the surrogate gradient (ATan(2) when None).
        detach_reset: treat the reset as a constant in the backward pass.
        steps: number of steps for a constant input slice.
        backend: ``"auto"`` (the compiled kernels of :mod:`spikeforge._native` when
            available, else PyTorch ops), ``"torch"`` or ``"native"``.

    Returns:
        ``(S, H, V)``: spikes ``[T, N, ...]`` (dtype of ``x``), the membrane before reset
        ``[T, N, ...]`` (float32, differentiable: a loss may use it) and the final
        membrane ``[N, ...]`` (not differentiable).
    """
    beta_t = beta if isinstance(beta, torch.Tensor) else torch.tensor(float(beta), dtype=torch.float64)
    check_lif(float(beta_t.detach()), float(threshold), reset, decay_input)
    if steps is not None and int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps is None and x.dim() < 2:
        raise ValueError(f"lif_seq expects [T, N, ...] input, got shape {tuple(x.shape)}")
    if backend not in ("auto", "torch", "native"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'native', got {backend!r}")
    return _LIFSequence.apply(
        x, beta_t, v, steps, float(threshold), reset, bool(decay_input), surrogate or ATan(), bool(detach_reset),
        backend,
    )


class SpikeFunction(torch.autograd.Function):
    """``S = H(u)`` forward, ``dS/du = f'(u)`` backward (used by the reference path)."""

    @staticmethod
    def forward(ctx, u, surrogate):  # type: ignore[override]
        ctx.save_for_backward(u)
        ctx.surrogate = surrogate
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (u,) = ctx.saved_tensors
        return grad * ctx.surrogate.derivative(u), None


def lif_step(
    v: torch.Tensor,
    x: torch.Tensor,
    *,
    beta: float | torch.Tensor = 1.0,
    threshold: float = 1.0,
    reset: Reset = "subtract",
    decay_input: bool = False,
    surrogate: Surrogate | None = None,
    detach_reset: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One LIF step with ordinary autograd ops: returns ``(S_t, H_t, V_t)``."""
    surrogate = surrogate or ATan()
    inp = (1 - beta) * x if decay_input else x
    h = beta * v + inp
    s = SpikeFunction.apply(h - threshold, surrogate)
    r = s.detach() if detach_reset else s
    v = h - threshold * r if reset == "subtract" else h * (1 - r)
    return s, h, v


def lif_seq_reference(
    x: torch.Tensor,
    *,
    beta: float | torch.Tensor = 1.0,
    threshold: float = 1.0,
    v: torch.Tensor | None = None,
    reset: Reset = "subtract",
    decay_input: bool = False,
    surrogate: Surrogate | None = None,
    detach_reset: bool = False,
    steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step-by-step :func:`lif_seq` (readable, slow): the reference for tests."""
    T = int(steps) if steps is not None else x.shape[0]
    v = torch.zeros_like(x if steps is not None else x[0]) if v is None else v
    ss, hs = [], []
    for t in range(T):
        s, h, v = lif_step(
            v, x if steps is not None else x[t], beta=beta, threshold=threshold, reset=reset,
            decay_input=decay_input, surrogate=surrogate, detach_reset=detach_reset,
        )
        ss.append(s)
        hs.append(h)
    return torch.stack(ss), torch.stack(hs), v


def if_forward_native(
    x: torch.Tensor, *, threshold: float, v: torch.Tensor | None, v_init: float, reset: str,
    steps: int | None, scale_output: bool, max_spikes: int = 1,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The converter's IF neuron (scalar θ, any Γ) on the compiled kernels, or None.

    Same contract as :func:`spikeforge.functional.neuron.if_seq` for that case: returns
    ``(S or θ·S, V_T)``. Nothing is kept for a backward pass.
    """
    if x.requires_grad or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    if max_spikes > 1 and not threshold > 0:  # the burst kernel's "fired" test assumes θ > 0
        return None
    from spikeforge import _native

    lib = _native.library()
    if lib is None:
        return None
    constant = steps is not None
    T = int(steps) if constant else x.shape[0]
    xd = _dense(x, constant)
    slice_like = xd if constant else xd[0]
    s = empty_sequence(T, slice_like, x.dtype)
    vT = torch.empty_like(slice_like, dtype=torch.float32)
    if v is not None:
        v0 = _like(v, vT, torch.float32)
    elif v_init:
        v0 = torch.full_like(vT, v_init * threshold)
    else:
        v0 = None
    fn = lib.sf_lif_forward_bf16 if x.dtype == torch.bfloat16 else lib.sf_lif_forward_f32
    fn(xd.data_ptr(), T, slice_like.numel(), int(constant), 1.0, 1.0, threshold, int(reset == "zero"), _ptr(v0),
       None, s.data_ptr(), vT.data_ptr(), threshold if scale_output else 1.0, torch.get_num_threads(), max_spikes)
    return s, vT
