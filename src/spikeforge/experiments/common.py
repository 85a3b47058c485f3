"""Helpers shared by experiments: argument types, data loading, output folders."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from spikeforge.data import load_dataset


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


def load_split_tensors(name: str, data_dir: str | None) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], list[str]]:
    """((x_train, y_train), (x_test, y_test), class names) with images as float in [0, 1]."""
    train = load_dataset(name, "train", data_dir=data_dir)
    test = load_dataset(name, "test", data_dir=data_dir)
    return (train.as_float(), train.labels), (test.as_float(), test.labels), list(test.classes)


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
