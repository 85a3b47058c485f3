"""Experiments runnable as ``spikeforge run NAME``."""

from spikeforge.experiments.registry import EXPERIMENTS, Experiment, get_experiment

__all__ = ["EXPERIMENTS", "Experiment", "get_experiment"]
