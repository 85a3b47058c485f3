"""LeNet5 ANN→SNN: spikeforge vs SpikingJelly's ann2snn, same trained net, same test set.

Usage (needs `pip install spikingjelly torch==2.13.0` beside spikeforge)::

    python benchmarks/bench_lenet5_convert.py --checkpoint runs/fm-lenet5/lenet5.pt \
        --dataset fashion-mnist [--threads 2] [--repeats 5] [--max-spikes 16 --split-threshold]

Prints accuracy at T ∈ {1, 2, 4, 8, 16, 32, 64, 128} (each curve from one pass of 128
steps over the whole test set) for spikeforge's methods on the ReLU net (``--method``,
as in ``cifar_methods.py``), optionally a QCFS-trained net (``--qcfs-checkpoint``, its
plain SNN and the same corrections), and SpikingJelly's rate-coding (99.9%) and
local-threshold-balancing recipes on the same ReLU net, the difference between the
best of each, and inference images/s at T=32 for the
ANN, spikeforge and SpikingJelly, measured in alternating repeats in this process,
reported as medians and as ratios (the machines are noisy; only ratios within one
run are meaningful). Writes a JSON summary next to the printed table (``--json``).

``--select-T T`` chooses, within each group (the ReLU net's ``--method`` list and the QCFS
net's ``--qcfs-method`` list), the method with the best accuracy at step T on
``--select-images`` training images that the calibration did not use, and prints that
method's test accuracy: a choice made without looking at the test set (the nets were
trained on those images, so the figures there are only used to rank the methods).
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
from cifar_methods import parse_method  # noqa: E402

from spikeforge.convert import convert  # noqa: E402
from spikeforge.data import load_dataset  # noqa: E402
from spikeforge.metrics.classification import correct_per_step  # noqa: E402
from spikeforge.models import create_model  # noqa: E402
from spikeforge.train import evaluate_classifier, load_checkpoint  # noqa: E402

T_LIST = (1, 2, 4, 8, 16, 32, 64, 128)


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


def load_lenet5(path: str, in_channels: int) -> tuple[torch.nn.Module, dict]:
    """The LeNet5 of a lenet5-convert run (ReLU or QCFS, as its saved options say)."""
    payload = load_checkpoint(path, required=("model",))
    cfg = payload.get("config") or {}
    act, levels = cfg.get("activation", "relu"), cfg.get("levels", 8)
    model = create_model("lenet5", in_channels=in_channels, act=act, levels=levels)
    model.load_state_dict(payload["model"])
    return model.eval(), {"activation": act, "levels": levels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="lenet5.pt (ReLU) written by `spikeforge run lenet5-convert`")
    ap.add_argument("--qcfs-checkpoint", default=None,
                    help="optional lenet5.pt of a QCFS run (`--activation qcfs`): its SNN is added as a route")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--speed-images", type=int, default=2000)
    ap.add_argument("--sj-mode", action="append", default=None,
                    help="SpikingJelly modes to compare: a percentile such as 99.9%%, max, or ltb "
                         "(local threshold balancing); default: 99.9%% and ltb")
    ap.add_argument("--method", action="append", default=None,
                    help="spikeforge training-free methods on the ReLU net, as in cifar_methods.py "
                         "(percentile, mse+potential@8, mse+potential@8/pc, ...); default: percentile")
    ap.add_argument("--qcfs-method", action="append", default=None,
                    help="routes for the QCFS net: qcfs (θ = learnt λ) or a correction on top, e.g. +potential@4/cb4")
    ap.add_argument("--max-spikes", type=int, default=1, help="spikeforge's burst spikes Γ (1 = ordinary spikes)")
    ap.add_argument("--split-threshold", action="store_true", help="with Γ > 1, spikeforge's threshold λ/Γ")
    ap.add_argument("--t-max", type=int, default=128, help="longest run (the table shows T ≤ this)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--select-T", type=int, default=None,
                    help="pick each group's method by its accuracy at this T on held-out training images")
    ap.add_argument("--select-images", type=int, default=5000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_list = [t for t in T_LIST if t <= args.t_max]
    sj_modes = args.sj_mode or ["99.9%", "ltb"]
    methods = args.method or ["percentile"]

    train = load_dataset(args.dataset, "train", data_dir=args.data_dir)
    test = load_dataset(args.dataset, "test", data_dir=args.data_dir)
    x_test, y_test = test.as_float(), test.labels
    model, _ = load_lenet5(args.checkpoint, x_test.shape[1])
    ann_acc, _ = evaluate_classifier(model, x_test, y_test)

    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=gen)
    calib = train.as_float()[order[: 256 * 32]]
    if args.select_T is not None and not (1 <= args.select_T <= max(t_list)):
        raise SystemExit(f"--select-T must be in 1..{max(t_list)}, got {args.select_T}")
    sel_idx = order[256 * 32 : 256 * 32 + args.select_images]
    x_sel, y_sel = train.as_float()[sel_idx], train.labels[sel_idx]
    if args.select_T is not None and len(y_sel) == 0:
        raise SystemExit("--select-T: no training images are left beside the calibration images")
    selection: dict[str, dict] = {}

    def score(snn_run) -> float:
        """Accuracy at --select-T on the held-out training images."""
        return accuracy_curve(snn_run, x_sel, y_sel, args.select_T, args.batch)[args.select_T - 1]

    Tmax = max(t_list)
    curves: dict[str, list[float]] = {}
    eval_s: dict[str, float] = {}
    convert_s: dict[str, float] = {}
    sf_default = None
    for text in methods:
        kw = parse_method(text)
        t0 = time.perf_counter()
        snn = convert(model, calib, batch_size=256, max_batches=32, max_spikes=args.max_spikes,
                      split_threshold=args.split_threshold, **kw)
        convert_s[f"sf {text}"] = time.perf_counter() - t0
        sf_default = sf_default or snn
        t0 = time.perf_counter()
        curves[f"sf {text}"] = accuracy_curve(lambda xb, T: snn(xb, T, record=False), x_test, y_test, Tmax, args.batch)
        eval_s[f"sf {text}"] = time.perf_counter() - t0
        if args.select_T is not None:
            selection.setdefault("relu", {})[f"sf {text}"] = score(lambda xb, T: snn(xb, T, record=False))
    qcfs_ann = None
    if args.qcfs_checkpoint:
        qmodel, qcfg = load_lenet5(args.qcfs_checkpoint, x_test.shape[1])
        if qcfg["activation"] != "qcfs":
            raise SystemExit(f"--qcfs-checkpoint {args.qcfs_checkpoint} holds a {qcfg['activation']} net, not QCFS")
        qcfs_ann = evaluate_classifier(qmodel, x_test, y_test)[0]
        for text in args.qcfs_method or ["qcfs"]:
            kw = {} if text == "qcfs" else {k: v for k, v in parse_method("percentile" + text).items()
                                             if k not in ("threshold", "per_channel")}
            t0 = time.perf_counter()
            qsnn = convert(qmodel, calib, batch_size=256, max_batches=32, **kw)
            name = f"sf QCFS L={qcfg['levels']}" + ("" if text == "qcfs" else f" {text}")
            convert_s[name] = time.perf_counter() - t0
            curves[name] = accuracy_curve(lambda xb, T: qsnn(xb, T, record=False), x_test, y_test, Tmax, args.batch)
            if args.select_T is not None:
                selection.setdefault("qcfs", {})[name] = score(lambda xb, T: qsnn(xb, T, record=False))
    sj_snns = {}
    for mode in sj_modes:
        sj_snns[mode] = sj_convert(model, [(b, None) for b in calib.split(256)], mode=mode)
        t0 = time.perf_counter()
        with torch.no_grad():
            curves[f"SJ {mode}"] = accuracy_curve(lambda xb, T: sj_run(sj_snns[mode], xb, T), x_test, y_test, Tmax,
                                                  args.batch)
        eval_s[f"SJ {mode}"] = time.perf_counter() - t0

    # Speed at T=32: alternating repeats, medians (spikeforge's first method, SpikingJelly's first mode).
    xs = x_test[: args.speed_images]
    sj_first = sj_snns[sj_modes[0]]
    runs = {
        "ann": lambda xb: model(xb),
        "spikeforge": lambda xb: sf_default(xb, 32, record=False),
        "spikingjelly": lambda xb: sj_run(sj_first, xb, 32),
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
    print(f"ReLU ANN accuracy: {ann_acc:.4f}" + ("" if qcfs_ann is None else f"; QCFS ANN accuracy: {qcfs_ann:.4f}"))
    names = list(curves)
    width = max(len(n) for n in names)
    print(f"{'method':<{width}} | " + " | ".join(f"T={T:<4}" for T in t_list) + " | convert")
    for n in names:
        print(f"{n:<{width}} | " + " | ".join(f"{curves[n][T - 1]:.4f}" for T in t_list)
              + (f" | {convert_s[n]:6.1f} s" if n in convert_s else ""))
    relu_sf = [n for n in names if n.startswith("sf ") and "QCFS" not in n]
    best_sf = {T: max(curves[n][T - 1] for n in relu_sf) for T in t_list}
    best_sj = {T: max(curves[f"SJ {m}"][T - 1] for m in sj_modes) for T in t_list}
    print(f"{'best sf (ReLU net) - best SJ, pt':<{width}} | "
          + " | ".join(f"{100 * (best_sf[T] - best_sj[T]):+6.2f}" for T in t_list))
    chosen = {}
    for group, scores in selection.items():
        best = max(scores, key=scores.get)
        base = ann_acc if group == "relu" else qcfs_ann
        chosen[group] = {"method": best, "selection_accuracy": scores,
                         "test_accuracy": curves[best][args.select_T - 1],
                         "test_minus_ann": curves[best][args.select_T - 1] - base}
        print(f"selected at T={args.select_T} on {len(y_sel)} held-out training images ({group} net): {best} "
              f"({', '.join(f'{n}: {v:.4f}' for n, v in scores.items())}) -> test "
              f"{curves[best][args.select_T - 1]:.4f} ({100 * (curves[best][args.select_T - 1] - base):+.2f} pt)")
    print(f"\nimages/s at T=32 (median of {args.repeats}, batch {args.batch}; sf {methods[0]}, SJ {sj_modes[0]}):")
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
        "qcfs_ann_accuracy": qcfs_ann,
        "accuracy": {n: {T: c[T - 1] for T in t_list} for n, c in curves.items()},
        "best_spikeforge_minus_best_spikingjelly": {T: best_sf[T] - best_sj[T] for T in t_list},
        "images_per_second_T32": med,
        "runs": speeds,
        "ratio_spikeforge_over_spikingjelly": med["spikeforge"] / med["spikingjelly"],
        "ann_over_spikeforge": med["ann"] / med["spikeforge"],
        "ann_over_spikingjelly": med["ann"] / med["spikingjelly"],
        "eval_seconds_T128": eval_s,
        "convert_seconds": convert_s,
        "selected": chosen,
        "command": " ".join(sys.argv),
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
