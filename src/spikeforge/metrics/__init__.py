"""Metrics over time steps."""

from spikeforge.metrics.classification import accuracy_per_step, cumulative_mean

__all__ = ["accuracy_per_step", "cumulative_mean"]
