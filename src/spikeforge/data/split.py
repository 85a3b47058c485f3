"""Hold-out validation splits drawn from a training set (stratified, seeded)."""

from __future__ import annotations

import torch

__all__ = ["stratified_split"]


def stratified_split(labels: torch.Tensor, n_val: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx)``: ``n_val`` indices held out with every class in proportion.

    Each class contributes ``round(n_val · share)`` images (the rounding remainder goes
    to the largest fractional parts), chosen by a permutation seeded by ``seed``; the
    same labels, ``n_val`` and ``seed`` always give the same split. Both index tensors
    are sorted.

    Raises:
        ValueError: ``n_val`` is not in ``[1, len(labels) - 1]``, or ``labels`` is not 1-D.
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    n = labels.numel()
    if not 1 <= n_val < n:
        raise ValueError(f"validation split of {n_val} images needs 1 <= N < {n} (the training set has {n} images)")
    gen = torch.Generator().manual_seed(int(seed))
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n_val / n
    take = exact.floor().long()
    remainder = n_val - int(take.sum())
    if remainder:
        order = torch.argsort(exact - take.double(), descending=True, stable=True)
        take[order[:remainder]] += 1
    val_parts = []
    for c, k in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        perm = idx[torch.randperm(len(idx), generator=gen)]
        val_parts.append(perm[:k])
    val = torch.cat(val_parts).sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val
