"""Structural check of QCFS conversion on deep ResNets, independent of training.

Usage::

    python benchmarks/qcfs_structure.py resnet50 512

A random-weight QCFS network (width 1/8, L=8, random BatchNorm statistics) is converted
(binary spikes, θ = λ, v₀ = θ/2); the SNN's mean output after T steps is compared with
the clipped twin (every QCFS replaced by clip(x, 0, λ), the function an IF neuron's
rate tends to) and with the QCFS net itself: relative L2 error of the logits and
argmax agreement. A converter fault (a wrong threshold, a branch or a residual add
mishandled) would keep the error from shrinking as T grows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qcfs_probe import clipped_twin  # noqa: E402

from spikeforge import convert  # noqa: E402
from spikeforge.models import create_model  # noqa: E402


def main(name: str = "resnet50", t_max: int = 512) -> None:
    torch.manual_seed(0)
    net = create_model(name, in_channels=1, num_classes=10, width=0.125, act="qcfs", levels=8)
    for m in net.modules():  # random BN statistics, so the sites are not trivially alike
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    net.eval()
    x = torch.randn(64, 1, 28, 28)
    clip = clipped_twin(net).eval()
    with torch.no_grad():
        a_q, a_c = net(x), clip(x)
        out = convert(net, x[:32])(x, t_max)
    for T in sorted({8, 32, 128, t_max}):
        o = out[:T].mean(0)
        rel_c = float((o - a_c).norm() / a_c.norm())
        rel_q = float((o - a_q).norm() / a_q.norm())
        agree = float((o.argmax(1) == a_c.argmax(1)).float().mean())
        print(f"{name} T={T}: relative error vs clipped twin {rel_c:.3f}, vs QCFS net {rel_q:.3f}; "
              f"argmax agreement with the clipped twin {agree:.2f}")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["resnet50"]), *(int(a) for a in sys.argv[2:3]))
