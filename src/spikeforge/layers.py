"""Spiking max-pooling layers with state over time.

Both run a chunk of K steps at once (``[K·N, C, H, W]``) and keep their running sums
between chunks, so they work for any kernel, stride, padding and dilation.

*Lateral-inhibition pooling* (LIPool): with accumulated input ``A_t = Σ_{s≤t} x_s``
and per-window state ``S_t``, ``o_t = MP(S_t)`` then ``S_t −= unpool(o_t)``, where every
unit of a window is inhibited by the window's output. Then the summed output is
``Σ_{s≤t} o_s = MP(A_t)`` exactly, so ``o_t = MP(A_t) − MP(A_{t−1})``, which is what
:class:`SpikingMaxPool2d` evaluates (vectorized over the chunk).

*Gated max-pool*: ``o_t = MP(x_t + M·A_t) − MP(M·A_t)`` with M large, i.e. pass the
current input of the unit that has fired most so far (ties go to the larger input).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spikeforge.functional.neuron import empty_sequence
from spikeforge.neurons import StatefulModule

POOL_MODES: tuple[str, ...] = ("lipool", "gated", "plain")


class SpikingMaxPool2d(StatefulModule):
    """Max-pooling of spike trains.

    Args:
        kernel_size, stride, padding, dilation, ceil_mode: as :class:`torch.nn.MaxPool2d`.
        mode: ``"lipool"`` (lateral inhibition, default), ``"gated"`` (pass the most
            active unit), or ``"plain"`` (ordinary max-pool applied to each step's
            spikes; biased upward, kept for comparison).
    """

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        dilation=1,
        ceil_mode: bool = False,
        *,
        mode: str = "lipool",
    ) -> None:
        super().__init__()
        # True while the converter calibrates: the pool then acts as the ANN's max-pool on
        # one analog batch (there is no time axis yet).
        self.analog = False
        if mode not in POOL_MODES:
            raise ValueError(f"max-pool mode must be one of {POOL_MODES}, got {mode!r}")
        self.kernel_size = kernel_size
        self.stride = stride if stride is not None else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode
        self.mode = mode
        k, st = _pair(kernel_size), _pair(self.stride)
        simple = k == st and _pair(padding) == (0, 0) and _pair(dilation) == (1, 1) and not ceil_mode
        self._tiled = k if simple else None
        self.acc: torch.Tensor | None = None  # A_{t-1}: accumulated input
        self.pooled: torch.Tensor | None = None  # MP(A_{t-1}) (lipool)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"mode={self.mode}"
        )

    def reset_state(self) -> None:
        self.acc = None
        self.pooled = None

    def _pool(self, x: torch.Tensor, return_indices: bool = False):
        if not return_indices and self._tiled is not None:
            return tiled_max_pool2d(x, self._tiled)
        return F.max_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            ceil_mode=self.ceil_mode,
            return_indices=return_indices,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.analog:
            return self._pool(x)
        xs, static, K = self._split(x)
        if static:
            # A constant input pools to a constant output in every mode.
            return self._pool(x)
        N = xs.shape[1]
        if self.mode == "plain":
            out = self._pool(xs.reshape(K * N, *xs.shape[2:]))
            return out if self.clock is not None else out.view(K, N, *out.shape[1:])
        if self.mode == "lipool":
            if torch.is_grad_enabled() and xs.requires_grad:  # end-to-end calibration: keep the graph
                out = self._lipool_autograd(xs)
                return out if self.clock is None else out.view(K * N, *out.shape[2:])
            out = self._lipool_native(xs)
            if out is None:
                out = self._lipool_steps(xs)
            return out if self.clock is None else out.view(K * N, *out.shape[2:])
        # gated: the unit with the largest accumulated input passes its current input
        acc = torch.cumsum(xs, dim=0)
        if self.acc is not None:
            acc += self.acc
        self.acc = acc[-1].clone()
        flat = acc.reshape(K * N, *xs.shape[2:])
        key = flat.double() * 1e6 + xs.reshape(K * N, *xs.shape[2:]).double()
        _, idx = self._pool(key, return_indices=True)
        src = xs.reshape(K * N, xs.shape[2], -1)
        out = src.gather(2, idx.flatten(2)).view(K, N, *idx.shape[1:])
        if self.clock is None:
            return out
        return out.reshape(K * N, *out.shape[2:])

    def _lipool_autograd(self, xs: torch.Tensor) -> torch.Tensor:
        """LIPool in out-of-place PyTorch ops, so that gradients reach the input (each
        output step is ``MP(A_t) − MP(A_{t−1})``; the max passes its gradient to the unit
        holding it). The same values as :meth:`_lipool_steps`; float32 state."""
        acc, prev, outs = self.acc, self.pooled, []
        for k in range(xs.shape[0]):
            acc = xs[k].float() if acc is None else acc + xs[k].float()
            pooled = F.max_pool2d(acc, self.kernel_size, self.stride, self.padding, self.dilation,
                                  ceil_mode=self.ceil_mode)
            outs.append(pooled if prev is None else pooled - prev)
            prev = pooled
        self.acc, self.pooled = acc, prev
        return torch.stack(outs).to(xs.dtype)

    def _lipool_steps(self, xs: torch.Tensor) -> torch.Tensor:
        """LIPool in PyTorch ops, one step after the other (any kernel, stride, padding).

        The running sum and the maxima are float32 (also for bfloat16 input) and are
        updated in the same order as the native kernels, so both give the same bits.
        """
        K = xs.shape[0]
        if self.acc is None:
            self.acc = torch.zeros_like(xs[0], dtype=torch.float32)
        elif self.acc.dtype != torch.float32:
            self.acc = self.acc.float()
        acc = self.acc
        prev = self.pooled
        out: torch.Tensor | None = None
        for k in range(K):
            acc.add_(xs[k])
            pooled = self._pool(acc)
            if out is None:
                out = empty_sequence(K, pooled, xs.dtype)
            if prev is None:
                out[k].copy_(pooled)
            else:
                torch.sub(pooled, prev, out=out[k])
            prev = pooled
        self.pooled = prev
        assert out is not None
        return out

    def _lipool_native(self, xs: torch.Tensor) -> torch.Tensor | None:
        """LIPool on the compiled kernels, or None: kernel = stride, float32 or bfloat16
        time slices that are contiguous or channels-last; float32 state in that layout."""
        if (self._tiled is None or xs.dim() != 5 or xs.dtype not in (torch.float32, torch.bfloat16)
                or xs.device.type != "cpu"):
            return None
        K, N, C, H, W = xs.shape
        if xs.is_contiguous():
            fmt = torch.contiguous_format
        elif _channels_last(xs):
            fmt = torch.channels_last
        else:
            return None
        from spikeforge import _native

        lib = _native.library()
        if lib is None:
            return None
        kh, kw = self._tiled
        Ho, Wo = H // kh, W // kw
        if self.acc is None:
            self.acc = torch.zeros((N, C, H, W)).contiguous(memory_format=fmt)
            self.pooled = torch.zeros((N, C, Ho, Wo)).contiguous(memory_format=fmt)
        else:  # carried over from a chunk of another layout or dtype (not the case in one run)
            self.acc = self.acc.float().contiguous(memory_format=fmt)
            pooled = self.pooled if self.pooled is not None else self._pool(self.acc)
            self.pooled = pooled.float().contiguous(memory_format=fmt)
        out = torch.empty((K * N, C, Ho, Wo), dtype=xs.dtype, memory_format=fmt)
        bf = xs.dtype == torch.bfloat16
        state = (kh, kw, self.acc.data_ptr(), self.pooled.data_ptr(), out.data_ptr(), torch.get_num_threads())
        if fmt == torch.channels_last:
            fn = lib.sf_lipool_cl_bf16 if bf else lib.sf_lipool_cl_f32
            fn(xs.data_ptr(), K, N, H, W, C, *state)
        else:
            fn = lib.sf_lipool_bf16 if bf else lib.sf_lipool_f32
            fn(xs.data_ptr(), K, N * C, H, W, *state)
        return out.view(K, N, C, Ho, Wo)


def _channels_last(xs: torch.Tensor) -> bool:
    """Whether ``[K, N, C, H, W]`` holds channels-last ``[K·N, C, H, W]`` images back to back."""
    K, N, C, H, W = xs.shape
    want = (N * H * W * C, H * W * C, 1, W * C, C)
    return all(size == 1 or got == w for size, got, w in zip(xs.shape, xs.stride(), want))


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def tiled_max_pool2d(x: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """Max-pool with kernel = stride and no padding as element-wise maxima of strided views.

    Equals ``F.max_pool2d(x, kernel)``; on CPU it is several times faster for small
    kernels because it runs as a few vectorized passes.
    """
    kh, kw = kernel
    H, W = x.shape[-2] // kh * kh, x.shape[-1] // kw * kw
    out = x[..., 0:H:kh, 0:W:kw].clone()
    for i in range(kh):
        for j in range(kw):
            if i or j:
                torch.maximum(out, x[..., i:H:kh, j:W:kw], out=out)
    return out


def lipool_reference(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Step-by-step LIPool for kernel = stride (explicit inhibition), for tests.

    ``S_t = S_{t-1} + x_t``; ``o_t = MP(S_t)``; ``S_t −= upsample(o_t)``.
    """
    state = torch.zeros_like(x[0])
    outs = []
    for t in range(x.shape[0]):
        state = state + x[t]
        o = F.max_pool2d(state, kernel_size)
        state = state - F.interpolate(o, scale_factor=kernel_size, mode="nearest")
        outs.append(o)
    return torch.stack(outs)


class MultiStep(nn.Module):
    """Run a stateless layer on a ``[T, N, ...]`` sequence as one ``[T·N, ...]`` batch."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, N = x.shape[:2]
        y = self.layer(x.reshape(T * N, *x.shape[2:]))
        return y.view(T, N, *y.shape[1:])


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation for conversion-aware ANN training.

    ``λ·clip(floor(x·L/λ + 1/2)/L, 0, 1)`` with a trainable ceiling λ (``threshold``),
    L levels and a straight-through gradient for the floor (Bu et al., "Optimal
    ANN-SNN conversion for high-accuracy and ultra-low-latency SNNs", ICLR 2022).
    It is the average output of an IF neuron with threshold λ and initial membrane
    λ/2 after L steps, so a network trained with it converts with little loss after a
    few dozen steps even when it is deep. The converter turns each call site into an
    IF neuron whose threshold is the learnt λ (no calibration statistics needed).
    """

    def __init__(self, levels: int = 8, threshold: float = 4.0) -> None:
        super().__init__()
        if int(levels) != levels or levels < 1:
            raise ValueError(f"levels must be a positive integer, got {levels!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        self.levels = int(levels)
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    def extra_repr(self) -> str:
        return f"levels={self.levels}, threshold={float(self.threshold):.4g}"

    @property
    def ceiling(self) -> torch.Tensor:
        """λ as used in the forward pass: ``|threshold| + 1e-6`` (positive whatever the parameter's sign)."""
        return self.threshold.abs() + 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QCFSFunction.apply(x, self.ceiling, self.levels)


def qcfs_reference(x: torch.Tensor, lam: torch.Tensor, levels: int) -> torch.Tensor:
    """QCFS written with autograd's own operations (the definition :class:`QCFS` computes)."""
    y = torch.clamp(x / lam, 0, 1) * levels
    y = y + (torch.floor(y + 0.5) - y).detach()  # straight-through floor
    return y * (lam / levels)


class _QCFSFunction(torch.autograd.Function):
    """:func:`qcfs_reference` in one autograd node.

    The forward pass runs the same operations in the same order (identical values in
    every dtype), in place on one buffer; the backward pass recomputes the clip mask and
    the levels from the saved input instead of keeping five intermediate tensors:
    ``∂/∂x = g·[0 ≤ x/λ ≤ 1]`` and ``∂/∂λ = Σ g·q/L − Σ g·(x/λ)·[0 ≤ x/λ ≤ 1]`` (q the
    integer level; the floor passes gradients straight through). On a half-width ResNet-18
    training step this is what made QCFS cost about twice a ReLU.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor, levels: int) -> torch.Tensor:
        q = x / lam
        q.clamp_(0, 1).mul_(levels).add_(0.5).floor_()
        ctx.save_for_backward(x, lam)
        ctx.levels = levels
        return q.mul_(lam / levels)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, lam = ctx.saved_tensors
        t = x / lam
        # grad where 0 ≤ t ≤ 1: two threshold_backward calls (grad where self > threshold), which
        # stay vectorized in bfloat16 where boolean masks do not; -tiny keeps both bounds inclusive
        grad_x = torch.ops.aten.threshold_backward(grad, t, -1e-30)
        grad_x = torch.ops.aten.threshold_backward(grad_x, torch.rsub(t, 1), -1e-30)
        grad_lam = None
        if ctx.needs_input_grad[1]:
            q = t.clamp(0, 1).mul_(ctx.levels).add_(0.5).floor_()
            grad_lam = (grad * q).sum(dtype=torch.float32) / ctx.levels - (grad_x * t).sum(dtype=torch.float32)
            grad_lam = grad_lam.to(lam.dtype)
        return grad_x, grad_lam, None
