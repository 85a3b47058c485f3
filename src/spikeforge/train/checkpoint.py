"""Checkpoints written atomically and read without unpickling arbitrary objects."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spikeforge import distributed
from spikeforge.errors import CheckpointError

__all__ = ["CheckpointError", "last_saved_checkpoint", "load_checkpoint", "load_state", "save_checkpoint"]

#: The checkpoint written last in this process (see :func:`last_saved_checkpoint`).
_last_saved: Path | None = None


def last_saved_checkpoint() -> Path | None:
    """The path :func:`save_checkpoint` wrote last in this process (None before any)."""
    return _last_saved


def forget_saved_checkpoints() -> None:
    """Reset :func:`last_saved_checkpoint` (the command line does this at the start of a command)."""
    global _last_saved
    _last_saved = None


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically.

    The data goes to a temporary file in the same directory, is flushed to disk and
    then renamed over ``path``, so a crash never leaves a half-written checkpoint and
    the previous one stays intact until the new one is complete. In a data-parallel
    run only rank 0 writes (every rank holds the same weights); the others return ``path``.
    """
    path = Path(path)
    if not distributed.is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    global _last_saved
    _last_saved = path
    return path


def load_checkpoint(path: str | Path, *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable,
    not a dict, or lacks one of the ``required`` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict (found {type(payload).__name__})")
    missing = [k for k in required if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    for key, value in payload.items():
        expected = FIELD_TYPES.get(key)
        if expected is not None and not _is(value, expected):
            names = " or ".join(t.__name__ if t is not type(None) else "None" for t in expected)
            raise CheckpointError(
                f"checkpoint {path}: field {key!r} should be {names}, found {type(value).__name__} "
                f"({str(value)[:60]!r}); the file is damaged or was written by another program"
            )
        if key in ("epoch", "step") and value < 0:
            raise CheckpointError(f"checkpoint {path}: field {key!r} is negative ({value})")
    if "model" in payload and not all(isinstance(v, torch.Tensor) for v in payload["model"].values()):
        raise CheckpointError(f"checkpoint {path}: field 'model' should map parameter names to tensors")
    return payload


#: Types of the fields the training loops store (checked whenever the field is present).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model": (dict,), "optimizer": (dict,), "scheduler": (dict, type(None)), "state": (dict,),
    "config": (dict,), "identity": (dict,), "info": (dict,), "history": (list,),
    "epoch": (int,), "step": (int,), "done": (bool,), "train_seconds": (int, float), "rng": (torch.Tensor,),
}


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int to Python, never an epoch
    return isinstance(value, types)


def _mismatch_summary(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[1:] or lines[:1]
    more = f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""
    return (detail[0] if detail else type(exc).__name__).rstrip(".") + more


def load_state(module: nn.Module, state: Any, path: str | Path, *, what: str = "weights") -> None:
    """``module.load_state_dict(state)`` with every failure a :class:`CheckpointError` naming ``path``.

    The state must map names to tensors, hold only finite values (a diverged training is
    never resumed or reused), and fit ``module`` (the message names the first layer that
    does not: a missing or unexpected key, or a shape that differs).
    """
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the saved {what} are not a state dict of tensors")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: the saved {what} hold NaN or infinite values ({', '.join(bad[:3])}); "
                              "they come from a diverged training")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the saved {what} do not fit {type(module).__name__}: "
                              f"{_mismatch_summary(exc)}") from exc
