"""LeNet5 as in seeds 000/001: conv6-pool-conv16-pool-fc120-fc84-fc10, with BatchNorm."""

from __future__ import annotations

from torch import nn

from spikeforge.errors import ConfigError

from spikeforge.models.registry import register_model


class LeNet5(nn.Sequential):
    """LeNet5 with BatchNorm after every hidden layer and max-pooling.

    Each block is conv-BN-ReLU-MaxPool2d(2) (``act="qcfs"``: QCFS instead of ReLU): the pool follows the ReLU, so the
    spiking max-pool sees spike trains. ``pool="avg"`` uses 2×2 average pooling instead
    (LeNet-5's original subsampling; the converted net then has no max-pool and exports
    to NIR). Input ``[N, C, 28, 28]`` (padding 2 on the first conv gives the classic
    32×32 geometry).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0,
                 act: str = "relu", levels: int = 8, pool: str = "max") -> None:
        from spikeforge.models.backbones import make_activation

        if pool not in ("max", "avg"):
            raise ConfigError(f"pool must be 'max' or 'avg', got {pool!r}")

        def a() -> nn.Module:
            return make_activation(act, levels)

        def p() -> nn.Module:
            return nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)

        super().__init__(
            nn.Conv2d(in_channels, 6, 5, padding=2, bias=False),
            nn.BatchNorm2d(6),
            a(),
            p(),
            nn.Conv2d(6, 16, 5, bias=False),
            nn.BatchNorm2d(16),
            a(),
            p(),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120, bias=False),
            nn.BatchNorm1d(120),
            a(),
            nn.Dropout(dropout),
            nn.Linear(120, 84, bias=False),
            nn.BatchNorm1d(84),
            a(),
            nn.Linear(84, num_classes),
        )


@register_model("lenet5")
def lenet5(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0, act: str = "relu",
           levels: int = 8, pool: str = "max") -> nn.Module:
    """``act="qcfs"`` trains with the quantized clip-floor-shift activation (``levels`` L); ``pool="avg"``
    average-pools instead of max-pooling."""
    return LeNet5(in_channels, num_classes, dropout, act=act, levels=levels, pool=pool)
