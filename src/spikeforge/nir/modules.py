"""The modules an imported NIR graph runs on: neurons with NIR's parameters, and Scale."""

from __future__ import annotations

import torch
from torch import nn

from spikeforge.functional.lif import lif_seq
from spikeforge.neurons import IFNeuron


class NIRNeuron(IFNeuron):
    """A NIR neuron layer (LIF, IF, LI or I) discretized with a step ``dt``.

    Each step (Euler): ``H = β·V + g·X + c``; a spiking layer emits ``S = [H > v_threshold]``
    and sets ``V = v_reset`` where it fired (``V = H`` elsewhere); a non-spiking layer
    (LI, I) outputs ``H`` and keeps ``V = H``. For NIR's LIF
    (``τ·dv/dt = v_leak − v + R·I``): ``β = 1 − dt/τ``, ``g = R·dt/τ``, ``c = v_leak·dt/τ``;
    for IF and I (``dv/dt = R·I``): ``β = 1``, ``g = R·dt``, ``c = 0``. Every parameter is
    a tensor shaped like the layer.

    The strict ``H > v_threshold`` of NIR is evaluated exactly in float32 as
    ``H ≥ θ⁺``, θ⁺ being the smallest float32 above ``v_threshold``. Spikes are 1
    (not θ-valued as in :class:`~spikeforge.neurons.IFNeuron`, whose bookkeeping — spike
    counts, state, time layout inside a :class:`~spikeforge.convert.SpikingModel` — this
    class reuses). When all parameters are uniform, the reset is to 0 and there is no
    leak, the compiled LIF kernel runs the loop.
    """

    unit_spikes = True

    def __init__(self, kind: str, *, beta: torch.Tensor, gain: torch.Tensor, leak: torch.Tensor,
                 threshold: torch.Tensor | None, v_reset: torch.Tensor | None) -> None:
        spiking = threshold is not None
        th = threshold if spiking else torch.ones_like(beta)
        positive = th[th > 0]
        super().__init__(float(positive.mean()) if positive.numel() else 1.0, reset="zero", max_spikes=1, v_init=0.0)
        self.kind = kind
        self.spiking = spiking
        self.register_buffer("beta", beta.float())
        self.register_buffer("gain", gain.float())
        self.register_buffer("leak", leak.float())
        self.register_buffer("v_threshold", th.float())
        self.register_buffer("v_reset", (v_reset if v_reset is not None else torch.zeros_like(beta)).float())
        self._fast = self._uniform()

    def _uniform(self) -> tuple[float, float, float, bool] | None:
        """``(β, gain, θ⁺, decay_input)`` when the compiled LIF kernel computes exactly this layer."""
        if not self.spiking or bool(self.leak.any()) or bool(self.v_reset.any()):
            return None
        vals = []
        for t in (self.beta, self.gain, self.v_threshold):
            if not bool((t == t.flatten()[0]).all()):
                return None
            vals.append(float(t.flatten()[0]))
        beta, gain, th = vals
        if not (0.0 <= beta <= 1.0 and th > 0):
            return None
        decay = beta < 1.0 and torch.tensor(gain, dtype=torch.float32) == torch.tensor(1.0 - beta, dtype=torch.float32)
        return beta, gain, th, bool(decay)

    def extra_repr(self) -> str:
        def show(t: torch.Tensor) -> str:
            flat = t.flatten()
            return f"{float(flat[0]):.6g}" if bool((flat == flat[0]).all()) else f"[{flat.numel()} values]"

        text = f"{self.kind}: beta={show(self.beta)}, gain={show(self.gain)}, shape={tuple(self.beta.shape)}"
        if self.spiking:
            text += f", fires at H>={show(self.v_threshold)}, v_reset={show(self.v_reset)}"
        return text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, static, K = self._split(x)
        fast = self._fast
        if fast is not None:
            beta, gain, th, decay = fast
            inp = xs if (decay or gain == 1.0) else xs * gain
            out, _, v = lif_seq(inp.float(), beta=beta, threshold=th, v=self.v, reset="zero", decay_input=decay,
                                steps=K if static else None)
            self.v = v
        else:
            out = self._loop(xs, static, K)
        if self.spiking and (self.clock is None or self.clock.record):
            self.spike_count += float(torch.count_nonzero(out))
            self.neuron_steps += out.numel()
        if self.clock is None:
            return out
        return out.view(-1, *out.shape[2:])

    def _loop(self, xs: torch.Tensor, static: bool, K: int) -> torch.Tensor:
        first = xs if static else xs[0]
        v = self.v if self.v is not None else torch.zeros_like(first, dtype=torch.float32)
        out = torch.empty((K, *first.shape), dtype=torch.float32, device=first.device)
        for t in range(K):
            xt = xs if static else xs[t]
            h = torch.addcmul(self.leak, self.beta, v).addcmul_(self.gain, xt.float())
            if self.spiking:
                fired = h >= self.v_threshold
                v = torch.where(fired, self.v_reset, h)
                out[t] = fired
            else:
                v = h
                out[t] = h
        self.v = v
        return out


class Scale(nn.Module):
    """NIR's Scale node: ``y = x ⊙ s`` with ``s`` shaped like one sample."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.float())

    @property
    def channel_scale(self) -> torch.Tensor | float | None:
        """The scale as one value per channel (or one number), None when it varies within a channel."""
        s = self.scale
        if bool((s == s.flatten()[0]).all()):
            return float(s.flatten()[0])
        per = s.reshape(s.shape[0], -1)
        if bool((per == per[:, :1]).all()):
            return per[:, 0].clone()
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
