"""UNet for binary segmentation (seed 003: Lucchi mitochondria), convertible to an SNN.

Encoder level ``i`` is two conv3×3-BN-ReLU blocks with ``width·2^i`` channels,
followed by a 2×2 max-pool (after the ReLU, so the spiking max-pool sees spike
trains). The decoder mirrors it: upsample ×2 (a 2×2 stride-2 transposed conv, or
nearest/bilinear upsampling followed by a 1×1 conv), concatenate the skip
connection of the same level, two conv-BN-ReLU blocks. A 1×1 conv head gives one
logit per pixel and class; it stays analog in the converted network.

Inputs must have a height and width divisible by ``2**depth``
(:func:`spikeforge.data.segmentation.tiled_predict` pads to that multiple).
"""

from __future__ import annotations

import torch
from torch import nn

from spikeforge.models.registry import register_model

UP_MODES: tuple[str, ...] = ("transpose", "nearest", "bilinear")


class ConvBlock(nn.Sequential):
    """``convs`` × (conv3×3 → BatchNorm → ReLU, or QCFS with ``act="qcfs"``)."""

    def __init__(self, in_channels: int, out_channels: int, convs: int = 2, act: str = "relu", levels: int = 8) -> None:
        from spikeforge.models.backbones import make_activation

        layers: list[nn.Module] = []
        for i in range(convs):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                make_activation(act, levels),
            ]
        super().__init__(*layers)


def _up(in_channels: int, out_channels: int, mode: str) -> nn.Module:
    if mode == "transpose":
        return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
    align = False if mode == "bilinear" else None
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode=mode, align_corners=align),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class UNet(nn.Module):
    """UNet with configurable depth and width.

    Args:
        in_channels: image channels (1 for EM).
        out_channels: logits per pixel (1 for binary segmentation).
        width: channels of the first level; level ``i`` has ``width·2^i``.
        depth: number of 2×2 down-samplings (the bottleneck is level ``depth``).
        up: ``"transpose"`` (ConvTranspose2d), ``"nearest"`` or ``"bilinear"``.
        convs: conv-BN-ReLU blocks per level.
        act: ``"relu"``, or ``"qcfs"``: train with the quantized clip-floor-shift
            activation (``levels`` L, learnt ceilings that become the SNN's thresholds).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        *,
        width: int = 16,
        depth: int = 4,
        up: str = "transpose",
        convs: int = 2,
        act: str = "relu",
        levels: int = 8,
    ) -> None:
        super().__init__()
        if up not in UP_MODES:
            raise ValueError(f"up must be one of {UP_MODES}, got {up!r}")
        if depth < 1 or width < 1 or convs < 1:
            raise ValueError(f"depth, width and convs must be >= 1, got {depth}, {width}, {convs}")
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [ConvBlock(in_channels if i == 0 else chans[i - 1], chans[i], convs, act, levels) for i in range(depth)]
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(chans[depth - 1], chans[depth], convs, act, levels)
        self.ups = nn.ModuleList([_up(chans[i + 1], chans[i], up) for i in reversed(range(depth))])
        self.dec = nn.ModuleList([ConvBlock(2 * chans[i], chans[i], convs, act, levels) for i in reversed(range(depth))])
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.dec, reversed(skips)):
            x = dec(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


@register_model("unet")
def unet(
    in_channels: int = 1,
    out_channels: int = 1,
    width: int = 16,
    depth: int = 4,
    up: str = "transpose",
    convs: int = 2,
    act: str = "relu",
    levels: int = 8,
) -> nn.Module:
    return UNet(in_channels, out_channels, width=width, depth=depth, up=up, convs=convs, act=act, levels=levels)
