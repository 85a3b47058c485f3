"""Experiment table: name → description, argument parser additions and run function."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]


def _all() -> dict[str, Experiment]:
    from spikeforge.experiments import cifar_convert, direct_train, lenet5_convert, unet_convert

    exps = [lenet5_convert.EXPERIMENT, cifar_convert.EXPERIMENT, *direct_train.EXPERIMENTS, unet_convert.EXPERIMENT]
    return {e.name: e for e in exps}


EXPERIMENTS: dict[str, Experiment] = _all()


def get_experiment(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment '{name}'; available: {', '.join(sorted(EXPERIMENTS))}") from None
