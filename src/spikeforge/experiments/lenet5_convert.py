"""``spikeforge run lenet5-convert``: train LeNet5, convert it, evaluate every time step."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from spikeforge.convert import convert
from spikeforge.evaluate import evaluate_snn
from spikeforge.experiments.common import (
    GRAYSCALE_28,
    add_device_arguments,
    add_method_arguments,
    add_val_split_argument,
    command_line,
    device_of,
    method_name,
    method_options,
    eval_split_name,
    environment,
    integer,
    learning_rate,
    load_split_tensors,
    parallel_info,
    percentile_value,
    positive_int,
    prepare_out_dir,
    require_images,
    seed_int,
    unit_interval,
)
from spikeforge import distributed
from spikeforge.experiments.registry import Experiment
from spikeforge.io import write_json, write_text
from spikeforge.metrics import largest_drop
from spikeforge.metrics.spikes import spike_stats_table
from spikeforge.models import create_model
from spikeforge.nir.cli import add_export_argument, check_exportable, export_file
from spikeforge.plots import plot_accuracy_vs_T, plot_bars, plot_history, plot_spike_stats
from spikeforge.train import CheckpointError, evaluate_classifier, load_checkpoint, save_checkpoint, train_classifier
from spikeforge.train.checkpoint import load_state

TRAIN_KEYS = ("dataset", "epochs", "batch_size", "lr", "seed", "augment_shift")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist-sample", choices=GRAYSCALE_28)
    p.add_argument("--data-dir", default=None, help="folder with the dataset files")
    add_val_split_argument(p)
    p.add_argument("--epochs", type=positive_int, default=15)
    p.add_argument("--T", type=integer(1, 100_000), default=128, help="evaluate steps 1..T")
    p.add_argument("--out", default="runs/lenet5-convert")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--lr", type=learning_rate, default=3e-3)
    p.add_argument("--augment-shift", type=integer(0, 27), default=0, help="random translation (pixels) in training")
    p.add_argument("--percentile", type=percentile_value, default=99.99)
    p.add_argument("--per-channel", action="store_true", help="per-channel thresholds")
    p.add_argument("--maxpool", choices=("lipool", "gated", "plain"), default="lipool")
    p.add_argument("--pool", choices=("max", "avg"), default="max",
                   help="LeNet5's pooling: max (the spiking max-pool of --maxpool) or avg (exports to NIR)")
    p.add_argument("--max-spikes", type=integer(1, 1024), default=1, help="burst spikes Γ")
    p.add_argument("--split-threshold", action="store_true", help="with Γ > 1, threshold λ/Γ (finer rate code)")
    p.add_argument("--reset", choices=("subtract", "zero"), default="subtract")
    p.add_argument("--v-init", type=unit_interval, default=0.5, help="initial membrane / threshold, in [0, 1]")
    p.add_argument("--calib-batches", type=positive_int, default=32)
    add_method_arguments(p)
    p.add_argument("--eval-batch-size", type=positive_int, default=500)
    p.add_argument("--retrain", action="store_true", help="ignore a cached checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")
    add_device_arguments(p)
    add_export_argument(p, converted=True)


def _build(args: argparse.Namespace, train) -> torch.nn.Module:
    return create_model("lenet5", in_channels=train[0].shape[1], num_classes=10, act=args.activation, levels=args.levels,
                        pool=args.pool)


def _train_or_load(args: argparse.Namespace, out: Path, train, test,
                   device: torch.device | None = None) -> tuple[torch.nn.Module, list, bool]:
    model = _build(args, train)
    ckpt = out / "lenet5.pt" if args.activation == "relu" else out / f"lenet5-qcfs-L{args.levels}.pt"
    config = {k: getattr(args, k) for k in TRAIN_KEYS}
    if args.activation != "relu":
        config.update(activation=args.activation, levels=args.levels)
    if args.val_split:
        config["val_split"] = args.val_split  # another training set (absent: the full one, as before)
    if args.pool != "max":
        config["pool"] = args.pool  # another network (absent: max-pooling, as before)
    if distributed.world_size() > 1 and not getattr(args, "sync_bn", False):
        config["bn_processes"] = distributed.world_size()  # BatchNorm over each process's share of a batch
    if ckpt.exists() and not args.retrain:
        try:
            payload = load_checkpoint(ckpt, required=("model", "config", "history"))
            if payload["config"] == config:
                load_state(model, payload["model"], ckpt)
                model.to(device or "cpu").eval()
                print(f"loaded trained LeNet5 from {ckpt} (same training config)")
                return model, list(payload["history"]), True
            print(f"{ckpt} was trained with another config; training again")
        except CheckpointError as exc:
            print(f"warning: {exc}; training again")
    torch.manual_seed(args.seed)
    model = _build(args, train)
    history = train_classifier(
        model, train, test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        augment_shift=args.augment_shift, seed=args.seed, progress=not args.no_progress, device=device,
        sync_bn=getattr(args, "sync_bn", False),
    )
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": config, "history": history})
    return model, history, False


def _train_note(m: dict[str, Any]) -> str:
    return "loaded from cache" if m["checkpoint_reused"] else f"{m['train_seconds']:.0f} s"


def _split_words(m: dict[str, Any]) -> str:
    return "held-out validation" if m.get("eval_split") == "val" else "test"


def _report(m: dict[str, Any]) -> str:
    acc = m["snn_accuracy"]
    T = len(acc)
    shown = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if t <= T]
    if T not in shown:
        shown.append(T)
    lines = [
        "# LeNet5 ANN → SNN conversion",
        "",
        f"Command: `{m['command']}`",
        "",
        f"Dataset: **{m['dataset']}** ({m['n_train']} train / {m['n_test']} {_split_words(m)} images). "
        f"ANN {_split_words(m)} accuracy: **{m['ann_accuracy']:.4f}**.",
        "",
        f"Method: **{m.get('method', 'percentile thresholds')}**. Conversion: "
        + ", ".join(f"{k}={v}" for k, v in m["conversion"].items()),
        "",
        "| T | SNN accuracy | SNN − ANN (pt) |",
        "|---:|---:|---:|",
    ]
    for t in shown:
        a = acc[str(t)]
        lines.append(f"| {t} | {a:.4f} | {100 * (a - m['ann_accuracy']):+.2f} |")
    drop = m.get("largest_drop_after_T16")
    if drop and T > 16:
        where = (f" (T={drop['peak_step']} → T={drop['low_step']})" if drop["peak_step"] else "")
        lines += ["", f"Largest fall below an earlier step from T=16 on: {100 * drop['drop']:.2f} pt{where}."]
    stats = m.get("spike_stats")
    if stats:
        lines += ["", "## Spikes, synaptic operations and energy (estimate)", "", *spike_stats_table(stats, steps=shown),
                  "", "![spike statistics](spike_stats.png)"]
    if m.get("nir_export"):
        lines += ["", f"NIR graph written to `{m['nir_export']['path']}` (thresholds: {m['nir_export'].get('thresholds')})."]
    lines += [
        "",
        "![accuracy vs T](accuracy_vs_T.png)",
        "",
        "## Firing rates (spikes per neuron per step, over the test set)",
        "",
        "| layer | rate |",
        "|---|---:|",
        *[f"| {k} | {v:.4f} |" for k, v in m["firing_rates"].items()],
        "",
        f"Speed on this machine ({m['environment']['threads']} threads): ANN "
        f"{m['ann_images_per_second']:.0f} images/s; SNN at T={T} {m['snn_images_per_second']:.0f} images/s.",
        "",
        f"Training: {m['epochs']} epochs ({_train_note(m)}).",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    method_options(args)  # bad method options fail before any work
    device = device_of(args)
    out = prepare_out_dir(args.out)
    torch.manual_seed(args.seed)
    train, test, _classes = load_split_tensors(args.dataset, args.data_dir, args.val_split)
    require_images(args.dataset, args.data_dir, train, test, model="lenet5", shape=(1, 28, 28), num_classes=10)
    options = _conversion_options(args)
    check_exportable(args, lambda: convert(_build(args, train).eval(), train[0][:64], batch_size=64, max_batches=1,
                                           **options), (1, 28, 28))
    t0 = time.perf_counter()
    model, history, reused = _train_or_load(args, out, train, test, device)
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    ann_acc, _ = evaluate_classifier(model, *test, batch_size=args.eval_batch_size)
    ann_ips = len(test[1]) / (time.perf_counter() - t0)

    gen = torch.Generator().manual_seed(args.seed)
    calib_idx = torch.randperm(len(train[1]), generator=gen)[: 256 * args.calib_batches]
    # converted on the CPU (calibration is a few batches), evaluated on the device
    snn = convert(model.cpu(), train[0][calib_idx], batch_size=256, max_batches=args.calib_batches, **options)
    snn.to(device)
    res = evaluate_snn(snn, *test, args.T, batch_size=args.eval_batch_size, progress=not args.no_progress)
    snn_acc = {str(t + 1): a for t, a in enumerate(res["accuracy"])}

    metrics: dict[str, Any] = {
        "experiment": "lenet5-convert",
        "command": command_line(),
        "dataset": args.dataset,
        "n_train": len(train[1]),
        "n_test": len(test[1]),
        "eval_split": eval_split_name(args.val_split),
        "epochs": args.epochs,
        "ann_accuracy": ann_acc,
        "snn_accuracy": snn_acc,
        "largest_drop_after_T16": largest_drop([float(a) for a in res["accuracy"]], start=16),
        "firing_rates": res["firing_rates"],
        "conversion": options,
        "method": method_name(options, args.activation, args.levels),
        "activation": args.activation,
        "ann_images_per_second": ann_ips,
        "snn_images_per_second": res["images_per_second"],
        "snn_seconds": res["seconds"],
        "train_seconds": train_seconds,
        "checkpoint_reused": reused,
        "history": history,
        "environment": environment(),
        "spike_stats": res["spike_stats"],
        **parallel_info(device),
    }
    if args.pool != "max":
        metrics["pool"] = args.pool
    if getattr(snn, "e2e_report", None):
        metrics["e2e_report"] = snn.e2e_report
    nir_export = export_file(args, snn.cpu(), (1, 28, 28))
    if nir_export:
        metrics["nir_export"] = nir_export
    plot_spike_stats(res["spike_stats"], out / "spike_stats.png", title=f"LeNet5 on {args.dataset}: converted SNN")
    plot_accuracy_vs_T(
        {f"SNN ({args.maxpool} max-pool)" if args.pool == "max" else "SNN (average pooling)": res["accuracy"]},
        out / "accuracy_vs_T.png",
        ann_accuracy=ann_acc, title=f"LeNet5 on {args.dataset}: converted SNN",
    )
    plot_bars(res["firing_rates"], out / "firing_rates.png", title="firing rate per layer", ylabel="spikes / neuron / step")
    if history:
        plot_history(history, out / "training_curves.png", title="LeNet5 (ANN) training")
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", _report(metrics))
    T = args.T
    print(f"ANN accuracy {ann_acc:.4f}; SNN accuracy " + ", ".join(
        f"T={t}: {snn_acc[str(t)]:.4f}" for t in (8, 16, 32, 64, 128, 256) if t <= T
    ) + (f", T={T}: {snn_acc[str(T)]:.4f}" if T not in (8, 16, 32, 64, 128, 256) else ""))
    print(f"wrote {out / 'metrics.json'}, {out / 'report.md'}, {out / 'accuracy_vs_T.png'}")
    return metrics


def _conversion_options(args: argparse.Namespace) -> dict[str, Any]:
    options = dict(
        percentile=args.percentile, per_channel=args.per_channel, maxpool=args.maxpool,
        max_spikes=args.max_spikes, reset=args.reset, v_init=args.v_init,
    )
    if args.split_threshold:
        options["split_threshold"] = True
    options.update(method_options(args))
    return options


EXPERIMENT = Experiment(
    name="lenet5-convert",
    description="train LeNet5 (seeds 000/001), convert it to an SNN, accuracy at every step",
    add_arguments=add_arguments,
    run=run,
)
