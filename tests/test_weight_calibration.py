"""Layer-wise weight calibration of converted SNNs (convert(..., weight_iters=N))."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spikeforge import convert
from spikeforge.convert.core import _static_nodes
from spikeforge.convert.weights import presynaptic_layers


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        y = self.b2(self.c2(self.r1(self.b1(self.c1(x)))))
        return self.r2(y + (x if self.short is None else self.short(x)))


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.blocks = nn.Sequential(Block(8, 8, 1), Block(8, 12, 2))
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        y = self.blocks(self.act(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _net(seed: int = 0) -> ResNetLike:
    torch.manual_seed(seed)
    net = ResNetLike()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.6, 1.4)
                m.bias.uniform_(-0.1, 0.2)
    return net.eval()


def test_presynaptic_layers_follow_adds_to_both_branches():
    net = _net()
    snn = convert(net, torch.randn(32, 3, 8, 8), batch_size=32)
    gm = snn.graph_module
    static = _static_nodes(gm)
    found = {name: [(p.name.removeprefix("sf_fused_"), p.static) for p in presynaptic_layers(gm, name, static)]
             for name in snn.neurons()}
    assert list(found.values()) == [  # (layers with a BatchNorm are replaced by their folded copy)
        [("stem", True)],                       # the stem sees the image, the same at every step
        [("blocks_0_c1", False)],
        [("blocks_0_c2", False)],               # identity shortcut: its spikes stay as they are
        [("blocks_1_c1", False)],
        [("blocks_1_c2", False), ("blocks_1_short_0", False)],  # conv branch and 1x1 shortcut
    ]


def test_a_layer_called_twice_is_not_calibrated():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(4, 4, 3, padding=1)
            self.r1, self.r2 = nn.ReLU(), nn.ReLU()

        def forward(self, x):
            return self.r2(self.c(self.r1(self.c(x))))

    torch.manual_seed(0)
    snn = convert(Twice().eval(), torch.randn(16, 4, 6, 6), batch_size=16)
    static = _static_nodes(snn.graph_module)
    assert all(presynaptic_layers(snn.graph_module, n, static) == [] for n in snn.neurons())


def _output_mse(snn, net, x, T):
    with torch.no_grad():
        return float(((snn(x, T).mean(0) - net(x)) ** 2).mean())


def test_weight_calibration_brings_the_snn_closer_to_the_ann_on_new_images():
    net = _net()
    g = torch.Generator().manual_seed(1)
    calib, fresh = torch.randn(256, 3, 8, 8, generator=g), torch.randn(256, 3, 8, 8, generator=g)
    T = 4
    plain = convert(net, calib, threshold="mse", correction="potential", target_T=T, batch_size=256)
    tuned = convert(net, calib, threshold="mse", correction="potential", target_T=T, batch_size=256, weight_iters=30)
    report = tuned.correction_report
    for r in report.values():  # never worse on the held-back calibration images, by construction
        assert r["holdout_mse_after"] <= r["holdout_mse_before"]
    assert sum(r["channels_changed"] for r in report.values()) > 0
    assert sum(r["holdout_mse_after"] for r in report.values()) < 0.97 * sum(
        r["holdout_mse_before"] for r in report.values())
    # on images neither pass saw, the network's output is closer to the ANN's
    assert _output_mse(tuned, net, fresh, T) < 0.97 * _output_mse(plain, net, fresh, T)
    # the ANN itself is untouched
    assert torch.equal(net.stem.weight, _net().stem.weight)
    assert tuned.options["weight_iters"] == 30


def test_weight_calibration_options_are_checked():
    net = _net()
    x = torch.randn(16, 3, 8, 8)
    with pytest.raises(ValueError, match="weight_iters.*correction"):
        convert(net, x, weight_iters=5)
    with pytest.raises(ValueError, match="weight_iters must be a whole number"):
        convert(net, x, correction="bias", target_T=4, weight_iters=-1)
