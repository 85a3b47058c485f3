"""Spike statistics, synaptic operations and energy estimates, collected during evaluation.

:class:`SpikeStats` puts forward hooks on a network's neuron layers and weighted layers
and counts while the network runs its ordinary evaluation, so the statistics come from
the same pass as the accuracy (no second run). It works for converted networks
(:class:`~spikeforge.convert.SpikingModel`, and the graphs :mod:`spikeforge.nir` imports)
and for directly trained networks (the :mod:`spikeforge.models.snn` nets,
:class:`~spikeforge.models.snn.SpikingSequential`).

What is counted, per image:

* **spikes per neuron per step** of each neuron layer: spikes / (neurons × steps);
  a burst of k spikes in one step (Γ > 1) counts k.
* **SOPs** (synaptic operations) of each weighted layer (Linear, Conv, ConvTranspose):
  every spike that reaches the layer drives one accumulate per synapse it feeds, so
  SOP = Σ over spikes of the fan-out of the input position it arrives at. The fan-out
  is exact, position by position (a conv input on the border feeds fewer outputs): it
  is the gradient of Σ conv(x, ones) with respect to x, computed once per layer and
  input size. Spikes reach a layer through max-pooling, flattening, nearest upsampling
  and concatenation unchanged; through an average pool they are routed to the pooled
  unit (a spike in a 2×2 window drives the synapses of that window's output).
* **MACs**: the dense multiply–accumulates of a weighted layer for one image
  (``C_out·H_out·W_out·C_in/groups·k_h·k_w`` for a conv, zero padding included as a
  dense conv computes it; ``in·out`` for a Linear). The equivalent ANN computes all of
  them once per image. In the SNN only the layers fed analog values cost MACs (the
  first layer with direct input; the channels a concatenation takes from an analog
  layer): once per image when that input is the same at every step, else at every step.
* **energy estimate**: ``E = E_MAC·MACs + E_AC·SOPs`` per image and as a ratio to the
  ANN's ``E_MAC·MACs``, with the 45 nm figures of Horowitz (ISSCC 2014), see
  :data:`ENERGY_MODELS`. It is an estimate: neuron updates, pooling, normalization,
  memory access and data movement are not counted, and they often dominate on real
  hardware.

A weighted layer's input is decoded into spike counts from the network's structure
where it is known (the traced graph of a converted net, the layer list of a
:class:`~spikeforge.models.snn.SpikingSequential`): a converted IF neuron emits θ-valued
spikes, so the count is value/θ. Elsewhere (networks with their own ``forward``) an
input counts as spikes when every value is a non-negative integer, as analog otherwise.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "DEFAULT_ENERGY_MODEL",
    "ENERGY_MODELS",
    "ESTIMATE_NOTE",
    "EnergyModel",
    "SpikeStats",
    "dense_macs",
    "energy_pj",
    "fanout_map",
    "spike_stats_table",
    "synaptic_operations",
]


@dataclass(frozen=True)
class EnergyModel:
    """Energy of one multiply–accumulate (MAC) and one accumulate (AC), in picojoules."""

    name: str
    e_mac_pj: float
    e_ac_pj: float
    source: str


#: Energy per operation, 45 nm CMOS at 0.9 V (M. Horowitz, "Computing's energy problem
#: (and what we can do about it)", ISSCC 2014, table of arithmetic energies). A MAC is a
#: multiply plus an add of the same kind; an AC (what a spike triggers) is the add alone.
ENERGY_MODELS: dict[str, EnergyModel] = {
    "45nm-fp32": EnergyModel(
        "45nm-fp32", 4.6, 0.9,
        "Horowitz, ISSCC 2014, 45 nm: fp32 multiply 3.7 pJ + fp32 add 0.9 pJ = 4.6 pJ per MAC; AC = fp32 add 0.9 pJ",
    ),
    "45nm-fp16": EnergyModel(
        "45nm-fp16", 1.5, 0.4,
        "Horowitz, ISSCC 2014, 45 nm: fp16 multiply 1.1 pJ + fp16 add 0.4 pJ = 1.5 pJ per MAC; AC = fp16 add 0.4 pJ",
    ),
    "45nm-int8": EnergyModel(
        "45nm-int8", 0.23, 0.03,
        "Horowitz, ISSCC 2014, 45 nm: int8 multiply 0.2 pJ + int8 add 0.03 pJ = 0.23 pJ per MAC; AC = int8 add "
        "0.03 pJ (an int32 accumulator costs 0.1 pJ per add instead)",
    ),
}
DEFAULT_ENERGY_MODEL = "45nm-fp32"
ESTIMATE_NOTE = (
    "estimate: E = E_MAC·MACs (layers fed analog values) + E_AC·SOPs (spike-driven accumulates); neuron updates, "
    "pooling, normalization, memory access and data movement are not counted"
)


def energy_pj(macs: float, sops: float, model: str | EnergyModel = DEFAULT_ENERGY_MODEL) -> float:
    """``E_MAC·macs + E_AC·sops`` in picojoules (an estimate, see :data:`ENERGY_MODELS`)."""
    em = ENERGY_MODELS[model] if isinstance(model, str) else model
    return em.e_mac_pj * float(macs) + em.e_ac_pj * float(sops)


# --- geometry of weighted layers ----------------------------------------------------

SYNAPTIC: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)


def _spatial_dims(layer: nn.Module) -> int:
    return 0 if isinstance(layer, nn.Linear) else len(layer.kernel_size)  # type: ignore[arg-type]


def _single_channel_op(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s connectivity on one input and one output channel, all weights 1."""
    nd = _spatial_dims(layer)
    k = torch.ones((1, 1, *layer.kernel_size), dtype=x.dtype)  # type: ignore[misc]
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
        return fn(x, k, None, layer.stride, layer.padding, layer.output_padding, 1, layer.dilation)
    fn = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
        return fn(x, k, None, layer.stride, 0, layer.dilation, 1)
    return fn(x, k, None, layer.stride, layer.padding, layer.dilation, 1)


def fanout_map(layer: nn.Module, spatial: tuple[int, ...]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Exact spatial fan-out of a conv (or transposed conv) and its output size.

    Returns ``(F, out_spatial)``: ``F[p]`` is the number of (output position, kernel tap)
    pairs input position ``p`` takes part in, borders included; a spike arriving at
    channel c, position p drives ``(C_out/groups)·F[p]`` synapses.
    """
    x = torch.ones((1, 1, *spatial), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = _single_channel_op(layer, x)
        (g,) = torch.autograd.grad(y.sum(), x)
    return g[0, 0].detach(), tuple(y.shape[2:])


def dense_macs(layer: nn.Module, sample_shape: tuple[int, ...]) -> int:
    """Multiply–accumulates of ``layer`` on one sample of shape ``sample_shape`` (dense)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    spatial = tuple(sample_shape[1:])
    _, out_sp = fanout_map(layer, spatial)
    taps = math.prod(layer.kernel_size)  # type: ignore[arg-type]
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return layer.in_channels * math.prod(spatial) * (layer.out_channels // layer.groups) * taps
    return layer.out_channels * math.prod(out_sp) * (layer.in_channels // layer.groups) * taps


def synaptic_operations(layer: nn.Module, spikes: torch.Tensor) -> float:
    """SOPs of ``layer`` for spike counts ``spikes`` ``[N, *sample]`` (exact fan-out)."""
    if isinstance(layer, nn.Linear):
        return float(spikes.sum(dtype=torch.float64)) * layer.out_features
    fmap, _ = fanout_map(layer, tuple(spikes.shape[2:]))
    per_pos = spikes.sum(dim=(0, 1), dtype=torch.float64).cpu()
    return float((per_pos * fmap).sum()) * (layer.out_channels // layer.groups)


# --- what reaches a weighted layer ----------------------------------------------------


@dataclass
class _Sig:
    """What a tensor carries: per channel the value of one spike (0: analog), or all analog."""

    scale: torch.Tensor | None = None  # [C] (or [1]: the same for every channel); None: analog
    channels: int | None = None
    flat: bool = False  # channels were flattened into features (C·H·W)
    note: str = ""

    @staticmethod
    def analog(channels: int | None = None, note: str = "") -> "_Sig":
        return _Sig(None, channels, False, note)

    @staticmethod
    def events(scale: torch.Tensor | float, channels: int | None) -> "_Sig":
        s = torch.as_tensor(scale, dtype=torch.float64).flatten()
        if s.numel() == 1 and channels:
            s = s.expand(channels).clone()
        return _Sig(s, channels if channels else (s.numel() if s.numel() > 1 else None))

    @property
    def is_events(self) -> bool:
        return self.scale is not None and bool((self.scale > 0).any())

    def pooled(self, divisor: float) -> "_Sig":
        if self.scale is None:
            return self
        return _Sig(self.scale / divisor, self.channels, self.flat, self.note)

    def scaled(self, s: torch.Tensor | float | None) -> "_Sig":
        """After multiplying by ``s`` (a number or one value per channel; None: anything else)."""
        if self.scale is None or s is None or self.flat:
            return _Sig.analog(self.channels, "scaled values")
        s = torch.as_tensor(s, dtype=torch.float64).flatten()
        if s.numel() == 1:
            return _Sig(self.scale * s, self.channels, False, self.note)
        if self.channels != s.numel():
            return _Sig.analog(self.channels, "scale per element")
        return _Sig(self.scale.expand(s.numel()) * s, self.channels, False, self.note)

    def flattened(self) -> "_Sig":
        return _Sig(self.scale, self.channels, True, self.note)


def _cat(parts: list[_Sig | None]) -> _Sig:
    if any(p is None or p.channels is None or p.flat for p in parts):
        return _Sig.analog(None, "concatenation of tensors whose channels are unknown")
    scales = []
    for p in parts:
        assert p is not None and p.channels is not None
        scales.append(torch.zeros(p.channels, dtype=torch.float64) if p.scale is None else p.scale.expand(p.channels))
    s = torch.cat(scales)
    return _Sig(s if (s > 0).any() else None, int(s.numel()))


def _add(parts: list[_Sig | None]) -> _Sig:
    first = parts[0]
    if all(p is not None and p.scale is not None and not p.flat for p in parts):
        ref = first.scale  # type: ignore[union-attr]
        if all(p.scale.shape == ref.shape and torch.equal(p.scale, ref) for p in parts):  # type: ignore[union-attr]
            return _Sig(ref, first.channels)  # type: ignore[union-attr]
    channels = next((p.channels for p in parts if p is not None and p.channels), None)
    return _Sig.analog(channels, "sum of spike trains with different spike values is not decoded")


def _pool_divisor(kernel, padding, ceil_mode, count_include_pad, divisor_override) -> float | None:
    """Uniform divisor of an average pool, or None when it varies over positions."""
    if divisor_override:
        return float(divisor_override)
    pads = padding if isinstance(padding, (tuple, list)) else (padding,)
    if ceil_mode or (any(pads) and not count_include_pad):
        return None
    ks = kernel if isinstance(kernel, (tuple, list)) else (kernel,)
    return float(math.prod(ks)) if len(ks) > 1 else float(ks[0])


def _pool_divisor_module(m: nn.Module) -> float | None:
    k = m.kernel_size
    nd = 2 if isinstance(m, nn.AvgPool2d) else (1 if isinstance(m, nn.AvgPool1d) else 3)
    ks = tuple(k) if isinstance(k, (tuple, list)) else (k,) * nd
    return _pool_divisor(ks, m.padding, m.ceil_mode, m.count_include_pad, getattr(m, "divisor_override", None))


def _neuron_sig(m: nn.Module, channels: int | None) -> _Sig | None:
    """Signal leaving a neuron layer (None: the module is not a neuron)."""
    from spikeforge.neurons import LIF, IFNeuron

    if isinstance(m, IFNeuron):
        if not getattr(m, "spiking", True):
            return _Sig.analog(channels, "membrane potential (non-spiking neuron)")
        if getattr(m, "unit_spikes", False):
            return _Sig.events(1.0, channels)
        th = m.threshold.detach().double().flatten()
        return _Sig.events(th, th.numel() if th.numel() > 1 else channels)
    if isinstance(m, LIF):
        return _Sig.events(1.0, channels)
    return None


def _module_sig(m: nn.Module, first: _Sig | None, channels: int | None = None) -> _Sig:
    """Signal after a stateless module ``m`` whose input carries ``first``."""
    from spikeforge.layers import SpikingMaxPool2d

    first = first if first is not None else _Sig.analog()
    if isinstance(m, SYNAPTIC):
        return _Sig.analog(m.out_features if isinstance(m, nn.Linear) else m.out_channels)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return _Sig.analog(m.num_features)
    if isinstance(m, (SpikingMaxPool2d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Dropout, nn.Dropout1d,
                      nn.Dropout2d, nn.Identity)):
        return first
    if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        d = _pool_divisor_module(m)
        return first.pooled(d) if d else _Sig.analog(first.channels, "average pool with a varying divisor")
    if isinstance(m, nn.Flatten):
        return first.flattened() if m.start_dim == 1 else _Sig.analog(None, "flatten of other dimensions")
    if isinstance(m, nn.Upsample) and m.mode == "nearest":
        return first
    if hasattr(m, "channel_scale"):  # spikeforge.nir's Scale node: one value per channel, or None
        return first.scaled(m.channel_scale)
    return _Sig.analog(None, f"after {type(m).__name__}")


def _fx_sigs(gm: fx.GraphModule, channels_of: Mapping[str, int]) -> tuple[dict[str, _Sig], set[str]]:
    """Input signal of every weighted module of a traced graph, and the modules whose input is static."""
    from spikeforge.convert.core import TimeAlign, _static_nodes

    static = _static_nodes(gm)
    sig: dict[fx.Node, Any] = {}
    inputs: dict[str, _Sig] = {}
    static_targets: set[str] = set()

    def arg_sig(a: Any) -> _Sig | None:
        return sig.get(a) if isinstance(a, fx.Node) else None

    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            sig[node] = _Sig.analog()
            continue
        if node.op == "output":
            continue
        first = arg_sig(node.args[0]) if node.args else None
        out: Any = _Sig.analog()
        if node.op == "call_module":
            m = gm.get_submodule(str(node.target))
            if isinstance(m, SYNAPTIC):
                inputs.setdefault(str(node.target), first if isinstance(first, _Sig) else _Sig.analog())
                if node in static:
                    static_targets.add(str(node.target))
            ns = _neuron_sig(m, channels_of.get(str(node.target)))
            if ns is not None:
                out = ns
            elif isinstance(m, TimeAlign):
                out = tuple(arg_sig(a) for a in node.args)
            else:
                out = _module_sig(m, first if isinstance(first, _Sig) else None)
        elif node.op == "call_function":
            fn = node.target
            kw = node.kwargs
            if fn is operator.getitem and isinstance(first, tuple):
                out = first[node.args[1]]
            elif fn in (F.max_pool1d, F.max_pool2d, F.dropout, F.dropout2d) and isinstance(first, _Sig):
                out = first
            elif fn in (F.avg_pool1d, F.avg_pool2d) and isinstance(first, _Sig):
                a = list(node.args) + [None] * 8
                kernel = kw.get("kernel_size", a[1])
                d = _pool_divisor(
                    kernel if isinstance(kernel, (tuple, list)) else (kernel,) * (2 if fn is F.avg_pool2d else 1),
                    kw.get("padding", a[3] or 0), kw.get("ceil_mode", a[4] or False),
                    kw.get("count_include_pad", True if a[5] is None else a[5]),
                    kw.get("divisor_override", a[6] if fn is F.avg_pool2d else None),
                )
                out = first.pooled(d) if d else _Sig.analog(first.channels, "average pool with a varying divisor")
            elif fn is torch.flatten and isinstance(first, _Sig):
                start = kw.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
                out = first.flattened() if start == 1 else _Sig.analog()
            elif fn in (torch.cat, torch.concat):
                dim = kw.get("dim", node.args[1] if len(node.args) > 1 else 0)
                parts = [arg_sig(a) for a in node.args[0]]
                out = _cat(parts) if dim == 1 else _Sig.analog()
            elif fn in (operator.add, torch.add):
                parts = [arg_sig(a) for a in node.args if isinstance(a, fx.Node)]
                out = _add(parts) if len(parts) > 1 else _Sig.analog()
            elif fn is F.interpolate and isinstance(first, _Sig) and kw.get("mode", "nearest") == "nearest":
                out = first
        elif node.op == "call_method" and isinstance(first, _Sig):
            if node.target in ("contiguous", "float", "to", "clone"):
                out = first
            elif node.target == "flatten" and (node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1):
                out = first.flattened()
            elif node.target in ("view", "reshape") and len(node.args) == 3 and node.args[2] == -1:
                out = first.flattened()
            elif node.target in ("add", "add_"):
                out = _add([arg_sig(a) for a in node.args if isinstance(a, fx.Node)])
        sig[node] = out
    return inputs, static_targets


def _chain_sigs(layers: Iterable[nn.Module]) -> dict[int, _Sig]:
    """Input signal of every weighted module of a layer list run in order (keyed by id)."""
    cur = _Sig.analog()
    inputs: dict[int, _Sig] = {}
    for m in layers:
        if isinstance(m, SYNAPTIC):
            inputs.setdefault(id(m), cur)
        ns = _neuron_sig(m, None)
        cur = ns if ns is not None else _module_sig(m, cur)
    return inputs


# --- the collector ----------------------------------------------------------------------


class _Series:
    """A per-step sum that grows with the steps seen."""

    def __init__(self) -> None:
        self.v = torch.zeros(0, dtype=torch.float64)

    def add(self, offset: int, values: torch.Tensor | float) -> None:
        vals = torch.as_tensor(values, dtype=torch.float64).flatten().cpu()  # counts from any device
        end = offset + vals.numel()
        if end > self.v.numel():
            self.v = torch.cat([self.v, torch.zeros(end - self.v.numel(), dtype=torch.float64)])
        self.v[offset:end] += vals

    def total(self) -> float:
        return float(self.v.sum())


@dataclass
class _NeuronRecord:
    name: str
    kind: str
    spikes: _Series = field(default_factory=_Series)
    neuron_steps: float = 0.0
    neurons_per_image: float = 0.0


@dataclass
class _SynapseRecord:
    name: str
    kind: str
    sig: _Sig | None  # None: decide from the values
    static: bool = False
    sops: _Series = field(default_factory=_Series)
    macs: _Series = field(default_factory=_Series)
    dense_macs_per_sample: float = 0.0
    input: str = ""
    geometry: dict = field(default_factory=dict)  # sample shape → (fan-out map or None, dense MACs)
    scales: dict = field(default_factory=dict)  # features → decoded per-feature scale


class SpikeStats:
    """Count spikes, SOPs and MACs of ``model`` while it runs (forward hooks).

    Use as a context manager around an evaluation (or call :meth:`attach` /
    :meth:`detach`); :meth:`summary` gives the statistics per image.

    Args:
        model: a :class:`~spikeforge.convert.SpikingModel`, a
            :class:`~spikeforge.models.snn.SpikingSequential` or a network that takes
            images ``[N, ...]`` and has a number of steps ``T`` (the
            :mod:`spikeforge.models.snn` nets). Plain networks are counted only in eval
            mode, so hooks left on during training cost nothing.
    """

    def __init__(self, model: nn.Module) -> None:
        from spikeforge.convert.core import SpikingModel

        self.model = model
        self.spiking_model = model if isinstance(model, SpikingModel) else None
        self._hooks: list[Any] = []
        self.neurons: dict[str, _NeuronRecord] = {}
        self.synapses: dict[str, _SynapseRecord] = {}
        self.order: list[str] = []
        self.images = 0
        self.max_steps = 0
        self._active = False
        self._offset = 0
        self._last_steps = 0
        self._T: int | None = None
        self._N: int | None = None
        self._counted: dict[str, tuple[nn.Module, float, float]] = {}  # IF neurons: counters at the last chunk
        self._rank: dict[str, int] = {}  # layer → position in the graph

    # -- hooks --
    def attach(self) -> "SpikeStats":
        if self._hooks:
            return self
        from spikeforge.models.snn import SpikingSequential

        snn = self.spiking_model
        if snn is not None:
            root = snn.graph_module
            channels = {s.name: int(s.sample_shape[0]) for s in snn.sites if s.sample_shape}
            sigs, static = _fx_sigs(root, channels)
            self._hooks.append(root.register_forward_pre_hook(self._chunk_start))
            self._hooks.append(root.register_forward_hook(self._chunk_end))
            by_name: dict[str, Any] = dict(sigs)
            named = root.named_modules()
            self._rank = {str(n.target): i for i, n in enumerate(root.graph.nodes) if n.op == "call_module"}
        else:
            root = self.model
            self._hooks.append(root.register_forward_pre_hook(self._run_start, with_kwargs=True))
            by_id = _chain_sigs(root) if isinstance(root, (nn.Sequential, SpikingSequential)) else {}
            by_name = {n: by_id.get(id(m)) for n, m in root.named_modules()}
            static = set()
            named = root.named_modules()
        for name, m in named:
            if not name:
                continue
            if _neuron_sig(m, None) is not None:
                if not getattr(m, "spiking", True):
                    continue
                if snn is not None:  # converted neurons count their spikes themselves: read their counters
                    self._counted[name] = (m, 0.0, 0.0)
                else:
                    self._hooks.append(m.register_forward_hook(self._neuron_hook(name, m)))
            elif isinstance(m, SYNAPTIC):  # a record survives detach/attach: counting goes on
                rec = self.synapses.get(name) or _SynapseRecord(name, type(m).__name__, by_name.get(name),
                                                                static=name in static)
                self._hooks.append(m.register_forward_pre_hook(self._synapse_hook(rec, m)))
        return self

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self) -> "SpikeStats":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def reset(self) -> None:
        """Forget everything counted so far (hooks stay attached)."""
        self.neurons.clear()
        self.synapses.clear()
        self.order.clear()
        self.images = 0
        self.max_steps = 0

    # SpikingModel: one graph call per chunk of steps
    def _chunk_start(self, module: nn.Module, args: Any) -> None:
        snn = self.spiking_model
        assert snn is not None
        clock = snn.clock
        self._active = bool(clock.record)
        if not self._active:
            return
        new_run = all(getattr(n, "v", None) is None for n in snn.neurons().values())
        if new_run:
            self._offset = 0
            self.images += clock.batch
            self._counted = {k: (m, 0.0, 0.0) for k, (m, _s, _n) in self._counted.items()}
        else:
            self._offset += self._last_steps
        self._last_steps = clock.steps
        self._N = clock.batch
        self.max_steps = max(self.max_steps, self._offset + clock.steps)

    def _chunk_end(self, module: nn.Module, args: Any, out: Any) -> None:
        if not self._active:
            return
        self._active = False
        k, N = self.spiking_model.clock.steps, self.spiking_model.clock.batch  # type: ignore[union-attr]
        for name, (m, seen_spikes, seen_steps) in self._counted.items():
            spikes, steps = float(m.spike_count), float(m.neuron_steps)
            if steps == seen_steps:
                continue
            rec = self.neurons.get(name)
            if rec is None:
                rec = self.neurons[name] = _NeuronRecord(name, type(m).__name__)
                self._record(name)
            rec.spikes.add(self._offset, spikes - seen_spikes)  # the chunk's spikes, at its first step
            rec.neuron_steps += steps - seen_steps
            rec.neurons_per_image = (steps - seen_steps) / max(1, k * N)
            self._counted[name] = (m, spikes, steps)

    # other networks: one call per run
    def _run_start(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        from spikeforge.models.snn import SpikingSequential

        self._active = not module.training
        if not self._active or not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        if isinstance(module, SpikingSequential):
            steps = args[1] if len(args) > 1 else kwargs.get("steps")
            self._T, self._N = (int(steps), x.shape[0]) if steps is not None else (x.shape[0], x.shape[1])
        elif hasattr(module, "T"):
            self._T, self._N = int(module.T), x.shape[0]
        else:  # a sequence [T, N, ...]
            self._T, self._N = x.shape[0], x.shape[1]
        self._offset = 0
        self.images += self._N
        self.max_steps = max(self.max_steps, self._T)

    def _steps(self, leading: int) -> tuple[int, bool] | None:
        """(steps k in this call, static?) for a tensor with ``leading`` rows, or None if unknown."""
        snn = self.spiking_model
        if snn is not None:
            k, N = snn.clock.steps, snn.clock.batch
        else:
            k, N = self._T or 0, self._N or 0
        if N and leading == k * N:
            return k, False
        if N and leading == N:
            return 1, True
        return None

    def _record(self, name: str) -> None:
        if name not in self.order:
            self.order.append(name)

    def _neuron_hook(self, name: str, module: nn.Module):
        from spikeforge.neurons import IFNeuron

        def hook(m: nn.Module, args: Any, out: Any) -> None:
            if not self._active:
                return
            if isinstance(out, tuple):
                out = out[0]
            if self.spiking_model is not None:
                k = self.spiking_model.clock.steps
            else:
                k = out.shape[0]
            rec = self.neurons.get(name)
            if rec is None:
                rec = self.neurons[name] = _NeuronRecord(name, type(m).__name__)
                self._record(name)
            burst = isinstance(m, IFNeuron) and m.max_spikes > 1
            if burst:
                value = 1.0 if getattr(m, "unit_spikes", False) else m.threshold
                counts = (out.detach().float() / value).round_().reshape(k, -1).sum(1, dtype=torch.float64)
            else:  # 0/1 spikes: a float32 sum is exact below 2^24 per step (count_nonzero along a dim is slow)
                per = out.detach().reshape(k, -1)
                counts = per.sum(1, dtype=torch.float32 if per.shape[1] < 2**24 else torch.float64)
            rec.spikes.add(self._offset, counts)
            rec.neuron_steps += out.numel()
            rec.neurons_per_image = out.numel() / max(1, k * (self._N or 1))

        return hook

    def _synapse_hook(self, rec: _SynapseRecord, module: nn.Module):
        def hook(m: nn.Module, args: Any) -> None:
            if not self._active or not args:
                return
            x = args[0]
            if not isinstance(x, torch.Tensor):
                return
            self._count(rec, m, x.detach())

        return hook

    def _count(self, rec: _SynapseRecord, m: nn.Module, x: torch.Tensor) -> None:
        sd = 1 if isinstance(m, nn.Linear) else 1 + _spatial_dims(m)
        sample = tuple(x.shape[x.dim() - sd:])
        leading = math.prod(x.shape[: x.dim() - sd])
        layout = self._steps(leading)
        if rec.name not in self.synapses:
            self.synapses[rec.name] = rec
            self._record(rec.name)
        geo = rec.geometry.get(sample)
        if geo is None:
            fmap = None if isinstance(m, nn.Linear) else fanout_map(m, sample[1:])[0]
            geo = rec.geometry[sample] = (fmap, float(dense_macs(m, sample)))
        fmap, dense = geo
        rec.dense_macs_per_sample = dense
        static = rec.static if self.spiking_model is not None else (layout is not None and layout[1])
        if layout is None:
            k, rows = 1, leading
        else:
            k, rows = (1, leading) if static else (layout[0], leading // max(1, layout[0]))
        if static:
            if self._offset == 0:  # the same input at every step: the layer runs once per image
                rec.macs.add(0, dense * leading)
            rec.input = rec.input or "analog (same at every step)"
            return
        sig = rec.sig
        if sig is None:  # no structure known: decide from the values (once; a layer's input keeps its kind)
            is_spikes = bool((x >= 0).all()) and bool(torch.equal(x, torch.round(x)))
            sig = _Sig.events(1.0, None) if is_spikes else _Sig.analog()
            if bool(x.any()):
                rec.sig = sig
        if not sig.is_events:
            rec.macs.add(self._offset, torch.full((k,), dense * rows, dtype=torch.float64))
            rec.input = "analog" + (f" ({sig.note})" if sig.note else "")
            return
        C = sample[0] if not isinstance(m, nn.Linear) else sample[-1]
        scale = self._scale(rec, sig, C)
        if scale.numel() not in (1, C):
            rec.macs.add(self._offset, torch.full((k,), dense * rows, dtype=torch.float64))
            rec.input = f"analog (spike values for {scale.numel()} channels, input has {C})"
            return
        xs = x.reshape(k, rows, *sample)
        fan_channels = m.out_features if isinstance(m, nn.Linear) else m.out_channels // m.groups
        uniform = scale.numel() == 1
        if uniform:
            # Sums in float32 are rounded back to whole spike counts where they stay small (per position of
            # a conv input, per row of a Linear input), then added up in float64: exact and cheap.
            value = float(scale.to(x.dtype))  # a spike's value as the tensor holds it (bf16 too)
            if fmap is not None:
                per = (xs.sum(dim=(1, 2), dtype=torch.float32) / value).round_().double()
            else:
                per = (xs.sum(dim=2, dtype=torch.float32) / value).round_().sum(1, dtype=torch.float64)
            analog = 0
        else:
            mask = (scale > 0).to(x.device)
            analog = int((~mask).sum())
            s = scale.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
            if fmap is not None:
                view = s.view(-1, *([1] * (len(sample) - 1)))
                ev = xs[:, :, mask] / view[mask] if analog else xs / view
                per = ev.round_().sum(dim=(1, 2), dtype=torch.float64)
            else:
                ev = xs[..., mask] / s[mask] if analog else xs / s
                per = ev.round_().reshape(k, -1).sum(1, dtype=torch.float64)
        per = per.cpu()  # the fan-out maps live on the CPU
        sops = (per * fmap).reshape(k, -1).sum(1) if fmap is not None else per
        rec.sops.add(self._offset, sops * fan_channels)
        if analog:
            rec.macs.add(self._offset, torch.full((k,), dense * rows * analog / C, dtype=torch.float64))
            rec.input = f"spikes on {C - analog} of {C} channels, analog on {analog}"
        else:
            rec.input = rec.input if rec.input.startswith("spikes") else "spikes"

    def _scale(self, rec: _SynapseRecord, sig: _Sig, C: int) -> torch.Tensor:
        """Value of one spike per input channel (Conv) or feature (Linear); a single value when uniform."""
        s = sig.scale
        assert s is not None
        if s.numel() > 1 and bool((s == s[0]).all()):
            s = s[:1]
        if s.numel() == 1:
            return s
        if not sig.flat:
            return s
        cached = rec.scales.get(C)
        if cached is None:
            if C % s.numel():
                raise ValueError(f"{rec.name}: {C} input features do not split into {s.numel()} channels")
            cached = rec.scales[C] = s.repeat_interleave(C // s.numel())
        return cached

    # -- results --
    def summary(self, energy: Iterable[str] = tuple(ENERGY_MODELS)) -> dict[str, Any]:
        """Per image: per layer and in total, cumulative per step, and energy estimates.

        ``layers[name]`` holds, for a neuron layer, ``spikes_per_neuron_per_step``,
        ``spikes_per_image`` and ``neurons``; for a weighted layer ``input`` (spikes,
        analog, or mixed), ``sops_per_image``, ``macs_per_image`` (executed on analog
        input by the SNN) and ``ann_macs_per_image`` (dense). ``per_step`` holds the
        cumulative SOPs, SNN MACs and energy ratios after each step t = 1..T.
        """
        n = max(1, self.images)
        T = self.max_steps
        layers: dict[str, dict[str, Any]] = {}
        spikes_total, neuron_steps, sops, macs, ann = 0.0, 0.0, 0.0, 0.0, 0.0
        sop_steps = torch.zeros(T, dtype=torch.float64)
        mac_steps = torch.zeros(T, dtype=torch.float64)
        order = sorted(self.order, key=lambda n: self._rank.get(n, len(self._rank))) if self._rank else self.order
        for name in order:
            if name in self.neurons:
                r = self.neurons[name]
                s = r.spikes.total()
                spikes_total += s
                neuron_steps += r.neuron_steps
                layers[name] = {
                    "kind": "neurons", "type": r.kind,
                    "neurons": int(round(r.neurons_per_image)),
                    "spikes_per_neuron_per_step": s / r.neuron_steps if r.neuron_steps else 0.0,
                    "spikes_per_image": s / n,
                }
            else:
                r2 = self.synapses[name]
                sv, mv = r2.sops.v, r2.macs.v
                sop_steps[: sv.numel()] += sv[:T]
                mac_steps[: mv.numel()] += mv[:T]
                sops += float(sv.sum())
                macs += float(mv.sum())
                ann += r2.dense_macs_per_sample
                layers[name] = {
                    "kind": "synapses", "type": r2.kind, "input": r2.input,
                    "sops_per_image": float(sv.sum()) / n,
                    "macs_per_image": float(mv.sum()) / n,
                    "ann_macs_per_image": r2.dense_macs_per_sample,
                }
        totals = {
            "spikes_per_image": spikes_total / n,
            "spikes_per_neuron_per_step": spikes_total / neuron_steps if neuron_steps else 0.0,
            "sops_per_image": sops / n,
            "snn_macs_per_image": macs / n,
            "ann_macs_per_image": ann,
        }
        cum_sops = (sop_steps.cumsum(0) / n).tolist()
        cum_macs = (mac_steps.cumsum(0) / n).tolist()
        energies: dict[str, Any] = {}
        per_step: dict[str, Any] = {"sops_per_image": cum_sops, "snn_macs_per_image": cum_macs}
        for key in energy:
            em = ENERGY_MODELS[key]
            e_snn = energy_pj(totals["snn_macs_per_image"], totals["sops_per_image"], em)
            e_ann = energy_pj(ann, 0.0, em)
            energies[key] = {
                "e_mac_pj": em.e_mac_pj, "e_ac_pj": em.e_ac_pj,
                "snn_uj_per_image": e_snn * 1e-6, "ann_uj_per_image": e_ann * 1e-6,
                "snn_to_ann": e_snn / e_ann if e_ann else None, "source": em.source,
            }
            if e_ann:
                per_step[f"energy_ratio_{key}"] = [
                    energy_pj(m_, s_, em) / e_ann for m_, s_ in zip(cum_macs, cum_sops)
                ]
        return {
            "estimate": True,
            "note": ESTIMATE_NOTE,
            "images": self.images,
            "T": T,
            "layers": layers,
            "totals": totals,
            "energy": energies,
            "per_step": per_step,
        }


def spike_stats_table(stats: Mapping[str, Any], *, energy: str = DEFAULT_ENERGY_MODEL,
                      steps: Iterable[int] = ()) -> list[str]:
    """Markdown lines for a report: per-layer table, totals, energy estimate (labelled)."""
    n = stats.get("images", 0)
    T = stats.get("T", 0)
    lines = [
        f"Per image, over {n} images and T={T} steps. SOP = spikes × the exact fan-out of the layer they reach; "
        "MACs (SNN) are the multiply–accumulates of layers fed analog values; MACs (ANN) the dense ones of the "
        "same layer in the ANN.",
        "",
        "| layer | type | input | spikes / neuron / step | SOPs | MACs (SNN) | MACs (ANN) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, r in stats.get("layers", {}).items():
        if r["kind"] == "neurons":
            lines.append(f"| {name} | {r['type']} ({r['neurons']} neurons) | | "
                         f"{r['spikes_per_neuron_per_step']:.4f} | | | |")
        else:
            lines.append(f"| {name} | {r['type']} | {r['input']} | | {r['sops_per_image']:,.0f} | "
                         f"{r['macs_per_image']:,.0f} | {r['ann_macs_per_image']:,.0f} |")
    t = stats.get("totals", {})
    if t:
        lines.append(f"| **total** | | | {t['spikes_per_neuron_per_step']:.4f} | {t['sops_per_image']:,.0f} | "
                     f"{t['snn_macs_per_image']:,.0f} | {t['ann_macs_per_image']:,.0f} |")
    e = stats.get("energy", {}).get(energy)
    if e:
        lines += [
            "",
            f"**Energy estimate** ({energy}: E_MAC = {e['e_mac_pj']} pJ, E_AC = {e['e_ac_pj']} pJ; {e['source']}): "
            f"SNN {e['snn_uj_per_image']:.4g} µJ per image vs ANN {e['ann_uj_per_image']:.4g} µJ, ratio "
            f"**{e['snn_to_ann']:.3f}** at T={T}. "
            + "Other presets: " + ", ".join(
                f"{k} {v['snn_to_ann']:.3f}" for k, v in stats["energy"].items() if k != energy and v["snn_to_ann"])
            + f". This is an {stats.get('note', ESTIMATE_NOTE)}.",
        ]
    ratios = stats.get("per_step", {}).get(f"energy_ratio_{energy}")
    sops = stats.get("per_step", {}).get("sops_per_image")
    shown = [s for s in steps if 1 <= s <= len(ratios or [])]
    if ratios and shown:
        lines += ["", "| T | SOPs / image | energy SNN / ANN (estimate) |", "|---:|---:|---:|"]
        lines += [f"| {s} | {sops[s - 1]:,.0f} | {ratios[s - 1]:.3f} |" for s in shown]
    return lines
