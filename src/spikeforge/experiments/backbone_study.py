"""``spikeforge study backbones``: VGG and ResNet families converted (seed 003, experiment two).

Seed 003 asked three questions — do residual connections hurt conversion, do larger
ResNets convert better, does supervised pretraining convert better than
self-supervised (CLIP there) — and answered the first with a ResNet18 that fell from
97% to 10%. That collapse came from its converter, which replaced modules by name so
the two call sites of a block's single ``nn.ReLU`` shared one neuron. This study
trains (or loads) each backbone, converts it with per-call-site neurons, evaluates
accuracy after every step, and re-runs ResNet-18 with the seed's shared neuron as an
ablation.

Everything is cached in ``--out``: trained weights in ``models/NAME.pt`` and each
evaluation in ``results/NAME.json`` (reused only when their configuration matches),
so an interrupted study resumes where it stopped.

Outputs: ``metrics.json`` (model name → ``{"ann_accuracy", "snn_accuracy": {t: acc},
...}``, the ablation under its own name), ``study.json`` (configuration, timings),
``architecture.png``, ``size.png``, ``pretraining.png``, ``ablation.png`` and
``report.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from spikeforge.convert import convert
from spikeforge.data import dataset_names
from spikeforge.evaluate import evaluate_snn
from spikeforge.errors import ConfigError, IncompatibleDataError
from spikeforge import distributed
from spikeforge.experiments.common import (
    add_device_arguments, add_method_arguments, add_val_split_argument, command_line, device_of, environment,
    eval_split_name, integer, load_split_tensors, method_name, method_options, parallel_info, positive_int,
    prepare_out_dir, require_images, seed_int,
)
from spikeforge.io import write_json, write_text
from spikeforge.models import create_model
from spikeforge.models.backbones import ACTIVATIONS
from spikeforge.precision import recipe_bf16
from spikeforge.plots import plot_study
from spikeforge.train import CheckpointError, evaluate_classifier, load_checkpoint, save_checkpoint, train_classifier
from spikeforge.train.checkpoint import load_state
from spikeforge.train.simclr import linear_probe, pretrain_simclr


@dataclass(frozen=True)
class Entry:
    """One model of the study: its name, the registered architecture, how it is trained."""

    name: str
    arch: str
    pretraining: str = "supervised"  # supervised | simclr
    shared_neuron: bool = False  # converted with the seed's fault (ablation; reuses `weights_of`)
    weights_of: str | None = None


ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry("vgg11", "vgg11"),
        Entry("vgg13", "vgg13"),
        Entry("vgg16", "vgg16"),
        Entry("vgg18", "vgg18"),  # = ResNet-18 without skips, the seed's VGG18 (and plain-resnet18)
        Entry("resnet18", "resnet18"),
        Entry("resnet34", "resnet34"),
        Entry("resnet50", "resnet50"),
        Entry("resnet101", "resnet101"),
        Entry("plain-resnet34", "plain-resnet34"),
        Entry("plain-resnet50", "plain-resnet50"),
        Entry("plain-resnet101", "plain-resnet101"),
        Entry("resnet18-simclr", "resnet18", pretraining="simclr"),
        Entry("resnet18-shared-neuron", "resnet18", shared_neuron=True, weights_of="resnet18"),
    ]
}
ABLATION = "resnet18-shared-neuron"


@dataclass
class Preset:
    width: float
    epochs: int
    train_limit: int | None
    test_limit: int | None
    T: int
    batch_size: int = 128
    lr: float = 3e-3
    augment_shift: int = 2
    simclr_epochs: int = 10
    simclr_batch_size: int = 256
    probe_epochs: int = 30
    calib_batches: int = 8
    max_spikes: int = 16  # burst spikes Γ with threshold λ/Γ (split): Γ× finer rate code per step
    percentile: float = 99.99
    activation: str = "relu"  # relu: plain ANN + percentile thresholds; qcfs: conversion-aware training
    models: tuple[str, ...] = field(default_factory=lambda: tuple(ENTRIES))
    # supervised training: "adamw" (AdamW, one-cycle) or "sgd" (cifar-convert's backbone recipe:
    # Nesterov SGD, lr 0.2 per 256 images, weight decay 5e-4, label smoothing 0.1, linear warm-up/decay)
    recipe: str = "adamw"
    bf16: bool = False  # train under bfloat16 autocast in the channels-last layout (3-4x on AVX-512 CPUs)
    # the conversion method when the command line names none (--threshold/--correction/--target-T)
    threshold: str = "percentile"
    correction: str = "none"
    target_T: int = 16


PRESETS: dict[str, Preset] = {
    # Narrow models (width 1/8: 8-16-32-64 channels), a 10k-image training subset and
    # 1,000 test images: the whole study in under 90 minutes on 2 CPU cores.
    "cpu": Preset(width=0.125, epochs=3, train_limit=10000, test_limit=1000, T=64, simclr_epochs=5),
    # A first look in about half an hour on 2 CPU cores (CIFAR-10): quarter-width nets trained
    # with the SGD backbone recipe in bf16 on 20k images, binary spikes (Γ=1) converted with
    # MSE thresholds + potential correction, every SNN figure on 2,000 images. The size
    # question gets ResNet-18/34 only; the deeper nets and the plain twins are left to `cpu`/`full`.
    "quick": Preset(width=0.25, epochs=5, train_limit=20000, test_limit=2000, T=64, batch_size=256, lr=0.2,
                    simclr_epochs=3, probe_epochs=20, max_spikes=1, recipe="sgd", bf16=True, threshold="mse",
                    correction="potential", target_T=16,
                    models=("vgg11", "vgg16", "vgg18", "resnet18", "resnet34", "resnet18-simclr", ABLATION)),
    # The paper-scale configuration for a GPU user (full width and data, long schedules).
    "full": Preset(width=1.0, epochs=100, train_limit=None, test_limit=None, T=256, lr=2e-3, augment_shift=4,
                   simclr_epochs=200, probe_epochs=100, calib_batches=32),
    # Seconds: for tests and a first look.
    "smoke": Preset(width=1 / 16, epochs=1, train_limit=256, test_limit=64, T=16, simclr_epochs=1,
                    simclr_batch_size=64, probe_epochs=5, calib_batches=2,
                    models=("vgg11", "vgg18", "resnet18", "resnet18-simclr", ABLATION)),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion-mnist", choices=dataset_names())
    p.add_argument("--data-dir", default=None, help="folder with the dataset files")
    add_val_split_argument(p)
    p.add_argument("--preset", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--out", default="runs/backbones")
    p.add_argument("--models", default=None,
                   help=f"comma-separated subset of: {', '.join(ENTRIES)} (default: the preset's list)")
    p.add_argument("--load", action="append", default=[], metavar="NAME=PATH",
                   help="convert weights from a state dict file instead of training NAME (repeatable)")
    p.add_argument("--epochs", type=integer(1, 1_000_000), default=None, help="override the preset's epochs")
    p.add_argument("--T", type=integer(1, 100_000), default=None, help="override the preset's time steps")
    p.add_argument("--max-spikes", type=integer(1, 1024), default=None, help="burst spikes Γ (override)")
    p.add_argument("--activation", choices=ACTIVATIONS, default=None,
                   help="train with qcfs (quantized clip-floor-shift; converts in few steps) or plain relu "
                        "(thresholds from activation percentiles); default: the preset's (relu)")
    p.add_argument("--levels", type=integer(1, 65536), default=8, help="QCFS quantization levels L")
    add_method_arguments(p, activation=False, preset_defaults=True)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="train under bfloat16 autocast + channels-last (default: the preset's choice, "
                        "where the CPU/GPU computes bfloat16 natively)")
    p.add_argument("--no-progress", action="store_true")
    add_device_arguments(p)


def _preset(args: argparse.Namespace) -> Preset:
    pr = Preset(**asdict(PRESETS[args.preset]))
    if args.epochs is not None:
        pr.epochs = args.epochs
    if args.T is not None:
        pr.T = args.T
    if args.max_spikes is not None:
        pr.max_spikes = args.max_spikes
    if args.activation is not None:
        pr.activation = args.activation
    if args.models is not None:
        names = [n.strip() for n in args.models.split(",") if n.strip()]
        if not names:
            raise ConfigError(f"--models {args.models!r} names no model; give a comma-separated subset of: "
                              f"{', '.join(ENTRIES)}")
        unknown = [n for n in names if n not in ENTRIES]
        if unknown:
            raise ConfigError(f"unknown study model(s) {', '.join(unknown)}; choose from {', '.join(ENTRIES)}")
        pr.models = tuple(names)
    return pr


def study_method(args: argparse.Namespace, preset: Preset) -> dict[str, Any]:
    """convert() keywords of the conversion method: options not given on the command line
    come from the preset (``--threshold percentile`` with a preset that uses ``mse`` is honoured)."""
    given = args.threshold is not None or args.correction is not None
    ns = argparse.Namespace(threshold=args.threshold or ("percentile" if given else preset.threshold),
                            correction=args.correction or ("none" if given else preset.correction),
                            target_T=args.target_T, weight_iters=getattr(args, "weight_iters", 0),
                            weight_refresh=getattr(args, "weight_refresh", 1),
                            e2e_epochs=getattr(args, "e2e_epochs", 0), e2e_lr=getattr(args, "e2e_lr", 1e-4),
                            e2e_weight_lr=getattr(args, "e2e_weight_lr", None))
    if not given and (ns.threshold, ns.correction) != ("percentile", "none") and ns.target_T is None:
        ns.target_T = preset.target_T
    return method_options(ns)


def _parse_loads(items: list[str]) -> dict[str, Path]:
    loads: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--load expects NAME=PATH, got {item!r}")
        if name not in ENTRIES or ENTRIES[name].weights_of is not None:
            raise ConfigError(f"--load: {name!r} is not a trainable study model ({', '.join(ENTRIES)})")
        if not Path(path).is_file():
            raise CheckpointError(f"--load {name}: no such file {path}")
        loads[name] = Path(path)
    return loads


def load_state_dict_file(model: torch.nn.Module, path: Path) -> None:
    """Load external weights (a state dict, or a dict holding one under 'model'/'state_dict')."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read weights from {path} ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    load_state(model, obj, path)


def _subset(data: tuple[torch.Tensor, torch.Tensor], limit: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, class-mixed subset (a seeded permutation) of at most ``limit`` examples."""
    x, y = data
    if limit is None or limit >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit]
    return x[idx], y[idx]


class Study:
    def __init__(self, args: argparse.Namespace, preset: Preset, out: Path) -> None:
        self.args, self.preset, self.out = args, preset, out
        self.device = device_of(args)
        self.sync_bn = bool(getattr(args, "sync_bn", False))
        self.loads = _parse_loads(args.load)
        train, test, self.classes = load_split_tensors(args.dataset, args.data_dir, args.val_split)
        require_images(args.dataset, args.data_dir, train, test, model="the study's backbones",
                       num_classes=len(self.classes))
        if min(train[0].shape[-2:]) < 16:
            raise IncompatibleDataError(f"the study's backbones need images of at least 16×16 pixels; "
                                        f"{args.dataset} has {train[0].shape[-2]}×{train[0].shape[-1]}")
        self.train = _subset(train, preset.train_limit, args.seed)
        self.test = _subset(test, preset.test_limit, args.seed + 1)
        self.in_channels = int(self.train[0].shape[1])
        self.image_size = int(self.train[0].shape[-1])
        self.flip = args.dataset in ("cifar10", "fashion-mnist")
        self.models: dict[str, torch.nn.Module] = {}
        self.timings: dict[str, dict[str, float]] = {}
        self.configs: dict[str, dict[str, Any]] = {}  # the training config of each network in use

    def build(self, entry: Entry) -> torch.nn.Module:
        extra = {"levels": self.args.levels} if self.preset.activation == "qcfs" else {}
        return create_model(entry.arch, in_channels=self.in_channels, num_classes=len(self.classes),
                            width=self.preset.width, image_size=self.image_size, act=self.preset.activation, **extra)

    def train_config(self, entry: Entry) -> dict[str, Any]:
        p = self.preset
        cfg: dict[str, Any] = {
            "arch": entry.arch, "pretraining": entry.pretraining, "dataset": self.args.dataset,
            "width": p.width, "train_limit": p.train_limit, "seed": self.args.seed, "activation": p.activation,
        }
        if self.args.val_split:
            cfg["val_split"] = self.args.val_split  # trained without the held-out images
        if p.activation == "qcfs" and self.args.levels != 8:
            cfg["levels"] = self.args.levels
        if distributed.world_size() > 1 and not self.sync_bn and entry.name not in self.loads:
            cfg["bn_processes"] = distributed.world_size()  # BatchNorm over each process's share of a batch
        if entry.name in self.loads:
            cfg["loaded_from"] = str(self.loads[entry.name].resolve())
        elif entry.pretraining == "simclr":
            cfg.update(simclr_epochs=p.simclr_epochs, simclr_batch_size=p.simclr_batch_size, probe_epochs=p.probe_epochs)
        else:
            cfg.update(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, augment_shift=p.augment_shift, flip=self.flip)
            if p.recipe != "adamw":
                cfg["recipe"] = p.recipe
        if p.bf16 and entry.name not in self.loads:
            cfg["bf16"] = True
        return cfg

    def _other_precision_only(self, stored: dict[str, Any], cfg: dict[str, Any]) -> bool:
        """A cached network that differs only in bf16 is reused unless --bf16/--no-bf16 was given:
        the preset's bf16 follows the machine (a study folder may move between machines)."""
        if getattr(self.args, "bf16", None) is not None:
            return False
        return {k: v for k, v in stored.items() if k != "bf16"} == {k: v for k, v in cfg.items() if k != "bf16"}

    def model(self, entry: Entry) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The trained network of ``entry`` (from the cache when its config matches)."""
        if entry.weights_of is not None:
            return self.model(ENTRIES[entry.weights_of])
        if entry.name in self.models:
            return self.models[entry.name], self.timings[entry.name]
        model = self.build(entry)
        cfg = self.train_config(entry)
        path = self.out / "models" / f"{entry.name}.pt"
        info: dict[str, Any] | None = None
        if path.exists():
            try:
                payload = load_checkpoint(path, required=("model", "config", "info"))
                if payload["config"] == cfg or self._other_precision_only(payload["config"], cfg):
                    load_state(model, payload["model"], path)
                    cfg = dict(payload["config"])
                    info = dict(payload["info"], cached=True)
                    print(f"[{entry.name}] trained weights loaded from {path}")
                else:
                    print(f"[{entry.name}] {path} was trained with another configuration; training again")
            except CheckpointError as exc:
                print(f"[{entry.name}] warning: {exc}; training again")
                model = self.build(entry)  # a failed load may have filled some layers
        if info is None:
            info = self._fit(entry, model)
            save_checkpoint(path, {"model": model.state_dict(), "config": cfg, "info": info})
            info = dict(info, cached=False)
        model.to(self.device).eval()
        self.models[entry.name], self.timings[entry.name], self.configs[entry.name] = model, info, cfg
        return model, info

    def _fit(self, entry: Entry, model: torch.nn.Module) -> dict[str, Any]:
        p, progress = self.preset, not self.args.no_progress
        t0 = time.perf_counter()
        if entry.name in self.loads:
            load_state_dict_file(model, self.loads[entry.name])
            return {"train_seconds": 0.0, "history": [], "source": str(self.loads[entry.name])}
        torch.manual_seed(self.args.seed)
        if entry.pretraining == "simclr":
            print(f"[{entry.name}] contrastive pretraining ({p.simclr_epochs} epochs, labels unused), then a linear probe")
            hist = pretrain_simclr(model, self.train[0], epochs=p.simclr_epochs, batch_size=p.simclr_batch_size,
                                   seed=self.args.seed, progress=progress, device=self.device, sync_bn=self.sync_bn,
                                   bf16=p.bf16, channels_last=p.bf16)
            probe_train = linear_probe(model, self.train, epochs=p.probe_epochs, seed=self.args.seed)
            return {"train_seconds": time.perf_counter() - t0, "history": hist, "probe_train_accuracy": probe_train}
        print(f"[{entry.name}] supervised training ({p.epochs} epochs on {len(self.train[1])} images)")
        recipe: dict[str, Any] = {}
        if p.recipe == "sgd":  # cifar-convert's backbone settings (its learning rate is the preset's)
            from spikeforge.experiments.cifar_convert import RECIPE_DEFAULTS

            recipe = {k: v for k, v in RECIPE_DEFAULTS["backbone"].items() if k != "lr"}
            recipe.update(optimizer="sgd", schedule="linear")
        hist = train_classifier(model, self.train, None, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
                                augment_shift=p.augment_shift, flip=self.flip, seed=self.args.seed, progress=progress,
                                device=self.device, sync_bn=self.sync_bn, bf16=p.bf16, channels_last=p.bf16,
                                **recipe)
        return {"train_seconds": time.perf_counter() - t0, "history": hist}

    def conversion_options(self, entry: Entry) -> dict[str, Any]:
        p = self.preset
        opts = dict(percentile=p.percentile, max_spikes=p.max_spikes, split_threshold=p.max_spikes > 1, v_init=0.5,
                    reset="subtract", maxpool="lipool", share_reused_relu=entry.shared_neuron)
        method = self.method()
        if method and not entry.shared_neuron:  # the ablation keeps the seed's plain converter
            opts.update(method)
        return opts

    def method(self) -> dict[str, Any]:
        """The few-step conversion options: the command line's, else the preset's."""
        return study_method(self.args, self.preset)

    def evaluate(self, entry: Entry) -> dict[str, Any]:
        model, info = self.model(entry)
        options = self.conversion_options(entry)
        key = {"train": self.configs[entry.weights_of or entry.name], "conversion": options,
               "T": self.preset.T, "test_limit": self.preset.test_limit, "calib_batches": self.preset.calib_batches}
        path = self.out / "results" / f"{entry.name}.json"
        if path.exists() and info.get("cached"):  # weights unchanged since that evaluation
            try:
                old = json.loads(path.read_text())
                if old.get("key") == key:
                    print(f"[{entry.name}] evaluation reused from {path}")
                    return old["result"]
            except (OSError, ValueError):
                pass
        t0 = time.perf_counter()
        ann_acc, _ = evaluate_classifier(model, *self.test, batch_size=500)
        ann_seconds = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(self.args.seed + 7)
        n_cal = 128 * self.preset.calib_batches
        calib = self.train[0][torch.randperm(len(self.train[1]), generator=gen)[:n_cal]]
        # converted on the CPU (a few calibration batches), evaluated on the device
        snn = convert(model.cpu(), calib, batch_size=128, max_batches=self.preset.calib_batches, **options)
        model.to(self.device)
        snn.to(self.device)
        res = evaluate_snn(snn, *self.test, self.preset.T, batch_size=500, progress=not self.args.no_progress)
        acc = res["accuracy"]
        result = {
            "ann_accuracy": ann_acc,
            "snn_accuracy": {str(t + 1): a for t, a in enumerate(acc)},
            "eval_split": eval_split_name(self.args.val_split),
            "n_eval": len(self.test[1]),
            "arch": entry.arch,
            "pretraining": entry.pretraining,
            "shared_neuron": entry.shared_neuron,
            "parameters": sum(q.numel() for q in model.parameters()),
            "neuron_layers": len(snn.neurons()),
            "firing_rate_mean": sum(res["firing_rates"].values()) / max(1, len(res["firing_rates"])),
            "train_seconds": 0.0 if entry.weights_of else info.get("train_seconds", 0.0),
            "ann_seconds": ann_seconds,
            "snn_seconds": res["seconds"],
        }
        if "probe_train_accuracy" in info and not entry.weights_of:
            result["probe_train_accuracy"] = info["probe_train_accuracy"]
        write_json(path, {"key": key, "result": result})
        T = self.preset.T
        shown = [t for t in (8, 16, 32, 64, 128, 256) if t <= T]
        print(f"[{entry.name}] ANN {ann_acc:.4f}; SNN " + ", ".join(f"T={t} {acc[t - 1]:.4f}" for t in shown)
              + f" ({res['seconds']:.0f} s)")
        return result


def _loss_pt(r: dict[str, Any], t: int) -> float | None:
    a = r["snn_accuracy"].get(str(t))
    return None if a is None else 100 * (r["ann_accuracy"] - a)


def _report(metrics: dict[str, Any], meta: dict[str, Any]) -> str:
    T = meta["preset"]["T"]
    cols = [t for t in (8, 16, 32, 64, 128, 256) if t <= T]
    lines = [
        "# Backbone study: VGG and ResNet families converted to SNNs",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Dataset **{meta['dataset']}** ({meta['n_train']} training / {meta['n_test']} "
        f"{'held-out validation' if meta.get('eval_split') == 'val' else 'test'} images; every ANN and SNN "
        f"figure is measured on those {meta['n_test']} images), preset "
        f"**{meta['preset_name']}** (width ×{meta['preset']['width']:g}, {meta['preset']['epochs']} epochs). "
        f"Activation in training: **{meta['preset']['activation']}**"
        + (" (quantized clip-floor-shift; its learnt ceilings are the thresholds)" if meta['preset']['activation'] == "qcfs"
           else "")
        + f". Conversion: **{meta.get('method_name') or method_name({}, meta['preset']['activation'])}**; "
        f"per-call-site IF neurons, soft reset, v_init=θ/2, "
        + ("**binary spikes (Γ=1)**" if meta['preset']['max_spikes'] == 1
           else f"burst spikes Γ={meta['preset']['max_spikes']} with threshold λ/Γ")
        + ", lateral-inhibition max-pool (the shared-neuron ablation keeps the seed's percentile converter). "
        f"Wall time "
        f"{meta['wall_seconds'] / 60:.1f} min."
        + "".join(f" `{k}`: {v}." for k, v in meta.get("adjusted", {}).items()),
        "",
        "| model | params | neuron layers | ANN | " + " | ".join(f"SNN T={t}" for t in cols)
        + " | loss T=32 (pt) | loss T=64 (pt) |",
        "|---|---:|---:|---:|" + "---:|" * len(cols) + "---:|---:|",
    ]
    for name, r in metrics.items():
        cells = [f"{r['snn_accuracy'][str(t)]:.4f}" for t in cols]
        l32, l64 = _loss_pt(r, 32), _loss_pt(r, 64)
        fmt = lambda v: "—" if v is None else f"{v:+.2f}"  # noqa: E731
        lines.append(f"| {name} | {r['parameters']:,} | {r['neuron_layers']} | {r['ann_accuracy']:.4f} | "
                     + " | ".join(cells) + f" | {fmt(l32)} | {fmt(l64)} |")
    lines += ["", "Loss = ANN accuracy − SNN accuracy on the same test images (positive = the SNN is worse).", ""]
    for fig, caption in (
        ("architecture.png", "Architecture: VGG vs ResNet vs its plain twin (same layers, no skips)"),
        ("size.png", "Size: ResNet-18/34/50/101 (solid) and their plain twins (dashed)"),
        ("pretraining.png", "Pretraining: supervised vs self-supervised (SimCLR + linear probe) ResNet-18"),
        ("ablation.png", "Ablation: ResNet-18 with one neuron per ReLU call site vs the seed's shared neuron"),
    ):
        lines += [f"## {caption}", "", f"![{caption}]({fig})", ""]
    if ABLATION in metrics and "resnet18" in metrics and \
            metrics[ABLATION]["neuron_layers"] == metrics["resnet18"]["neuron_layers"]:
        lines += [
            "## The seed's ResNet18 collapse",
            "",
            "Not reproduced by this run: its ResNet-18 has one activation module per call site (QCFS nets do, each "
            "with its own learnt ceiling), so the seed's converter finds no module to share and the ablation equals "
            "the ResNet-18.",
            "",
        ]
    elif ABLATION in metrics and "resnet18" in metrics:
        a, b = metrics["resnet18"], metrics[ABLATION]
        lines += [
            "## The seed's ResNet18 collapse",
            "",
            f"Same trained ResNet-18 weights (ANN {a['ann_accuracy']:.4f}). Per-call-site neurons: SNN "
            f"{a['snn_accuracy'][str(T)]:.4f} at T={T}. One neuron shared by the two call sites of each block's "
            f"`nn.ReLU` (the seed's converter): {b['snn_accuracy'][str(T)]:.4f} at T={T}, "
            f"{b['neuron_layers']} neuron layers instead of {a['neuron_layers']}.",
            "",
        ]
    return "\n".join(lines)


def _figures(metrics: dict[str, Any], out: Path) -> None:
    def pick(names):
        return {n: metrics[n] for n in names if n in metrics}

    plot_study(pick(["vgg11", "vgg13", "vgg16", "vgg18", "resnet18"]), out / "architecture.png",
               title="architecture: VGG vs ResNet (vgg18 = ResNet-18 without skips)")
    plot_study(pick(["resnet18", "resnet34", "resnet50", "resnet101", "vgg18", "plain-resnet34", "plain-resnet50",
                     "plain-resnet101"]), out / "size.png", title="size: ResNets (solid) and plain twins (dashed)",
               dashed=lambda n: n.startswith("plain") or n == "vgg18")
    plot_study(pick(["resnet18", "resnet18-simclr"]), out / "pretraining.png",
               title="pretraining: supervised vs SimCLR (linear probe)")
    plot_study(pick(["resnet18", ABLATION]), out / "ablation.png",
               title="ablation: per-call-site neurons vs one shared neuron")


def run(args: argparse.Namespace) -> dict[str, Any]:
    preset = _preset(args)
    study_method(args, preset)  # bad method options fail before any work
    _parse_loads(args.load)  # bad --load fails before any work
    device = device_of(args)  # so does an unusable --device
    adjusted: dict[str, str] = {}
    if args.bf16 is not None:
        preset.bf16 = args.bf16
    elif preset.bf16:  # the preset's bf16, where the hardware has it
        preset.bf16, note = recipe_bf16(True, device)
        if note:
            adjusted["bf16"] = note
            print(f"note: {note}")
    out = prepare_out_dir(args.out)
    t0 = time.perf_counter()
    study = Study(args, preset, out)
    sources = {ENTRIES[n].weights_of for n in preset.models}  # an ablation needs its source model
    order = [n for n in ENTRIES if n in preset.models or n in sources]
    metrics: dict[str, Any] = {}
    for name in order:
        metrics[name] = study.evaluate(ENTRIES[name])
        write_json(out / "metrics.json", metrics)  # partial results survive an interruption
    kept = sorted(n for n, c in study.configs.items() if n not in study.loads and bool(c.get("bf16")) != preset.bf16)
    if kept:  # cached networks reused in the precision they were trained in
        adjusted["bf16_reused"] = (f"{', '.join(kept)} reused from the cache as trained, in "
                                   f"{'float32' if preset.bf16 else 'bfloat16'}")
        print(f"note: {adjusted['bf16_reused']}")
    meta = {
        "command": command_line(),
        "dataset": args.dataset,
        "preset_name": args.preset,
        "preset": asdict(preset),
        "n_train": len(study.train[1]),
        "n_test": len(study.test[1]),
        "eval_split": eval_split_name(args.val_split),
        "method": study.method(),
        "method_name": method_name({**study.method(), "percentile": preset.percentile}, preset.activation, args.levels),
        "wall_seconds": time.perf_counter() - t0,
        "adjusted": adjusted,
        "environment": environment(),
        **parallel_info(study.device),
    }
    _figures(metrics, out)
    write_json(out / "study.json", meta)
    write_text(out / "report.md", _report(metrics, meta))
    print(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and the figures in {out} "
          f"({meta['wall_seconds'] / 60:.1f} min)")
    return metrics


STUDIES = {"backbones": (add_arguments, run, "VGG/ResNet families converted: architecture, size, pretraining, ablation")}
