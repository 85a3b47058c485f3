"""Graph-level steps of the converter: trace, check operations, fold BatchNorm.

Conversion works on the torch.fx graph, so every *call site* of an activation is
seen separately (a module that calls one ``nn.ReLU`` twice yields two nodes), and
residual adds, concatenations, upsampling and transposed convolutions are handled by
one code path instead of per-network replacement rules.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from spikeforge.errors import ConversionError  # the hierarchy's class, re-exported here
from spikeforge.layers import QCFS


# --- operation tables -------------------------------------------------------------

LINEAR_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear,
    nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Flatten, nn.Identity, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d, nn.Unflatten,
)
DROPOUT_MODULES: tuple[type[nn.Module], ...] = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
RELU_FUNCTIONS: tuple[Callable[..., Any], ...] = (F.relu, torch.relu, torch.relu_)
RELU_METHODS = ("relu", "relu_")
MAXPOOL_FUNCTIONS: tuple[Callable[..., Any], ...] = (F.max_pool2d,)
# Element-wise combinations of several tensors: static inputs must be time-aligned.
COMBINE_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    operator.add, operator.sub, torch.add, torch.sub, torch.cat, torch.concat, torch.stack,
)
COMBINE_METHODS = ("add", "add_", "sub", "sub_")
LINEAR_FUNCTIONS: tuple[Callable[..., Any], ...] = (
    operator.getitem, torch.flatten, torch.reshape, F.avg_pool2d, F.avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.interpolate, F.pad, getattr,
    torch.squeeze, torch.unsqueeze,
)
SCALAR_FUNCTIONS: tuple[Callable[..., Any], ...] = (operator.mul, operator.truediv, torch.mul)
LINEAR_METHODS = (
    "view", "reshape", "flatten", "size", "contiguous", "dim", "squeeze", "unsqueeze",
    "float", "to", "clone",
)
DROPOUT_FUNCTIONS: tuple[Callable[..., Any], ...] = (F.dropout, F.dropout2d)


def node_kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """Classify a node: relu, maxpool, combine, linear, dropout, io — or raise.

    ``linear`` covers every operation that acts the same on each time step and is
    linear or affine in its input, so it can run unchanged on spike trains.
    """
    if node.op in ("placeholder", "output", "get_attr"):
        return "io"
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if isinstance(mod, (nn.ReLU, QCFS)):
            return "relu"
        if isinstance(mod, nn.MaxPool2d):
            return "maxpool"
        if isinstance(mod, DROPOUT_MODULES):
            return "dropout"
        if isinstance(mod, LINEAR_MODULES):
            return "linear"
        raise ConversionError(
            f"unsupported layer at node '{node.name}': module '{node.target}' of type "
            f"{type(mod).__name__} (supported: Conv/Linear/BatchNorm/ReLU/MaxPool2d/AvgPool/"
            "AdaptiveAvgPool/Flatten/Upsample/ConvTranspose/Dropout, add, cat)"
        )
    if node.op == "call_function":
        fn = node.target
        if fn in RELU_FUNCTIONS:
            return "relu"
        if fn in MAXPOOL_FUNCTIONS:
            return "maxpool"
        if fn in COMBINE_FUNCTIONS:
            return "combine"
        if fn in DROPOUT_FUNCTIONS:
            return "dropout"
        if fn in LINEAR_FUNCTIONS:
            return "linear"
        if fn in SCALAR_FUNCTIONS and sum(isinstance(a, fx.Node) for a in node.args) == 1:
            return "linear"
        name = getattr(fn, "__name__", repr(fn))
        raise ConversionError(f"unsupported operation at node '{node.name}': function {name}")
    if node.op == "call_method":
        if node.target in RELU_METHODS:
            return "relu"
        if node.target in COMBINE_METHODS:
            return "combine"
        if node.target in LINEAR_METHODS:
            return "linear"
        if node.target in ("mul", "div", "mul_", "div_") and not any(
            isinstance(a, fx.Node) for a in node.args[1:]
        ):
            return "linear"
        raise ConversionError(f"unsupported operation at node '{node.name}': method .{node.target}()")
    raise ConversionError(f"unsupported node '{node.name}' (op {node.op})")


class _LeafTracer(fx.Tracer):
    """torch.fx tracer that keeps spikeforge's activation modules whole."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, QCFS) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """Deep-copy ``model`` in eval mode and trace it with torch.fx."""
    model = copy.deepcopy(model).eval()
    try:
        graph = _LeafTracer().trace(model)
        gm = fx.GraphModule(model, graph, type(model).__name__)
    except Exception as exc:  # fx raises many types; report them uniformly
        raise ConversionError(
            f"torch.fx could not trace {type(model).__name__}: {exc}. Models with "
            "data-dependent control flow cannot be converted."
        ) from exc
    for node in gm.graph.nodes:
        node_kind(gm, node)  # raises on the first unsupported node
    return gm


# --- BatchNorm folding ------------------------------------------------------------

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def fold_bn_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """Return a copy of ``layer`` whose output equals ``bn(layer(x))`` in eval mode.

    ``y = γ·(Wx + b − μ)/sqrt(σ² + ε) + β``, so with ``s = γ/sqrt(σ² + ε)``:
    ``W' = s·W`` (per output channel) and ``b' = s·(b − μ) + β``.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ConversionError(f"cannot fold {bn}: it has no running statistics")
    fused = copy.deepcopy(layer)
    with torch.no_grad():
        w = fused.weight
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double()
        out_dim = 1 if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
        shape = [1] * w.dim()
        shape[out_dim] = -1
        new_w = w.double() * scale.view(shape)
        bias = fused.bias.double() if fused.bias is not None else torch.zeros_like(scale)
        new_b = (bias + shift) * scale
        if bn.bias is not None:
            new_b = new_b + bn.bias.double()
        fused.weight = nn.Parameter(new_w.to(w.dtype))
        fused.bias = nn.Parameter(new_b.to(w.dtype))
    return fused


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not isinstance(layer, FOLDABLE):
        return False
    if not bn.track_running_stats:
        return False
    transposed = isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    if transposed and layer.groups != 1:
        return False
    channels = layer.weight.shape[1 if transposed else 0] * (layer.groups if transposed else 1)
    return channels == bn.num_features


def _is_maxpool(gm: fx.GraphModule, node: Any) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.MaxPool2d)
    return node.op == "call_function" and node.target in MAXPOOL_FUNCTIONS


def _bn_scale_positive(bn: nn.Module) -> bool:
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
        return False
    return bn.weight is None or bool((bn.weight.detach() > 0).all())


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold every BatchNorm that directly follows a conv/linear used only by it.

    A BatchNorm behind a max-pool of such a conv (conv → max-pool → BN) folds too when
    every channel's scale is positive: the affine map is then increasing and commutes
    with the max. Returns the number of folded BatchNorms. BatchNorms that cannot be
    folded stay as affine layers, which are exact on spike trains too.
    """
    folded = 0
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[str(node.target)], nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if _is_maxpool(gm, src) and len(src.users) == 1 and _bn_scale_positive(modules[str(node.target)]):
            conv = src.args[0]
            if (isinstance(conv, fx.Node) and conv.op == "call_module" and len(conv.users) == 1
                    and _foldable(modules[str(conv.target)], modules[str(node.target)])):
                name = f"sf_fused_{conv.name}"
                gm.add_submodule(name, fold_bn_into(modules[str(conv.target)], modules[str(node.target)]))
                conv.target = name
                node.replace_all_uses_with(src)
                gm.graph.erase_node(node)
                folded += 1
            continue
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer, bn = modules[str(src.target)], modules[str(node.target)]
        if not _foldable(layer, bn):
            continue
        name = f"sf_fused_{src.name}"
        gm.add_submodule(name, fold_bn_into(layer, bn))
        src.target = name
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return folded


def move_relu_before_maxpool(gm: fx.GraphModule) -> int:
    """Rewrite every ``relu(max_pool(x))`` as ``max_pool(relu(x))`` (the same function).

    Holds for ReLU and for QCFS, both non-decreasing, which commute with a max.
    The pool then acts on the neuron's spikes instead of on analog currents. Only
    pools whose single user is the ReLU are moved. Returns the number of rewrites.
    """
    moved = 0
    for node in list(gm.graph.nodes):
        if node.op in ("placeholder", "output", "get_attr") or node_kind(gm, node) != "relu":
            continue
        pool = node.args[0]
        if not _is_maxpool(gm, pool) or len(pool.users) != 1:
            continue
        x = pool.args[0]
        # relu now takes the pool's input; the pool takes the relu's output
        node.replace_all_uses_with(pool)
        node.args = (x,) + tuple(node.args[1:])
        pool.args = (node,) + tuple(pool.args[1:])
        pool.prepend(node)  # the activation now runs first
        moved += 1
    if moved:
        gm.graph.lint()
        gm.recompile()
    return moved


def maxpool_params(gm: fx.GraphModule, node: fx.Node) -> dict[str, Any]:
    """kernel_size/stride/padding/dilation/ceil_mode of a max-pool node."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        if m.return_indices:
            raise ConversionError(f"node '{node.name}': max-pool with return_indices is not supported")
        return dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                    dilation=m.dilation, ceil_mode=m.ceil_mode)
    names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
    params: dict[str, Any] = dict(stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False)
    params.update(dict(zip(names, node.args[1:])))
    params.update(node.kwargs)
    if params.pop("return_indices"):
        raise ConversionError(f"node '{node.name}': max-pool with return_indices is not supported")
    return params
