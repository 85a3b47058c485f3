"""LeNet5 ANN→SNN: spikeforge vs SpikingJelly's ann2snn, same trained net, same test set.

Usage (needs `pip install spikingjelly torch==2.13.0` beside spikeforge)::

    python benchmarks/bench_lenet5_convert.py --checkpoint runs/fm-lenet5/lenet5.pt \
        --dataset fashion-mnist [--threads 2] [--repeats 5] [--max-spikes 16 --split-threshold]

Prints accuracy at T ∈ {4, 8, 16, 32, 64, 128} for both converters (each from one
pass of 128 steps over the whole test set) and inference images/s at T=32 for the
ANN, spikeforge and SpikingJelly, measured in alternating repeats in this process,
reported as medians and as ratios (the machines are noisy; only ratios within one
run are meaningful). Writes a JSON summary next to the printed table (``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import sj_convert, sj_run  # noqa: E402

from spikeforge.convert import convert  # noqa: E402
from spikeforge.data import load_dataset  # noqa: E402
from spikeforge.metrics.classification import correct_per_step  # noqa: E402
from spikeforge.models import create_model  # noqa: E402
from spikeforge.train import evaluate_classifier, load_checkpoint  # noqa: E402

T_LIST = (4, 8, 16, 32, 64, 128)


def accuracy_curve(run_batch, x: torch.Tensor, y: torch.Tensor, T: int, batch: int) -> list[float]:
    correct = torch.zeros(T, dtype=torch.long)
    for i in range(0, len(y), batch):
        correct += correct_per_step(run_batch(x[i : i + batch], T), y[i : i + batch])
    return (correct.double() / len(y)).tolist()


def throughput(fn, x: torch.Tensor, batch: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            fn(x[i : i + batch])
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="lenet5.pt written by `spikeforge run lenet5-convert`")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--speed-images", type=int, default=2000)
    ap.add_argument("--sj-mode", default="99.9%")
    ap.add_argument("--max-spikes", type=int, default=1, help="spikeforge's burst spikes Γ (1 = ordinary spikes)")
    ap.add_argument("--split-threshold", action="store_true", help="with Γ > 1, spikeforge's threshold λ/Γ")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    test = load_dataset(args.dataset, "test", data_dir=args.data_dir)
    x_test, y_test = test.as_float(), test.labels
    payload = load_checkpoint(args.checkpoint, required=("model",))
    model = create_model("lenet5", in_channels=x_test.shape[1])
    model.load_state_dict(payload["model"])
    model.eval()
    ann_acc, _ = evaluate_classifier(model, x_test, y_test)

    gen = torch.Generator().manual_seed(0)
    calib = train.as_float()[torch.randperm(len(train), generator=gen)[: 256 * 32]]
    sf_snn = convert(model, calib, batch_size=256, max_batches=32, max_spikes=args.max_spikes,
                     split_threshold=args.split_threshold)
    sj_snn = sj_convert(model, [(b, None) for b in calib.split(256)], mode=args.sj_mode)

    Tmax = max(T_LIST)
    t0 = time.perf_counter()
    sf_curve = accuracy_curve(lambda xb, T: sf_snn(xb, T, record=False), x_test, y_test, Tmax, args.batch)
    sf_eval_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        sj_curve = accuracy_curve(lambda xb, T: sj_run(sj_snn, xb, T), x_test, y_test, Tmax, args.batch)
    sj_eval_s = time.perf_counter() - t0

    # Speed at T=32: alternating repeats, medians.
    xs = x_test[: args.speed_images]
    runs = {
        "ann": lambda xb: model(xb),
        "spikeforge": lambda xb: sf_snn(xb, 32, record=False),
        "spikingjelly": lambda xb: sj_run(sj_snn, xb, 32),
    }
    for fn in runs.values():  # warm-up
        throughput(fn, xs[: args.batch], args.batch)
    speeds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            speeds[name].append(throughput(fn, xs, args.batch))
    med = {k: statistics.median(v) for k, v in speeds.items()}

    print(f"\nLeNet5 on {args.dataset} ({len(y_test)} test images), threads={args.threads}, "
          f"spikeforge Γ={args.max_spikes}{' split threshold' if args.split_threshold else ''}")
    print(f"ANN accuracy: {ann_acc:.4f}")
    print(f"{'T':>5} | {'spikeforge':>10} | {'SpikingJelly':>12} | {'sf - ANN (pt)':>13}")
    for T in T_LIST:
        print(f"{T:>5} | {sf_curve[T - 1]:>10.4f} | {sj_curve[T - 1]:>12.4f} | {100 * (sf_curve[T - 1] - ann_acc):>+13.2f}")
    print(f"\nimages/s at T=32 (median of {args.repeats}, batch {args.batch}):")
    for k, v in med.items():
        print(f"  {k:>12}: {v:10.0f}   runs: {', '.join(f'{s:.0f}' for s in speeds[k])}")
    print(f"ratio spikeforge / SpikingJelly: {med['spikeforge'] / med['spikingjelly']:.2f}x (target >= 2)")
    print(f"ANN / spikeforge SNN slowdown:   {med['ann'] / med['spikeforge']:.1f}x (target <= 32)")
    print(f"ANN / SpikingJelly SNN slowdown: {med['ann'] / med['spikingjelly']:.1f}x")
    summary = {
        "dataset": args.dataset,
        "threads": args.threads,
        "max_spikes": args.max_spikes,
        "split_threshold": args.split_threshold,
        "ann_accuracy": ann_acc,
        "spikeforge_accuracy": {T: sf_curve[T - 1] for T in T_LIST},
        "spikingjelly_accuracy": {T: sj_curve[T - 1] for T in T_LIST},
        "images_per_second_T32": med,
        "runs": speeds,
        "ratio_spikeforge_over_spikingjelly": med["spikeforge"] / med["spikingjelly"],
        "ann_over_spikeforge": med["ann"] / med["spikeforge"],
        "ann_over_spikingjelly": med["ann"] / med["spikingjelly"],
        "eval_seconds_T128": {"spikeforge": sf_eval_s, "spikingjelly": sj_eval_s},
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
