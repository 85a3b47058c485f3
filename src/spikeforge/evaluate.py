"""Evaluate a converted network at every time step from one pass."""

from __future__ import annotations

import contextlib
import time

import torch

from spikeforge.convert import SpikingModel
from spikeforge.errors import ConfigError, DataError
from spikeforge.metrics.classification import correct_per_step
from spikeforge.metrics.spikes import SpikeStats
from spikeforge.progress import progress as progress_bar


@torch.no_grad()
def evaluate_snn(
    snn: SpikingModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    T: int,
    *,
    batch_size: int = 500,
    progress: bool = False,
    spike_stats: bool = True,
) -> dict:
    """Accuracy after each step t = 1..T and per-layer firing rates.

    Returns ``{"accuracy": [acc_1, ..., acc_T], "firing_rates": {layer: rate},
    "seconds": wall time, "images_per_second": ..., "spike_stats": ...}``; ``spike_stats``
    (spikes, SOPs, MACs and energy estimates, :class:`~spikeforge.metrics.spikes.SpikeStats`)
    is counted in the same pass, unless ``spike_stats=False``.
    """
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if len(labels) == 0:
        raise DataError("evaluate_snn: no images to evaluate (the evaluation set is empty)")
    if T < 1 or batch_size < 1:
        raise ConfigError(f"T and batch_size must be >= 1, got {T}, {batch_size}")
    correct = torch.zeros(T, dtype=torch.long)
    spikes: dict[str, float] = {}
    steps: dict[str, int] = {}
    start = time.perf_counter()
    n_batches = (len(labels) + batch_size - 1) // batch_size
    stats = SpikeStats(snn) if spike_stats else None
    with stats if stats is not None else contextlib.nullcontext():
        for i in progress_bar(range(n_batches), desc=f"SNN T={T}", enabled=progress):
            xb = images[i * batch_size : (i + 1) * batch_size]
            yb = labels[i * batch_size : (i + 1) * batch_size]
            out = snn(xb, T)
            correct += correct_per_step(out, yb)
            for name, neuron in snn.neurons().items():
                spikes[name] = spikes.get(name, 0.0) + neuron.spike_count
                steps[name] = steps.get(name, 0) + neuron.neuron_steps
    seconds = time.perf_counter() - start
    result = {
        "accuracy": (correct.double() / len(labels)).tolist(),
        "firing_rates": {k: spikes[k] / steps[k] if steps[k] else 0.0 for k in spikes},
        "seconds": seconds,
        "images_per_second": len(labels) / seconds,
    }
    if stats is not None:
        result["spike_stats"] = stats.summary()
    return result
