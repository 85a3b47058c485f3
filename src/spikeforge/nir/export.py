"""Export spikeforge networks as NIR graphs.

NIR neurons are continuous-time models; a step of ``dt`` discretizes them. spikeforge's
neurons map exactly:

* ``LIF(beta=β)`` (``H = β·V + X``) → ``nir.LIF`` with ``τ = dt/(1 − β)``,
  ``R = τ/dt`` (with ``decay_input``, ``H = β·V + (1 − β)·X``: ``R = 1``),
  ``v_leak = 0``, ``v_reset = 0``: Euler's step ``v += dt/τ·(v_leak − v + R·I)`` gives
  back the same update (snnTorch's convention, dt = 1e-4 by default).
* ``IF`` and the converter's :class:`~spikeforge.neurons.IFNeuron` → ``nir.IF`` with
  ``R = 1/dt`` (``dv/dt = R·I``: one step adds ``R·dt·I = I``), ``v_reset = 0``.
* spikeforge fires at ``H ≥ θ``, NIR at ``v > v_threshold``: the threshold is written as
  the largest float32 below θ, which makes the two rules identical in float32 (and
  :func:`~spikeforge.nir.import_nir` reads it back as θ exactly).

Parameters are arrays shaped like the layer, Conv2d nodes carry their ``input_shape``
and Linear layers with a bias become ``Affine`` nodes. A converted network's IF neurons
emit θ-valued spikes; NIR's emit 1. ``thresholds="fold"`` multiplies θ into the weights
of the next layer (plain unit spikes, what neuromorphic hardware takes; the outputs equal
the SNN's up to float rounding), ``thresholds="scale"`` keeps the weights and puts a
``Scale(θ)`` node after each IF layer (the same arithmetic as the SNN, bit for bit).

What NIR cannot express raises :class:`~spikeforge.nir.errors.NIRExportError` naming the
layer: reset by subtraction (NIR neurons reset *to* ``v_reset``), burst spikes (Γ > 1),
an initial membrane other than 0, max-pooling of spikes, BatchNorm that does not follow
a Linear/Conv (it cannot be folded), concatenations, layers with other state. Nothing is
approximated silently.
"""

from __future__ import annotations

import math
import operator
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from spikeforge.nir.errors import NIRExportError, require_nir

#: Default time step of the discretization (snnTorch's, which its importer assumes).
DEFAULT_DT = 1e-4
THRESHOLD_MODES = ("fold", "scale")


def threshold_below(theta: np.ndarray | float) -> np.ndarray:
    """The largest float32 below ``theta``: ``h ≥ θ ⇔ h > threshold_below(θ)`` for float32 ``h``."""
    t = np.asarray(theta, dtype=np.float32)
    return np.nextafter(t, np.float32(-np.inf)).astype(np.float32)


def _full(shape: tuple[int, ...], value: float | np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=dtype), shape).astype(dtype).copy()


def _param(shape: tuple[int, ...], value: float | np.ndarray) -> np.ndarray:
    """A neuron parameter shaped like the layer, in float64 (time constants keep their precision)."""
    return _full(shape, value, np.float64)


def _pair(v: Any, n: int = 2) -> tuple[int, ...]:
    if isinstance(v, (tuple, list)):
        return tuple(int(a) for a in v)
    return (int(v),) * n


# --- one node per module ------------------------------------------------------------------


def _neuron_node(name: str, m: nn.Module, shape: tuple[int, ...], dt: float):
    """nir.LIF / nir.IF for a trainable LIF/IF layer, after checking NIR can express it."""
    nir = require_nir()
    if m.reset != "zero":
        raise NIRExportError(name, f"{type(m).__name__} resets by subtraction (reset='{m.reset}'); NIR neurons reset "
                                   "to v_reset, so only reset='zero' can be exported (train with reset='zero')")
    beta = float(m.decay())
    theta = threshold_below(m.threshold)
    if beta >= 1.0:
        return nir.IF(r=_param(shape, 1.0 / dt), v_threshold=_param(shape, theta), v_reset=_param(shape, 0.0))
    tau = dt / (1.0 - beta)
    r = 1.0 if m.decay_input else tau / dt
    return nir.LIF(tau=_param(shape, tau), r=_param(shape, r), v_leak=_param(shape, 0.0),
                   v_threshold=_param(shape, theta), v_reset=_param(shape, 0.0))


def _check_if_neuron(name: str, m: nn.Module) -> None:
    from spikeforge.neurons import SharedIFNeuron

    if isinstance(m, SharedIFNeuron):
        raise NIRExportError(name, "one neuron shared by several call sites (share_reused_relu) has no NIR form")
    if m.reset != "zero":
        raise NIRExportError(name, "IF neurons reset by subtraction (reset='subtract'); NIR neurons reset to v_reset: "
                                   "convert with reset='zero' (lenet5-convert: --reset zero) to export")
    if m.max_spikes > 1:
        raise NIRExportError(name, f"burst spikes (max_spikes Γ={m.max_spikes}): a NIR neuron emits at most one "
                                   "spike per step; convert with max_spikes=1")
    if m.v_init != 0.0:
        raise NIRExportError(name, f"initial membrane v_init={m.v_init}·θ: NIR neurons start at 0 and have no "
                                   "initial-state field; convert with v_init=0 (--v-init 0)")
    if m.v_offset is not None:
        raise NIRExportError(name, "potential correction (an initial-membrane offset) has no NIR form; convert with "
                                   "correction='none' or 'bias'")


def _affine_node(name: str, m: nn.Module, shape: tuple[int, ...], in_scale: torch.Tensor | None):
    """Affine/Linear/Conv node for ``m``; ``in_scale`` multiplies the weights per input channel/feature."""
    nir = require_nir()
    w = m.weight.detach().double()
    if in_scale is not None:
        if isinstance(m, nn.Linear):
            w = w * in_scale.view(1, -1)
        elif in_scale.numel() == 1:
            w = w * in_scale
        elif m.groups == 1:
            w = w * in_scale.view(1, -1, *([1] * (w.dim() - 2)))
        else:
            raise NIRExportError(name, "per-channel thresholds before a grouped convolution cannot be folded; export "
                                       "with thresholds='scale'")
    weight = w.float().numpy()
    bias = m.bias.detach().float().numpy() if m.bias is not None else None
    if isinstance(m, nn.Linear):
        if len(shape) != 1:
            raise NIRExportError(name, f"Linear applied to a {len(shape)}-d sample {shape}; NIR's Affine takes vectors "
                                       "(flatten first)")
        return nir.Affine(weight=weight, bias=bias) if bias is not None else nir.Linear(weight=weight)
    if m.padding_mode != "zeros":
        raise NIRExportError(name, f"padding_mode='{m.padding_mode}': NIR convolutions pad with zeros")
    padding = m.padding if isinstance(m.padding, str) else _pair(m.padding, len(m.kernel_size))
    bias = bias if bias is not None else np.zeros(m.out_channels, dtype=np.float32)
    if isinstance(m, nn.Conv2d):
        if len(shape) != 3:
            raise NIRExportError(name, f"Conv2d needs a [C, H, W] input, got {shape}")
        return nir.Conv2d(input_shape=tuple(int(s) for s in shape[1:]), weight=weight, stride=_pair(m.stride),
                          padding=padding, dilation=_pair(m.dilation), groups=int(m.groups), bias=bias)
    if isinstance(m, nn.Conv1d):
        return nir.Conv1d(input_shape=int(shape[1]), weight=weight, stride=int(m.stride[0]),
                          padding=padding if isinstance(padding, str) else int(padding[0]),
                          dilation=int(m.dilation[0]), groups=int(m.groups), bias=bias)
    raise NIRExportError(name, f"{type(m).__name__} has no NIR node (NIR has Conv1d, Conv2d, Affine, Linear)")


def _avgpool_node(name: str, kernel: Any, stride: Any, padding: Any, ceil_mode: bool, count_include_pad: bool,
                  divisor_override: Any):
    nir = require_nir()
    k = _pair(kernel)
    s = _pair(stride if stride not in (None, ()) else kernel)
    p = _pair(padding)
    if ceil_mode:
        raise NIRExportError(name, "average pool with ceil_mode=True: NIR's AvgPool2d has no ceil mode")
    if divisor_override:
        raise NIRExportError(name, "average pool with divisor_override: not an average NIR can express")
    if any(p) and not count_include_pad:
        raise NIRExportError(name, "average pool with padding and count_include_pad=False: NIR's AvgPool2d divides "
                                   "by the full window")
    return nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))


def _flatten_node(name: str, start: int, end: int, shape: tuple[int, ...]):
    nir = require_nir()
    if start == 0:
        raise NIRExportError(name, "Flatten(start_dim=0) mixes the batch into the features")
    to_sample = (lambda d: d - 1 if d > 0 else d)  # NIR's dims exclude the batch
    return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=to_sample(start), end_dim=to_sample(end))


def _scale_vector(name: str, pend: torch.Tensor, flat: bool, inputs: int) -> torch.Tensor:
    """Pending spike values as one number, or one value per input channel/feature of the next layer."""
    if pend.numel() == 1:
        return pend.reshape(())
    s = pend.repeat_interleave(inputs // pend.numel()) if flat else pend
    if s.numel() != inputs:
        raise NIRExportError(name, f"cannot fold {pend.numel()} thresholds into {inputs} inputs")
    return s


def _scale_full(pend: torch.Tensor, flat: bool, shape: tuple[int, ...]) -> np.ndarray:
    """Pending spike values broadcast to one sample of ``shape``."""
    if pend.numel() == 1:
        return _full(shape, float(pend))
    if flat:
        return _full(shape, pend.repeat_interleave(shape[0] // pend.numel()).float().numpy())
    return _full(shape, pend.view(-1, *([1] * (len(shape) - 1))).float().numpy())


def _shape_after(m: Any, shape: tuple[int, ...], *args: Any, **kwargs: Any) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(m(torch.zeros((1, *shape)), *args, **kwargs).shape[1:])


def _maxpool_error(name: str) -> NIRExportError:
    return NIRExportError(name, "max-pooling of spikes has no NIR node (NIR pools by sum or average); use average "
                                "pooling (LeNet5: --pool avg)")


# --- layer lists (directly trained networks) --------------------------------------------------


def _layers_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if hasattr(model, "nir_layers"):
        return list(model.nir_layers())
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    raise NIRExportError(type(model).__name__, "export takes a converted SpikingModel, a SpikingSequential / "
                                               "nn.Sequential, or a spikeforge SNN model; this network's forward "
                                               "cannot be read as a list of layers")


def export_layers(layers: Iterable[tuple[str, nn.Module]], input_shape: tuple[int, ...], *, dt: float = DEFAULT_DT):
    """A NIR graph of a chain of layers (Linear/Conv/AvgPool/Flatten/BatchNorm/Dropout, LIF/IF)."""
    nir = require_nir()
    from spikeforge.convert.graph import fold_bn_into
    from spikeforge.layers import SpikingMaxPool2d
    from spikeforge.neurons import LIF, IFNeuron

    shape = tuple(int(s) for s in input_shape)
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(shape)})}
    order = ["input"]
    last_affine: tuple[str, nn.Module, tuple[int, ...]] | None = None
    for name, m in layers:
        name = _unique(str(name), nodes)
        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)):
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if last_affine is None or order[-1] != last_affine[0]:
                raise NIRExportError(name, "BatchNorm that does not directly follow a Linear/Conv cannot be folded, "
                                           "and NIR has no normalization node")
            prev_name, prev, prev_shape = last_affine
            fused = fold_bn_into(prev, m)
            nodes[prev_name] = _affine_node(prev_name, fused, prev_shape, None)
            last_affine = (prev_name, fused, prev_shape)
            continue
        if isinstance(m, LIF):
            nodes[name] = _neuron_node(name, m, shape, dt)
        elif isinstance(m, IFNeuron):
            raise NIRExportError(name, "a converted IF neuron outside a SpikingModel; export the SpikingModel")
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nodes[name] = _affine_node(name, m, shape, None)
            last_affine = (name, m, shape)
            shape = _shape_after(m, shape)
        elif isinstance(m, nn.AvgPool2d):
            nodes[name] = _avgpool_node(name, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                        m.divisor_override)
            shape = _shape_after(m, shape)
        elif isinstance(m, nn.Flatten):
            nodes[name] = _flatten_node(name, m.start_dim, m.end_dim, shape)
            shape = _shape_after(m, shape)
        elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, SpikingMaxPool2d)):
            raise _maxpool_error(name)
        else:
            raise NIRExportError(name, f"{type(m).__name__} has no NIR node (exported: Linear, Conv1d/2d, AvgPool2d, "
                                       "Flatten, BatchNorm after Linear/Conv, Dropout, LIF/IF with reset='zero')")
        order.append(name)
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    order.append("output")
    edges = list(zip(order[:-1], order[1:]))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_metadata(dt))


def _unique(name: str, taken: dict[str, Any]) -> str:
    name = name.replace(".", "_") or "layer"
    if name in ("input", "output"):
        name = f"{name}_layer"
    base, i = name, 1
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    return name


def _metadata(dt: float) -> dict[str, Any]:
    return {
        "source": "spikeforge",
        "dt": float(dt),
        "spike_rule": "spikeforge fires at v >= theta; v_threshold holds the largest float32 below theta",
    }


# --- converted networks (SpikingModel) ---------------------------------------------------------


def export_converted(snn: Any, input_shape: tuple[int, ...], *, dt: float = DEFAULT_DT, thresholds: str = "fold"):
    """A NIR graph of a converted :class:`~spikeforge.convert.SpikingModel`."""
    nir = require_nir()
    from spikeforge.convert.core import TimeAlign
    from spikeforge.layers import SpikingMaxPool2d
    from spikeforge.neurons import IFNeuron

    if thresholds not in THRESHOLD_MODES:
        raise ValueError(f"thresholds must be one of {THRESHOLD_MODES}, got {thresholds!r}")
    gm: fx.GraphModule = snn.graph_module
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    # per fx node: (NIR node name, sample shape, pending scale or None, flattened?)
    env: dict[fx.Node, tuple[str, tuple[int, ...], torch.Tensor | None, bool]] = {}

    def add(name: str, node_obj: Any, src: str | None) -> str:
        name = _unique(name, nodes)
        nodes[name] = node_obj
        if src is not None:
            edges.append((src, name))
        return name

    def source(node: fx.Node, what: str) -> tuple[str, tuple[int, ...], torch.Tensor | None, bool]:
        args = [a for a in node.all_input_nodes]
        if len(args) != 1:
            raise NIRExportError(node.name, f"{what} with {len(args)} tensor inputs is not exported (NIR graphs here "
                                            "are chains: no additions or concatenations)")
        return env[args[0]]

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            shape = tuple(int(v) for v in input_shape)
            env[node] = (add("input", nir.Input(input_type={"input": np.array(shape)}), None), shape, None, False)
            continue
        if node.op == "get_attr":
            raise NIRExportError(node.name, "a constant tensor in the graph is not exported")
        if node.op == "output":
            args = node.all_input_nodes
            if len(args) != 1:
                raise NIRExportError(node.name, "NIR export needs a single output tensor")
            src, shape, pend, flat = env[args[0]]
            if pend is not None and not bool((pend == 1).all()):
                src = add("output_scale", nir.Scale(scale=_scale_full(pend, flat, shape)), src)
            add("output", nir.Output(output_type={"output": np.array(shape)}), src)
            continue
        if node.op == "call_module":
            target = str(node.target)
            m = gm.get_submodule(target)
            if isinstance(m, IFNeuron):
                src, shape, pend, flat = source(node, "an IF layer")
                _check_if_neuron(target, m)
                if m.input_bias is not None:
                    raise NIRExportError(target, "bias correction (a constant input current) is not exported; "
                                                 "convert with correction='none'")
                if pend is not None:
                    raise NIRExportError(target, "IF layer fed directly by spikes of another layer (no weights "
                                                 "between) cannot carry θ-valued spikes in NIR")
                th = m.threshold.detach().float()
                th_full = _full(shape, th.numpy() if th.numel() > 1 else float(th))
                name = add(target, nir.IF(r=_param(shape, 1.0 / dt), v_threshold=_param(shape, threshold_below(th_full)),
                                          v_reset=_param(shape, 0.0)), src)
                if thresholds == "scale":
                    name = add(f"{target}_scale", nir.Scale(scale=th_full), name)
                    env[node] = (name, shape, None, False)
                else:
                    env[node] = (name, shape, th.double().flatten(), False)
            elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                src, shape, pend, flat = source(node, type(m).__name__)
                s = None if pend is None else _scale_vector(target, pend, flat, shape[0])
                name = add(target, _affine_node(target, m, shape, s), src)
                env[node] = (name, _shape_after(m, shape), None, False)
            elif isinstance(m, nn.AvgPool2d):
                src, shape, pend, flat = source(node, "AvgPool2d")
                name = add(target, _avgpool_node(target, m.kernel_size, m.stride, m.padding, m.ceil_mode,
                                                 m.count_include_pad, m.divisor_override), src)
                env[node] = (name, _shape_after(m, shape), pend, flat)
            elif isinstance(m, nn.Flatten):
                src, shape, pend, flat = source(node, "Flatten")
                name = add(target, _flatten_node(target, m.start_dim, m.end_dim, shape), src)
                env[node] = (name, _shape_after(m, shape), pend, pend is not None and pend.numel() > 1)
            elif isinstance(m, (nn.Identity, nn.Dropout)):
                env[node] = source(node, type(m).__name__)
            elif isinstance(m, (SpikingMaxPool2d, nn.MaxPool2d)):
                raise _maxpool_error(target)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                raise NIRExportError(target, "un-folded BatchNorm: NIR has no normalization node")
            elif isinstance(m, TimeAlign):
                raise NIRExportError(target, "addition or concatenation of branches is not exported")
            elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                raise NIRExportError(target, "NIR has no transposed convolution node")
            else:
                raise NIRExportError(target, f"{type(m).__name__} has no NIR node")
            continue
        if node.op == "call_function":
            fn = node.target
            if fn is F.avg_pool2d:
                src, shape, pend, flat = source(node, "avg_pool2d")
                a = list(node.args) + [None] * 8
                kw = node.kwargs
                kernel = kw.get("kernel_size", a[1])
                stride = kw.get("stride", a[2])
                name = add(node.name, _avgpool_node(node.name, kernel, stride, kw.get("padding", a[3] or 0),
                                                    kw.get("ceil_mode", a[4] or False),
                                                    kw.get("count_include_pad", True if a[5] is None else a[5]),
                                                    kw.get("divisor_override", a[6])), src)
                out_shape = _shape_after(lambda t: F.avg_pool2d(t, *node.args[1:], **node.kwargs), shape)
                env[node] = (name, out_shape, pend, flat)
            elif fn is torch.flatten:
                src, shape, pend, flat = source(node, "flatten")
                start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
                end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
                name = add(node.name, _flatten_node(node.name, start, end, shape), src)
                env[node] = (name, _shape_after(lambda t: torch.flatten(t, start, end), shape), pend,
                             pend is not None and pend.numel() > 1)
            elif fn in (F.max_pool2d,):
                raise _maxpool_error(node.name)
            elif fn in (operator.add, torch.add, torch.cat, torch.concat, operator.getitem):
                raise NIRExportError(node.name, "addition or concatenation of branches is not exported")
            else:
                raise NIRExportError(node.name, f"function {getattr(fn, '__name__', fn)} has no NIR node")
            continue
        if node.op == "call_method":
            if node.target in ("contiguous", "float", "clone"):
                env[node] = source(node, str(node.target))
            elif node.target == "flatten" or (node.target in ("view", "reshape") and len(node.args) == 3
                                              and node.args[2] == -1):
                src, shape, pend, flat = source(node, str(node.target))
                start = node.args[1] if node.target == "flatten" and len(node.args) > 1 else (
                    node.kwargs.get("start_dim", 0) if node.target == "flatten" else 1)
                name = add(node.name, _flatten_node(node.name, start, -1, shape), src)
                env[node] = (name, _shape_after(lambda t: t.flatten(start), shape), pend,
                             pend is not None and pend.numel() > 1)
            else:
                raise NIRExportError(node.name, f"method .{node.target}() has no NIR node")
            continue
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_metadata(dt))


# --- entry points ------------------------------------------------------------------------


def export_nir(model: nn.Module, input_shape: tuple[int, ...] | None = None, *, dt: float = DEFAULT_DT,
               thresholds: str = "fold"):
    """The NIR graph of ``model`` (a converted SpikingModel or a directly trained network).

    Args:
        model: a :class:`~spikeforge.convert.SpikingModel`, a
            :class:`~spikeforge.models.snn.SpikingSequential` / ``nn.Sequential`` of
            Linear/Conv/AvgPool/Flatten/BatchNorm/Dropout and LIF/IF layers, or one of the
            :mod:`spikeforge.models.snn` networks.
        input_shape: shape of one input sample, e.g. ``(1, 28, 28)`` (taken from the model
            when it has ``input_shape``).
        dt: time step of the discretization (τ = dt/(1 − β)).
        thresholds: converted networks only: ``"fold"`` or ``"scale"`` (see the module doc).

    Raises:
        NIRExportError: a layer NIR cannot express (the error names it).
    """
    from spikeforge.convert.core import SpikingModel

    require_nir()
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        raise ValueError("export_nir needs input_shape, the shape of one input sample, e.g. (1, 28, 28)")
    if isinstance(model, SpikingModel):
        return export_converted(model, tuple(input_shape), dt=dt, thresholds=thresholds)
    return export_layers(_layers_of(model), tuple(input_shape), dt=dt)


def write_nir(model: nn.Module, path: str | Path, input_shape: tuple[int, ...] | None = None, **kwargs: Any):
    """Export ``model`` (see :func:`export_nir`) and write the graph to ``path`` (HDF5); returns the graph."""
    nir = require_nir()
    graph = export_nir(model, input_shape, **kwargs)
    path = Path(path)
    from spikeforge import distributed

    if not distributed.is_main():  # a data-parallel run: rank 0 writes the file
        return graph
    path.parent.mkdir(parents=True, exist_ok=True)
    nir.write(str(path), graph)
    return graph
