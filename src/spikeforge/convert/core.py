"""ANN→SNN conversion: trace → fold BN → calibrate → balance thresholds → SpikingModel."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import fx, nn

from spikeforge._native.memory import keep_freed_memory
from spikeforge.convert.calibrate import ActivationRecorder
from spikeforge.convert.weights import calibrate_weights, layer_currents, presynaptic_layers
from spikeforge.convert.graph import (
    ConversionError,
    fold_batchnorm,
    maxpool_params,
    move_relu_before_maxpool,
    node_kind,
    trace,
)
from spikeforge.errors import ConfigError, InputTypeError
from spikeforge.layers import POOL_MODES, QCFS, SpikingMaxPool2d
from spikeforge.functional.neuron import if_seq, initial_membrane
from spikeforge.neurons import Clock, IFNeuron, SharedIFNeuron, StatefulModule

#: Weight calibration simulates a layer's true T-step output every this many Adam steps
#: (see :func:`spikeforge.convert.weights.calibrate_weights`); 1 = every step.
WEIGHT_REFRESH = 1


class TimeAlign(StatefulModule):
    """Repeat the static inputs of an add/concat over time when another input varies.

    ``static_flags[i]`` says whether input ``i`` is static when the network input is.
    """

    def __init__(self, static_flags: tuple[bool, ...]) -> None:
        super().__init__()
        self.static_flags = tuple(static_flags)

    def reset_state(self) -> None:
        pass

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        clock = self.clock
        if clock is None or not clock.input_static or all(self.static_flags) or not any(self.static_flags):
            return xs
        return tuple(clock.expand(x) if f else x for x, f in zip(xs, self.static_flags))


@dataclass
class SiteInfo:
    """What the converter did at one ReLU call site."""

    name: str
    node: str
    threshold_mean: float
    threshold_max: float
    ann_mean_activation: float
    sample_shape: tuple[int, ...] = field(default_factory=tuple)


class SpikingModel(nn.Module):
    """A converted network that runs over time steps.

    ``model(x, T)`` returns the per-step outputs ``[T, N, ...]`` of the analog output
    layer; their running mean is the network's prediction after t steps (see
    :func:`spikeforge.metrics.cumulative_mean`). Input ``x`` is one static batch
    ``[N, ...]`` (fed at every step; the layers before the first neuron then run
    once) or, with ``sequence=True``, a sequence ``[T, N, ...]``.

    State is reset at the start of every call. Steps run in chunks: within a chunk,
    stateless layers process all its steps as one ``[K·N, ...]`` batch and each
    neuron loops over K; chunks are sized to ``mem_budget_mb`` for the actual input
    size (which may differ from the calibration inputs, e.g. full slices after
    calibration on patches). :meth:`stream` yields the chunks one by one, so a long
    run never holds all T outputs.
    """

    def __init__(
        self,
        graph: fx.GraphModule,
        clock: Clock,
        sites: list[SiteInfo],
        options: dict[str, Any],
        *,
        output_static: bool = False,
        input_numel: int = 0,
    ) -> None:
        super().__init__()
        self.output_static = output_static
        self.input_numel = int(input_numel)  # elements of one calibration input sample
        self.graph_module = graph
        self.clock = clock
        self.sites = sites
        self.options = options
        self._stateful = [m for m in graph.modules() if isinstance(m, StatefulModule)]
        for m in self._stateful:
            m.clock = clock
        self.bytes_per_sample_step = 4 * max([math.prod(s.sample_shape) for s in sites] or [1]) * 4
        self.channels_last = bool(options.get("channels_last", False))
        if self.channels_last:
            graph.to(memory_format=torch.channels_last)  # 4-D conv weights; others unchanged

    def _graph_until(self, name: str) -> fx.GraphModule:
        """The graph cut after the last call of neuron layer ``name``, returning its output.

        It shares its modules (and so their state) with the full graph; the layers that
        only later layers need are dropped.
        """
        calls = [n for n in self.graph_module.graph.nodes if n.op == "call_module" and str(n.target) == name]
        if not calls or not isinstance(self.graph_module.get_submodule(name), IFNeuron):
            raise ConversionError(f"'{name}' is not a neuron layer of this SNN; neuron layers: "
                                  f"{', '.join(self.neurons()) or 'none'}")
        graph = fx.Graph()
        values: dict[fx.Node, fx.Node] = {}
        graph.graph_copy(self.graph_module.graph, values)
        graph.output(values[calls[-1]])
        cut = fx.GraphModule(self.graph_module, graph)
        cut.graph.eliminate_dead_code()
        cut.recompile()
        return cut

    def reset_state(self) -> None:
        """Clear every neuron's membrane and every pool's running sums."""
        for m in self._stateful:
            m.reset_state()

    def neurons(self) -> dict[str, IFNeuron]:
        return {n: m for n, m in self.graph_module.named_modules() if isinstance(m, IFNeuron)}

    def firing_rates(self) -> dict[str, float]:
        """Spikes per neuron per step of each neuron layer since the last reset."""
        return {n: m.firing_rate for n, m in self.neurons().items()}

    def chunk_size(self, T: int, N: int, sample_numel: int | None = None) -> int:
        """Steps per chunk so that one chunk's activations fit ``mem_budget_mb``.

        ``sample_numel`` (elements of one input sample) scales the per-step activation
        size measured at calibration when inputs are larger or smaller than then.
        """
        budget = float(self.options.get("mem_budget_mb", 512)) * 2**20
        per_step = float(self.bytes_per_sample_step)
        if sample_numel and self.input_numel:
            per_step *= sample_numel / self.input_numel
        return max(1, min(T, int(budget // max(1.0, N * per_step))))

    @torch.no_grad()
    def forward(
        self,
        x: torch.Tensor,
        T: int | None = None,
        *,
        sequence: bool = False,
        chunk: int | None = None,
        record: bool = True,
    ) -> torch.Tensor:
        """Per-step outputs ``[T, N, ...]`` (all chunks of :meth:`stream` concatenated)."""
        return torch.cat(list(self.stream(x, T, sequence=sequence, chunk=chunk, record=record)), dim=0)

    def run_with_grad(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """Per-step outputs ``[T, N, ...]`` of a static input ``x`` with autograd on: all
        ``T`` steps in one chunk (memory grows with ``T × N``), for end-to-end calibration
        (:func:`spikeforge.convert.finetune.calibrate_end_to_end`). The neurons are
        differentiable only while their ``surrogate_corrections`` are set."""
        if T < 1:
            raise ValueError(f"T must be a positive number of time steps, got {T!r}")
        N = x.shape[0]
        self.reset_state()
        self.clock.batch, self.clock.record, self.clock.input_static, self.clock.steps = N, False, True, int(T)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.graph_module(x)
        if not isinstance(y, torch.Tensor):
            raise ConversionError("SpikingModel supports models with a single tensor output")
        if self.output_static:
            y = self.clock.expand(y)
        self.reset_state()
        return y.reshape(int(T), N, *y.shape[1:])

    @torch.no_grad()
    def stream(
        self,
        x: torch.Tensor,
        T: int | None = None,
        *,
        sequence: bool = False,
        chunk: int | None = None,
        record: bool = True,
        until: str | None = None,
    ) -> Iterator[torch.Tensor]:
        """Run ``T`` steps and yield the outputs chunk by chunk, each ``[k, N, ...]``.

        Memory stays bounded by one chunk whatever T is; state is reset first, so the
        run must be consumed in order (a new call starts a new run).

        ``until`` (the name of a neuron layer, a key of :meth:`neurons`): compute only
        what that layer needs and yield its spikes instead of the network's output.
        """
        graph = self.graph_module if until is None else self._graph_until(until)
        keep_freed_memory()  # chunk buffers above glibc's mmap limit would be page-faulted in again every chunk
        if sequence:
            if x.dim() < 2:
                raise ValueError(f"a sequence input must be [T, N, ...], got shape {tuple(x.shape)}")
            if T is not None and T != x.shape[0]:
                raise ValueError(f"T={T} but the sequence has {x.shape[0]} steps")
            T = x.shape[0]
            N = x.shape[1]
        else:
            if T is None or T < 1:
                raise ValueError(f"T must be a positive number of time steps, got {T!r}")
            N = x.shape[0]
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or infinite values")
        sample_numel = math.prod(x.shape[2:] if sequence else x.shape[1:])
        K = chunk or self.chunk_size(T, N, sample_numel)
        if self.options.get("share_reused_relu"):
            K = 1  # shared neurons: interleave their call sites step by step
        self.reset_state()
        self.clock.batch, self.clock.record, self.clock.input_static = N, record, not sequence
        for t0 in range(0, T, K):
            k = min(K, T - t0)
            self.clock.steps = k
            inp = x[t0 : t0 + k].reshape(k * N, *x.shape[2:]) if sequence else x
            if self.channels_last and inp.dim() == 4:
                inp = inp.contiguous(memory_format=torch.channels_last)
            y = graph(inp)
            if not isinstance(y, torch.Tensor):
                raise ConversionError("SpikingModel supports models with a single tensor output")
            if self.output_static and not sequence and until is None:
                y = self.clock.expand(y)
            yield y.reshape(k, N, *y.shape[1:])


def _calibration_batches(data: Any, batch_size: int, max_batches: int | None) -> Iterable[torch.Tensor]:
    """Yield input tensors from a tensor, a list of tensors, or (x, y) batches."""
    if isinstance(data, torch.Tensor):
        if data.dim() == 0 or data.shape[0] == 0:
            raise ConfigError(f"calibration data is empty (a tensor of shape {tuple(data.shape)})")
        batches: Iterable[Any] = data.split(batch_size)
    elif isinstance(data, Iterable):
        batches = data
    else:
        raise InputTypeError(f"calibration data must be a tensor of inputs or an iterable of batches, "
                             f"got {type(data).__name__}")
    n = 0
    for b in batches:
        if isinstance(b, (tuple, list)):
            b = b[0]
        if not isinstance(b, torch.Tensor):
            raise InputTypeError(f"calibration batches must be tensors or (x, y) pairs, got {type(b).__name__}")
        if not torch.isfinite(b).all():
            raise ConfigError("calibration data contains NaN or infinite values")
        yield b.float()
        n += 1
        if max_batches is not None and n >= max_batches:
            break
    if n == 0:
        raise ConfigError("calibration data yielded no batches")


def convert(
    model: nn.Module,
    calibration_data: Any,
    *,
    percentile: float = 99.99,
    per_channel: bool = False,
    reset: str = "subtract",
    max_spikes: int = 1,
    v_init: float = 0.5,
    maxpool: str = "lipool",
    batch_size: int = 256,
    max_batches: int | None = 32,
    mem_budget_mb: float = 512,
    channels_last: bool = False,
    seed: int = 0,
    share_reused_relu: bool = False,
    split_threshold: bool = False,
    threshold: str = "percentile",
    correction: str = "none",
    target_T: int | None = None,
    correction_batches: int = 1,
    weight_iters: int = 0,
    weight_refresh: int = WEIGHT_REFRESH,
    e2e_epochs: int = 0,
    e2e_lr: float = 1e-4,
    e2e_weight_lr: float | None = None,
) -> SpikingModel:
    """Convert a trained ANN into a :class:`SpikingModel` of integrate-and-fire neurons.

    Args:
        model: a network of Conv/Linear/BatchNorm/ReLU (module or functional)/MaxPool/
            AvgPool/AdaptiveAvgPool/Flatten/add/cat/Upsample/ConvTranspose/Dropout.
        calibration_data: inputs for activation statistics: a tensor (split into
            batches of ``batch_size``) or an iterable of tensors / ``(x, y)`` batches.
        percentile: p of the activation percentile used as threshold (100 = max).
        per_channel: one threshold per channel instead of per layer.
        reset: ``"subtract"`` (soft) or ``"zero"`` (hard) reset.
        max_spikes: Γ, spikes a neuron may emit in one step (burst spikes when > 1).
        split_threshold: with Γ > 1, threshold λ/Γ instead of λ: a step still carries
            at most λ (Γ spikes of λ/Γ), with Γ times finer resolution — the rate code
            of Γ·T steps in T steps, for deep networks whose errors add up layer by layer.
        v_init: initial membrane as a fraction of the threshold.
        maxpool: ``"lipool"``, ``"gated"`` or ``"plain"`` spiking max-pool.
        max_batches: most calibration batches to use (None = all).
        mem_budget_mb: activation memory one chunk of time steps may use.
        channels_last: run 4-D activations in the channels-last layout (several times
            faster convolutions on CPU for the few channels of segmentation nets).
        threshold: ``"percentile"`` (the ``percentile`` of the activations) or ``"mse"``
            (the threshold that minimizes the error of ``target_T``-step rate coding,
            searched per layer or channel; Li et al., ICML 2021). QCFS sites always keep
            their learnt ceiling. With burst spikes (``max_spikes`` > 1) the search
            counts the Γ spikes a step may carry (T·Γ levels when the threshold is split).
        correction: after thresholds are set, compare the SNN's mean output over
            ``target_T`` steps with the ANN's on ``correction_batches`` calibration
            batches, layer by layer, and remove the per-channel mean difference:
            ``"bias"`` adds it to each neuron's input current at every step,
            ``"potential"`` adds ``target_T`` times it to the initial membrane;
            ``"none"`` (default) leaves the SNN as converted.
        weight_iters: with a correction, first calibrate the weights that feed each
            neuron layer for this many Adam steps (see :mod:`spikeforge.convert.weights`),
            on the same images and in the same layer-by-layer pass; 0 (default) = off.
        weight_refresh: during weight calibration, simulate a layer's true ``target_T``-step
            output every this many steps (1 = every step, exact but slowest); in between the
            last simulated rounding error is reused.
        target_T: the number of steps the SNN will be read out after (needed by
            ``threshold="mse"``, by the corrections and by ``e2e_epochs``).
        e2e_epochs: after the corrections, learn every neuron layer's per-channel
            potential and bias corrections jointly for ``target_T`` steps by
            backpropagation through the SNN, distilling the ANN's outputs on the
            calibration images for this many epochs
            (:func:`spikeforge.convert.finetune.calibrate_end_to_end`; binary spikes with
            reset by subtraction only); 0 (default) = off. ``e2e_lr``: its Adam learning rate.
            ``e2e_weight_lr``: fine-tune the SNN's weights and biases in the same pass with
            this learning rate (a distillation fine-tune of the whole SNN at ``target_T``;
            the ANN is not changed); None (default) = weights stay as converted.
        share_reused_relu: reproduce the fault of converters that replace modules by
            name (for ablations only): all call sites of one ``nn.ReLU`` module share a
            single neuron — one threshold from their pooled statistics and one membrane
            that every site integrates into in turn. The model then runs one step at a
            time, so the sites interleave step by step as in a single-step simulator.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"convert() needs a torch.nn.Module as model, got {type(model).__name__}")
    if calibration_data is None:
        raise InputTypeError("convert() needs calibration data (a tensor of inputs or an iterable of batches), got None")
    bad = [n for n, t in (*model.named_parameters(), *model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ConversionError(f"the weights of {', '.join(bad[:3])} are NaN or infinite (a diverged training?); "
                              "only a finite model can be converted")
    if maxpool not in POOL_MODES:
        raise ConfigError(f"maxpool must be one of {POOL_MODES}, got {maxpool!r}")
    if reset not in ("subtract", "zero"):
        raise ConfigError(f"reset must be 'subtract' or 'zero', got {reset!r}")
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    if not math.isfinite(v_init):
        raise ConfigError(f"v_init must be a finite number, got {v_init}")
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"max_batches must be >= 1 (None = all batches), got {max_batches}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    _check_method(threshold, correction, target_T, max_spikes, share_reused_relu)
    _check_e2e(e2e_epochs, e2e_lr, target_T, max_spikes, reset, share_reused_relu)
    if e2e_weight_lr is not None and not (e2e_epochs and math.isfinite(e2e_weight_lr) and e2e_weight_lr > 0):
        raise ConfigError(f"e2e_weight_lr must be a finite number > 0 and needs e2e_epochs > 0; got "
                          f"e2e_weight_lr={e2e_weight_lr!r}, e2e_epochs={e2e_epochs!r}")
    if weight_iters != int(weight_iters) or weight_iters < 0:
        raise ConfigError(f"weight_iters must be a whole number >= 0, got {weight_iters!r}")
    if weight_refresh != int(weight_refresh) or weight_refresh < 1:
        raise ConfigError(f"weight_refresh must be a whole number >= 1, got {weight_refresh!r}")
    if weight_iters and correction == "none":
        raise ConfigError("weight_iters > 0 (weight calibration) runs in the layer-wise correction pass: "
                          "use it with correction='bias' or 'potential'")
    gm = trace(model)
    fold_batchnorm(gm)
    move_relu_before_maxpool(gm)
    graph = gm.graph

    recorders: dict[str, ActivationRecorder] = {}
    site_nodes: dict[str, str] = {}
    shared_by_target: dict[str, str] = {}
    fixed: dict[str, torch.Tensor] = {}
    counter = 0
    for node in list(graph.nodes):
        kind = node_kind(gm, node)
        if kind == "relu" and share_reused_relu and node.op == "call_module" and str(node.target) in shared_by_target:
            name = shared_by_target[str(node.target)]  # the fault: a second site reuses the first site's neuron
            site_nodes[name] += f"+{node.name}"
            _swap_for_module(graph, node, name)
        elif kind == "relu":
            name = f"sf_neuron{counter}"
            counter += 1
            rec = ActivationRecorder(per_channel=per_channel, seed=seed + counter, allow_shapes=share_reused_relu)
            if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), QCFS):
                rec.activation = gm.get_submodule(str(node.target))
                fixed[name] = rec.activation.ceiling.detach().clone()  # the trained ceiling λ
            gm.add_submodule(name, rec)
            recorders[name] = rec
            site_nodes[name] = node.name
            if share_reused_relu and node.op == "call_module":
                shared_by_target[str(node.target)] = name
            _swap_for_module(graph, node, name)
        elif kind == "maxpool":
            params = maxpool_params(gm, node)
            name = f"sf_pool{len(site_nodes)}_{node.name}".replace("__", "_")
            gm.add_submodule(name, SpikingMaxPool2d(**params, mode=maxpool))
            _swap_for_module(graph, node, name)
        elif kind == "dropout":
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    # Time alignment in front of every add/concat that mixes static and varying inputs.
    static = _static_nodes(gm)
    for i, node in enumerate(list(graph.nodes)):
        if node.op in ("call_function", "call_method") and node_kind(gm, node) == "combine":
            inputs = list(dict.fromkeys(node.all_input_nodes))
            flags = tuple(inp in static for inp in inputs)
            if len(inputs) < 2 or all(flags) or not any(flags):
                continue
            name = f"sf_align{i}"
            gm.add_submodule(name, TimeAlign(flags))
            with graph.inserting_before(node):
                aligned = graph.call_module(name, tuple(inputs))
                picks = {inp: graph.call_function(_getitem, (aligned, j)) for j, inp in enumerate(inputs)}
            node.args = fx.map_arg(node.args, lambda n: picks.get(n, n))
            node.kwargs = fx.map_arg(node.kwargs, lambda n: picks.get(n, n))
    for node in graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if isinstance(mod, SpikingMaxPool2d):
                mod.static_input = node.args[0] in static
    graph.lint()
    gm.recompile()
    if not recorders:
        raise ConversionError("the model has no ReLU to turn into spiking neurons")

    # Calibration: run the ANN (now with recorders) over several batches, every
    # spiking max-pool acting as the ANN's max-pool meanwhile.
    pools = [m for m in gm.modules() if isinstance(m, SpikingMaxPool2d)]
    for m in pools:
        m.analog = True
    input_numel = 0
    ann_outputs: dict[str, list[torch.Tensor]] = {name: [] for name in recorders}
    correction_inputs: list[torch.Tensor] = []
    e2e_inputs: list[torch.Tensor] = []
    hooks = []
    if correction != "none":
        for name, rec in recorders.items():
            hooks.append(rec.register_forward_hook(
                lambda m, i, o, name=name: ann_outputs[name].append(o.detach().float().clone())))
    with torch.no_grad():
        for xb in _calibration_batches(calibration_data, batch_size, max_batches):
            try:
                gm(xb)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConversionError(f"the calibration data (a batch of shape {tuple(xb.shape)}) does not fit "
                                      f"{type(model).__name__}: {first}") from exc
            input_numel = max(input_numel, math.prod(xb.shape[1:]))
            if e2e_epochs:
                e2e_inputs.append(xb)
            if hooks:
                correction_inputs.append(xb)
                if len(correction_inputs) >= correction_batches:
                    for h in hooks:
                        h.remove()
                    hooks = []
    for h in hooks:
        h.remove()
    for m in pools:
        m.analog = False

    sites: list[SiteInfo] = []
    for name, rec in recorders.items():
        if rec.batches == 0:
            raise ConversionError(f"activation '{site_nodes[name]}' received no calibration data")
        if name in fixed:
            lam = fixed[name]
        elif threshold == "mse":
            lam = rec.mse_threshold(int(target_T), v_init=v_init, max_spikes=max_spikes, split=split_threshold)
        else:
            lam = rec.threshold(percentile)
        if split_threshold:
            lam = lam / max_spikes
        shared = "+" in site_nodes[name]
        neuron = (SharedIFNeuron if shared else IFNeuron)(lam, reset=reset, max_spikes=max_spikes, v_init=v_init)
        gm.add_submodule(name, neuron)
        sites.append(
            SiteInfo(
                name=name,
                node=site_nodes[name],
                threshold_mean=float(lam.mean()),
                threshold_max=float(lam.max()),
                ann_mean_activation=rec.mean_activation,
                sample_shape=tuple(rec.sample_shape or ()),
            )
        )
    gm.recompile()
    static = _static_nodes(gm)
    static_sites: dict[str, list[bool]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), IFNeuron):
            static_sites.setdefault(str(node.target), []).append(node.args[0] in static)
    for target, flags in static_sites.items():
        gm.get_submodule(target).static_input = all(flags)
    output_static = all(n in static for n in next(n for n in gm.graph.nodes if n.op == "output").all_input_nodes)
    options = dict(
        percentile=percentile, per_channel=per_channel, reset=reset, max_spikes=max_spikes,
        v_init=v_init, maxpool=maxpool, mem_budget_mb=mem_budget_mb, channels_last=channels_last,
        share_reused_relu=share_reused_relu, split_threshold=split_threshold,
        threshold=threshold, correction=correction, target_T=target_T, weight_iters=int(weight_iters),
        weight_refresh=int(weight_refresh),
    )
    snn = SpikingModel(gm, Clock(), sites, options, output_static=output_static, input_numel=input_numel)
    if correction != "none":
        targets = {name: torch.cat(v) for name, v in ann_outputs.items()}
        snn.correction_report = correct_layerwise(snn, targets, correction_inputs, int(target_T), correction,
                                                  weight_iters=int(weight_iters),
                                                  weight_refresh=int(weight_refresh))
    if e2e_epochs:
        from spikeforge.convert.finetune import calibrate_end_to_end

        options.update(e2e_epochs=int(e2e_epochs), e2e_lr=float(e2e_lr))
        learn = ("potential", "bias")
        if e2e_weight_lr is not None:
            options["e2e_weight_lr"] = float(e2e_weight_lr)
            learn += ("weight",)
        snn.e2e_report = calibrate_end_to_end(snn, model, torch.cat(e2e_inputs), int(target_T), epochs=int(e2e_epochs),
                                              lr=float(e2e_lr), seed=seed, learn=learn, weight_lr=e2e_weight_lr)
    return snn


METHODS_THRESHOLD = ("percentile", "mse")
METHODS_CORRECTION = ("none", "bias", "potential")


def _check_method(threshold: str, correction: str, target_T: int | None, max_spikes: int, shared: bool) -> None:
    if threshold not in METHODS_THRESHOLD:
        raise ConfigError(f"threshold must be one of {METHODS_THRESHOLD}, got {threshold!r}")
    if correction not in METHODS_CORRECTION:
        raise ConfigError(f"correction must be one of {METHODS_CORRECTION}, got {correction!r}")
    needs_T = threshold == "mse" or correction != "none"
    if needs_T and (target_T is None or int(target_T) != target_T or target_T < 1):
        raise ConfigError(f"threshold={threshold!r} with correction={correction!r} needs target_T, a positive "
                         f"number of steps, got {target_T!r}")
    if correction != "none" and shared:
        raise ConversionError(f"correction={correction!r} is not supported with share_reused_relu=True")


def _check_e2e(epochs: int, lr: float, target_T: int | None, max_spikes: int, reset: str, shared: bool) -> None:
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise ConfigError(f"e2e_epochs must be a whole number >= 0, got {epochs!r}")
    if not epochs:
        return
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"e2e_lr must be a finite number > 0, got {lr!r}")
    if target_T is None or int(target_T) != target_T or target_T < 1:
        raise ConfigError(f"e2e_epochs={epochs} needs target_T, the steps to calibrate for, got {target_T!r}")
    if max_spikes != 1 or reset != "subtract" or shared:
        raise ConversionError(f"end-to-end calibration (e2e_epochs={epochs}) supports binary spikes with reset by "
                              f"subtraction, one neuron per call site; got max_spikes={max_spikes}, reset={reset!r}"
                              + (", share_reused_relu=True" if shared else ""))


def _channel_mean(y: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Mean of ``[N, C, ...]`` over every dimension but C, shaped ``[C, 1, ...]``."""
    if y.dim() < 2:
        return y.mean().reshape(())
    dims = [0] + list(range(2, y.dim()))
    return y.float().mean(dim=dims).reshape(y.shape[1], *([1] * (y.dim() - 2)))


#: Largest simulation input (elements of ``[T, N, ...]``) that the corrections score in one
#: piece; larger ones go in chunks of images (same result up to float rounding). 2**26 floats
#: is 256 MiB per temporary: a full-width ResNet-18 at T=16 on 1,024 images needs 4 GiB each.
ERROR_CHUNK_ELEMENTS = 2**26

#: Candidate shifts of the corrections, in units of one quantum θ/T (bias) or of θ (potential).
CORRECTION_GRID = torch.linspace(-1.0, 1.0, 41)

#: Most units per channel on which the corrections score every candidate shift: a conv layer
#: with more (images × positions) is scored on a fixed random subset of its positions; the
#: chosen shift is then checked on every unit and kept per channel only where it helps there.
CORRECTION_UNITS = 1 << 15


def _unit_subset(x: torch.Tensor, target: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [T, N, C, H, W]`` and ``target [N, C, H, W]`` at the same random ≤ cap/N positions
    (as ``[..., C, 1, P]``); other shapes, or few enough units, come back unchanged."""
    if x.dim() != 5:
        return x, target
    N, hw = x.shape[1], x.shape[-2] * x.shape[-1]
    keep = min(hw, max(1, math.ceil(cap / N)))
    if keep == hw:
        return x, target
    pos = torch.randperm(hw, generator=torch.Generator().manual_seed(0))[:keep].sort().values
    return x.flatten(-2)[..., pos].unsqueeze(-2), target.flatten(-2)[..., pos].unsqueeze(-2)


@torch.no_grad()
def correct_layerwise(snn: SpikingModel, ann_outputs: dict[str, torch.Tensor], inputs: list[torch.Tensor],
                      T: int, kind: str, *, weight_iters: int = 0,
                      weight_refresh: int = 1) -> dict[str, dict[str, float]]:
    """Bias or potential correction, one neuron layer after the other (earliest first).

    For each layer: run the SNN ``T`` steps on ``inputs`` as far as that layer (earlier
    layers already corrected) and record its input currents; then, per channel, choose the
    shift that makes the layer's ``T``-step mean output closest (squared error) to the
    ANN's activation ``ann_outputs[name]`` on the same images — a constant input
    current of ``u·θ/T`` (``"bias"``) or an initial-membrane offset of ``u·θ``
    (``"potential"``), ``u`` from :data:`CORRECTION_GRID` (0 = no change, so a layer
    never gets worse on these images). Choosing by the squared error rather than
    moving the mean by the mean difference matters: a channel whose many inactive
    units sit just below the rounding point (a constant background) flips as a whole
    under a mean shift and overshoots. The candidates are scored on at most
    :data:`CORRECTION_UNITS` units per channel (see :func:`_unit_subset`); the winner is
    kept only where it also lowers the error over all units.

    With ``weight_iters`` > 0, the convolutions feeding each layer are calibrated first
    (:func:`spikeforge.convert.weights.calibrate_weights`) on the spikes recorded in the same run.

    Returns, per layer, the mean squared error before and after its correction.
    """
    neurons = snn.neurons()
    report: dict[str, dict[str, float]] = {}
    x_all = torch.cat(inputs) if len(inputs) > 1 else inputs[0]
    static_nodes = _static_nodes(snn.graph_module) if weight_iters else set()
    for name, neuron in neurons.items():
        chunks: list[torch.Tensor] = []
        layers = presynaptic_layers(snn.graph_module, name, static_nodes) if weight_iters else []
        records: list[list[torch.Tensor]] = [[] for _ in layers]

        def record_hook(i: int, static: bool):
            def hook(m, args):
                x = args[0]
                if static:
                    if not records[i]:
                        records[i].append(x.clone())
                else:
                    records[i].append(x.reshape(snn.clock.steps, -1, *x.shape[1:]).clone())
            return hook

        def pre_hook(m, args):
            x = args[0]
            if m.static_input and snn.clock.input_static:
                chunks.append(x.unsqueeze(0).expand(snn.clock.steps, *x.shape).clone())
            else:
                chunks.append(x.reshape(snn.clock.steps, -1, *x.shape[1:]).clone())

        hs = [neuron.register_forward_pre_hook(pre_hook)]
        hs += [lay.module.register_forward_pre_hook(record_hook(i, lay.static)) for i, lay in enumerate(layers)]
        try:
            for _ in snn.stream(x_all, T, record=False, until=name):
                pass
        finally:
            for h in hs:
                h.remove()
        currents = torch.cat(chunks).contiguous()  # [T, N, ...] input of this layer (its bias not yet added)
        target = ann_outputs[name].float()
        th = neuron.threshold
        th_b = th if th.numel() > 1 else float(th)
        base_bias = neuron.input_bias
        base = currents + base_bias if base_bias is not None else currents

        def layer_error(x: torch.Tensor, tgt: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
            """Per-channel squared error with ``shift`` (in input current or membrane) added; over
            chunks of images when ``x`` is large, so the simulation's temporaries stay small."""
            n = x.shape[1] if x.dim() > 1 else 1
            step = max(1, ERROR_CHUNK_ELEMENTS // max(1, x.numel() // n))
            if x.dim() < 3 or step >= n:
                return chunk_error(x, tgt, shift)
            total = None
            for i in range(0, n, step):
                e = chunk_error(x[:, i:i + step], tgt[i:i + step], shift) * min(step, n - i)
                total = e if total is None else total.add_(e)
            return total / n

        def chunk_error(x: torch.Tensor, tgt: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
            v0 = neuron.v_offset
            if shift is not None and kind == "bias":
                x = x + shift
            elif shift is not None:
                v0 = shift if v0 is None else v0 + shift
            v = None
            if v0 is not None:
                v = initial_membrane(x[0], th_b, neuron.v_init).add_(v0)
            out, _ = if_seq(x, threshold=th_b, v=v, v_init=neuron.v_init, reset=neuron.reset, scale_output=True,
                            max_spikes=neuron.max_spikes)
            diff = out.mean(0) - tgt
            return _channel_mean(diff * diff)

        full_before = layer_error(base, target, None)
        before = float(full_before.mean())
        weight_report: dict[str, float] = {}
        if layers:  # weight calibration first; the shift below is then chosen on the new currents
            layer_in = [r[0] if lay.static else torch.cat(r) for lay, r in zip(layers, records)]
            del records[:]
            rest = currents - layer_currents(layers, layer_in, T)
            del currents, base  # rebuilt below from the calibrated layers
            weight_report = calibrate_weights(neuron, layers, layer_in, rest, target, T, iters=weight_iters,
                                              refresh_every=weight_refresh)
            currents = (rest + layer_currents(layers, layer_in, T)).contiguous()
            del rest, layer_in
            base = currents + base_bias if base_bias is not None else currents
            full_before = layer_error(base, target, None)
        sub_x, sub_target = _unit_subset(base, target, CORRECTION_UNITS)
        subset = sub_x is not base
        best_err = layer_error(sub_x, sub_target, None) if subset else full_before
        best_u = torch.zeros_like(best_err)
        th_c = th.reshape(-1, *([1] * (best_err.dim() - 1))) if th.numel() > 1 else th
        unit = th_c / T if kind == "bias" else th_c  # one step of u in input current or membrane
        for u in CORRECTION_GRID.tolist():
            if u == 0.0:
                continue
            err = layer_error(sub_x, sub_target, u * unit)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_u = torch.where(better, torch.full_like(best_u, u), best_u)
        shift = best_u * unit
        if subset:  # keep the subset's choice only in the channels where it helps every unit
            full_after = layer_error(base, target, shift)
            helps = full_after < full_before
            shift = torch.where(helps, shift, torch.zeros_like(shift))
            best_err = torch.where(helps, full_after, full_before)
        if kind == "bias":
            neuron.input_bias = shift if base_bias is None else base_bias + shift
        else:
            neuron.v_offset = shift if neuron.v_offset is None else neuron.v_offset + shift
        report[name] = {"mse_before": before, "mse_after": float(best_err.mean()), **weight_report}
    return report


def _swap_for_module(graph: fx.Graph, node: fx.Node, name: str) -> None:
    """Replace ``node`` by a call of submodule ``name`` on the node's first input."""
    with graph.inserting_after(node):
        new = graph.call_module(name, (node.args[0],))
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _static_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value is the same at every step when the network input is.

    A node is static when all its inputs are, unless it is a neuron or a recorder
    standing in for one. A max-pool of a static input is static (pooling a constant).
    """
    static: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            static.add(node)
            continue
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), (IFNeuron, ActivationRecorder)):
            continue
        if node.op != "output" and all(i in static for i in node.all_input_nodes):
            static.add(node)
    return static


def _getitem(xs: tuple[torch.Tensor, ...], i: int) -> torch.Tensor:
    return xs[i]
