"""End-to-end calibration of a converted SNN's corrections.

The layer-wise corrections (:func:`spikeforge.convert.core.correct_layerwise`) choose each
layer's per-channel shift greedily, one layer at a time, for that layer's own error. At
very few steps (T ≤ 4) the errors of successive layers interact, and a shift that is best
for one layer alone is not best for the output. :func:`calibrate_end_to_end` learns the
same per-channel quantities — the initial-membrane offset (potential) and the constant
input current (bias) of every neuron layer — jointly, by backpropagation through the T
steps of the SNN with a surrogate gradient for the spike, so that the SNN's T-step mean
output matches the ANN's output on calibration images (distillation; no labels). Weights
and thresholds stay as converted unless asked (``learn`` with ``"weight"``: the SNN's
synaptic weights and biases are fine-tuned too, by the same distillation); the result is an
ordinary :class:`SpikingModel` whose ``v_offset`` / ``input_bias`` buffers hold the learnt
values.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from spikeforge.convert.core import SpikingModel
from spikeforge.convert.graph import ConversionError
from spikeforge.neurons import IFNeuron

#: What :func:`calibrate_end_to_end` may learn, by name.
E2E_PARAMS = ("potential", "bias", "threshold", "weight")
#: What it learns unless told otherwise.
E2E_DEFAULT = ("potential", "bias")


def _channel_shape(sample_shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(C, 1, ..., 1)`` for a neuron layer whose one sample is ``sample_shape``."""
    return (sample_shape[0], *([1] * (len(sample_shape) - 1))) if sample_shape else ()


@torch.no_grad()
def _sample_shapes(snn: SpikingModel, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The shape of one sample at each neuron layer's input (one step on ``x``)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            shapes.setdefault(name, tuple(args[0].shape[1:]))
        return record

    hooks = [m.register_forward_pre_hook(hook(name)) for name, m in snn.neurons().items()]
    try:
        for _ in snn.stream(x, 1, record=False):
            pass
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _distillation_loss(y: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(ANN ‖ SNN) of the class distributions (dimension 1) when there are several classes,
    else the mean squared error of the outputs."""
    if y.dim() >= 2 and y.shape[1] > 1:
        t = temperature
        kl = F.kl_div(F.log_softmax(y / t, 1), F.log_softmax(target / t, 1), log_target=True, reduction="sum")
        return kl * (t * t) / (y.numel() // y.shape[1])
    return F.mse_loss(y, target)


def calibrate_end_to_end(
    snn: SpikingModel,
    ann: nn.Module,
    images: torch.Tensor,
    T: int,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 2e-4,
    learn: tuple[str, ...] = E2E_DEFAULT,
    weight_lr: float | None = None,
    extra_T: tuple[int, ...] = (),
    temperature: float = 1.0,
    bf16: bool = False,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Learn every neuron layer's per-channel potential and bias corrections for ``T`` steps.

    ``snn`` is the conversion of ``ann`` (any threshold and correction method; learning
    starts from the corrections it already has, or zero). On ``images`` (calibration data:
    no labels; never the evaluation images), for ``epochs`` passes in shuffled batches of
    ``batch_size``, Adam with learning rate ``lr`` (cosine to zero) lowers the
    distillation loss between the SNN's mean output over ``T`` steps and the ANN's output.
    The spike's gradient is the triangular surrogate of half-width θ around the threshold.
    ``learn`` names what is learnt (:data:`E2E_PARAMS`): ``potential`` and ``bias`` per
    channel; ``threshold`` makes θ per channel too (the spike's value θ changes with it);
    ``weight`` fine-tunes every weight and bias of the SNN's synaptic layers as well, with
    learning rate ``weight_lr`` (default ``lr``) — a distillation fine-tune of the whole
    SNN at ``T`` steps (the ANN is never changed). ``extra_T``: further readout lengths
    whose losses are averaged with T's (e.g. ``(8,)`` to keep T=8 good while tuning for
    T=4; the SNN then runs ``max(T, *extra_T)`` steps per batch).
    ``bf16``: convolutions and linear layers under bfloat16 autocast (membranes stay
    float32), as in evaluation.
    ``augment(batch, generator)``: a random transform applied to every batch (e.g.
    :func:`spikeforge.data.augment.random_crop_flip`); the ANN's targets are then computed
    on the transformed batch.

    Only binary spikes with reset by subtraction are supported (other neurons raise
    :class:`ConversionError` naming the layer). Each batch runs all ``T`` steps at once,
    so memory grows with ``T × batch_size``. Returns a report: per-epoch loss and
    agreement of the SNN's and ANN's top class, steps, seconds.
    """
    if int(T) != T or T < 1:
        raise ValueError(f"T must be a positive number of time steps, got {T!r}")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if any(int(t) != t or t < 1 for t in extra_T):
        raise ValueError(f"extra_T must hold positive numbers of time steps, got {tuple(extra_T)!r}")
    readouts = sorted({int(T), *(int(t) for t in extra_T)})
    if weight_lr is not None and not (math.isfinite(weight_lr) and weight_lr > 0):
        raise ValueError(f"weight_lr must be a finite number > 0, got {weight_lr!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    unknown = [p for p in learn if p not in E2E_PARAMS]
    if unknown or not learn:
        raise ValueError(f"learn must name some of {', '.join(E2E_PARAMS)}; got {tuple(learn)!r}")
    if not isinstance(images, torch.Tensor) or images.dim() < 2 or len(images) == 0:
        raise ValueError("images must be a non-empty tensor [N, ...] of calibration inputs")
    if not torch.isfinite(images).all():
        raise ValueError("calibration images contain NaN or infinite values")
    neurons = snn.neurons()
    if not neurons:
        raise ConversionError("this SNN has no neuron layers to calibrate")
    for name, m in neurons.items():
        if m.max_spikes != 1 or m.reset != "subtract" or type(m) is not IFNeuron:
            raise ConversionError(
                f"end-to-end calibration supports binary spikes with reset by subtraction; neuron layer '{name}' has "
                f"max_spikes={m.max_spikes}, reset={m.reset}" + ("" if type(m) is IFNeuron else f" ({type(m).__name__})"))

    device = next((b.device for b in snn.buffers()), torch.device("cpu"))
    images = images.to(device)
    shapes = _sample_shapes(snn, images[:1])
    trained: dict[str, dict[str, torch.Tensor]] = {}
    for name, m in neurons.items():
        shape = _channel_shape(shapes[name])
        own: dict[str, torch.Tensor] = {}
        for kind, attr in (("potential", "v_offset"), ("bias", "input_bias")):
            start = getattr(m, attr)
            if kind in learn:
                if start is None:
                    base = torch.zeros(shape, device=device)
                elif start.numel() == 1:
                    base = start.detach().float().expand(shape).clone()
                else:  # per channel, or per unit when the correction was set per unit
                    base = start.detach().float().clone()
                own[kind] = base.requires_grad_(True)
            elif start is not None:
                own[kind] = start.detach().float()
        if "threshold" in learn:
            th = m.threshold.detach().float()
            own["threshold"] = (th.expand(shape) if th.numel() == 1 else th.reshape(shape)).clone().requires_grad_(True)
        trained[name] = own
    frozen = [(p, p.requires_grad) for p in list(snn.parameters()) + list(ann.parameters())]
    for p, _ in frozen:
        p.requires_grad_(False)
    weights = [p for p in snn.parameters() if p.is_floating_point()] if "weight" in learn else []
    if "weight" in learn and not weights:
        raise ConversionError("learn includes 'weight' but this SNN has no floating-point parameters")
    for p in weights:
        p.requires_grad_(True)

    was_training = ann.training
    ann.eval()
    targets = None
    if augment is None:
        with torch.no_grad():
            targets = torch.cat([ann(images[i:i + 256]).float() for i in range(0, len(images), 256)])

    params = [t for own in trained.values() for k, t in own.items() if k in learn]
    groups = [{"params": params, "lr": lr}] if params else []
    if weights:
        groups.append({"params": weights, "lr": lr if weight_lr is None else weight_lr})
    opt = torch.optim.Adam(groups)
    steps = epochs * math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    report: dict[str, Any] = {"T": int(T), "images": len(images), "epochs": int(epochs), "batch_size": int(batch_size),
                              "lr": float(lr), "learn": list(learn), "extra_T": [int(t) for t in extra_T],
                              "weight_lr": float(lr if weight_lr is None else weight_lr) if weights else None,
                              "steps": steps, "loss": [], "agreement": []}
    if bf16:
        from spikeforge.evaluate import analog_input_float32
    t_start = time.perf_counter()
    for name, m in neurons.items():
        m.surrogate_corrections = trained[name]
    try:
        for epoch in range(epochs):
            order = torch.randperm(len(images), generator=gen)
            total, agree = 0.0, 0
            for i in range(0, len(images), batch_size):
                idx = order[i:i + batch_size].to(device)
                if targets is not None:
                    x, target = images[idx], targets[idx]
                else:
                    x = augment(images[idx], gen)
                    with torch.no_grad():
                        target = ann(x).float()
                with contextlib.ExitStack() as stack:
                    if bf16:
                        stack.enter_context(analog_input_float32(snn))
                        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
                    y_steps = snn.run_with_grad(x, readouts[-1]).float()
                y = y_steps[:int(T)].mean(0)
                loss = sum(_distillation_loss(y_steps[:t].mean(0), target, temperature) for t in readouts) / len(readouts)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"end-to-end calibration: the loss became {float(loss)} at epoch "
                                             f"{epoch + 1}; lower lr (now {lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                if y.dim() >= 2 and y.shape[1] > 1:
                    agree += int((y.detach().argmax(1) == target.argmax(1)).sum()) // max(1, y[0, 0].numel())
            report["loss"].append(total / len(images))
            report["agreement"].append(agree / len(images))
            if log:
                log(f"end-to-end calibration, epoch {epoch + 1}/{epochs}: loss {report['loss'][-1]:.4f}, "
                    f"top-class agreement with the ANN {report['agreement'][-1]:.4f} "
                    f"({time.perf_counter() - t_start:.0f} s)")
    finally:
        ann.train(was_training)
        for m in neurons.values():
            m.surrogate_corrections = None
        for p, flag in frozen:
            p.requires_grad_(flag)
    for name, m in neurons.items():
        own = trained[name]
        if "potential" in own:
            m.v_offset = own["potential"].detach().clone()
        if "bias" in own:
            m.input_bias = own["bias"].detach().clone()
        if "threshold" in own:
            th = own["threshold"].detach().clamp(min=1e-6)
            m.threshold = th.reshape(-1)[0].clone() if th.numel() == 1 else th.clone()
    report["seconds"] = time.perf_counter() - t_start
    return report

