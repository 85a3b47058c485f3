"""Activation statistics for threshold balancing.

During calibration every ReLU call site is a :class:`ActivationRecorder`: it applies
the ReLU and keeps a random subsample of the positive activations of each batch
(and the exact maximum). After several batches the threshold of the site is the
``p``-th percentile of those activations, per layer or per channel (``p = 100`` is
the maximum). Percentiles are taken over positive activations, so a sparse layer is
not given a threshold near zero by its many silent units.
"""

from __future__ import annotations

import torch
from torch import nn


def channel_matrix(y: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``[C, M]`` view of a batch of activations (C = 1 when not per channel)."""
    if per_channel and y.dim() >= 2:
        return y.transpose(0, 1).reshape(y.shape[1], -1)
    return y.reshape(1, -1)


def threshold_shape(sample_shape: torch.Size, per_channel: bool) -> tuple[int, ...]:
    """Shape of a threshold that broadcasts over one sample ``[C, ...]``."""
    if not per_channel or len(sample_shape) == 0:
        return ()
    return (sample_shape[0],) + (1,) * (len(sample_shape) - 1)


def positive_percentile(values: torch.Tensor, p: float) -> torch.Tensor:
    """Row-wise ``p``-th percentile of the positive entries of ``values`` ``[C, M]``.

    Linear interpolation between order statistics; a row without positive entries
    gives 0.
    """
    s, _ = torch.sort(values, dim=1)
    M = s.shape[1]
    n_pos = (s > 0).sum(dim=1)
    start = M - n_pos
    pos = start.double() + (p / 100.0) * (n_pos.double() - 1).clamp(min=0)
    lo = pos.floor().long().clamp(0, M - 1)
    hi = pos.ceil().long().clamp(0, M - 1)
    frac = (pos - lo.double()).to(s.dtype)
    out = s.gather(1, lo[:, None])[:, 0] * (1 - frac) + s.gather(1, hi[:, None])[:, 0] * frac
    return torch.where(n_pos > 0, out, torch.zeros_like(out))


class ActivationRecorder(nn.Module):
    """A ReLU that records statistics of its output for threshold balancing."""

    def __init__(
        self,
        *,
        per_channel: bool = False,
        samples_per_batch: int = 1 << 18,
        seed: int = 0,
        allow_shapes: bool = False,
    ) -> None:
        super().__init__()
        self.per_channel = per_channel
        self.allow_shapes = allow_shapes  # several call sites of different shapes (shared-neuron ablation)
        self.activation: nn.Module | None = None  # applied instead of ReLU (a QCFS activation being replaced)
        self.samples_per_batch = samples_per_batch
        self.generator = torch.Generator().manual_seed(seed)
        self.samples: list[torch.Tensor] = []
        self.maximum: torch.Tensor | None = None
        self.sample_shape: torch.Size | None = None
        self.batches = 0
        self.mean_sum = 0.0
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x) if self.activation is None else self.activation(x)
        self.record(y.detach())
        return y

    @torch.no_grad()
    def record(self, y: torch.Tensor) -> None:
        if self.sample_shape is not None and y.shape[1:] != self.sample_shape and self.allow_shapes:
            if self.per_channel and y.shape[1] != self.sample_shape[0]:
                raise ValueError(
                    f"call sites sharing one neuron have {self.sample_shape[0]} and {y.shape[1]} channels: "
                    "per-channel thresholds are impossible; use per-layer thresholds"
                )
            if y.shape[1:].numel() > self.sample_shape.numel():
                self.sample_shape = y.shape[1:]
        elif self.sample_shape is not None and y.shape[1:] != self.sample_shape:
            raise ValueError(
                f"calibration batches differ in shape: {tuple(self.sample_shape)} vs {tuple(y.shape[1:])}"
            )
        if self.sample_shape is None or not self.allow_shapes:
            self.sample_shape = y.shape[1:]
        mat = channel_matrix(y.float(), self.per_channel)
        mx = mat.amax(dim=1)
        self.maximum = mx if self.maximum is None else torch.maximum(self.maximum, mx)
        cap = max(1024, self.samples_per_batch // mat.shape[0])
        if mat.shape[1] > cap:
            idx = torch.randint(mat.shape[1], (cap,), generator=self.generator)
            mat = mat[:, idx]
        self.samples.append(mat.clone())
        self.batches += 1
        self.mean_sum += float(y.sum())
        self.count += y.numel()

    def threshold(self, percentile: float) -> torch.Tensor:
        """The balancing threshold λ: the percentile of recorded positive activations.

        Channels (or layers) that never fired fall back to the layer value, then to 1.
        """
        if not self.batches or self.sample_shape is None or self.maximum is None:
            raise RuntimeError("no calibration data reached this activation")
        if not 0 < percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        if percentile >= 100:
            lam = self.maximum.clone()
        else:
            lam = positive_percentile(torch.cat(self.samples, dim=1), percentile)
        if (lam <= 0).any():
            layer = lam[lam > 0]
            fallback = float(layer.median()) if layer.numel() else 1.0
            lam = torch.where(lam > 0, lam, torch.full_like(lam, fallback))
        return lam.reshape(threshold_shape(self.sample_shape, self.per_channel))

    def mse_threshold(self, T: int, v_init: float = 0.5, grid: int = 200, max_samples: int = 1 << 20,
                      max_spikes: int = 1, split: bool = True) -> torch.Tensor:
        """The threshold λ that minimizes the error of ``T``-step rate coding.

        An IF neuron with threshold λ and initial membrane ``v_init·λ`` driven by a
        constant ``x`` for T steps outputs ``λ/T·clamp(floor(x·T/λ + v_init), 0, T)``;
        λ is searched over ``grid`` fractions of the recorded maximum (per channel or
        per layer) to minimize the mean squared difference to ``x`` over the recorded
        activations (Li et al., "A free lunch from ANN", ICML 2021).

        Burst spikes (``max_spikes`` Γ > 1): the neuron may fire Γ times a step, so its
        count over T steps is clamped to T·Γ. With ``split`` the spike threshold is
        θ = λ/Γ (λ stays the largest rate, the grid is Γ times finer); without it θ = λ
        and rates above λ up to Γ·λ are representable. The λ returned is in the same
        units as :meth:`threshold` (the caller divides by Γ when splitting).
        """
        if int(max_spikes) != max_spikes or max_spikes < 1:
            raise ValueError(f"max_spikes must be a positive integer, got {max_spikes!r}")
        theta_div = float(max_spikes) if split else 1.0
        cap = T * max_spikes
        if not self.batches or self.sample_shape is None or self.maximum is None:
            raise RuntimeError("no calibration data reached this activation")
        if int(T) != T or T < 1:
            raise ValueError(f"target_T must be a positive integer, got {T!r}")
        x = torch.cat(self.samples, dim=1).double()
        if x.shape[1] > max_samples:
            idx = torch.randperm(x.shape[1], generator=self.generator)[:max_samples]
            x = x[:, idx]
        mx = self.maximum.double().clamp_min(1e-12)
        best_err = torch.full_like(mx, float("inf"))
        best = mx.clone()
        for k in range(1, grid + 1):
            lam = mx * (k / grid)
            theta = lam[:, None] / theta_div
            q = torch.clamp(torch.floor(x * (T / theta) + v_init), 0, cap) * (theta / T)
            err = (q - x).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, lam, best)
        lam = best.float()
        if (self.maximum <= 0).any():
            layer = lam[self.maximum > 0]
            fallback = float(layer.median()) if layer.numel() else 1.0
            lam = torch.where(self.maximum > 0, lam, torch.full_like(lam, fallback))
        return lam.reshape(threshold_shape(self.sample_shape, self.per_channel))

    @property
    def mean_activation(self) -> float:
        return self.mean_sum / self.count if self.count else 0.0
