"""Training speed of the fast CIFAR-10 network: fp32, fp32 channels-last, bf16 channels-last.

Usage::

    python benchmarks/bench_cifar_train.py [--batch 256] [--steps 6] [--repeats 3] \
        [--model resnet18 --width 0.5] [--accuracy --data-dir ../shared/data/cifar10 --epochs 2 --train-limit 10000]

Speed: forward + backward + SGD step on random 32×32 batches, the three settings in
alternating repeats within this process; prints median samples/s and ratios to fp32
NCHW (only ratios within one run are meaningful on a noisy machine).
``--accuracy`` also trains the same short schedule (the cifar-convert recipe, same
seed) in fp32 and in bf16 on real CIFAR-10 (``--val-split 10000`` held out) and prints
both validation accuracies.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from spikeforge.models import create_model

SETTINGS = {"fp32": (False, False), "fp32-channels-last": (False, True), "bf16-channels-last": (True, True)}


def step_time(model, x, y, bf16: bool, steps: int) -> float:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.85, nesterov=True)
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--model", default="cifar-fast", help="speed only: any registered CIFAR model (resnet18, vgg11, ...)")
    ap.add_argument("--width", type=float, default=None, help="width multiplier of a --model backbone")
    args = ap.parse_args()
    if args.width is not None and args.model == "cifar-fast":
        ap.error("--width scales a --model backbone (resnet18, vgg11, ...); cifar-fast has fixed widths")
    from spikeforge.precision import cpu_flags, native_bf16

    native = [f for f in ("avx512_bf16", "amx_bf16") if f in cpu_flags()]
    print(f"threads={torch.get_num_threads()} batch={args.batch} model={args.model}"
          + (f" width={args.width:g}" if args.width is not None else "")
          + f"; native bf16: {native_bf16()} ({', '.join(native) or 'no avx512_bf16/amx_bf16 flag'})")
    kwargs = {} if args.width is None else {"width": args.width}
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    times: dict[str, list[float]] = {k: [] for k in SETTINGS}
    for _ in range(args.repeats):
        for name, (bf16, cl) in SETTINGS.items():
            torch.manual_seed(0)
            model = create_model(args.model, **kwargs).train()
            xb = x
            if cl:
                model = model.to(memory_format=torch.channels_last)
                xb = x.contiguous(memory_format=torch.channels_last)
            times[name].append(step_time(model, xb, y, bf16, args.steps))
    base = args.batch / statistics.median(times["fp32"])
    for name, ts in times.items():
        sps = args.batch / statistics.median(ts)
        print(f"{name:20s} {sps:8.1f} samples/s   {sps / base:5.2f}x fp32")
    if args.accuracy:
        from spikeforge.experiments.common import load_split_tensors
        from spikeforge.models.fastnet import init_whitening
        from spikeforge.train import evaluate_classifier, train_classifier

        train, val, _ = load_split_tensors("cifar10", args.data_dir, 10000)
        train = (train[0][: args.train_limit], train[1][: args.train_limit])
        for bf16 in (False, True):
            torch.manual_seed(0)
            model = create_model("cifar-fast")
            init_whitening(model, train[0][:5000])
            t0 = time.perf_counter()
            train_classifier(model, train, None, epochs=args.epochs, batch_size=256, lr=0.375, weight_decay=1.33e-3,
                             momentum=0.85, optimizer="sgd", schedule="linear", warmup=0.2, label_smoothing=0.2,
                             bias_lr_scale=64, augment_shift=2, flip=True, bf16=bf16, channels_last=bf16,
                             progress=False, seed=0)
            wall = time.perf_counter() - t0
            acc = evaluate_classifier(model, *val)[0]
            print(f"{'bf16-channels-last' if bf16 else 'fp32':20s} {args.epochs} epochs on {len(train[1])} images: "
                  f"val accuracy {acc:.4f} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
