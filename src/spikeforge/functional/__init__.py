"""Pure, stateless spiking functions over ``[T, N, ...]`` sequences."""

from spikeforge.functional.neuron import RESETS, if_fire, if_seq, if_step, initial_membrane

__all__ = ["RESETS", "if_fire", "if_seq", "if_step", "initial_membrane"]
