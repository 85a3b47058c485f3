"""Directly trained spiking networks of seeds 002 and 004.

Every network takes a batch of images ``[N, C, H, W]`` (or flattened ``[N, D]``)
in [0, 1], encodes it over ``T`` steps itself and returns :class:`SNNOutput`:
output spikes ``[T, N, classes]`` and, for membrane losses, the output layer's
membrane ``[T, N, classes]``. Time is a tensor dimension: each layer runs once on
the whole sequence and each neuron layer runs its time loop in one fused call.
With direct input the first layer's input is the same at every step, so that
layer (and its BatchNorm) is computed once and its neuron gets ``steps=T``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from spikeforge.encoding import ENCODERS, latency, poisson
from spikeforge.models.registry import register_model
from spikeforge.neurons import IF, LIF, reset_states
from spikeforge.surrogate import SURROGATES, Surrogate, get_surrogate


def make_surrogate(name: str | Surrogate, slope: float | None = None) -> Surrogate:
    """The surrogate ``name`` with its shape parameter set to ``slope`` (ATan/Sigmoid α,
    FastSigmoid k, Triangle width); ``slope=None`` keeps the surrogate's default."""
    if slope is None:
        return get_surrogate(name)
    if isinstance(name, Surrogate):
        raise ValueError("give surrogate_slope with a surrogate name, not a Surrogate object")
    if str(name).lower() not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; choose from {', '.join(SURROGATES)}")
    return SURROGATES[str(name).lower()](slope)


class SNNOutput(NamedTuple):
    spikes: torch.Tensor
    membrane: torch.Tensor | None


class SpikingNet(nn.Module):
    """Base: input checks, encoding and state reset shared by the networks below."""

    def __init__(self, *, T: int, encoder: str, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        if int(T) != T or T < 1:
            raise ValueError(f"T must be a positive number of time steps, got {T!r}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        self.T = int(T)
        self.encoder = encoder
        self.input_shape = tuple(input_shape)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        import math

        if x.dim() < 2 or math.prod(x.shape[1:]) != math.prod(self.input_shape):
            raise ValueError(
                f"{type(self).__name__} expects images [N, {', '.join(map(str, self.input_shape))}], "
                f"got shape {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"{type(self).__name__}: input contains NaN or infinite values")
        return x.reshape(x.shape[0], *self.input_shape)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None,
               rows: tuple[int, int, int] | None = None) -> torch.Tensor | None:
        """The ``[T, N, ...]`` spike input, or None for direct input (handled by the layer).

        ``rows=(start, end, total)``: ``x`` is that share of a batch of ``total`` rows
        (a data-parallel rank's); random draws are those of the whole batch
        (:func:`~spikeforge.encoding.poisson`).
        """
        if self.encoder == "poisson":
            return poisson(x, self.T, generator=generator, rows=rows)
        if self.encoder == "latency":
            return latency(x, self.T)
        return None

    def reset_state(self) -> None:
        reset_states(self)


class FCLIF(SpikingNet):
    """784-H-10 fully connected LIF network (seed 002, snnTorch's tutorial 5).

    Both layers are LIF with decay β (subtract reset, detached in the backward pass
    as in snnTorch); the loss is usually the cross-entropy of the output membrane at
    every step (``ce-membrane``). The surrogate defaults to ATan (α=2), snnTorch's
    built-in default that seed 002 relied on; with FastSigmoid(25) the same net
    reaches 88.8% instead of 89.2% on Fashion-MNIST (benchmarks/RESULTS.md).
    ``dropout`` silences a random set of hidden neurons for a whole training
    sequence (off in eval mode). ``reset="zero"`` gives the hard reset that NIR can
    express (:mod:`spikeforge.nir`).
    """

    def __init__(
        self, in_features: int = 784, hidden: int = 500, num_classes: int = 10, *, beta: float = 0.95,
        T: int = 25, encoder: str = "direct", surrogate: str = "atan", threshold: float = 1.0,
        detach_reset: bool = True, dropout: float = 0.0, reset: str = "subtract", surrogate_slope: float | None = None,
    ) -> None:
        super().__init__(T=T, encoder=encoder, input_shape=(in_features,))
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        opts = dict(threshold=threshold, surrogate=make_surrogate(surrogate, surrogate_slope),
                    detach_reset=detach_reset, reset=reset)
        self.fc1 = nn.Linear(in_features, hidden)
        self.lif1 = LIF(beta, **opts)
        self.dropout = float(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.lif2 = LIF(beta, keep_membrane=True, **opts)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                rows: tuple[int, int, int] | None = None) -> SNNOutput:
        x = self._check_input(x)
        self.reset_state()
        seq = self.encode(x, generator, rows)
        if seq is None:
            s1 = self.lif1(self.fc1(x), steps=self.T)  # direct input: fc1 once
        else:
            s1 = self.lif1(self.fc1(seq))
        if self.training and self.dropout > 0:
            # one mask per hidden neuron for the whole sequence (a dropped neuron is silent at every step),
            # drawn on the generator's device for the whole batch when x is a share of it (rows)
            shape = s1.shape[1:] if rows is None else (rows[2], *s1.shape[2:])
            keep = torch.empty(shape, dtype=s1.dtype, device=generator.device if generator is not None else "cpu")
            keep = keep.bernoulli_(1 - self.dropout, generator=generator)
            if rows is not None:
                keep = keep[rows[0]:rows[1]]
            s1 = s1 * (keep.to(s1.device) / (1 - self.dropout))
        s2 = self.lif2(self.fc2(s1))
        return SNNOutput(s2, self.lif2.membrane)

    def nir_layers(self) -> list[tuple[str, nn.Module]]:
        """The layers in the order ``forward`` applies them (dropout acts only in training)."""
        return [("fc1", self.fc1), ("lif1", self.lif1), ("fc2", self.fc2), ("lif2", self.lif2)]


class FCPoisson(SpikingNet):
    """Single layer 784-10 of LIF neurons fed by Poisson spikes (seed 004, part 1).

    SpikingJelly's ``LIFNode(tau)``: the input is decayed (``H = V + (X − V)/τ``) and
    the reset is hard (to zero); no bias, as in the seed.
    """

    def __init__(
        self, in_features: int = 784, num_classes: int = 10, *, tau: float = 2.0, T: int = 100,
        encoder: str = "poisson", surrogate: str = "atan", surrogate_slope: float | None = None,
    ) -> None:
        super().__init__(T=T, encoder=encoder, input_shape=(in_features,))
        self.fc = nn.Linear(in_features, num_classes, bias=False)
        self.lif = LIF(tau=tau, decay_input=True, reset="zero", surrogate=make_surrogate(surrogate, surrogate_slope),
                       keep_membrane=True)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                rows: tuple[int, int, int] | None = None) -> SNNOutput:
        x = self._check_input(x)
        self.reset_state()
        seq = self.encode(x, generator, rows)
        if seq is None:
            s = self.lif(self.fc(x), steps=self.T)
        else:
            s = self.lif(self.fc(seq))
        return SNNOutput(s, self.lif.membrane)

    def nir_layers(self) -> list[tuple[str, nn.Module]]:
        """The layers in the order ``forward`` applies them (the encoder stays outside)."""
        return [("fc", self.fc), ("lif", self.lif)]


class CSNN(SpikingNet):
    """Convolutional SNN of seed 004 (SpikingJelly's Fashion-MNIST tutorial).

    ``{Conv3x3(1→C, no bias)-BN-IF-MaxPool2}×2 - Linear(C·7·7 → C·16, no bias)-IF -
    Linear(C·16 → 10, no bias)-IF``, IF with hard reset, ATan surrogate, direct input:
    the first conv-BN runs once per batch and its IF layer encodes. Works with
    bfloat16 autocast and channels-last tensors (the training loop's fast mode).
    """

    def __init__(
        self, in_channels: int = 1, channels: int = 64, num_classes: int = 10, *, T: int = 4,
        encoder: str = "direct", surrogate: str = "atan", image_size: int = 28, surrogate_slope: float | None = None,
    ) -> None:
        super().__init__(T=T, encoder=encoder, input_shape=(in_channels, image_size, image_size))
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4, got {image_size}")
        C = channels
        surrogate = make_surrogate(surrogate, surrogate_slope)  # type: ignore[assignment]
        self.conv1 = nn.Conv2d(in_channels, C, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(C)
        self.sn1 = IF(surrogate=surrogate)
        self.conv2 = nn.Conv2d(C, C, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(C)
        self.sn2 = IF(surrogate=surrogate)
        self.fc1 = nn.Linear(C * (image_size // 4) ** 2, C * 16, bias=False)
        self.sn3 = IF(surrogate=surrogate)
        self.fc2 = nn.Linear(C * 16, num_classes, bias=False)
        self.sn4 = IF(surrogate=surrogate, keep_membrane=True)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                rows: tuple[int, int, int] | None = None) -> SNNOutput:
        x = self._check_input(x)
        self.reset_state()
        N, T = x.shape[0], self.T
        if self.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        seq = self.encode(x, generator, rows)
        if seq is None:
            s = self.sn1(self.bn1(self.conv1(x)), steps=T)  # [T, N, C, H, W]
        else:
            y = self.bn1(self.conv1(seq.flatten(0, 1)))
            s = self.sn1(y.view(T, N, *y.shape[1:]))
        y = F.max_pool2d(s.flatten(0, 1), 2)
        y = self.bn2(self.conv2(y))
        s = self.sn2(y.view(T, N, *y.shape[1:]))
        y = F.max_pool2d(s.flatten(0, 1), 2).flatten(1)
        s = self.sn3(self.fc1(y).view(T, N, self.fc1.out_features))  # explicit sizes: N may be 0 (a rank's empty share)
        s = self.sn4(self.fc2(s))
        return SNNOutput(s, self.sn4.membrane)

    def nir_layers(self) -> list[tuple[str, nn.Module]]:
        """The layers in the order ``forward`` applies them (the functional max-pools as modules)."""
        return [
            ("conv1", self.conv1), ("bn1", self.bn1), ("sn1", self.sn1), ("pool1", nn.MaxPool2d(2)),
            ("conv2", self.conv2), ("bn2", self.bn2), ("sn2", self.sn2), ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()), ("fc1", self.fc1), ("sn3", self.sn3), ("fc2", self.fc2), ("sn4", self.sn4),
        ]


class SpikingSequential(nn.Sequential):
    """Layers applied in order to a sequence ``[T, N, ...]``.

    Stateless layers (Linear, Conv, pooling, Flatten, BatchNorm, Dropout) see time
    folded into the batch (``[T·N, ...]``); neuron layers (:class:`LIF`, :class:`IF`)
    see the sequence and run their whole time loop at once. ``net(x)`` takes
    ``[T, N, ...]``; ``net(x, steps=T)`` takes one slice ``[N, ...]`` that is the same
    at every step (direct input: the layers before the first neuron run once).
    Neuron state is reset at the start of every call. A net of Linear/Conv2d/AvgPool2d/
    Flatten and LIF/IF layers with the zero reset exports to NIR
    (:func:`spikeforge.nir.export_nir`).
    """

    def forward(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:  # type: ignore[override]
        reset_states(self)
        static = steps is not None
        if static and (int(steps) != steps or steps < 1):  # type: ignore[operator]
            raise ValueError(f"steps must be a positive number of time steps, got {steps!r}")
        if not static and x.dim() < 3:
            raise ValueError(f"SpikingSequential expects [T, N, ...] input (or [N, ...] with steps=T), "
                             f"got shape {tuple(x.shape)}")
        T = int(steps) if static else x.shape[0]
        for m in self:
            if isinstance(m, LIF):
                x = m(x, steps=T) if static else m(x)
                static = False
            elif static:
                x = m(x)
            else:
                y = m(x.flatten(0, 1))
                x = y.reshape(T, x.shape[1], *y.shape[1:])
        if static:
            x = x.unsqueeze(0).expand(T, *x.shape)
        return x

    def nir_layers(self) -> list[tuple[str, nn.Module]]:
        return list(self.named_children())


@register_model("fc-lif")
def fc_lif(**kwargs) -> nn.Module:
    return FCLIF(**kwargs)


@register_model("fc-poisson")
def fc_poisson(**kwargs) -> nn.Module:
    return FCPoisson(**kwargs)


@register_model("csnn")
def csnn(**kwargs) -> nn.Module:
    return CSNN(**kwargs)
