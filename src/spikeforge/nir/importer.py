"""Import NIR graphs as spikeforge networks that run ``[T, N, ...]``.

:func:`import_nir` turns a graph of Input, Output, Affine, Linear, Scale, Conv1d,
Conv2d, SumPool2d, AvgPool2d, Flatten, Identity, LIF, IF, LI and I nodes into a
:class:`~spikeforge.convert.SpikingModel`: stateless layers run with time folded into
the batch, every neuron layer runs its whole time loop at once, and a static input
``[N, ...]`` (the same at every step) goes through the layers before the first neuron
once. ``model(x, T)`` returns the per-step outputs ``[T, N, ...]``,
``model(seq, sequence=True)`` takes a sequence ``[T, N, ...]``.

Continuous-time neurons are discretized with one Euler step of ``dt`` (default 1e-4,
snnTorch's): see :class:`~spikeforge.nir.modules.NIRNeuron`. Several edges into one node
are summed, as NIR specifies. NIR's Flatten counts dimensions without the batch
(``start_dim=0`` is the first feature dimension). What cannot be run — recurrent edges,
subgraphs, CubaLIF/CubaLI (a synaptic current state), Delay, Threshold, non-zero time
constants shorter than ``dt`` — raises :class:`~spikeforge.nir.errors.NIRImportError`
naming the node.
"""

from __future__ import annotations

import math
import operator
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from spikeforge.nir.errors import NIRImportError, require_nir
from spikeforge.nir.export import DEFAULT_DT
from spikeforge.nir.modules import NIRNeuron, Scale


#: Relative difference from 1 below which a neuron's input gain R·dt/τ is taken as exactly 1 (four float32 ulps):
#: graphs written in float32 (snnTorch's) hold R and τ rounded, so R·dt/τ comes out as 0.99999994 instead of 1.
GAIN_TOLERANCE = 4 * 2.0**-24


def threshold_above(v_threshold: np.ndarray) -> torch.Tensor:
    """The smallest float32 above ``v_threshold``: ``h > v_threshold ⇔ h ≥ threshold_above(v_threshold)``."""
    v = np.asarray(v_threshold, dtype=np.float64)
    t = v.astype(np.float32)
    bump = t.astype(np.float64) <= v
    t = np.where(bump, np.nextafter(t, np.float32(np.inf)), t).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(t))


def _arr(node_name: str, value: Any, field: str) -> np.ndarray:
    if value is None:
        raise NIRImportError(node_name, f"missing parameter {field}")
    a = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise NIRImportError(node_name, f"{field} has non-finite values")
    return a


def _ints(value: Any, n: int) -> tuple[int, ...]:
    a = np.asarray(value).astype(np.int64).flatten()
    return (int(a[0]),) * n if a.size == 1 else tuple(int(v) for v in a)


def _padding(value: Any, n: int) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray) and value.dtype.kind in "SUO":
        value = str(value.item() if value.size == 1 else value)
        value = value.decode() if isinstance(value, bytes) else value
    if isinstance(value, str):
        if value not in ("same", "valid"):
            raise ValueError(value)
        return value
    return _ints(value, n)


def _neuron(name: str, node: Any, dt: float) -> NIRNeuron:
    nir = require_nir()
    kind = type(node).__name__
    if isinstance(node, (nir.LIF, nir.LI)):
        tau = _arr(name, node.tau, "tau")
        if np.any(tau <= 0):
            raise NIRImportError(name, "time constant tau <= 0")
        if np.any(dt / tau > 1.0):
            raise NIRImportError(name, f"time constant tau={float(tau.min()):g} is shorter than the step dt={dt:g} "
                                       "(the Euler step would be unstable); import with a smaller dt")
        r = _arr(name, node.r, "r")
        beta = 1.0 - dt / tau
        gain = r * dt / tau
        leak = _arr(name, node.v_leak, "v_leak") * dt / tau
    else:  # IF, I: dv/dt = R·I
        r = _arr(name, node.r, "r")
        beta = np.ones_like(r)
        gain = r * dt
        leak = np.zeros_like(r)
    shape = np.broadcast_shapes(beta.shape, gain.shape, leak.shape)
    spiking = isinstance(node, (nir.LIF, nir.IF))
    th = v_reset = None
    if spiking:
        vth = _arr(name, node.v_threshold, "v_threshold")
        vr = _arr(name, getattr(node, "v_reset", None) if getattr(node, "v_reset", None) is not None
                  else np.zeros_like(vth), "v_reset")
        shape = np.broadcast_shapes(shape, vth.shape, vr.shape)
        th = threshold_above(np.broadcast_to(vth, shape))
        v_reset = torch.from_numpy(np.broadcast_to(vr, shape).astype(np.float32).copy())
    if len(shape) == 0:
        raise NIRImportError(name, "scalar neuron parameters: NIR parameters must be arrays shaped like the layer")

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.broadcast_to(a, shape).astype(np.float32).copy())

    # A gain within float32 rounding of 1 (R·dt/τ from float32 R and τ) is 1: the exporter meant R = τ/dt.
    gain = np.where(np.abs(gain - 1.0) <= GAIN_TOLERANCE, 1.0, gain)
    return NIRNeuron(kind, beta=t(beta), gain=t(gain), leak=t(leak), threshold=th, v_reset=v_reset)


def _module(name: str, node: Any, dt: float) -> nn.Module:
    nir = require_nir()
    if isinstance(node, (nir.LIF, nir.IF, nir.LI, nir.I)):
        return _neuron(name, node, dt)
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = np.asarray(node.weight, dtype=np.float32)
        if w.ndim != 2:
            raise NIRImportError(name, f"{type(node).__name__} weight of shape {w.shape}: only 2-d weights are supported")
        bias = getattr(node, "bias", None) if isinstance(node, nir.Affine) else None
        m = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(w))
            if bias is not None:  # nirtorch's default Affine mapping drops this bias; we keep it
                m.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)).reshape(-1))
        return m
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        w = np.asarray(node.weight, dtype=np.float32)
        nd = 2 if isinstance(node, nir.Conv2d) else 1
        if w.ndim != nd + 2:
            raise NIRImportError(name, f"weight of shape {w.shape} for a {nd}-d convolution")
        groups = int(np.asarray(node.groups).item())
        try:
            padding = _padding(node.padding, nd)
        except ValueError:
            raise NIRImportError(name, f"padding {node.padding!r} (expected numbers, 'same' or 'valid')") from None
        cls = nn.Conv2d if nd == 2 else nn.Conv1d
        m = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_ints(node.stride, nd), padding=padding,
                dilation=_ints(node.dilation, nd), groups=groups, bias=True)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(w))
            b = np.zeros(w.shape[0], dtype=np.float32) if node.bias is None else np.asarray(node.bias, np.float32)
            m.bias.copy_(torch.from_numpy(np.broadcast_to(b.reshape(-1), (w.shape[0],)).copy()))
        return m
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        k, s, p = _ints(node.kernel_size, 2), _ints(node.stride, 2), _ints(node.padding, 2)
        if isinstance(node, nir.SumPool2d):
            return nn.AvgPool2d(k, s, p, divisor_override=1)  # a sum over the window
        return nn.AvgPool2d(k, s, p)
    if isinstance(node, nir.Flatten):
        def dim(d: int) -> int:  # NIR's dims exclude the batch
            d = int(d)
            return d + 1 if d >= 0 else d

        return nn.Flatten(dim(node.start_dim), dim(node.end_dim))
    if isinstance(node, nir.Scale):
        return Scale(torch.from_numpy(np.asarray(node.scale, dtype=np.float32).copy()))
    if isinstance(node, getattr(nir, "Identity", ())):
        return nn.Identity()
    if isinstance(node, (nir.CubaLIF, nir.CubaLI)):
        raise NIRImportError(name, f"{type(node).__name__} has a synaptic current state spikeforge's neurons do not "
                                   "have (supported neurons: LIF, IF, LI, I)")
    raise NIRImportError(name, f"node type {type(node).__name__} is not supported (supported: Affine, Linear, Scale, "
                               "Conv1d, Conv2d, SumPool2d, AvgPool2d, Flatten, Identity, LIF, IF, LI, I)")


def _order(nodes: dict[str, Any], edges: list[tuple[str, str]]) -> list[str]:
    """Nodes in topological order; a cycle (recurrent edge) raises."""
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    succs: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        if a not in nodes or b not in nodes:
            raise NIRImportError(a if a not in nodes else b, "an edge refers to a node that is not in the graph")
        preds[b].append(a)
        succs[a].append(b)
    indeg = {n: len(p) for n, p in preds.items()}
    ready = [n for n in nodes if indeg[n] == 0]
    order: list[str] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for s in succs[n]:
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)
    if len(order) != len(nodes):
        stuck = next(n for n in nodes if n not in order)
        raise NIRImportError(stuck, "the graph has a cycle (a recurrent connection); only feed-forward graphs are "
                                    "supported")
    return order


def _attr_name(name: str, taken: set[str]) -> str:
    base = "n_" + re.sub(r"\W", "_", name)
    out, i = base, 1
    while out in taken:
        out = f"{base}_{i}"
        i += 1
    taken.add(out)
    return out


def import_nir(source: Any, *, dt: float = DEFAULT_DT, mem_budget_mb: float = 512):
    """A :class:`~spikeforge.convert.SpikingModel` running a NIR graph (a ``nir.NIRGraph`` or a file path).

    ``dt`` discretizes the neurons' ODEs (Euler; ``β = 1 − dt/τ``). The returned model
    takes ``x`` ``[N, *input]`` (the same at every step; ``model(x, T)``) or a sequence
    ``[T, N, *input]`` (``model(seq, sequence=True)``) and returns the graph output after
    every step, ``[T, N, *output]``; ``model.input_shape`` is the graph's input shape.
    """
    nir = require_nir()
    from spikeforge.convert.core import SiteInfo, SpikingModel, TimeAlign, _getitem, _static_nodes
    from spikeforge.neurons import Clock

    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no NIR file at {path}")
        try:
            graph = nir.read(str(path))
        except Exception as exc:  # h5py and nir raise many kinds
            raise NIRImportError(str(path), f"cannot read the file as a NIR graph ({type(exc).__name__}: {exc})") from exc
    else:
        graph = source
    if not isinstance(graph, nir.NIRGraph):
        raise NIRImportError(type(graph).__name__, "expected a NIR graph")
    nodes = dict(graph.nodes)
    edges = [(str(a), str(b)) for a, b in graph.edges]
    for name, node in nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise NIRImportError(name, "nested subgraphs (such as snnTorch's recurrent RLeaky/RSynaptic) are not "
                                       "supported")
    inputs = [n for n, v in nodes.items() if isinstance(v, nir.Input)]
    outputs = [n for n, v in nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise NIRImportError(",".join(inputs + outputs) or "graph", f"the graph needs exactly one Input and one Output "
                                                                    f"node, it has {len(inputs)} and {len(outputs)}")
    order = _order(nodes, edges)
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        preds[b].append(a)
    in_type = nodes[inputs[0]].input_type
    in_shape = tuple(int(v) for v in np.asarray(next(iter(in_type.values()))).flatten())

    root = nn.Module()
    g = fx.Graph()
    values: dict[str, fx.Node] = {}
    taken: set[str] = set()
    sites: list[SiteInfo] = []
    shapes: dict[str, tuple[int, ...]] = {}
    out_node: fx.Node | None = None
    for name in order:
        node = nodes[name]
        if isinstance(node, nir.Input):
            values[name] = g.placeholder("x")
            shapes[name] = in_shape
            continue
        if not preds[name]:
            raise NIRImportError(name, "the node has no input edge")
        args = [values[p] for p in preds[name]]
        x = args[0]
        for other in args[1:]:  # NIR sums converging edges
            x = g.call_function(operator.add, (x, other))
        shape = shapes[preds[name][0]]
        if isinstance(node, nir.Output):
            out_node = x
            continue
        module = _module(name, node, dt)
        attr = _attr_name(name, taken)
        root.add_module(attr, module)
        values[name] = g.call_module(attr, (x,))
        try:
            with torch.no_grad():
                if isinstance(module, NIRNeuron):
                    if tuple(module.beta.shape) != shape:
                        raise NIRImportError(name, f"neuron parameters of shape {tuple(module.beta.shape)} for an "
                                                   f"input of shape {shape}")
                    shapes[name] = shape
                    sites.append(SiteInfo(name=attr, node=name, threshold_mean=float(module.threshold),
                                          threshold_max=float(module.v_threshold.max()), ann_mean_activation=0.0,
                                          sample_shape=shape))
                else:
                    shapes[name] = tuple(module(torch.zeros((1, *shape))).shape[1:])
        except NIRImportError:
            raise
        except (RuntimeError, ValueError) as exc:
            raise NIRImportError(name, f"does not fit its input of shape {shape}: {exc}") from exc
    assert out_node is not None
    g.output(out_node)
    gm = fx.GraphModule(root, g)
    _align_static_sums(gm, TimeAlign, _getitem, _static_nodes)
    static = _static_nodes(gm)
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), NIRNeuron):
            gm.get_submodule(str(n.target)).static_input = n.args[0] in static
    output_static = all(n in static for n in next(n for n in gm.graph.nodes if n.op == "output").all_input_nodes)
    options = {"source": "nir", "dt": float(dt), "mem_budget_mb": mem_budget_mb}
    model = SpikingModel(gm, Clock(), sites, options, output_static=output_static,
                         input_numel=math.prod(in_shape))
    model.input_shape = in_shape
    model.nir_metadata = dict(getattr(graph, "metadata", {}) or {})
    return model


def _align_static_sums(gm: fx.GraphModule, TimeAlign: type, getitem: Any, static_nodes: Any) -> None:
    """Repeat static inputs over time where a sum mixes them with varying ones (as the converter does)."""
    static = static_nodes(gm)
    changed = False
    for i, node in enumerate(list(gm.graph.nodes)):
        if node.op == "call_function" and node.target is operator.add:
            ins = list(dict.fromkeys(node.all_input_nodes))
            flags = tuple(a in static for a in ins)
            if len(ins) < 2 or all(flags) or not any(flags):
                continue
            name = f"sf_align{i}"
            gm.add_submodule(name, TimeAlign(flags))
            with gm.graph.inserting_before(node):
                aligned = gm.graph.call_module(name, tuple(ins))
                picks = {a: gm.graph.call_function(getitem, (aligned, j)) for j, a in enumerate(ins)}
            node.args = fx.map_arg(node.args, lambda n: picks.get(n, n))
            changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
