"""Minimal mini-batch iteration over in-memory tensors (no DataLoader overhead)."""

from __future__ import annotations

from typing import Iterator, Optional

import torch

__all__ = ["iterate_batches", "num_batches"]


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`iterate_batches` yields for ``n`` examples."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def iterate_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: Optional[torch.Generator] = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` mini-batches along the first dimension.

    Without shuffling the batches are views (slices) of the inputs; with
    ``shuffle=True`` a permutation is drawn from ``generator`` (a CPU
    ``torch.Generator``; the global RNG when None) and each batch is gathered
    with ``index_select``.  The last, smaller batch is skipped when ``drop_last``.

    Raises:
        ValueError: ``batch_size`` is not positive or the lengths differ.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"images and labels differ in length: {n} vs {labels.shape[0]}")
    stop = n - n % batch_size if drop_last else n
    if not shuffle:
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            yield images[start:end], labels[start:end]
        return
    order = torch.randperm(n, generator=generator)
    order_x = order.to(images.device)
    order_y = order_x if labels.device == images.device else order.to(labels.device)
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        yield images.index_select(0, order_x[start:end]), labels.index_select(0, order_y[start:end])
