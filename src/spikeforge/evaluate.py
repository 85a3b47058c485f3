"""Evaluate a converted network at every time step from one pass."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch
from torch import nn

from spikeforge import distributed
from spikeforge.convert import SpikingModel
from spikeforge.errors import ConfigError, DataError
from spikeforge.metrics.classification import correct_per_step
from spikeforge.metrics.spikes import SpikeStats
from spikeforge.progress import progress as progress_bar
from spikeforge.train.engine import model_device


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
    bf16: bool = False,
) -> dict:
    """Accuracy after each step t = 1..T and per-layer firing rates.

    Returns ``{"accuracy": [acc_1, ..., acc_T], "firing_rates": {layer: rate},
    "seconds": wall time, "images_per_second": ..., "spike_stats": ...}``; ``spike_stats``
    (spikes, SOPs, MACs and energy estimates, :class:`~spikeforge.metrics.spikes.SpikeStats`)
    is counted in the same pass, unless ``spike_stats=False``.

    ``bf16=True`` runs the SNN's convolutions and linear layers under bfloat16 autocast
    (spikes are 0/1, exact in bfloat16; membranes and the output sums stay float32), and
    the layers that see only the analog input in float32 (:func:`analog_input_float32`).
    The images go in channels-last when the SNN was converted with ``channels_last``.

    The images go to the SNN's device batch by batch. Inside a process group (torchrun)
    each rank evaluates its contiguous share of the images and the per-step correct
    counts, spike counts and statistics of all ranks are gathered, so every rank returns
    the figures of the whole set.
    """
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if len(labels) == 0:
        raise DataError("evaluate_snn: no images to evaluate (the evaluation set is empty)")
    if T < 1 or batch_size < 1:
        raise ConfigError(f"T and batch_size must be >= 1, got {T}, {batch_size}")
    total = len(labels)
    first, last = distributed.shard_bounds(total)
    images, labels = images[first:last], labels[first:last]
    device = model_device(snn)
    correct = torch.zeros(T, dtype=torch.long)
    spikes: dict[str, float] = {}
    steps: dict[str, int] = {}
    start = time.perf_counter()
    n_batches = (len(labels) + batch_size - 1) // batch_size
    stats = SpikeStats(snn) if spike_stats else None
    analog = analog_input_float32(snn) if bf16 else contextlib.nullcontext()
    with stats if stats is not None else contextlib.nullcontext(), analog, \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in progress_bar(range(n_batches), desc=f"SNN T={T}", enabled=progress and distributed.is_main()):
            xb = images[i * batch_size : (i + 1) * batch_size].to(device)
            yb = labels[i * batch_size : (i + 1) * batch_size]
            out = snn(xb, T)
            correct += correct_per_step(out.float().cpu(), yb)
            for name, neuron in snn.neurons().items():
                spikes[name] = spikes.get(name, 0.0) + neuron.spike_count
                steps[name] = steps.get(name, 0) + neuron.neuron_steps
    seconds = time.perf_counter() - start
    summary = stats.summary() if stats is not None and len(labels) else None
    if distributed.active():
        names = sorted(set().union(*distributed.all_gather_rows(sorted(spikes))))
        sums = distributed.all_reduce_sum(correct.tolist() + [spikes.get(k, 0.0) for k in names]
                                          + [steps.get(k, 0) for k in names])
        correct = torch.tensor([round(v) for v in sums[:T]], dtype=torch.long)
        spikes = dict(zip(names, sums[T:T + len(names)]))
        steps = {k: int(round(v)) for k, v in zip(names, sums[T + len(names):])}
        seconds = distributed.all_reduce_max(seconds)
        if stats is not None:
            summary = merge_summaries([s for s in distributed.all_gather_rows(summary) if s is not None])
    result = {
        "accuracy": (correct.double() / total).tolist(),
        "firing_rates": {k: spikes[k] / steps[k] if steps[k] else 0.0 for k in spikes},
        "seconds": seconds,
        "images_per_second": total / seconds,
    }
    if stats is not None:
        result["spike_stats"] = summary
    return result


def merge_summaries(parts: list[dict]) -> dict:
    """Spike statistics of disjoint image sets (``SpikeStats.summary()`` each) as one summary.

    Every per-image figure, rate and ratio is the mean of the parts weighted by their
    image counts (all of them are linear in the per-image counts, energies included);
    ``images`` is the total; integers equal in every part (neurons, T) are kept.
    """
    if len(parts) == 1:
        return parts[0]
    weights = [float(p["images"]) for p in parts]

    def merge(values: list, key: str = "") -> object:
        head = values[0]
        if isinstance(head, dict):
            return {k: merge([v[k] for v in values], k) for k in head}
        if isinstance(head, list):
            return [merge([v[i] for v in values], key) for i in range(len(head))]
        if isinstance(head, bool) or head is None or isinstance(head, str):
            return head
        if isinstance(head, int) and all(v == head for v in values):
            return head
        if isinstance(head, (int, float)):
            return sum(w * float(v) for w, v in zip(weights, values)) / sum(weights)
        return head

    out = merge(parts)
    out["images"] = int(sum(weights))  # type: ignore[index]
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def analog_input_float32(snn: SpikingModel) -> Iterator[list[str]]:
    """Within this context, the SNN's layers that see only the static analog input (the
    convolutions before the first neurons) run in float32 even under autocast.

    They run once per input, so this costs nothing per step; in bfloat16 their output
    (the constant current of the first neurons, a small difference of large terms for
    an image with a bright background) was rounded once and then integrated at every
    step: on a Lucchi UNet that lowered the SNN's Jaccard by 0.02 at T=32 while the
    bfloat16 ANN kept the float32 ANN's. Yields the names of those layers.
    """
    from spikeforge.convert.core import _static_nodes

    gm = snn.graph_module
    static = _static_nodes(gm)
    names = [str(n.target) for n in gm.graph.nodes if n.op == "call_module" and n in static]
    contexts: list[torch.autocast] = []

    def enter(module: nn.Module, args: tuple) -> tuple:
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        ctx = torch.autocast(device, enabled=False)
        ctx.__enter__()
        contexts.append(ctx)
        return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    def leave(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        contexts.pop().__exit__(None, None, None)

    handles = []
    try:
        for name in names:
            module = gm.get_submodule(name)
            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        yield names
    finally:
        for h in handles:
            h.remove()
        while contexts:
            contexts.pop().__exit__(None, None, None)
