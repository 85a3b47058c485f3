"""Helpers shared by experiments: argument types, data loading, output folders."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from spikeforge.data import DataError, load_dataset
from spikeforge.data.split import stratified_split


#: Datasets of 28×28 grayscale images: the inputs of LeNet5 and the seed-002/004 networks.
GRAYSCALE_28 = ("mnist-sample", "mnist", "fashion-mnist")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def percentile_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentile in (0, 100], got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentile in (0, 100], got {value}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


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


def add_method_arguments(p: argparse.ArgumentParser, *, activation: bool = True) -> None:
    """The few-step conversion options shared by every conversion experiment and the study."""
    from spikeforge.models.backbones import ACTIVATIONS

    p.add_argument("--threshold", choices=("percentile", "mse"), default="percentile",
                   help="thresholds from an activation percentile, or the error-minimizing threshold for --target-T steps")
    p.add_argument("--correction", choices=("none", "bias", "potential"), default="none",
                   help="layer-wise calibration of the SNN against the ANN for --target-T steps")
    p.add_argument("--target-T", type=positive_int, default=None,
                   help="steps the mse threshold and the corrections aim at (default 16)")
    if activation:
        p.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                       help="relu, or qcfs: train with the quantized clip-floor-shift activation (its learnt "
                            "ceilings become the thresholds)")
        p.add_argument("--levels", type=positive_int, default=8, help="QCFS quantization levels L")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """convert() keywords of the few-step options (empty for the defaults, so old caches stay valid)."""
    out: dict[str, Any] = {}
    if args.threshold != "percentile" or args.correction != "none":
        out.update(threshold=args.threshold, correction=args.correction, target_T=args.target_T or 16)
    elif args.target_T is not None:
        raise ValueError("--target-T is used only with --threshold mse or --correction bias|potential")
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
    if corr != "none":
        parts.append(f"{corr} correction for T={options['target_T']}")
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
    return "spikeforge " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("spikeforge") else " ".join(sys.argv)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
