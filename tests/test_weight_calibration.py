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


def _layer_errors(snn, net, x, T):
    """Per neuron layer, the MSE between its T-step mean output and the ANN's ReLU output."""
    ann, got = [], {}
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    hs = [r.register_forward_hook(lambda m, i, o: ann.append(o.detach().clone())) for r in relus]
    with torch.no_grad():
        net(x)
    for h in hs:
        h.remove()
    neurons = list(snn.neurons().values())
    hs = [n.register_forward_hook(lambda m, i, o, k=k: got.setdefault(k, []).append(o.clone()))
          for k, n in enumerate(neurons)]
    with torch.no_grad():
        snn(x, T)
    for h in hs:
        h.remove()
    out = []
    for k, a in enumerate(ann):
        y = torch.cat(got[k]) if len(got[k]) > 1 else got[k][0]
        out.append(float(((y.reshape(T, x.shape[0], *a.shape[1:]).mean(0) - a) ** 2).mean()))
    return out


@pytest.mark.parametrize("kind,per_channel,channels_last,gamma,refresh", [
    ("potential", False, False, 1, 1),
    ("bias", True, True, 2, 1),
    ("potential", False, False, 1, 5),  # the true output simulated every 5th step only
])
def test_weight_calibration_brings_the_snn_closer_to_the_ann_on_new_images(kind, per_channel, channels_last, gamma,
                                                                         refresh):
    net = _net()
    g = torch.Generator().manual_seed(1)
    calib, fresh = torch.randn(256, 3, 8, 8, generator=g), torch.randn(256, 3, 8, 8, generator=g)
    T = 4
    kw = dict(threshold="mse", correction=kind, target_T=T, batch_size=256, per_channel=per_channel,
              channels_last=channels_last, max_spikes=gamma)
    plain = convert(net, calib, **kw)
    tuned = convert(net, calib, **kw, weight_iters=30, weight_refresh=refresh)
    report = tuned.correction_report
    for r in report.values():  # never worse on the held-back calibration images, by construction
        assert r["holdout_mse_after"] <= r["holdout_mse_before"]
    assert sum(r["channels_changed"] for r in report.values()) > 0
    assert sum(r["holdout_mse_after"] for r in report.values()) < 0.99 * sum(
        r["holdout_mse_before"] for r in report.values())
    # the report is what the calibrated SNN really does on the calibration images
    actual = _layer_errors(tuned, net, calib, T)
    assert actual == pytest.approx([r["mse_after"] for r in report.values()], rel=1e-3, abs=1e-6)
    assert sum(actual) < sum(_layer_errors(plain, net, calib, T))
    # on images neither pass saw, the network's output is closer to the ANN's
    assert _output_mse(tuned, net, fresh, T) < 0.97 * _output_mse(plain, net, fresh, T)
    # the ANN itself is untouched
    assert torch.equal(net.stem.weight, _net().stem.weight)
    assert tuned.options["weight_iters"] == 30 and tuned.options["weight_refresh"] == refresh


def test_a_layer_added_to_itself_is_not_calibrated():
    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c0, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.r1, self.r2 = nn.ReLU(), nn.ReLU()

        def forward(self, x):
            y = self.c(self.r1(self.c0(x)))
            return self.r2(y + y)

    torch.manual_seed(0)
    x = torch.randn(32, 3, 6, 6)
    snn = convert(Doubled().eval(), x, batch_size=32, correction="potential", target_T=4, weight_iters=3)
    static = _static_nodes(snn.graph_module)
    assert [len(presynaptic_layers(snn.graph_module, n, static)) for n in snn.neurons()] == [1, 0]


def test_weight_calibration_options_are_checked():
    net = _net()
    x = torch.randn(16, 3, 8, 8)
    with pytest.raises(ValueError, match="weight_iters.*correction"):
        convert(net, x, weight_iters=5)
    with pytest.raises(ValueError, match="weight_iters must be a whole number"):
        convert(net, x, correction="bias", target_T=4, weight_iters=-1)
    with pytest.raises(ValueError, match="weight_refresh must be a whole number >= 1"):
        convert(net, x, correction="bias", target_T=4, weight_iters=3, weight_refresh=0)
