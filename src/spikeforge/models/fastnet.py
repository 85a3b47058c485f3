"""A fast, convertible CIFAR-10 network (``create_model("cifar-fast")``).

The layout follows what public fast CIFAR-10 recipes found to train quickly (a
frozen patch-whitening first convolution; three blocks of conv-BN-ReLU-pool and
conv-BN-ReLU at 64/256/256 channels; a global max-pool; a linear read-out scaled
down by a constant), with the parts an ANN→SNN converter cannot carry replaced:

* ReLU everywhere (no GELU), so every activation becomes an integrate-and-fire
  neuron; ``act="qcfs"`` trains with the quantized clip-floor-shift activation.
* Each block's max-pool sits right after its first convolution (conv → pool → BN →
  ReLU, the cheaper order); since BN's scale is positive (its weight stays 1) this is
  the same function as conv → BN → ReLU → pool, which is what the converter makes of
  it (BN folded into the conv, the pool moved behind the neuron, so it pools spikes).
  ``pool="avg"`` uses average pooling after the ReLU (linear, exact on spike rates).
* The whitening convolution works on raw ``[0, 1]`` pixels: the patch mean is
  folded into its bias, so the net needs no input normalisation layer.

:func:`init_whitening` sets the first convolution from the eigenvectors of the
training images' 2×2 patch covariance (each eigenvector scaled by 1/√(λ+ε), with
its negative beside it so that a ReLU keeps both signs).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from spikeforge.models.backbones import ACTIVATIONS, make_activation
from spikeforge.models.registry import register_model

__all__ = ["FastNet", "init_whitening", "POOLS"]

POOLS = ("max", "avg")


def _bn(channels: int, affine_weight: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-5)
    bn.weight.requires_grad_(affine_weight)  # learnt biases only by default
    return bn


class ConvGroup(nn.Module):
    """conv-BN-act-pool then conv-BN-act (halves the resolution)."""

    def __init__(self, c_in: int, c_out: int, act: str, levels: int, pool: str, bn_weight: bool) -> None:
        super().__init__()
        # Max-pooling right after the convolution is the same function as pooling after
        # BN and ReLU (BN's scale is positive: weight frozen at 1), at a quarter of the
        # BN/ReLU cost; the converter moves the pool back behind the neuron.
        self.pool_first = pool == "max" and not bn_weight
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = _bn(c_out, bn_weight)
        self.act1 = make_activation(act, levels)
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = _bn(c_out, bn_weight)
        self.act2 = make_activation(act, levels)
        for conv in (self.conv1, self.conv2):  # identity start for the first in-channels filters
            w = conv.weight.data
            nn.init.dirac_(w[: min(w.shape[0], w.shape[1])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_first:
            x = self.act1(self.bn1(self.pool(self.conv1(x))))
        else:
            x = self.pool(self.act1(self.bn1(self.conv1(x))))
        return self.act2(self.bn2(self.conv2(x)))


class FastNet(nn.Module):
    """Whitening conv → 3 × ConvGroup → global pool → linear × ``scale``."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 256, 256),
        whiten_width: int | None = None,
        act: str = "relu",
        levels: int = 8,
        pool: str = "max",
        scale: float = 1 / 9,
        bn_weight: bool = False,
    ) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {act!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths must be three positive channel counts, got {widths}")
        patch = in_channels * 4
        if whiten_width is None:
            whiten_width = 2 * patch  # every eigenvector of the 2×2 patches, both signs (24 for RGB)
        if whiten_width < 2 or whiten_width % 2 or whiten_width // 2 > patch:
            raise ValueError(f"whiten_width must be even and at most {2 * patch}, got {whiten_width}")
        self.whiten = nn.Conv2d(in_channels, whiten_width, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act0 = make_activation(act, levels)
        chans = (whiten_width,) + widths
        self.groups = nn.Sequential(*[ConvGroup(chans[i], chans[i + 1], act, levels, pool, bn_weight) for i in range(3)])
        self.head_pool = nn.MaxPool2d(3) if pool == "max" else nn.AdaptiveAvgPool2d(1)  # 32×32 input: 3×3 → 1
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes, bias=False)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.whiten(x))
        x = self.groups(x)
        return self.fc(self.flatten(self.head_pool(x))) * self.scale


@torch.no_grad()
def init_whitening(model: FastNet, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Set ``model.whiten`` from the 2×2 patch statistics of ``images`` ``[N, C, H, W]`` in [0, 1].

    Weights: the eigenvectors of the patch covariance scaled by 1/√(λ+ε), each with its
    negative; bias: minus the filters applied to the mean patch (centred responses).
    ``eps`` is relative to the mean variance of one patch element, so the result does
    not depend on the pixel scale (raw [0, 1] pixels here, standardized ones elsewhere).
    """
    conv = model.whiten
    c = conv.in_channels
    if images.dim() != 4 or images.shape[1] != c:
        raise ValueError(f"init_whitening expects images [N, {c}, H, W], got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("init_whitening: images contain NaN or infinite values")
    x = images.float()
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1)  # [N, C, H-1, W-1, 2, 2]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 4).double()
    mean = patches.mean(0)
    centred = patches - mean
    cov = centred.T @ centred / max(1, len(centred) - 1)
    eps = eps * float(torch.diagonal(cov).mean())
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending
    k = conv.out_channels // 2
    eigval, eigvec = eigval.flip(0)[:k], eigvec.flip(1)[:, :k]
    filters = (eigvec / (eigval.clamp_min(0) + eps).sqrt()).T  # [k, C*4]
    filters = torch.cat([filters, -filters], 0)
    conv.weight.copy_(filters.view(-1, c, 2, 2).float())
    conv.bias.copy_((-(filters @ mean)).float())


@register_model("cifar-fast")
def cifar_fast(**kwargs) -> FastNet:
    return FastNet(**kwargs)
