"""VGG and ResNet backbones for the conversion study (seed 003, experiment two).

All models take ``[N, C, H, W]`` images (``in_channels`` 1 for Fashion-MNIST, 3 for
CIFAR-10), have BatchNorm after every convolution, and end with global average
pooling and one linear classifier. ``width`` scales every channel count (1.0 = the
usual 64-128-256-512), so CPU runs can use narrow versions of the same layouts.

ResNets use the CIFAR stem (3×3 conv, stride 1, no initial max-pool). Their ReLU
blocks call **one** ``nn.ReLU`` module at every activation, as torchvision's blocks do:
a converter that replaces modules by name then gives all those call sites a single
neuron — the fault behind seed 003's ResNet18 collapse. spikeforge's converter
works on call sites, so each gets its own neuron.

``act="qcfs"`` swaps every ReLU for :class:`~spikeforge.layers.QCFS` (conversion-aware
training: the learnt ceilings become the neurons' thresholds). A QCFS module carries a
trainable ceiling λ, so there every call site has its own module (``relu``, then
``relu2`` in a bottleneck, and ``relu_out`` after the residual add): one λ shared by the
block's inner activation and its post-add sum would fit neither range.

``plain=True`` builds the twin without skip connections (same layers, no add, no
shortcut branch); the seed's "VGG18" is the plain twin of ResNet-18.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from spikeforge.layers import QCFS
from spikeforge.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "VGG", "VGG_CONFIGS", "RESNET_CONFIGS"]


ACTIVATIONS = ("relu", "qcfs")


def make_activation(act: str, levels: int = 8) -> nn.Module:
    """``relu`` or ``qcfs`` (quantized clip-floor-shift, for conversion-aware training)."""
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "qcfs":
        return QCFS(levels)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {act!r}")


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _check_common(in_channels: int, num_classes: int, width: float) -> None:
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")


class BasicBlock(nn.Module):
    """3×3-3×3 residual block; ``plain`` drops the identity/shortcut path."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, *, plain: bool = False, act: str = "relu", levels: int = 8) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = make_activation(act, levels)  # a ReLU is called twice (see the module docstring)
        if act == "qcfs":
            self.relu_out = make_activation(act, levels)
        self.plain = plain
        self.shortcut = _shortcut(cin, cout, stride) if not plain else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.plain:
            out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return _site(self, "relu_out")(out)


class Bottleneck(nn.Module):
    """1×1-3×3-1×1 residual block with expansion 4 (stride on the 3×3)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, *, plain: bool = False, act: str = "relu", levels: int = 8) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = make_activation(act, levels)  # a ReLU is called three times
        if act == "qcfs":
            self.relu2 = make_activation(act, levels)
            self.relu_out = make_activation(act, levels)
        self.plain = plain
        self.shortcut = _shortcut(cin, cout, stride) if not plain else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = _site(self, "relu2")(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if not self.plain:
            out = out + (self.shortcut(x) if self.shortcut is not None else x)
        return _site(self, "relu_out")(out)


def _site(block: nn.Module, name: str) -> nn.Module:
    """The activation module of one call site: its own (QCFS) or the block's shared ReLU."""
    own = getattr(block, name, None)
    return block.relu if own is None else own


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    """1×1 conv + BN when the shape changes (option B of He et al.), else identity (None)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


RESNET_CONFIGS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet-{18,34,50,101} with the CIFAR stem; ``plain=True`` for the no-skip twin."""

    def __init__(
        self, depth: int = 18, *, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
        plain: bool = False, act: str = "relu", levels: int = 8,
    ) -> None:
        super().__init__()
        if depth not in RESNET_CONFIGS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_CONFIGS)}, got {depth}")
        _check_common(in_channels, num_classes, width)
        block, counts = RESNET_CONFIGS[depth]
        self.depth, self.plain = depth, plain
        c0 = _ch(64, width)
        self.conv1 = nn.Conv2d(in_channels, c0, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c0)
        self.relu = make_activation(act, levels)
        cin = c0
        stages = []
        for i, (n, base) in enumerate(zip(counts, (64, 128, 256, 512))):
            planes = _ch(base, width)
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, planes, stride, plain=plain, act=act, levels=levels))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.num_features = cin

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[N, num_features]`` (what a linear probe sees)."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


#: Layer plans: channel counts, "M" for a 2×2 max-pool.
VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG-{11,13,16} with BatchNorm, conv-BN-ReLU blocks and max-pooling after the ReLU.

    A pool that would shrink the map below 1×1 (28×28 inputs halve only four times)
    is left out; global average pooling and one linear layer classify.
    """

    def __init__(
        self, depth: int = 11, *, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
        image_size: int = 32, act: str = "relu", levels: int = 8,
    ) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
        _check_common(in_channels, num_classes, width)
        layers: list[nn.Module] = []
        cin, size = in_channels, int(image_size)
        for v in VGG_CONFIGS[depth]:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            c = _ch(int(v), width)
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), make_activation(act, levels)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _resnet_factory(depth: int, plain: bool):
    def build(in_channels: int = 3, num_classes: int = 10, width: float = 1.0, act: str = "relu",
              levels: int = 8, **_: object) -> nn.Module:
        return ResNet(depth, in_channels=in_channels, num_classes=num_classes, width=width, plain=plain, act=act,
                      levels=levels)

    return build


def _vgg_factory(depth: int):
    def build(in_channels: int = 3, num_classes: int = 10, width: float = 1.0, image_size: int = 32,
              act: str = "relu", levels: int = 8, **_: object) -> nn.Module:
        return VGG(depth, in_channels=in_channels, num_classes=num_classes, width=width, image_size=image_size,
                   act=act, levels=levels)

    return build


for _d in RESNET_CONFIGS:
    register_model(f"resnet{_d}")(_resnet_factory(_d, plain=False))
    register_model(f"plain-resnet{_d}")(_resnet_factory(_d, plain=True))
for _d in VGG_CONFIGS:
    register_model(f"vgg{_d}")(_vgg_factory(_d))
# the seed's "VGG18": ResNet-18's layers without the skip connections
register_model("vgg18")(_resnet_factory(18, plain=True))

BACKBONES: Sequence[str] = (
    "vgg11", "vgg13", "vgg16", "vgg18",
    "resnet18", "resnet34", "resnet50", "resnet101",
    "plain-resnet18", "plain-resnet34", "plain-resnet50", "plain-resnet101",
)
