"""Metrics over time steps."""

from spikeforge.metrics.classification import accuracy_per_step, cumulative_mean, largest_drop

__all__ = ["accuracy_per_step", "cumulative_mean", "largest_drop"]
