"""Thin neuron modules over :mod:`spikeforge.functional` with explicit, resettable state.

A module's state is a plain tensor attribute (``v``); ``reset_state()`` clears it.
Modules run a whole chunk of time steps in one call. Inside a
:class:`~spikeforge.convert.SpikingModel` the time/batch layout of a chunk comes from a
shared :class:`Clock`; used on its own a neuron takes ``[T, N, ...]`` and returns the
same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from spikeforge.functional.lif import check_lif, lif_seq
from spikeforge.functional.neuron import RESETS, if_seq, initial_membrane
from spikeforge.surrogate import Surrogate, get_surrogate


@dataclass
class Clock:
    """Time layout of the chunk a :class:`SpikingModel` is running.

    Tensors flow between stateless layers as ``[steps·batch, ...]`` (time folded into
    the batch) or, when they are the same at every step of the run, as ``[batch, ...]``
    ("static"): with a constant input, every layer before the first neuron runs once.
    Which tensors are static is decided from the graph at conversion time
    (``StatefulModule.static_input``) and holds when ``input_static`` is true.
    """

    steps: int = 1
    batch: int = 0
    record: bool = True
    input_static: bool = False

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """A static ``[N, ...]`` tensor repeated over the chunk as ``[steps·N, ...]``."""
        if self.steps == 1:
            return x
        return x.unsqueeze(0).expand(self.steps, *x.shape).reshape(-1, *x.shape[1:])


class StatefulModule(nn.Module):
    """Base of modules that keep state over time inside a SpikingModel."""

    clock: Clock | None
    static_input: bool

    def __init__(self) -> None:
        super().__init__()
        self.clock = None
        self.static_input = False  # set by the converter from the graph

    def reset_state(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, bool, int]:
        """``(x as [K, N, ...] or [N, ...], static?, K)`` for the current chunk."""
        if self.clock is None:
            if x.dim() < 2:
                raise ValueError(
                    f"{type(self).__name__} expects [T, N, ...] input, got shape {tuple(x.shape)}"
                )
            return x, False, x.shape[0]
        K, N = self.clock.steps, self.clock.batch
        if self.static_input and self.clock.input_static:
            if x.shape[0] != N:
                raise ValueError(f"{type(self).__name__}: static input batch {x.shape[0]} is not {N}")
            return x, True, K
        if x.shape[0] != K * N:
            raise ValueError(
                f"{type(self).__name__}: input batch {x.shape[0]} is neither the batch {N} "
                f"nor steps×batch {K * N}"
            )
        return x.view(K, N, *x.shape[1:]), False, K


class IFNeuron(StatefulModule):
    """Integrate-and-fire neuron emitting θ-valued spikes (the converter's ReLU).

    ``V_t = V_{t-1} + X_t``; ``S_t = clamp(floor(V_t/θ), 0, Γ)``; output ``θ·S_t``;
    reset by subtraction (``V_t −= θ·S_t``) or to zero. Emitting ``θ·S_t`` instead of
    ``S_t`` keeps the next layer's weights unchanged, so adds and concatenations of
    differently balanced branches stay correct.

    Args:
        threshold: θ, a scalar or a per-channel tensor broadcastable to one sample.
        reset: ``"subtract"`` or ``"zero"``.
        max_spikes: Γ (burst spikes when > 1).
        v_init: initial membrane as a fraction of θ.
    """

    def __init__(
        self,
        threshold: torch.Tensor | float = 1.0,
        *,
        reset: str = "subtract",
        max_spikes: int = 1,
        v_init: float = 0.5,
    ) -> None:
        super().__init__()
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        th = torch.as_tensor(threshold, dtype=torch.float32)
        if not torch.isfinite(th).all() or (th <= 0).any():
            raise ValueError(f"thresholds must be finite and > 0, got {th.flatten()[:8].tolist()}")
        self.register_buffer("threshold", th)
        # Calibration corrections (Li et al. 2021), both None until set: a constant added
        # to the input current at every step (bias correction) and an offset of the
        # initial membrane (potential correction); each broadcasts to one sample [C, ...].
        self.register_buffer("input_bias", None)
        self.register_buffer("v_offset", None)
        self.reset = reset
        self.max_spikes = int(max_spikes)
        self.v_init = float(v_init)
        self.v: torch.Tensor | None = None
        self.spike_count = 0.0
        self.neuron_steps = 0
        # Set only during end-to-end calibration (spikeforge.convert.finetune): the trainable
        # corrections {"potential": ..., "bias": ...} that replace v_offset / input_bias, and
        # the forward pass becomes differentiable (surrogate gradient for the spike).
        self.surrogate_corrections: dict[str, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        th = self.threshold
        shown = f"{th.item():.4g}" if th.numel() == 1 else f"per-channel[{th.numel()}]"
        return f"threshold={shown}, reset={self.reset}, max_spikes={self.max_spikes}, v_init={self.v_init}"

    def reset_state(self) -> None:
        self.v = None
        self.spike_count = 0.0
        self.neuron_steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.surrogate_corrections is not None:
            return self._forward_surrogate(x)
        xs, static, K = self._split(x)
        th = self.threshold if self.threshold.numel() > 1 else float(self.threshold)
        if self.input_bias is not None:
            xs = xs + self.input_bias
        if self.v is None and self.v_offset is not None:
            self.v = initial_membrane(xs if static else xs[0], th, self.v_init).add_(self.v_offset)
        out, self.v = if_seq(
            xs,
            threshold=th,
            v=self.v,
            v_init=self.v_init,
            reset=self.reset,  # type: ignore[arg-type]
            max_spikes=self.max_spikes,
            steps=K if static else None,
            scale_output=True,
        )
        if self.clock is None or self.clock.record:
            if self.max_spikes == 1:
                self.spike_count += float(torch.count_nonzero(out))
            else:
                self.spike_count += float((out / self.threshold).sum())
            self.neuron_steps += out.numel()
        if self.clock is None:
            return out
        return out.view(-1, *out.shape[2:])

    @property
    def firing_rate(self) -> float:
        """Mean spikes per neuron per step since the last reset."""
        return self.spike_count / self.neuron_steps if self.neuron_steps else 0.0

    def _forward_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The same neuron (binary spikes, reset by subtraction) with ordinary autograd ops:
        the spike's gradient is the triangular surrogate of half-width θ (used by end-to-end
        calibration; slower than :meth:`forward`, float32 membranes)."""
        from spikeforge.functional.lif import SpikeFunction
        from spikeforge.surrogate import Triangle

        xs, static, K = self._split(x)
        corr = self.surrogate_corrections or {}
        th = corr["threshold"] if corr.get("threshold") is not None else self.threshold.float()
        xs = xs.float()
        bias = corr.get("bias")
        if bias is not None:
            xs = xs + bias
        v = self.v
        if v is None:
            v = torch.zeros_like(xs if static else xs[0]) + self.v_init * th
            if corr.get("potential") is not None:
                v = v + corr["potential"]
        surrogate = Triangle(1.0)
        outs = []
        for k in range(K):
            v = v + (xs if static else xs[k])
            s = SpikeFunction.apply((v - th) / th, surrogate)
            v = v - s * th
            outs.append(s * th)
        self.v = v
        out = torch.stack(outs)
        if self.clock is None:
            return out
        return out.view(-1, *out.shape[2:])


class SharedIFNeuron(IFNeuron):
    """One IF neuron called from several sites (the shared-ReLU fault, for ablations).

    Every call integrates into the same membrane. When a call's input has another
    shape than the membrane (sites of different sizes), the membrane is restarted at
    ``v_init·θ`` — the state of the other site is lost, as it would be overwritten.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.v is not None and tuple(self.v.shape[1:]) != tuple(x.shape[1:]):
            self.v = None
        return super().forward(x)


# --- trainable neurons (direct training with surrogate gradients) ----------------------


class LIF(nn.Module):
    """Leaky integrate-and-fire layer for direct training (see :func:`spikeforge.functional.lif.lif_seq`).

    ``H_t = β·V_{t-1} + α·X_t``; ``S_t = H(H_t − θ)``; ``V_t = H_t − θ·S_t`` (subtract)
    or ``H_t·(1 − S_t)`` (zero), with ``α = 1`` or ``1 − β`` (``decay_input``).

    Give either ``beta`` or ``tau`` (``β = 1 − 1/τ``). Input ``[T, N, ...]``, or one
    slice ``[N, ...]`` with ``steps=T`` (direct input, the same at every step). The
    final membrane is kept in ``self.v`` (detached) and is the next call's initial
    state until :meth:`reset_state`; networks call it at the start of every batch.
    ``self.membrane`` holds the last call's ``H`` (differentiable) when
    ``keep_membrane`` is set, for losses on the membrane potential.
    """

    def __init__(
        self,
        beta: float | None = None,
        *,
        tau: float | None = None,
        threshold: float = 1.0,
        reset: str = "subtract",
        decay_input: bool = False,
        surrogate: Surrogate | str = "atan",
        detach_reset: bool = False,
        keep_membrane: bool = False,
    ) -> None:
        super().__init__()
        if beta is None and tau is None:
            raise ValueError("give the decay as beta or as tau")
        if beta is not None and tau is not None:
            raise ValueError("give either beta or tau, not both")
        if tau is not None:
            if not tau >= 1.0:
                raise ValueError(f"tau must be >= 1, got {tau}")
            beta = 1.0 - 1.0 / tau
        self.beta = float(beta)  # type: ignore[arg-type]
        self.threshold = float(threshold)
        self.reset = reset
        self.decay_input = bool(decay_input)
        self.surrogate = get_surrogate(surrogate)
        self.detach_reset = bool(detach_reset)
        self.keep_membrane = keep_membrane
        self.v: torch.Tensor | None = None
        self.membrane: torch.Tensor | None = None
        check_lif(self.beta, self.threshold, reset, self.decay_input)

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta:.4g}, threshold={self.threshold}, reset={self.reset}, "
            f"decay_input={self.decay_input}, surrogate={self.surrogate!r}"
        )

    def decay(self) -> float | torch.Tensor:
        return self.beta

    def reset_state(self) -> None:
        self.v = None
        self.membrane = None

    def forward(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        v = self.v
        if v is not None and v.shape != (x.shape if steps is not None else x.shape[1:]):
            raise ValueError(
                f"{type(self).__name__}: kept membrane {tuple(v.shape)} does not fit input "
                f"{tuple(x.shape)}; call reset_state() between batches"
            )
        s, h, v = lif_seq(
            x, beta=self.decay(), threshold=self.threshold, v=v, reset=self.reset,  # type: ignore[arg-type]
            decay_input=self.decay_input, surrogate=self.surrogate, detach_reset=self.detach_reset, steps=steps,
        )
        self.v = v.detach()
        self.membrane = h if self.keep_membrane else None
        return s


class IF(LIF):
    """Integrate-and-fire layer for direct training: :class:`LIF` with ``β = 1``.

    SpikingJelly's ``IFNode`` default is the zero (hard) reset, as used by seed 004's CSNN.
    """

    def __init__(
        self,
        *,
        threshold: float = 1.0,
        reset: str = "zero",
        surrogate: Surrogate | str = "atan",
        detach_reset: bool = False,
        keep_membrane: bool = False,
    ) -> None:
        super().__init__(
            1.0, threshold=threshold, reset=reset, surrogate=surrogate,
            detach_reset=detach_reset, keep_membrane=keep_membrane,
        )


class ParametricLIF(LIF):
    """LIF with a learnable time constant (Fang et al. 2021): ``β = σ(w)``.

    ``init_tau`` sets ``w`` so that ``1 − 1/τ = σ(w)`` at the start; the decay is
    shared by the layer and trained by backpropagation like a weight.
    """

    def __init__(
        self,
        init_tau: float = 2.0,
        *,
        threshold: float = 1.0,
        reset: str = "subtract",
        decay_input: bool = False,
        surrogate: Surrogate | str = "atan",
        detach_reset: bool = False,
        keep_membrane: bool = False,
    ) -> None:
        super().__init__(
            tau=init_tau, threshold=threshold, reset=reset, decay_input=decay_input,
            surrogate=surrogate, detach_reset=detach_reset, keep_membrane=keep_membrane,
        )
        b = min(max(self.beta, 1e-4), 1 - 1e-4)
        self.w = nn.Parameter(torch.tensor(math.log(b / (1 - b))))

    def decay(self) -> torch.Tensor:
        return torch.sigmoid(self.w)

    def extra_repr(self) -> str:
        return f"beta={float(self.decay()):.4g} (learned), threshold={self.threshold}, reset={self.reset}"


def reset_states(module: nn.Module) -> None:
    """Reset every neuron (trainable or converted) inside ``module``."""
    for m in module.modules():
        if isinstance(m, (LIF, StatefulModule)):
            m.reset_state()
