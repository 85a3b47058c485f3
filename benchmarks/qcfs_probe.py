"""Probe of a QCFS-trained deep ResNet that converts badly: QCFS ANN vs its clipped twin vs the SNN.

Usage::

    python benchmarks/qcfs_probe.py [--model resnet50] [--width 0.125] [--levels 8] \
        [--dataset fashion-mnist] [--train 3000] [--epochs 3] [--test 500] [--T 64]

Trains a small QCFS network (``act="qcfs"``) briefly, then evaluates on the same test
images: the QCFS ANN itself; the same weights with every QCFS replaced by its
un-quantized ceiling, ``clip(x, 0, λ)`` (the function an IF neuron with threshold λ
computes as T → ∞); and the converted SNN (binary spikes, θ = λ, v₀ = θ/2) at
T = L, 2L, …, T. An IF neuron's rate after T steps is the clip-floor quantization
with T levels, so only at T = L does the SNN compute the trained function; for
large T it computes the clipped net, which was never trained. If the SNN at large T
tracked the clipped ANN rather than the QCFS ANN, the loss would be a property of the
trained function, not of the converter (session 5: it does not — see RESULTS.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
from torch import nn

from spikeforge import convert
from spikeforge.data import load_dataset
from spikeforge.evaluate import evaluate_snn
from spikeforge.layers import QCFS
from spikeforge.models import create_model
from spikeforge.train import evaluate_classifier, train_classifier


class Clip(nn.Module):
    """``clip(x, 0, λ)`` with the λ of a trained QCFS."""

    def __init__(self, ceiling: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("ceiling", ceiling.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.relu(x), self.ceiling)


def clipped_twin(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for name, mod in list(twin.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, QCFS):
                setattr(mod, child_name, Clip(child.ceiling))
    return twin.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--levels", type=int, default=8)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--T", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    train = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    test = load_dataset(args.dataset, "test", data_dir=args.data_dir)
    x, y = train.as_float()[: args.train], train.labels[: args.train]
    xt, yt = test.as_float()[: args.test], test.labels[: args.test]
    model = create_model(args.model, in_channels=x.shape[1], width=args.width, act="qcfs", levels=args.levels,
                         image_size=x.shape[-1])
    train_classifier(model, (x, y), None, epochs=args.epochs, batch_size=64, lr=3e-3, progress=False)
    qcfs_acc = evaluate_classifier(model, xt, yt)[0]
    clip_acc = evaluate_classifier(clipped_twin(model), xt, yt)[0]
    lams = [float(m.ceiling.detach()) for m in model.modules() if isinstance(m, QCFS)]
    snn = convert(model, x[:512], batch_size=128, max_batches=4)
    res = evaluate_snn(snn, xt, yt, args.T, batch_size=100, progress=False)
    steps = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= args.T]
    print(f"{args.model} width {args.width}, QCFS L={args.levels}, {args.epochs} epochs on {args.train} "
          f"{args.dataset} images; {len(yt)} test images")
    print(f"QCFS ANN {qcfs_acc:.4f} | clipped twin clip(x,0,λ) {clip_acc:.4f} | λ min/median/max "
          f"{min(lams):.3g}/{sorted(lams)[len(lams) // 2]:.3g}/{max(lams):.3g} over {len(lams)} QCFS modules")
    print("SNN: " + ", ".join(f"T={t} {res['accuracy'][t - 1]:.4f}" for t in steps))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "qcfs_ann": qcfs_acc, "clipped_ann": clip_acc, "lambdas": lams,
                       "snn": {t: res["accuracy"][t - 1] for t in steps}, "command": " ".join(sys.argv)}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
