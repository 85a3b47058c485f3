"""LeNet5 (Fashion-MNIST): the conversion with and without end-to-end tuning, side by side.

Usage::

    python benchmarks/lenet5_tuning_screen.py --checkpoint runs/fm-lenet5-t2-s2/lenet5.pt --seed 2 \
        --setting 0:0:0 --setting 2:0:1e-3 --setting 2:1e-5:1e-3

A ReLU checkpoint gets MSE thresholds per channel + potential correction for ``--target-T``
(default 8, 4 correction batches); a QCFS one (``--levels L``) θ = λ + potential correction for
``--target-T`` (use 4). Each ``--setting EPOCHS:WEIGHT_LR:LR`` adds ``convert(e2e_epochs=EPOCHS,
e2e_lr=LR, e2e_weight_lr=WEIGHT_LR or None)`` (``0:0:0`` = no tuning) on the 8,192 calibration
images (the lenet5-convert draw for ``--seed``). Printed per setting: the agreement with the ANN
at ``--target-T`` and 2× on 5,000 training images outside the calibration set — the figure to
choose by — and, separately, the accuracy on the 10,000 test images.
"""

from __future__ import annotations

import argparse
import time

import torch

from spikeforge.convert import convert
from spikeforge.evaluate import evaluate_snn
from spikeforge.experiments.common import load_split_tensors
from spikeforge.models import create_model
from spikeforge.train import evaluate_classifier, load_checkpoint
from spikeforge.train.checkpoint import load_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--seed", type=int, default=0, help="the seed of lenet5-convert's calibration draw")
    ap.add_argument("--levels", type=int, default=None, help="a QCFS checkpoint with L levels (default: ReLU)")
    ap.add_argument("--target-T", type=int, default=None, help="default 8 (ReLU), 4 (QCFS)")
    ap.add_argument("--setting", action="append", default=[], help="EPOCHS:WEIGHT_LR:LR (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        settings = [tuple(float(v) for v in s.split(":")) for s in args.setting or ["0:0:0"]]
        if any(len(s) != 3 or s[0] < 0 or s[0] != int(s[0]) or s[1] < 0 or (s[0] and s[2] <= 0) for s in settings):
            raise ValueError
    except ValueError:
        raise SystemExit(f"--setting must be EPOCHS:WEIGHT_LR:LR (whole EPOCHS >= 0, LR > 0), got {args.setting}") from None
    torch.set_num_threads(args.threads)
    qcfs = args.levels is not None
    T = args.target_T or (4 if qcfs else 8)
    train, test, _ = load_split_tensors("fashion-mnist", None, 0)
    model = create_model("lenet5", in_channels=1, num_classes=10, **({"act": "qcfs", "levels": args.levels} if qcfs else {}))
    load_state(model, load_checkpoint(args.checkpoint, required=("model",))["model"], args.checkpoint)
    model.eval()
    ann = evaluate_classifier(model, *test)[0]
    perm = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(args.seed))
    calib, sel = train[0][perm[:8192]], train[0][perm[8192:8192 + 5000]]
    with torch.no_grad():
        ann_pred = model(sel).argmax(1)
    method = (dict(correction="potential", target_T=T, correction_batches=4) if qcfs else
              dict(threshold="mse", per_channel=True, correction="potential", target_T=T, correction_batches=4))
    print(f"ANN {ann:.4f}; {'QCFS θ = λ' if qcfs else 'MSE per channel'} + potential for T={T}, 4 batches")
    for epochs, wlr, lr in settings:
        t0 = time.perf_counter()
        tune = dict(e2e_epochs=int(epochs), e2e_lr=lr, e2e_weight_lr=wlr or None) if epochs else {}
        snn = convert(model, calib, batch_size=256, max_batches=32, **method, **tune)
        a = evaluate_snn(snn, sel, ann_pred, 2 * T, batch_size=1000, spike_stats=False)["accuracy"]
        b = evaluate_snn(snn, *test, 2 * T, batch_size=1000, spike_stats=False)["accuracy"]
        print(f"tuning {int(epochs)} epochs, weights lr {wlr:g}, corrections lr {lr:g}: agreement T={T} {a[T - 1]:.4f} "
              f"T={2 * T} {a[2 * T - 1]:.4f} | test T={T} {b[T - 1]:.4f} ({100 * (b[T - 1] - ann):+.2f}) "
              f"T={2 * T} {b[2 * T - 1]:.4f} ({100 * (b[2 * T - 1] - ann):+.2f}) ({time.perf_counter() - t0:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
