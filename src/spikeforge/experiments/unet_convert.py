"""``spikeforge run unet-convert``: UNet mitochondria segmentation converted to an SNN (seed 003).

Train a UNet on random patches (BCE + Dice), evaluate it on whole test slices, convert
it with the graph converter (concat, transposed conv, max-pool, BN folding) and
evaluate the SNN after T = 1, 2, 4, …, 256 steps. The SNN output stays analog: the
prediction after t steps is ``σ(mean of the first t output logits)`` (one sigmoid,
not a sum of per-step sigmoids as in the seed).

Writes into ``--out``: ``metrics.json`` (``ann``: accuracy/dice/jaccard/f1 on the
slices the SNN is evaluated on; ``snn``: the same per time step as a string;
``ann_full_test`` on every evaluated test slice; timings, options), ``report.md``,
``dice_vs_T.png``, ``training_loss.png``, ``slice_NNN.png`` (raw, label, ANN, SNN
side by side) and the resumable checkpoint ``unet.pt``.

Defaults are sized to finish well within 15 minutes on 2 idle CPU cores (measured:
about 6 minutes): 165 + 165 generated slices (~25 s), a UNet of width 8 and depth 3
(121k parameters; channels-last convolutions), 600 steps of 8 patches of 128² (~75 s),
the ANN on all 165 test slices (~0.1 s each), and the SNN — the expensive part, one
dense network pass per step — on 3 full test slices spread over the stack for 256
steps (~75 s each). Conversion: per-layer 99th-percentile thresholds with burst
spikes (Γ = 3), which matches the ANN from about 16 steps on.
``--quick`` uses 4 + 2 slices of 96×160, 60 steps and T = 32 (a few seconds).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from spikeforge._native.memory import keep_freed_memory
from spikeforge.convert import convert
from spikeforge.data.segmentation import SEGMENTATION_DATASETS, PatchSampler, load_segmentation
from spikeforge.evaluate_segmentation import (
    SpikeCounter,
    evaluate_ann_segmentation,
    evaluate_snn_segmentation,
    power_of_two_steps,
)
from spikeforge.errors import ConfigError
from spikeforge.experiments.common import (
    command_line, environment, integer, learning_rate, nonnegative_float, nonnegative_int, percentile_value,
    positive_int, prepare_out_dir, seed_int, unit_interval,
)
from spikeforge.experiments.registry import Experiment
from spikeforge.io import write_json, write_text
from spikeforge.metrics.segmentation import METRIC_KEYS, SegmentationScores
from spikeforge.models import create_model
from spikeforge.plots import plot_bars, plot_curves, plot_metrics_vs_steps, plot_segmentation_panels
from spikeforge.train.segmentation import train_segmenter

#: Defaults of the full run and of ``--quick`` (tiny data for tests); explicit options win.
DEFAULTS: dict[str, Any] = dict(
    train_slices=165, test_slices=165, slice_h=768, slice_w=1024, width=8, depth=3, steps=600,
    batch_size=8, patch=128, lr=3e-3, T=256, snn_slices=3, ann_slices=0, tile=1024, overlap=32,
    calib_batches=16, examples=3, threads=0,
)
QUICK: dict[str, Any] = dict(
    train_slices=4, test_slices=2, slice_h=96, slice_w=160, width=8, depth=3, steps=60,
    batch_size=4, patch=64, lr=1e-2, T=32, snn_slices=1, ann_slices=0, tile=96, overlap=16,
    calib_batches=2, examples=1, threads=1,
)
#: Seed 003's SNN Dice ("accuracy") on Lucchi, for reference in the report.
SEED_DICE = {2: 0.1035, 4: 0.2891, 8: 0.3449, 16: 0.4572, 32: 0.5919, 64: 0.7038, 128: 0.7789, 256: 0.8232}
SEED_ANN = {"dice": 0.8621, "accuracy": 0.9855, "jaccard": 0.7963, "f1": 0.8866}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthetic-em", choices=SEGMENTATION_DATASETS)
    p.add_argument("--data-dir", default=None, help="folder with the Lucchi files")
    p.add_argument("--out", default="runs/unet-convert")
    p.add_argument("--quick", action="store_true", help="tiny data and model (seconds; for tests)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the synthetic data and of training")
    p.add_argument("--train-slices", type=positive_int, default=None, help="training slices (synthetic: generated)")
    p.add_argument("--test-slices", type=positive_int, default=None, help="test slices (synthetic: generated)")
    p.add_argument("--width", type=integer(1, 1024), default=None, help="UNet channels of the first level")
    p.add_argument("--depth", type=integer(1, 12), default=None, help="UNet down-samplings")
    p.add_argument("--up", choices=("transpose", "nearest", "bilinear"), default="transpose")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (batches)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--patch", type=positive_int, default=None, help="training patch size")
    p.add_argument("--lr", type=learning_rate, default=None)
    p.add_argument("--dice-weight", type=nonnegative_float, default=1.0, help="loss = BCE + w·(1 − soft Dice)")
    p.add_argument("--T", type=integer(1, 100_000), default=None, help="evaluate the SNN at 1, 2, 4, ..., T steps")
    p.add_argument("--snn-slices", type=positive_int, default=None, help="test slices the SNN is run on")
    p.add_argument("--ann-slices", type=nonnegative_int, default=None, help="test slices for the ANN (0 = all)")
    p.add_argument("--tile", type=nonnegative_int, default=None, help="inference window (0 = whole slice)")
    p.add_argument("--overlap", type=nonnegative_int, default=None, help="context kept around each tile")
    p.add_argument("--percentile", type=percentile_value, default=99.0)
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=False,
                   help="per-channel thresholds (default: one per layer)")
    p.add_argument("--max-spikes", type=integer(1, 1024), default=3, help="burst spikes Γ per step")
    p.add_argument("--v-init", type=unit_interval, default=0.5, help="initial membrane / threshold, in [0, 1]")
    p.add_argument("--calib-batches", type=positive_int, default=None, help="calibration batches of 8 patches")
    p.add_argument("--examples", type=nonnegative_int, default=None, help="side-by-side images to save")
    p.add_argument("--threads", type=integer(0, 1024), default=None,
                   help="CPU threads (0 = PyTorch's default; --quick uses 1: its tensors are tiny)")
    p.add_argument("--retrain", action="store_true", help="ignore a cached checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if args.quick else DEFAULTS
    cfg = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in base.items()}
    if args.dataset == "lucchi" and not args.quick:
        cfg["train_slices"] = args.train_slices  # None = all slices in the files
        cfg["test_slices"] = args.test_slices
    return cfg


def _check_geometry(cfg: dict[str, Any], slice_shape: tuple[int, int] | None = None) -> None:
    """The UNet halves its input ``depth`` times: patches must be multiples of 2^depth and fit the slices."""
    m = 2 ** cfg["depth"]
    if cfg["patch"] % m:
        raise ConfigError(
            f"--patch {cfg['patch']} does not fit --depth {cfg['depth']}: the UNet halves its input "
            f"{cfg['depth']} times, so patches must be a multiple of 2^{cfg['depth']} = {m} pixels; "
            f"lower --depth or choose --patch {max(m, cfg['patch'] - cfg['patch'] % m)}"
        )
    if slice_shape is not None and cfg["patch"] > min(slice_shape):
        raise ConfigError(f"--patch {cfg['patch']} is larger than the slices ({slice_shape[0]}×{slice_shape[1]})")


def _load(args: argparse.Namespace, cfg: dict[str, Any]):
    shape = (cfg["slice_h"], cfg["slice_w"])
    train = load_segmentation(args.dataset, "train", data_dir=args.data_dir, n_slices=cfg["train_slices"],
                              slice_shape=shape, seed=args.seed)
    test = load_segmentation(args.dataset, "test", data_dir=args.data_dir, n_slices=cfg["test_slices"],
                             slice_shape=shape, seed=args.seed)
    return train, test


def _log(msg: str) -> None:
    print(msg, flush=True)


def _table(m: dict[str, Any]) -> list[str]:
    ann = m["ann"]
    lines = [
        "| | T | Dice | accuracy | Jaccard | F1 | soft Dice | Jaccard − ANN | seed 003 Dice |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| ANN | – | {ann['dice']:.4f} | {ann['accuracy']:.4f} | {ann['jaccard']:.4f} | {ann['f1']:.4f} | "
        f"{ann['soft_dice']:.4f} | | {SEED_ANN['dice']:.4f} |",
    ]
    for t, s in m["snn"].items():
        seed = SEED_DICE.get(int(t))
        lines.append(
            f"| SNN | {t} | {s['dice']:.4f} | {s['accuracy']:.4f} | {s['jaccard']:.4f} | {s['f1']:.4f} | "
            f"{s['soft_dice']:.4f} | {s['jaccard'] - ann['jaccard']:+.4f} | {'' if seed is None else f'{seed:.4f}'} |"
        )
    return lines


def _report(m: dict[str, Any]) -> str:
    full = m["ann_full_test"]
    tm = m["timings"]
    c = m["config"]
    trained = "loaded from the checkpoint" if m["checkpoint_reused"] else f"{tm['train_seconds']:.0f} s"
    lines = [
        "# UNet segmentation → spiking network (seed 003)",
        "",
        f"Command: `{m['command']}`",
        "",
        f"Data: **{m['dataset']}**, {m['n_train']} training and {m['n_test']} test slices of "
        f"{m['slice_shape'][0]}×{m['slice_shape'][1]} (foreground {100 * m['foreground_fraction']:.1f} % of the "
        f"test pixels).",
        f"Model: UNet width {c['width']}, depth {c['depth']}, up-sampling `{c['up']}` "
        f"({m['parameters']:,} parameters), trained {c['steps']} steps × {c['batch_size']} patches of "
        f"{c['patch']}² with BCE + {c['dice_weight']}·(1 − soft Dice) "
        f"({trained}).",
        "",
        f"ANN on all {m['ann_full_test_slices']} evaluated test slices: accuracy {full['accuracy']:.4f}, "
        f"Dice {full['dice']:.4f}, Jaccard **{full['jaccard']:.4f}**, F1 {full['f1']:.4f}.",
        "",
        f"Conversion: " + ", ".join(f"{k}={v}" for k, v in m["conversion"].items()) + ".",
        f"The SNN runs on test slices {m['snn_slices']} (full slices, windows of {c['tile'] or 'the whole slice'} "
        f"px with {c['overlap']} px overlap); the ANN row below is measured on the same slices. "
        "Its output layer stays analog: the prediction after T steps is σ(mean logit over the first T steps), "
        "binarized at 0.5.",
        "",
        *_table(m),
        "",
        "Dice is the per-slice Dice of the binarized prediction, averaged over slices; accuracy, Jaccard and F1 "
        "are pooled over all pixels; soft Dice uses the probabilities (seed 003's \"accuracy\" column, measured "
        "there on Lucchi with a sigmoid applied to every step and summed — shown for reference only).",
        "",
        "![Dice vs T](dice_vs_T.png)",
        "",
        *[f"![slice {i}]({name})" for i, name in m["example_images"].items()],
        "",
        f"Speed on this machine ({m['environment']['threads']} threads): ANN {tm['ann_seconds_per_slice']:.2f} s "
        f"per slice; SNN {tm['snn_seconds_per_slice']:.1f} s per slice for {max(int(t) for t in m['snn'])} steps. "
        f"Wall time of the whole run: {tm['total_seconds']:.0f} s (data {tm['data_seconds']:.0f} s, "
        f"training {tm['train_seconds']:.0f} s, ANN evaluation {tm['ann_seconds']:.0f} s, "
        f"SNN evaluation {tm['snn_seconds']:.0f} s); CPU time of the process {tm['total_cpu_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = _resolve(args)["threads"]
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(before)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    # Reuse freed activation buffers instead of page-faulting fresh ones at every step
    # (1.5x faster SNN steps on full slices; the peak stays far below 4 GB).
    keep_freed_memory()
    cfg = _resolve(args)
    _check_geometry(cfg)
    out = prepare_out_dir(args.out)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    train, test = _load(args, cfg)
    _check_geometry(cfg, train.slice_shape)
    data_seconds = time.perf_counter() - t0
    _log(f"data: {len(train)} train / {len(test)} test slices of {train.slice_shape} ({data_seconds:.1f} s)")

    model_kw = dict(width=cfg["width"], depth=cfg["depth"], up=args.up)
    model = create_model("unet", **model_kw)
    train_cfg = dict(
        dataset=args.dataset, seed=args.seed, train_slices=len(train), slice_shape=list(train.slice_shape),
        model=model_kw, steps=cfg["steps"], batch_size=cfg["batch_size"], patch=cfg["patch"], lr=cfg["lr"],
        dice_weight=args.dice_weight,
    )
    ckpt = out / "unet.pt"
    if args.retrain and ckpt.exists():
        ckpt.unlink()
    sampler = PatchSampler(train, cfg["patch"], seed=args.seed)
    t0 = time.perf_counter()
    history, reused = train_segmenter(
        model, sampler, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
        dice_weight=args.dice_weight, seed=args.seed, checkpoint=ckpt, config=train_cfg,
        log_every=max(1, min(50, cfg["steps"] // 10)), progress=not args.no_progress, channels_last=True,
        on_log=lambda r: _log(f"step {r['step']}: loss {r['loss']:.4f} ({r['seconds']:.0f} s)"),
    )
    train_seconds = time.perf_counter() - t0
    model.eval()

    tile, overlap, multiple = cfg["tile"], cfg["overlap"], 2 ** cfg["depth"]
    n_ann = len(test) if cfg["ann_slices"] <= 0 else min(cfg["ann_slices"], len(test))
    n_snn = min(cfg["snn_slices"], len(test))
    snn_idx = [round(k * (len(test) - 1) / max(1, n_snn - 1)) for k in range(n_snn)] if n_snn > 1 else [0]
    ann_idx = sorted(set(range(n_ann)) | set(snn_idx))
    ann_logits: dict[int, torch.Tensor] = {}
    examples = set(snn_idx[: max(0, cfg["examples"])])

    def keep_ann(i: int, logits: torch.Tensor) -> None:
        if i in snn_idx:
            ann_logits[i] = logits

    ann_full, ann_seconds = evaluate_ann_segmentation(
        model, test, ann_idx, tile=tile, overlap=overlap, multiple=multiple, channels_last=True, on_slice=keep_ann,
    )
    same = SegmentationScores()
    for i in snn_idx:
        same.add(ann_logits[i], test.mask(i))
    ann_same = same.result()
    _log(f"ANN on {len(ann_idx)} test slices: " + ", ".join(f"{k} {ann_full[k]:.4f}" for k in METRIC_KEYS)
         + f" ({ann_seconds / len(ann_idx):.2f} s/slice)")

    calib_sampler = PatchSampler(train, cfg["patch"], seed=args.seed + 7919, augment=False)
    calib = [calib_sampler.batch(b, 8)[0] for b in range(cfg["calib_batches"])]
    options = dict(percentile=args.percentile, per_channel=args.per_channel, max_spikes=args.max_spikes,
                   v_init=args.v_init, maxpool="lipool", channels_last=True)
    snn = convert(model, calib, max_batches=None, **options)

    steps = power_of_two_steps(cfg["T"])
    counter = SpikeCounter()
    example_images: dict[int, str] = {}
    show_t = 32 if 32 in steps else steps[-1]

    def on_snn_slice(i: int, mean_logits: torch.Tensor) -> None:
        if i not in examples:
            return
        name = f"slice_{i:03d}.png"
        panels = {
            "raw": test.image(i)[0, 0].numpy(),
            "label": test.mask(i)[0, 0].float().numpy(),
            "ANN": (ann_logits[i][0, 0] > 0).float().numpy(),
            f"SNN T={show_t}": (mean_logits[steps.index(show_t), 0, 0] > 0).float().numpy(),
        }
        if steps[-1] != show_t:
            panels[f"SNN T={steps[-1]}"] = (mean_logits[-1, 0, 0] > 0).float().numpy()
        plot_segmentation_panels(panels, out / name, title=f"{test.name} slice {i}")
        example_images[i] = name

    snn_scores, snn_seconds = evaluate_snn_segmentation(
        snn, test, snn_idx, steps, tile=tile, overlap=overlap, multiple=multiple, counter=counter,
        count_slices=1, on_slice=on_snn_slice, progress=_log,
    )
    snn_metrics = {str(t): snn_scores[t] for t in steps}
    for t in steps:
        s = snn_scores[t]
        _log(f"SNN T={t}: " + ", ".join(f"{k} {s[k]:.4f}" for k in METRIC_KEYS)
             + f" (Jaccard − ANN {s['jaccard'] - ann_same['jaccard']:+.4f})")

    rates = counter.rates()
    metrics: dict[str, Any] = {
        "experiment": "unet-convert",
        "command": command_line(),
        "dataset": args.dataset,
        "quick": bool(args.quick),
        "n_train": len(train),
        "n_test": len(test),
        "slice_shape": list(test.slice_shape),
        "foreground_fraction": test.foreground_fraction,
        "ann": ann_same,
        "snn": snn_metrics,
        "snn_slices": snn_idx,
        "ann_full_test": ann_full,
        "ann_full_test_slices": len(ann_idx),
        "config": {**cfg, "up": args.up, "dice_weight": args.dice_weight, "seed": args.seed},
        "parameters": sum(p.numel() for p in model.parameters()),
        "conversion": options,
        "firing_rates": rates,
        "mean_firing_rate": sum(rates.values()) / max(1, len(rates)),
        "checkpoint_reused": reused,
        "history": history,
        "example_images": {str(k): v for k, v in sorted(example_images.items())},
        "environment": environment(),
    }
    metrics["timings"] = {
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        "ann_seconds": ann_seconds,
        "ann_seconds_per_slice": ann_seconds / len(ann_idx),
        "snn_seconds": snn_seconds,
        "snn_seconds_per_slice": snn_seconds / len(snn_idx),
        "total_seconds": time.perf_counter() - t_start,
        "total_cpu_seconds": time.process_time() - cpu_start,
    }
    plot_metrics_vs_steps(
        {"SNN Dice": {t: snn_scores[t]["dice"] for t in steps},
         "SNN Jaccard": {t: snn_scores[t]["jaccard"] for t in steps}},
        out / "dice_vs_T.png",
        references={"ANN Dice": ann_same["dice"], "ANN Jaccard": ann_same["jaccard"]},
        title=f"UNet on {args.dataset}: converted SNN (slices {snn_idx})",
    )
    if history:
        plot_curves({"BCE + Dice loss": [h["loss"] for h in history]}, out / "training_loss.png",
                    xlabel=f"logged interval ({history[0]['step']} steps)", ylabel="loss", title="UNet training")
    if rates:
        plot_bars(rates, out / "firing_rates.png", title="firing rate per layer (first SNN slice)",
                  ylabel="spikes / neuron / step")
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", _report(metrics))
    _log(f"wrote {out / 'metrics.json'}, {out / 'report.md'}, {out / 'dice_vs_T.png'} "
         f"({metrics['timings']['total_seconds']:.0f} s)")
    return metrics


EXPERIMENT = Experiment(
    name="unet-convert",
    description="train a UNet on EM mitochondria (seed 003), convert it to an SNN, Dice/Jaccard per T",
    add_arguments=add_arguments,
    run=run,
)
