"""Helpers shared by experiments: argument types, data loading, output folders.

Every numeric option has an argparse type from here that accepts only finite values
in the option's range (NaN and infinities never pass), every list option refuses an
empty list, :func:`prepare_out_dir` checks ``--out`` before any work starts and
:func:`require_images` checks that the data fits the model before training.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from spikeforge import distributed
from spikeforge.data import DataError, load_dataset
from spikeforge.data.split import stratified_split
from spikeforge.errors import ConfigError, IncompatibleDataError, OutputError


#: Datasets of 28×28 grayscale images: the inputs of LeNet5 and the seed-002/004 networks.
GRAYSCALE_28 = ("mnist-sample", "mnist", "fashion-mnist")


#: Largest value an integer option takes (counts, sizes, steps): beyond it tensors cannot be allocated.
MAX_INT = 10**9
#: Seeds: what every generator used here (torch, numpy) accepts.
MAX_SEED = 2**32 - 1


def integer(lo: int, hi: int = MAX_INT, what: str | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]``."""
    what = what or (f"an integer in [{lo}, {hi}]" if hi != MAX_INT else
                    "a positive integer" if lo == 1 else f"an integer >= {lo}")

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           what: str | None = None) -> Callable[[str], float]:
    """An argparse type: a finite float in the interval ``lo..hi`` (open or closed ends)."""
    if what is None:
        left = "-inf" if lo is None else f"{lo:g}"
        right = "inf" if hi is None else f"{hi:g}"
        what = f"a finite number in {'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value < hi if hi_open else value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = integer(1)
nonnegative_int = integer(0)
seed_int = integer(0, MAX_SEED, what=f"a seed in [0, {MAX_SEED}]")
percentile_value = number(0, 100, lo_open=True, what="a percentile in (0, 100]")
#: Learning rates: positive, and small enough for float32 optimizer arithmetic.
learning_rate = number(0, 1e6, lo_open=True, what="a learning rate in (0, 1e6]")
nonnegative_float = number(0, 1e6, what="a finite number in [0, 1e6]")
unit_interval = number(0, 1, what="a number in [0, 1]")
fraction = number(0, 1, hi_open=True, what="a number in [0, 1)")


def number_list(item: Callable[[str], Any], what: str) -> Callable[[str], list]:
    """An argparse type: a non-empty comma-separated list, each entry parsed by ``item``."""

    def parse(text: str) -> list:
        parts = [v.strip() for v in text.split(",") if v.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a non-empty comma-separated list of {what}, got {text!r}")
        out = []
        for v in parts:
            try:
                out.append(item(v))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"in the list {text!r}: {exc}") from None
        return out

    parse.__name__ = "list"
    return parse


def prepare_out_dir(out: str | os.PathLike, option: str = "--out") -> Path:
    """Create the output folder and check that files can be written into it, before any work.

    Raises :class:`~spikeforge.errors.OutputError` naming ``option`` and the path when
    it is an existing file, cannot be created, or is not writable. Nothing already in
    the folder is touched. In a data-parallel run only rank 0 creates and probes it.
    """
    path = Path(out).expanduser()
    if str(out).strip() == "":
        raise OutputError(f"{option} is empty: give the folder the results go to")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} exists and is not a folder; choose another path")
    if not distributed.is_main():
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot create the folder ({exc.strerror or exc})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".spikeforge-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write into the folder ({exc.strerror or exc})") from None
    return path


def _source(name: str, data_dir: str | None) -> str:
    return f"the {name} data" + (f" in --data-dir {data_dir}" if data_dir else "")


def require_images(
    name: str, data_dir: str | None, train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor], *, model: str, shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
) -> None:
    """Check before training that the images and labels fit ``model``.

    ``shape`` is the ``(C, H, W)`` the model takes (None: any, but train and test must
    agree) and ``num_classes`` its outputs; a mismatch raises
    :class:`~spikeforge.errors.IncompatibleDataError` naming the data and the model.
    """
    for split, (x, y) in (("training", train), ("evaluation", test)):
        if len(y) == 0:
            raise DataError(f"{_source(name, data_dir)}: the {split} set holds no images")
    got = tuple(int(d) for d in train[0].shape[1:])
    if tuple(int(d) for d in test[0].shape[1:]) != got:
        raise IncompatibleDataError(
            f"{_source(name, data_dir)}: training images are {'×'.join(map(str, got))} but evaluation images "
            f"{'×'.join(map(str, test[0].shape[1:]))}"
        )
    if shape is not None and got != tuple(shape):
        raise IncompatibleDataError(
            f"{model} takes {'×'.join(map(str, shape))} images (channels×height×width); {_source(name, data_dir)} "
            f"holds {'×'.join(map(str, got))} images"
        )
    if num_classes is not None:
        top = int(max(int(train[1].max()), int(test[1].max())))
        if top >= num_classes or int(min(int(train[1].min()), int(test[1].min()))) < 0:
            raise IncompatibleDataError(
                f"{model} has {num_classes} outputs; {_source(name, data_dir)} has label {top}"
            )


def add_device_arguments(p: argparse.ArgumentParser, *, training: bool = True) -> None:
    """``--device auto|cpu|cuda[:k]`` and, for experiments that train, ``--sync-bn``."""
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:K]", help=distributed.DEVICE_HELP)
    if training:
        p.add_argument("--sync-bn", action="store_true",
                       help="under torchrun: BatchNorm statistics over the global batch of all processes "
                            "(default: each process normalizes over its share)")


def device_of(args: argparse.Namespace) -> torch.device:
    """The checked ``--device`` (a :class:`~spikeforge.errors.ConfigError` naming it when unusable)."""
    return distributed.resolve_device(getattr(args, "device", "auto"))


def parallel_info(device: torch.device) -> dict[str, Any]:
    """What metrics.json records about where a run computed."""
    return {"device": str(device), "processes": distributed.world_size()}


def add_val_split_argument(p: argparse.ArgumentParser) -> None:
    """``--val-split N``: evaluate on N held-out training images instead of the test split."""
    p.add_argument(
        "--val-split", type=nonnegative_int, default=0, metavar="N",
        help="hold out N training images (stratified, fixed seed) and evaluate on them "
             "instead of the test split (0 = use the test split)",
    )


#: Seed of the validation split: fixed, so every run and model sees the same held-out images.
VAL_SPLIT_SEED = 0


def load_split_tensors(
    name: str, data_dir: str | None, val_split: int = 0,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[str]]:
    """((x_train, y_train), (x_eval, y_eval), class names) with images as float in [0, 1].

    With ``val_split`` N > 0 the evaluation set is N training images held out by
    :func:`~spikeforge.data.split.stratified_split` (seed :data:`VAL_SPLIT_SEED`) and
    the test split is never read; otherwise it is the test split. See :func:`eval_split_name`.
    """
    train = load_dataset(name, "train", data_dir=data_dir)
    if val_split:
        if val_split >= len(train.labels):
            raise DataError(
                f"--val-split {val_split} holds out every image: the {name} training set has "
                f"{len(train.labels)} images"
            )
        train_idx, val_idx = stratified_split(train.labels, val_split, seed=VAL_SPLIT_SEED)
        x = train.as_float()
        return (x[train_idx], train.labels[train_idx]), (x[val_idx], train.labels[val_idx]), list(train.classes)
    try:
        test = load_dataset(name, "test", data_dir=data_dir, download=_canonical(name) != "cifar10")
    except DataError as exc:
        raise DataError(
            f"{exc}\nNo test split for {name}: pass --val-split N to hold out N training "
            "images for evaluation instead (e.g. --val-split 10000)."
        ) from exc
    return (train.as_float(), train.labels), (test.as_float(), test.labels), list(test.classes)


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-")


def add_method_arguments(p: argparse.ArgumentParser, *, activation: bool = True, preset_defaults: bool = False) -> None:
    """The few-step conversion options shared by every conversion experiment and the study.

    ``preset_defaults``: leave ``--threshold``/``--correction`` at None when not given, so
    that a preset can supply its own (the study); :func:`method_options` reads None as the
    plain default (percentile, none).
    """
    from spikeforge.models.backbones import ACTIVATIONS

    p.add_argument("--threshold", choices=("percentile", "mse"), default=None if preset_defaults else "percentile",
                   help="thresholds from an activation percentile, or the error-minimizing threshold for --target-T steps"
                        + (" (default: the preset's)" if preset_defaults else ""))
    p.add_argument("--correction", choices=("none", "bias", "potential"), default=None if preset_defaults else "none",
                   help="layer-wise calibration of the SNN against the ANN for --target-T steps"
                        + (" (default: the preset's)" if preset_defaults else ""))
    p.add_argument("--target-T", type=integer(1, 100_000), default=None,
                   help="steps the mse threshold and the corrections aim at (default 16)")
    p.add_argument("--weight-iters", type=integer(0, 100_000), default=0,
                   help="with --correction: first calibrate the weights feeding each neuron layer for this many "
                        "Adam steps, layer by layer (0 = off)")
    p.add_argument("--weight-refresh", type=integer(1, 100_000), default=1,
                   help="with --weight-iters: simulate each layer's true --target-T-step output every this many "
                        "steps (1 = every step; 5 converted a ResNet-18 1.4-1.6x faster, see benchmarks/RESULTS.md)")
    p.add_argument("--e2e-epochs", type=integer(0, 100_000), default=0,
                   help="then learn every neuron layer's per-channel potential and bias corrections jointly for "
                        "--target-T steps (backpropagation through the SNN, distilling the ANN on the calibration "
                        "images) for this many epochs; 0 = off")
    p.add_argument("--e2e-lr", type=learning_rate, default=1e-4, help="Adam learning rate of --e2e-epochs")
    p.add_argument("--e2e-weight-lr", type=learning_rate, default=None,
                   help="with --e2e-epochs: fine-tune the SNN's weights too, at this Adam learning rate "
                        "(distillation from the ANN at --target-T steps; default: weights stay as converted)")
    if activation:
        p.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                       help="relu, or qcfs: train with the quantized clip-floor-shift activation (its learnt "
                            "ceilings become the thresholds)")
        p.add_argument("--levels", type=integer(1, 65536), default=8, help="QCFS quantization levels L")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """convert() keywords of the few-step options (empty for the defaults, so old caches stay valid)."""
    out: dict[str, Any] = {}
    threshold, correction = args.threshold or "percentile", args.correction or "none"
    e2e = getattr(args, "e2e_epochs", 0) or 0
    if threshold != "percentile" or correction != "none":
        out.update(threshold=threshold, correction=correction, target_T=args.target_T or 16)
    elif e2e:
        out["target_T"] = args.target_T or 16
    elif args.target_T is not None:
        raise ConfigError("--target-T is used only with --threshold mse, --correction bias|potential or --e2e-epochs")
    if e2e:
        out.update(e2e_epochs=int(e2e), e2e_lr=float(args.e2e_lr))
        if getattr(args, "e2e_weight_lr", None) is not None:
            out["e2e_weight_lr"] = float(args.e2e_weight_lr)
    elif getattr(args, "e2e_lr", 1e-4) != 1e-4:
        raise ConfigError("--e2e-lr is used only with --e2e-epochs N (N > 0)")
    elif getattr(args, "e2e_weight_lr", None) is not None:
        raise ConfigError("--e2e-weight-lr is used only with --e2e-epochs N (N > 0)")
    weight_iters = getattr(args, "weight_iters", 0) or 0
    if weight_iters and correction == "none":
        raise ConfigError("--weight-iters needs --correction bias or potential (weight calibration runs in its "
                          "layer-by-layer pass)")
    weight_refresh = getattr(args, "weight_refresh", 1) or 1
    if weight_refresh != 1 and not weight_iters:
        raise ConfigError("--weight-refresh is used only with --weight-iters N (N > 0)")
    if weight_iters:
        out["weight_iters"] = int(weight_iters)
    if weight_refresh != 1:
        out["weight_refresh"] = int(weight_refresh)
    return out


def method_name(options: dict[str, Any], activation: str = "relu", levels: int | None = None) -> str:
    """A one-line name of the conversion method for reports."""
    parts = []
    if activation == "qcfs":
        parts.append(f"QCFS-trained ANN (L={levels}), θ = learnt ceiling λ")
    elif options.get("threshold") == "mse":
        parts.append(f"MSE thresholds for T={options['target_T']}")
    else:
        parts.append(f"p={options.get('percentile', 99.99)} percentile thresholds")
    corr = options.get("correction", "none")
    if options.get("weight_iters"):
        refresh = options.get("weight_refresh", 1)
        parts.append(f"weights calibrated layer by layer ({options['weight_iters']} steps"
                     + (f", true output every {refresh} steps" if refresh != 1 else "")
                     + f") for T={options['target_T']}")
    if corr != "none":
        parts.append(f"{corr} correction for T={options['target_T']}")
    if options.get("e2e_epochs"):
        what = "potential, bias and weights" if options.get("e2e_weight_lr") else "potential and bias"
        wlr = f", weights lr {options['e2e_weight_lr']:g}" if options.get("e2e_weight_lr") else ""
        parts.append(f"{what} learnt end to end for T={options['target_T']} "
                     f"({options['e2e_epochs']} epochs on the calibration images, lr {options.get('e2e_lr', 1e-4):g}{wlr})")
    return "; ".join(parts)


def eval_split_name(val_split: int) -> str:
    """``"val"`` when a validation split is held out, else ``"test"`` (metrics.json ``eval_split``)."""
    return "val" if val_split else "test"


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def command_line() -> str:
    """The command as typed: ``spikeforge ...`` (also for ``python -m spikeforge``), with the torchrun prefix."""
    if not sys.argv:
        return ""
    if not (sys.argv[0].endswith("spikeforge") or sys.argv[0].endswith(os.path.join("spikeforge", "__main__.py"))):
        return " ".join(sys.argv)
    if distributed.world_size() > 1:
        nodes = distributed.world_size() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", distributed.world_size())))
        per_node = distributed.world_size() // max(1, nodes)
        return (f"torchrun --nproc-per-node {per_node}" + (f" --nnodes {nodes}" if nodes > 1 else "")
                + " -m spikeforge " + " ".join(sys.argv[1:]))
    return "spikeforge " + " ".join(sys.argv[1:])


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
