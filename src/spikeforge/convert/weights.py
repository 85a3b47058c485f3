"""Layer-wise weight calibration of a converted SNN (the "advanced pipeline" of Li et al., 2021).

For one neuron layer at a time, the convolutions or linear layers that feed it (through
adds only) are adjusted so that the layer's mean output over ``T`` steps, given the spikes
its inputs actually carry in the SNN, comes closer to the ANN's activation. The forward
value is the true integrate-and-fire output; the gradient is that of ``clamp(Ī, 0, θ)``
(the rate a neuron with input current Ī would have without rounding), the straight-through
estimate of the floor in ``θ·floor(T·Ī/θ + v₀)/T``.

Each output channel of a calibrated layer depends only on its own row of weights, so every
channel keeps the weights that gave the lowest error on held-back calibration images
(never worse than the converted weights on them).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from spikeforge.functional.neuron import if_seq, initial_membrane

_ADDS = (operator.add, torch.add)


@dataclass
class Presynaptic:
    """A convolution or linear layer whose output reaches a neuron layer through adds only."""

    name: str
    module: nn.Module
    static: bool  # its input is the same at every step (the network input)


def presynaptic_layers(gm: fx.GraphModule, neuron: str, static: set[fx.Node]) -> list[Presynaptic]:
    """The Conv2d/Linear layers feeding neuron layer ``neuron`` through adds only, each called
    once in the graph and used by nothing else; [] when there is none (or the neuron has
    several call sites). Other inputs of those adds (identity shortcuts) stay as they are."""
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) == neuron]
    if len(calls) != 1:
        return []
    counts: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            counts[str(n.target)] = counts.get(str(n.target), 0) + 1
    found: list[Presynaptic] = []
    seen: set[fx.Node] = set()
    twice = False

    def visit(node: fx.Node) -> None:
        nonlocal twice
        if node in seen:  # the same value added twice (x + x): its layer is not this neuron's alone
            twice = True
            return
        seen.add(node)
        if len(node.users) != 1:
            return
        if node.op == "call_module":
            mod = gm.get_submodule(str(node.target))
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and counts[str(node.target)] == 1:
                arg = node.args[0]
                found.append(Presynaptic(str(node.target), mod, isinstance(arg, fx.Node) and arg in static))
            return
        is_add = (node.op == "call_function" and node.target in _ADDS) or (
            node.op == "call_method" and node.target == "add")
        if is_add and not node.kwargs:
            for a in node.args:
                if isinstance(a, fx.Node):
                    visit(a)

    src = calls[0].args[0]
    if isinstance(src, fx.Node):
        visit(src)
    return [] if twice else found


def _apply(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mod(x)


def layer_currents(layers: list[Presynaptic], inputs: list[torch.Tensor], T: int) -> torch.Tensor:
    """Σ of the layers' outputs ``[T, N, ...]`` on their recorded inputs (static ones
    ``[N, ...]`` are expanded over the steps)."""
    total: torch.Tensor | None = None
    for lay, x in zip(layers, inputs):
        if lay.static:
            y = _apply(lay.module, x)
            y = y.unsqueeze(0).expand(T, *y.shape)
        else:
            y = _apply(lay.module, x.reshape(-1, *x.shape[2:]))
            y = y.reshape(T, x.shape[1], *y.shape[1:])
        total = y if total is None else total + y
    assert total is not None
    return total


def calibrate_weights(
    neuron: nn.Module,
    layers: list[Presynaptic],
    inputs: list[torch.Tensor],
    rest: torch.Tensor,
    target: torch.Tensor,
    T: int,
    *,
    iters: int,
    lr: float = 0.01,
    holdout: float = 0.25,
    check_every: int = 5,
    refresh_every: int = 1,
) -> dict[str, float]:
    """Adjust ``layers`` in place so that ``neuron``'s T-step mean output approaches ``target``.

    ``inputs[i]`` is what ``layers[i]`` received at each step (``[T, N, ...]``, or ``[N, ...]``
    when static); ``rest`` the part of the neuron's input current that does not come from
    them (``[T, N, ...]``); ``target`` the ANN activation ``[N, ...]``. Adam with a step of
    ``lr`` times each layer's mean absolute weight; the last ``holdout`` of the images are
    only scored, and each output channel keeps the weights with its lowest error on them.
    The true T-step output (the costly part: the layers rerun over every step) is simulated
    every ``refresh_every`` steps; in between, the last simulated rounding error
    (true output − clamp(Ī, 0, θ)) is reused beside the current clamp(Ī, 0, θ).
    Returns the mean squared error on the held-back images before and after.
    """
    if refresh_every < 1:
        raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
    N = target.shape[0]
    n_val = max(1, int(round(N * holdout))) if N > 1 else 0
    n_fit = N - n_val
    if n_fit < 1 or n_val < 1 or iters < 1:
        return {}
    if target.dim() != 2 and any(isinstance(lay.module, nn.Linear) for lay in layers):
        return {}  # a Linear on [N, L, C]: its channels are not the target's dim 1
    th = neuron.threshold
    th_b = th if th.numel() > 1 else float(th)
    th_c = th.reshape(-1, *([1] * (target.dim() - 2))) if th.numel() > 1 else th

    def split(x: torch.Tensor, static: bool, part: slice) -> torch.Tensor:
        return x[part] if static else x[:, part]

    fit, val = slice(0, n_fit), slice(n_fit, N)
    fit_in = [split(x, lay.static, fit) for lay, x in zip(layers, inputs)]
    val_in = [split(x, lay.static, val) for lay, x in zip(layers, inputs)]
    mean_in = [x if lay.static else x.mean(0) for lay, x in zip(layers, fit_in)]
    rest_fit, rest_val = rest[:, fit], rest[:, val]
    rest_mean = rest_fit.mean(0)

    def simulate(currents: torch.Tensor) -> torch.Tensor:
        x = currents if neuron.input_bias is None else currents + neuron.input_bias
        v = None
        if neuron.v_offset is not None:
            v = initial_membrane(x[0], th_b, neuron.v_init).add_(neuron.v_offset)
        out, _ = if_seq(x, threshold=th_b, v=v, v_init=neuron.v_init, reset=neuron.reset,
                        scale_output=True, max_spikes=neuron.max_spikes)
        return out.mean(0)

    def channel_error(part_in: list[torch.Tensor], part_rest: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = simulate(part_rest + layer_currents(layers, part_in, T))
        d = (out - tgt) ** 2
        dims = [0] + list(range(2, d.dim()))
        return d.mean(dim=dims)

    params = [p for lay in layers for p in (lay.module.weight, lay.module.bias) if p is not None]
    best = [p.detach().clone() for p in params]
    best_err = channel_error(val_in, rest_val, target[val])
    first_err = best_err.clone()
    # Adam's step is about lr·scale per element; the scale is each layer's mean |weight| (for its
    # bias too, which may start at zero)
    scale = {id(p): float(lay.module.weight.detach().abs().mean().clamp_min(1e-8))
             for lay in layers for p in (lay.module.weight, lay.module.bias) if p is not None}
    groups = [{"params": [p], "lr": lr * scale[id(p)]} for p in params]
    req = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(groups)
    tgt_fit = target[fit]
    try:
        rounding: torch.Tensor | None = None
        for it in range(1, iters + 1):
            true_out = None
            if (it - 1) % refresh_every == 0:
                with torch.no_grad():
                    true_out = simulate(rest_fit + layer_currents(layers, fit_in, T))
            with torch.enable_grad():
                mean_current = rest_mean + sum(_apply(lay.module, x) for lay, x in zip(layers, mean_in))
                if neuron.input_bias is not None:
                    mean_current = mean_current + neuron.input_bias
                approx = torch.minimum(mean_current.clamp_min(0), th_c * neuron.max_spikes)  # Γ spikes a step
                if true_out is not None:
                    rounding = true_out - approx.detach()
                assert rounding is not None
                out = approx + rounding
                loss = ((out - tgt_fit) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            if it % check_every == 0 or it == iters:
                err = channel_error(val_in, rest_val, target[val])
                better = err < best_err
                if bool(better.any()):
                    with torch.no_grad():
                        for b, p in zip(best, params):
                            mask = better.reshape(-1, *([1] * (p.dim() - 1)))
                            b.copy_(torch.where(mask, p.detach(), b))
                    best_err = torch.where(better, err, best_err)
    finally:
        with torch.no_grad():
            for p, b, r in zip(params, best, req):
                p.copy_(b)
                p.requires_grad_(r)
                p.grad = None
    return {"holdout_mse_before": float(first_err.mean()), "holdout_mse_after": float(best_err.mean()),
            "channels_changed": float((best_err < first_err).sum())}
