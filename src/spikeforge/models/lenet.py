"""LeNet5 as in seeds 000/001: conv6-pool-conv16-pool-fc120-fc84-fc10, with BatchNorm."""

from __future__ import annotations

from torch import nn

from spikeforge.models.registry import register_model


class LeNet5(nn.Sequential):
    """LeNet5 with BatchNorm after every hidden layer and max-pooling.

    Each block is conv-BN-ReLU-MaxPool2d(2): the pool follows the ReLU, so the
    spiking max-pool sees spike trains. Input ``[N, C, 28, 28]`` (padding 2 on the
    first conv gives the classic 32×32 geometry).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Conv2d(in_channels, 6, 5, padding=2, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120, bias=False),
            nn.BatchNorm1d(120),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(120, 84, bias=False),
            nn.BatchNorm1d(84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )


@register_model("lenet5")
def lenet5(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> nn.Module:
    return LeNet5(in_channels, num_classes, dropout)
