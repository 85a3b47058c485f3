"""``spikeforge run unet-convert``: UNet mitochondria segmentation converted to an SNN (seed 003).

Train a UNet on random augmented patches (BCE + Dice), evaluate it on whole slices,
convert it with the graph converter (concat, transposed conv, max-pool, BN folding)
and evaluate the SNN. The SNN output stays analog: the prediction after t steps is
``σ(mean of the first t output logits)`` (one sigmoid, not a sum of per-step sigmoids
as in the seed).

Evaluated slices: the test split, or with ``--val-slices N`` the last N training slices
(held out from training; ``metrics.json`` lists them). The ANN runs on every evaluated
slice; the SNN runs on every evaluated slice at the headline ``--T`` (default 32),
and up to ``--curve-T`` steps (1, 2, 4, …) on ``--curve-slices`` slices spread over
the stack, for the accuracy-vs-T curve.

Writes into ``--out``: ``metrics.json``, ``report.md``, ``dice_vs_T.png``,
``training_loss.png``, ``slice_NNNN.png`` (raw, label, ANN, SNN side by side for the
first ``--examples`` curve slices), with ``--save-masks`` ``masks/ann/NNNN.png`` and
``masks/snn_T{T}/NNNN.png`` (binarized 0/255 masks of every evaluated slice, NNNN the
slice's index in its split), and the resumable checkpoint ``unet.pt``.

``metrics.json`` keys: ``ann`` (accuracy/dice/jaccard/f1/soft_dice of the ANN on the
curve slices) and ``snn`` (the same for the SNN per step, as before); ``snn_headline``
and ``ann_headline`` (SNN at ``--T`` and ANN on every SNN-evaluated slice,
``snn_headline_slices``); ``ann_full_test`` (the ANN on every evaluated slice, test or
validation); ``eval_split`` (``"test"``/``"val"``), ``eval_slices``, ``val_slices``,
``curve_slices`` (= ``snn_slices``); timings and options.

Defaults per dataset (explicit options win):

- ``synthetic-em``: 165 + 165 generated slices, a UNet of width 8 and depth 3 (121k
  parameters), 600 steps of 8 patches of 128², fp32 training (~75 s on 2 cores).
- ``lucchi``: the real-EM recipe (:data:`LUCCHI`), chosen by short comparisons on
  held-out Lucchi++ training slices (``benchmarks/RESULTS.md``, issue 13): width 16,
  depth 4, 2,000 steps of 8 patches of 256², bf16 training, and QCFS activations (L=8)
  whose learnt ceilings become the thresholds, converted with Γ = 3 burst spikes at
  threshold λ/3, SNN convolutions in bfloat16 (within 0.0002 Jaccard of the ANN at T=32
  on 20 held-out slices, float32 or bf16; ``--activation relu --no-split-threshold``
  gives the plain ReLU net and p99 thresholds, ``--no-snn-bf16`` a float32 SNN).
- ``--quick``: 4 + 2 slices of 96×160, 60 steps, T = 32 (a few seconds; for tests).

Conversion of ReLU nets: per-layer 99th-percentile thresholds (from ``--calib-patch``
patches) with burst spikes (Γ = 3, room above λ), which matches the synthetic-set ANN
from about 16 steps on. ``--snn-bf16`` runs the SNN's convolutions
in bfloat16 (membranes and sums stay float32; float32 is the reference).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from spikeforge import distributed
from spikeforge._native.memory import keep_freed_memory
from spikeforge.convert import convert
from spikeforge.data.segmentation import SEGMENTATION_DATASETS, PatchSampler, SegmentationSet, load_segmentation
from spikeforge.evaluate_segmentation import (
    SpikeCounter,
    evaluate_ann_segmentation,
    evaluate_snn_segmentation,
    power_of_two_steps,
)
from spikeforge.errors import CheckpointError, ConfigError
from spikeforge.experiments.common import (
    add_device_arguments, add_method_arguments, command_line, device_of, environment, fraction, integer,
    learning_rate, method_name, method_options, nonnegative_float, nonnegative_int, parallel_info, percentile_value,
    positive_int, prepare_out_dir, seed_int, unit_interval,
)
from spikeforge.experiments.registry import Experiment
from spikeforge.io import atomic_write, write_json, write_text
from spikeforge.metrics.segmentation import METRIC_KEYS, SegmentationScores
from spikeforge.metrics.spikes import spike_stats_table
from spikeforge.models import create_model
from spikeforge.nir.cli import add_export_argument, check_exportable, export_file
from spikeforge.plots import plot_bars, plot_curves, plot_metrics_vs_steps, plot_segmentation_panels, plot_spike_stats
from spikeforge.precision import recipe_bf16
from spikeforge.train.checkpoint import load_checkpoint
from spikeforge.train.segmentation import SCHEDULES, train_segmenter

#: Defaults of the synthetic run, of the Lucchi run and of ``--quick``; explicit options win.
#: ``T``: the headline step count (SNN on every evaluated slice); ``curve_T``: the longest
#: run of the per-T curve on ``curve_slices`` slices; ``snn_slices`` 0 = all evaluated slices.
DEFAULTS: dict[str, Any] = dict(
    train_slices=165, test_slices=165, val_slices=0, slice_h=768, slice_w=1024, width=8, depth=3, steps=600,
    batch_size=8, patch=128, lr=3e-3, schedule="onecycle", warmup=0.1, weight_decay=1e-4, augment=True,
    jitter=0.1, bf16=False, T=32, curve_T=256, curve_slices=3, snn_slices=0, ann_slices=0, tile=1024, overlap=32,
    calib_batches=16, calib_patch=128, examples=3, threads=0, activation="relu", levels=8, max_spikes=3,
    split_threshold=False, snn_bf16=False,
)
#: The real-EM recipe for Lucchi++ (768×1024 slices); see benchmarks/RESULTS.md (issue 13).
LUCCHI: dict[str, Any] = dict(
    DEFAULTS, train_slices=None, test_slices=None, width=16, depth=4, steps=2000, batch_size=8, patch=256,
    lr=3e-3, schedule="cosine", warmup=0.05, bf16=True, activation="qcfs", levels=8, max_spikes=3,
    split_threshold=True, snn_bf16=True,
)
QUICK: dict[str, Any] = dict(
    train_slices=4, test_slices=2, val_slices=0, slice_h=96, slice_w=160, width=8, depth=3, steps=60,
    batch_size=4, patch=64, lr=1e-2, schedule="onecycle", warmup=0.1, weight_decay=1e-4, augment=True, jitter=0.1,
    bf16=False, T=32, curve_T=32, curve_slices=1, snn_slices=0, ann_slices=0, tile=96, overlap=16,
    calib_batches=2, calib_patch=64, examples=1, threads=1, activation="relu", levels=8, max_spikes=3,
    split_threshold=False, snn_bf16=False,
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
    p.add_argument("--val-slices", type=nonnegative_int, default=None, metavar="N",
                   help="hold out the last N training slices, train on the others and evaluate on them "
                        "instead of the test split (0 = use the test split)")
    p.add_argument("--width", type=integer(1, 1024), default=None, help="UNet channels of the first level")
    p.add_argument("--depth", type=integer(1, 12), default=None, help="UNet down-samplings")
    p.add_argument("--up", choices=("transpose", "nearest", "bilinear"), default="transpose")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (batches)")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--patch", type=positive_int, default=None, help="training patch size")
    p.add_argument("--lr", type=learning_rate, default=None)
    p.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="learning rate: onecycle, or linear warm-up then cosine/linear decay or constant")
    p.add_argument("--warmup", type=fraction, default=None, help="warm-up fraction of the steps")
    p.add_argument("--weight-decay", type=nonnegative_float, default=None)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random flips, 90° rotations and brightness/contrast jitter of the patches")
    p.add_argument("--jitter", type=unit_interval, default=None,
                   help="brightness/contrast jitter: gain 1±j, offset ±j/2 (with --augment)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="train under bfloat16 autocast (weights and loss stay float32)")
    p.add_argument("--dice-weight", type=nonnegative_float, default=1.0, help="loss = BCE + w·(1 − soft Dice)")
    p.add_argument("--T", type=integer(1, 100_000), default=None,
                   help="headline number of SNN steps, evaluated on every evaluated slice")
    p.add_argument("--curve-T", type=integer(1, 100_000), default=None,
                   help="the per-T curve runs the SNN 1, 2, 4, ..., curve-T steps (on --curve-slices slices)")
    p.add_argument("--curve-slices", type=positive_int, default=None,
                   help="slices (spread over the stack) the per-T curve is measured on")
    p.add_argument("--snn-slices", type=nonnegative_int, default=None,
                   help="slices the SNN is run on at --T (spread over the stack; 0 = all evaluated slices)")
    p.add_argument("--snn-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="SNN convolutions in bfloat16 (membranes and sums float32; float32 is the reference; "
                        "default: on for --dataset lucchi)")
    p.add_argument("--save-masks", action="store_true",
                   help="write the binarized ANN and SNN (T) masks of every evaluated slice as PNGs into masks/")
    p.add_argument("--ann-slices", type=nonnegative_int, default=None, help="test slices for the ANN (0 = all)")
    p.add_argument("--tile", type=nonnegative_int, default=None, help="inference window (0 = whole slice)")
    p.add_argument("--overlap", type=nonnegative_int, default=None, help="context kept around each tile")
    p.add_argument("--percentile", type=percentile_value, default=99.0)
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=False,
                   help="per-channel thresholds (default: one per layer)")
    p.add_argument("--max-spikes", type=integer(1, 1024), default=None, help="burst spikes Γ per step (default 3)")
    p.add_argument("--split-threshold", action=argparse.BooleanOptionalAction, default=None,
                   help="with Γ > 1, threshold λ/Γ: a finer rate code instead of room above λ "
                        "(default: on for --dataset lucchi)")
    p.add_argument("--v-init", type=unit_interval, default=0.5, help="initial membrane / threshold, in [0, 1]")
    add_method_arguments(p)
    p.set_defaults(activation=None, levels=None)  # per-dataset defaults (lucchi: qcfs, L=8)
    p.add_argument("--calib-batches", type=positive_int, default=None, help="calibration batches of 8 patches")
    p.add_argument("--calib-patch", type=positive_int, default=None,
                   help="side of the calibration patches (default 128, whatever the training patch)")
    p.add_argument("--examples", type=nonnegative_int, default=None, help="side-by-side images to save")
    p.add_argument("--threads", type=integer(0, 1024), default=None,
                   help="CPU threads (0 = PyTorch's default; --quick uses 1: its tensors are tiny)")
    p.add_argument("--retrain", action="store_true", help="ignore a cached checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")
    add_device_arguments(p)
    add_export_argument(p, converted=True)


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if args.quick else LUCCHI if args.dataset == "lucchi" else DEFAULTS
    cfg = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in base.items()}
    if args.dataset == "lucchi" and not args.quick:
        cfg["train_slices"] = args.train_slices  # None = all slices in the files
        cfg["test_slices"] = args.test_slices
    if cfg["schedule"] == "onecycle" and cfg["warmup"] <= 0:
        raise ConfigError("--warmup 0 needs a --schedule other than onecycle (cosine, linear or constant)")
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


def _check_calib_patch(cfg: dict[str, Any], slice_shape: tuple[int, int]) -> None:
    m, p = 2 ** cfg["depth"], cfg["calib_patch"]
    if p % m or p > min(slice_shape):
        raise ConfigError(f"--calib-patch {p} must be a multiple of 2^--depth = {m} and fit the slices "
                          f"({slice_shape[0]}×{slice_shape[1]})")


def _load(args: argparse.Namespace, cfg: dict[str, Any]) -> tuple[SegmentationSet, SegmentationSet, str, list[int]]:
    """``(train, eval set, "test" | "val", index of each evaluated slice in its split)``.

    With ``val_slices`` N the last N training slices are held out (the same slices in
    every run) and the test split is not read.
    """
    shape = (cfg["slice_h"], cfg["slice_w"])
    train = load_segmentation(args.dataset, "train", data_dir=args.data_dir, n_slices=cfg["train_slices"],
                              slice_shape=shape, seed=args.seed)
    n_val = cfg["val_slices"]
    if n_val:
        if n_val >= len(train):
            raise ConfigError(f"--val-slices {n_val} leaves no training slices: the training split has "
                              f"{len(train)} slices")
        first = len(train) - n_val
        held = SegmentationSet(train.images[first:], train.masks[first:], f"{train.name}[{first}:{len(train)}]")
        train = SegmentationSet(train.images[:first], train.masks[:first], f"{train.name}[0:{first}]")
        return train, held, "val", list(range(first, first + n_val))
    test = load_segmentation(args.dataset, "test", data_dir=args.data_dir, n_slices=cfg["test_slices"],
                             slice_shape=shape, seed=args.seed)
    return train, test, "test", list(range(len(test)))


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, first and last included (all when k >= n)."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(j * (n - 1) / (k - 1)) for j in range(k)})


def save_mask(path: Path, logits: torch.Tensor) -> None:
    """The binarized prediction (logit > 0) of one slice ``[..., H, W]`` as a 0/255 8-bit PNG."""
    from PIL import Image

    mask = (logits.reshape(logits.shape[-2:]) > 0).to(torch.uint8).mul_(255).numpy()
    atomic_write(path, lambda tmp: Image.fromarray(mask, mode="L").save(tmp, format="PNG"))


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


def _slices(ids: list[int]) -> str:
    """A list of slice indices, short: runs of consecutive indices as ``a–b``."""
    parts: list[str] = []
    start = prev = None
    for i in ids + [None]:  # type: ignore[list-item]
        if start is not None and (i is None or i != prev + 1):
            parts.append(str(start) if start == prev else f"{start}–{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ", ".join(parts)


def _report(m: dict[str, Any]) -> str:
    full = m["ann_full_test"]
    tm = m["timings"]
    c = m["config"]
    split = "validation" if m["eval_split"] == "val" else "test"
    trained = "loaded from the checkpoint" if m["checkpoint_reused"] else f"{tm['train_seconds']:.0f} s"
    T = m["headline_T"]
    head, ann_head = m["snn_headline"], m["ann_headline"]
    held = (f" The {m['n_test']} validation slices are training slices {_slices(m['val_slices'])} (the last "
            f"{m['n_test']} of the training split, in file order), held out from training; the model never saw "
            "them." if m["eval_split"] == "val" else "")
    training = (f"trained {c['steps']} steps × {c['batch_size']} patches of {c['patch']}² with BCE + "
                f"{c['dice_weight']}·(1 − soft Dice), AdamW lr {c['lr']:g} ({c['schedule']} schedule, warm-up "
                f"{c['warmup']:g}), {'flips, 90° rotations and brightness/contrast jitter ' + format(c['jitter'], 'g') if c['augment'] else 'no augmentation'}"
                f", {'bf16 autocast' if c['bf16'] else 'float32'} ({trained})")
    precision = "bfloat16 convolutions (float32 membranes)" if c["snn_bf16"] else "float32"
    lines = [
        "# UNet segmentation → spiking network (seed 003)",
        "",
        f"Command: `{m['command']}`",
        "",
        f"Data: **{m['dataset']}**, {m['n_train']} training and {m['n_test']} {split} slices of "
        f"{m['slice_shape'][0]}×{m['slice_shape'][1]} (foreground {100 * m['foreground_fraction']:.1f} % of the "
        f"{split} pixels).{held}",
        f"Model: UNet width {c['width']}, depth {c['depth']}, up-sampling `{c['up']}`"
        + (f", QCFS activations (L={c['levels']})" if c.get("activation") == "qcfs" else "") + " "
        f"({m['parameters']:,} parameters), {training}.",
        "",
        f"ANN on all {m['ann_full_test_slices']} evaluated {split} slices: accuracy {full['accuracy']:.4f}, "
        f"Dice {full['dice']:.4f}, Jaccard **{full['jaccard']:.4f}**, F1 {full['f1']:.4f}.",
        "",
        f"Conversion ({method_name(m['conversion'], c.get('activation', 'relu'), c.get('levels'))}, "
        f"Γ={m['conversion']['max_spikes']}): "
        + ", ".join(f"{k}={v}" for k, v in m["conversion"].items()) + f"; SNN in {precision}."
        + "".join(f" `{k}`: {v}." for k, v in m.get("adjusted", {}).items()),
        "The SNN's output layer stays analog: the prediction after T steps is σ(mean logit over the first T "
        "steps), binarized at 0.5. Full slices, windows of "
        f"{c['tile'] or 'the whole slice'} px with {c['overlap']} px overlap.",
        "",
        f"SNN at T={T} on {len(m['snn_headline_slices'])} {split} slices "
        f"({'all' if len(m['snn_headline_slices']) == m['n_test'] else 'slices ' + _slices(m['snn_headline_slices'])}):"
        f" Jaccard **{head['jaccard']:.4f}** (ANN on the same slices {ann_head['jaccard']:.4f}, "
        f"difference {head['jaccard'] - ann_head['jaccard']:+.4f}), Dice {head['dice']:.4f}, "
        f"F1 {head['f1']:.4f}, accuracy {head['accuracy']:.4f}.",
        "",
        f"Per-T curve on {split} slices {m['curve_slices']} (the ANN row is measured on the same slices):",
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
    ]
    if m.get("spike_stats"):
        lines += ["## Spikes, synaptic operations and energy (estimate)", "",
                  f"Counted on the windows of the first curve slice ({m['curve_slices'][0]}); 'per image' is per window.",
                  "", *spike_stats_table(m["spike_stats"], steps=[t for t in (1, 4, 16, 32, 64, 128, 256)
                                                                    if t <= m["curve_T"]]),
                  "", "![spike statistics](spike_stats.png)", ""]
    if m.get("saved_masks"):
        lines += [f"Binarized masks of all {m['saved_masks']['count']} evaluated slices: "
                  f"`{m['saved_masks']['ann']}/NNNN.png` (ANN) and `{m['saved_masks']['snn']}/NNNN.png` "
                  f"(SNN at T={T}), NNNN the slice's index in the {split} split.", ""]
    lines += [
        f"Speed on this machine ({m['environment']['threads']} threads): ANN {tm['ann_seconds_per_slice']:.2f} s "
        f"per slice; SNN {tm['snn_seconds_per_slice_at_T']:.1f} s per slice for {T} steps"
        f" and {tm['snn_seconds_per_slice']:.1f} s per curve slice ({m['curve_T']} steps). "
        f"Wall time of the whole run: {tm['total_seconds']:.0f} s (data {tm['data_seconds']:.0f} s, "
        f"training {tm['train_seconds']:.0f} s, ANN evaluation {tm['ann_seconds']:.0f} s, "
        f"SNN evaluation {tm['snn_seconds']:.0f} s); CPU time of the process {tm['total_cpu_seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _conversion_options(args: argparse.Namespace, cfg: dict[str, Any]) -> dict[str, Any]:
    return dict(percentile=args.percentile, per_channel=args.per_channel, max_spikes=cfg["max_spikes"],
                v_init=args.v_init, maxpool="lipool", channels_last=True, **method_options(args),
                **({"split_threshold": True} if cfg["split_threshold"] else {}))


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = _resolve(args)["threads"]
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(before)


def _stored_bf16(ckpt: Path, train_cfg: dict[str, Any]) -> bool | None:
    """The bf16 setting of a checkpoint that differs from ``train_cfg`` in bf16 alone (else None)."""
    try:
        stored = load_checkpoint(ckpt, required=("config",))["config"]
    except CheckpointError:
        return None  # the training reports it and starts afresh
    if isinstance(stored, dict) and isinstance(stored.get("bf16"), bool) and stored["bf16"] != train_cfg["bf16"] \
            and {**stored, "bf16": train_cfg["bf16"]} == train_cfg:
        return stored["bf16"]
    return None


def _run(args: argparse.Namespace) -> dict[str, Any]:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    # Reuse freed activation buffers instead of page-faulting fresh ones at every step
    # (1.5x faster SNN steps on full slices; the peak stays far below 4 GB).
    keep_freed_memory()
    cfg = _resolve(args)
    _check_geometry(cfg)
    method_options(args)  # bad method options fail before any work
    device = device_of(args)  # so does an unusable --device
    adjusted: dict[str, str] = {}
    for key in ("bf16", "snn_bf16"):  # the recipe's bf16, where the hardware has it
        if getattr(args, key, None) is None and cfg[key]:
            cfg[key], note = recipe_bf16(True, device, option="--" + key.replace("_", "-"))
            if note:
                adjusted[key] = note
                print(f"note ({key}): {note}")
    out = prepare_out_dir(args.out)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    train, test, split, slice_ids = _load(args, cfg)
    _check_geometry(cfg, train.slice_shape)
    if args.calib_patch is None and cfg["calib_patch"] > min(train.slice_shape):
        cfg["calib_patch"] = cfg["patch"]  # small slices: calibrate on training-sized patches
    _check_calib_patch(cfg, train.slice_shape)
    data_seconds = time.perf_counter() - t0
    _log(f"data: {len(train)} train / {len(test)} {split} slices of {train.slice_shape} ({data_seconds:.1f} s)")

    model_kw: dict[str, Any] = dict(width=cfg["width"], depth=cfg["depth"], up=args.up)
    if cfg["activation"] == "qcfs":  # (ReLU nets keep the old key set, so their checkpoints stay valid)
        model_kw.update(act="qcfs", levels=cfg["levels"])
    check_exportable(args, lambda: convert(  # a net NIR cannot express is refused before training
        create_model("unet", **model_kw).eval(), torch.rand(2, 1, cfg["patch"], cfg["patch"]), max_batches=None,
        **_conversion_options(args, cfg)), (1, *train.slice_shape))
    model = create_model("unet", **model_kw)
    train_cfg = dict(
        dataset=args.dataset, seed=args.seed, train_slices=len(train), slice_shape=list(train.slice_shape),
        model=model_kw, steps=cfg["steps"], batch_size=cfg["batch_size"], patch=cfg["patch"], lr=cfg["lr"],
        dice_weight=args.dice_weight, val_slices=cfg["val_slices"], schedule=cfg["schedule"],
        warmup=cfg["warmup"], weight_decay=cfg["weight_decay"], augment=cfg["augment"], jitter=cfg["jitter"],
        bf16=cfg["bf16"],
    )
    if distributed.world_size() > 1 and not getattr(args, "sync_bn", False):
        train_cfg["bn_processes"] = distributed.world_size()  # BatchNorm over each process's share of a batch
    ckpt = out / "unet.pt"
    if args.retrain and ckpt.exists():
        ckpt.unlink()
    if args.bf16 is None and ckpt.exists():  # a stored network keeps the precision it was trained in
        stored = _stored_bf16(ckpt, train_cfg)
        if stored is not None:
            cfg["bf16"] = train_cfg["bf16"] = stored
            adjusted["bf16"] = f"bf16={stored}: the precision {ckpt} was trained in (reused or resumed as it is)"
            print(f"note (bf16): {adjusted['bf16']}")
    sampler = PatchSampler(train, cfg["patch"], seed=args.seed, augment=cfg["augment"], jitter=cfg["jitter"])
    t0 = time.perf_counter()
    history, reused = train_segmenter(
        model, sampler, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
        weight_decay=cfg["weight_decay"], dice_weight=args.dice_weight, seed=args.seed, checkpoint=ckpt,
        config=train_cfg, log_every=max(1, min(50, cfg["steps"] // 10)), progress=not args.no_progress,
        channels_last=True, schedule=cfg["schedule"], warmup=cfg["warmup"], bf16=cfg["bf16"],
        on_log=lambda r: _log(f"step {r['step']}: loss {r['loss']:.4f} ({r['seconds']:.0f} s)"),
        device=device, sync_bn=getattr(args, "sync_bn", False),
    )
    train_seconds = time.perf_counter() - t0
    model.eval()

    # Which slices each figure covers (positions in `test`; slice_ids maps them to the split).
    tile, overlap, multiple = cfg["tile"], cfg["overlap"], 2 ** cfg["depth"]
    n = len(test)
    curve_idx = spread(n, cfg["curve_slices"])
    head_idx = sorted(set(range(n) if cfg["snn_slices"] <= 0 else spread(n, cfg["snn_slices"])) | set(curve_idx))
    n_ann = n if cfg["ann_slices"] <= 0 else min(cfg["ann_slices"], n)
    ann_idx = sorted(set(range(n_ann)) | set(head_idx))
    T, curve_T = cfg["T"], cfg["curve_T"]
    masks_dir = out / "masks"
    ann_dir, snn_dir = masks_dir / "ann", masks_dir / f"snn_T{T}"

    ann_logits: dict[int, torch.Tensor] = {}
    same, ann_head = SegmentationScores(), SegmentationScores()

    def on_ann_slice(i: int, logits: torch.Tensor) -> None:
        if i in curve_idx:
            ann_logits[i] = logits
            same.add(logits, test.mask(i))
        if i in head_idx:
            ann_head.add(logits, test.mask(i))
        if args.save_masks:
            save_mask(ann_dir / f"{slice_ids[i]:04d}.png", logits)

    ann_full, ann_seconds = evaluate_ann_segmentation(
        model, test, ann_idx, tile=tile, overlap=overlap, multiple=multiple, channels_last=True,
        on_slice=on_ann_slice,
    )
    ann_same = same.result()
    _log(f"ANN on {len(ann_idx)} {split} slices: " + ", ".join(f"{k} {ann_full[k]:.4f}" for k in METRIC_KEYS)
         + f" ({ann_seconds / len(ann_idx):.2f} s/slice)")

    calib_sampler = PatchSampler(train, cfg["calib_patch"], seed=args.seed + 7919, augment=False)
    calib = [calib_sampler.batch(b, 8)[0] for b in range(cfg["calib_batches"])]
    options = _conversion_options(args, cfg)
    # converted on the CPU (a few calibration batches), evaluated on the device
    snn = convert(model.cpu(), calib, max_batches=None, **options)
    snn.to(device)

    curve_steps = sorted(set(power_of_two_steps(curve_T)) | {T})
    counter = SpikeCounter(stats=True)  # rates, SOPs and energy on the first curve slice
    example_images: dict[int, str] = {}
    examples = set(curve_idx[: max(0, cfg["examples"])])
    show_t = 32 if 32 in curve_steps and T != 32 else T
    snn_head = SegmentationScores()

    def on_snn_slice(steps: list[int]):
        def record(i: int, mean_logits: torch.Tensor) -> None:
            at_T = mean_logits[steps.index(T)]
            snn_head.add(at_T, test.mask(i))
            if args.save_masks:
                save_mask(snn_dir / f"{slice_ids[i]:04d}.png", at_T)
            if i not in examples:
                return
            name = f"slice_{slice_ids[i]:04d}.png"
            panels = {
                "raw": test.image(i)[0, 0].numpy(),
                "label": test.mask(i)[0, 0].float().numpy(),
                "ANN": (ann_logits[i][0, 0] > 0).float().numpy(),
                f"SNN T={T}": (at_T[0, 0] > 0).float().numpy(),
            }
            if show_t != T:
                panels[f"SNN T={show_t}"] = (mean_logits[steps.index(show_t), 0, 0] > 0).float().numpy()
            if steps[-1] not in (T, show_t):
                panels[f"SNN T={steps[-1]}"] = (mean_logits[-1, 0, 0] > 0).float().numpy()
            plot_segmentation_panels(panels, out / name, title=f"{test.name} slice {slice_ids[i]}")
            example_images[slice_ids[i]] = name
        return record

    snn_scores, curve_seconds = evaluate_snn_segmentation(
        snn, test, curve_idx, curve_steps, tile=tile, overlap=overlap, multiple=multiple, counter=counter,
        count_slices=1, on_slice=on_snn_slice(curve_steps), progress=_log, bf16=cfg["snn_bf16"],
    )
    rest = [i for i in head_idx if i not in curve_idx]
    head_seconds = 0.0
    if rest:
        _, head_seconds = evaluate_snn_segmentation(
            snn, test, rest, [T], tile=tile, overlap=overlap, multiple=multiple, on_slice=on_snn_slice([T]),
            progress=_log, bf16=cfg["snn_bf16"],
        )
    snn_seconds = curve_seconds + head_seconds
    snn_metrics = {str(t): snn_scores[t] for t in curve_steps}
    for t in curve_steps:
        s = snn_scores[t]
        _log(f"SNN T={t} (curve slices): " + ", ".join(f"{k} {s[k]:.4f}" for k in METRIC_KEYS)
             + f" (Jaccard − ANN {s['jaccard'] - ann_same['jaccard']:+.4f})")
    snn_headline, ann_headline = snn_head.result(), ann_head.result()
    _log(f"SNN T={T} on {len(head_idx)} {split} slices: "
         + ", ".join(f"{k} {snn_headline[k]:.4f}" for k in METRIC_KEYS)
         + f" (Jaccard − ANN {snn_headline['jaccard'] - ann_headline['jaccard']:+.4f})")

    rates = counter.rates()
    metrics: dict[str, Any] = {
        "experiment": "unet-convert",
        "command": command_line(),
        "dataset": args.dataset,
        "quick": bool(args.quick),
        "n_train": len(train),
        "n_test": len(test),
        "eval_split": split,
        "eval_slices": [slice_ids[i] for i in range(n)],
        "val_slices": slice_ids if split == "val" else [],
        "slice_shape": list(test.slice_shape),
        "foreground_fraction": test.foreground_fraction,
        "ann": ann_same,
        "snn": snn_metrics,
        "snn_slices": [slice_ids[i] for i in curve_idx],
        "curve_slices": [slice_ids[i] for i in curve_idx],
        "curve_T": curve_T,
        "headline_T": T,
        "snn_headline": snn_headline,
        "ann_headline": ann_headline,
        "snn_headline_slices": [slice_ids[i] for i in head_idx],
        "ann_full_test": ann_full,
        "ann_full_test_slices": len(ann_idx),
        "config": {**cfg, "up": args.up, "dice_weight": args.dice_weight, "seed": args.seed},
        "adjusted": adjusted,
        "parameters": sum(p.numel() for p in model.parameters()),
        "conversion": options,
        "firing_rates": rates,
        "mean_firing_rate": sum(rates.values()) / max(1, len(rates)),
        "checkpoint_reused": reused,
        "history": history,
        "example_images": {str(k): v for k, v in sorted(example_images.items())},
        "environment": environment(),
        **parallel_info(device),
    }
    snn.cpu()
    spike_stats = counter.spike_stats()
    if spike_stats:
        metrics["spike_stats"] = spike_stats
        plot_spike_stats(spike_stats, out / "spike_stats.png", title="UNet SNN: spikes and operations per window "
                         f"(first curve slice, {metrics['curve_slices'][0]})")
    nir_export = export_file(args, snn, (1, *test.slice_shape))
    if nir_export:
        metrics["nir_export"] = nir_export
    if args.save_masks:
        metrics["saved_masks"] = {"ann": str(ann_dir.relative_to(out)), "snn": str(snn_dir.relative_to(out)),
                                  "count": len(head_idx), "ann_count": len(ann_idx)}
    metrics["timings"] = {
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        "ann_seconds": ann_seconds,
        "ann_seconds_per_slice": ann_seconds / len(ann_idx),
        "snn_seconds": snn_seconds,
        "snn_seconds_per_slice": curve_seconds / len(curve_idx),
        "snn_seconds_per_slice_at_T": head_seconds / len(rest) if rest else curve_seconds / len(curve_idx),
        "total_seconds": time.perf_counter() - t_start,
        "total_cpu_seconds": time.process_time() - cpu_start,
    }
    plot_metrics_vs_steps(
        {"SNN Dice": {t: snn_scores[t]["dice"] for t in curve_steps},
         "SNN Jaccard": {t: snn_scores[t]["jaccard"] for t in curve_steps}},
        out / "dice_vs_T.png",
        references={"ANN Dice": ann_same["dice"], "ANN Jaccard": ann_same["jaccard"]},
        title=f"UNet on {args.dataset}: converted SNN ({split} slices {metrics['curve_slices']})",
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
