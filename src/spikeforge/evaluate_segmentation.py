"""Evaluate segmentation networks, ANN and converted SNN, on whole slices.

Both run over the same overlapping tiles (:func:`~spikeforge.data.segmentation.tiled_predict`).
The SNN's prediction after ``t`` steps is the running mean of its analog output
logits, ``z̄_t = (1/t) Σ_{s≤t} z_s``, passed through the sigmoid once
(``σ(z̄_t) > 0.5 ⇔ z̄_t > 0``). The SNN is run as a stream over time
(:meth:`~spikeforge.convert.SpikingModel.stream`), so memory does not grow with T:
only the running sum and the means at the requested steps are kept.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from spikeforge.convert import SpikingModel
from spikeforge.evaluate import analog_input_float32  # noqa: F401  (kept importable from here)
from spikeforge.data.segmentation import SegmentationSet, tiled_predict
from spikeforge.metrics.segmentation import SegmentationScores
from spikeforge.metrics.spikes import SpikeStats
from spikeforge.train.engine import model_device

__all__ = [
    "SpikeCounter",
    "analog_input_float32",
    "evaluate_ann_segmentation",
    "evaluate_snn_segmentation",
    "power_of_two_steps",
    "snn_mean_logits",
]


def power_of_two_steps(T: int) -> list[int]:
    """``[1, 2, 4, ..., T]`` (T itself is included when it is not a power of two)."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    steps, t = [], 1
    while t < T:
        steps.append(t)
        t *= 2
    steps.append(T)
    return steps


class SpikeCounter:
    """Sums spike counts and neuron-steps of an SNN's neurons over several runs.

    With ``stats=True`` it also collects :class:`~spikeforge.metrics.spikes.SpikeStats`
    (SOPs, MACs, energy estimate) during the runs it counts; :meth:`spike_stats` gives
    their summary.
    """

    def __init__(self, *, stats: bool = False) -> None:
        self.spikes: dict[str, float] = {}
        self.steps: dict[str, int] = {}
        self._stats: SpikeStats | None = None
        self._want_stats = stats

    def watching(self, snn: SpikingModel) -> contextlib.AbstractContextManager:
        """Hooks that count SOPs and MACs while the run inside the ``with`` block goes on."""
        if not self._want_stats:
            return contextlib.nullcontext()
        if self._stats is None or self._stats.model is not snn:
            self._stats = SpikeStats(snn)
        return self._stats

    def spike_stats(self) -> dict | None:
        """Summary of the statistics counted so far (None without ``stats=True`` or before any run)."""
        return self._stats.summary() if self._stats is not None and self._stats.images else None

    def add(self, snn: SpikingModel) -> None:
        for name, neuron in snn.neurons().items():
            self.spikes[name] = self.spikes.get(name, 0.0) + neuron.spike_count
            self.steps[name] = self.steps.get(name, 0) + neuron.neuron_steps

    def rates(self) -> dict[str, float]:
        """Spikes per neuron per step of each layer."""
        return {k: self.spikes[k] / self.steps[k] if self.steps[k] else 0.0 for k in self.spikes}


@torch.no_grad()
def snn_mean_logits(
    snn: SpikingModel,
    x: torch.Tensor,
    steps: Sequence[int],
    *,
    counter: SpikeCounter | None = None,
    chunk: int | None = None,
    bf16: bool = False,
) -> torch.Tensor:
    """Mean output over the first ``t`` steps for each ``t`` in ``steps``: ``[len(steps), N, ...]``.

    One run of ``max(steps)`` steps; spike counts are recorded (and added to
    ``counter``) only when a counter is given. ``bf16=True`` runs the SNN's
    convolutions under bfloat16 autocast (spikes, pools and concatenations then flow
    as bfloat16; membranes, pool sums and this running mean stay float32), except the
    layers of the analog input before the first neurons (:func:`analog_input_float32`).
    """
    wanted = sorted(set(int(t) for t in steps))
    if not wanted or wanted[0] < 1:
        raise ValueError(f"steps must be positive, got {list(steps)}")
    index = {t: i for i, t in enumerate(wanted)}
    total: torch.Tensor | None = None
    out: torch.Tensor | None = None
    t = 0
    watch = counter.watching(snn) if counter is not None else contextlib.nullcontext()
    analog = analog_input_float32(snn) if bf16 else contextlib.nullcontext()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16), watch, analog:
        for y in snn.stream(x, wanted[-1], chunk=chunk, record=counter is not None):
            for k in range(y.shape[0]):
                t += 1
                total = y[k].to(torch.float32, copy=True) if total is None else total.add_(y[k])
                if t in index:
                    if out is None:
                        out = total.new_empty((len(wanted), *total.shape))
                    torch.div(total, t, out=out[index[t]])
    if counter is not None:
        counter.add(snn)
    assert out is not None
    order = [index[int(s)] for s in steps]
    return out[order] if order != list(range(len(wanted))) else out


def _ann_fn(model: nn.Module, channels_last: bool, bf16: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    device = model_device(model)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x).float().contiguous().cpu()

    return run


@torch.no_grad()
def evaluate_ann_segmentation(
    model: nn.Module,
    data: SegmentationSet,
    indices: Sequence[int],
    *,
    tile: int = 512,
    overlap: int = 32,
    multiple: int = 1,
    channels_last: bool = False,
    on_slice: Callable[[int, torch.Tensor], None] | None = None,
    bf16: bool = False,
) -> tuple[dict[str, float], float]:
    """Metrics of ``model`` on slices ``indices``; returns ``(scores, seconds)``.

    ``on_slice(i, logits [1, 1, H, W])`` is called for every slice. ``bf16`` runs the
    model under bfloat16 autocast (logits returned as float32). The windows run on the
    model's device; the logits come back to the CPU.
    """
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    fn = _ann_fn(model, channels_last, bf16)
    scores = SegmentationScores()
    seconds = 0.0
    for i in indices:
        x = data.image(i)
        t0 = time.perf_counter()
        logits = tiled_predict(fn, x, tile=tile, overlap=overlap, multiple=multiple)
        seconds += time.perf_counter() - t0
        scores.add(logits, data.mask(i))
        if on_slice is not None:
            on_slice(i, logits)
    return scores.result(), seconds


@torch.no_grad()
def evaluate_snn_segmentation(
    snn: SpikingModel,
    data: SegmentationSet,
    indices: Sequence[int],
    steps: Sequence[int],
    *,
    tile: int = 512,
    overlap: int = 32,
    multiple: int = 1,
    counter: SpikeCounter | None = None,
    count_slices: int | None = None,
    on_slice: Callable[[int, torch.Tensor], None] | None = None,
    progress: Callable[[str], None] | None = None,
    bf16: bool = False,
) -> tuple[dict[int, dict[str, float]], float]:
    """Metrics of the SNN after each of ``steps`` on slices ``indices``.

    Returns ``({t: scores}, seconds)``. Spikes are counted into ``counter`` on the
    first ``count_slices`` slices (all when None; counting costs time).
    ``on_slice(i, mean_logits [S, 1, 1, H, W])`` is called for every slice.
    ``bf16``: see :func:`snn_mean_logits`.
    """
    scores = {int(t): SegmentationScores() for t in steps}
    device = model_device(snn)
    seconds = 0.0
    for n, i in enumerate(indices):
        x = data.image(i)
        t0 = time.perf_counter()
        count = counter if count_slices is None or n < count_slices else None
        logits = tiled_predict(
            lambda w: snn_mean_logits(snn, w.to(device), steps, counter=count, bf16=bf16).cpu(), x,
            tile=tile, overlap=overlap, multiple=multiple,
        )
        seconds += time.perf_counter() - t0
        mask = data.mask(i)
        for j, t in enumerate(steps):
            scores[int(t)].add(logits[j], mask)
        if on_slice is not None:
            on_slice(i, logits)
        if progress is not None:
            progress(f"SNN slice {n + 1}/{len(indices)}: {time.perf_counter() - t0:.1f} s")
    return {t: s.result() for t, s in scores.items()}, seconds
