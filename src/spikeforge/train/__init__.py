"""Training loops and checkpoints."""

from spikeforge.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from spikeforge.train.ann import evaluate_classifier, train_classifier

__all__ = ["CheckpointError", "evaluate_classifier", "load_checkpoint", "save_checkpoint", "train_classifier"]
