"""Binary segmentation metrics: pixel accuracy, Dice, Jaccard (IoU), F1.

With ``TP, FP, FN, TN`` the pixel counts of a binarized prediction against the mask:

* accuracy ``= (TP + TN) / (TP + FP + FN + TN)``
* Jaccard ``= TP / (TP + FP + FN)``
* F1 ``= 2·TP / (2·TP + FP + FN)``

all pooled over every evaluated pixel, and

* Dice ``= mean over slices of 2·|P∩G| / (|P| + |G|)`` (per-slice Dice of the binarized
  prediction, averaged; F1 is the same ratio pooled over all pixels, so the two differ
  only in how slices are weighted).

An empty prediction of an empty mask counts as perfect (Jaccard = Dice = 1).
``soft_dice`` ``= 2·Σ p·g / (Σ p + Σ g)`` on the probabilities ``p = σ(logit)``, pooled
(the quantity seed 003 called "accuracy").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

METRIC_KEYS: tuple[str, ...] = ("accuracy", "dice", "jaccard", "f1")

__all__ = ["METRIC_KEYS", "SegmentationScores", "binary_counts", "dice_score", "scores_from_counts"]


def binary_counts(pred: torch.Tensor, target: torch.Tensor) -> tuple[int, int, int, int]:
    """``(TP, FP, FN, TN)`` of boolean ``pred`` against boolean ``target`` (same shape)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.bool(), target.bool()
    tp = int((pred & target).sum())
    n_pred, n_true = int(pred.sum()), int(target.sum())
    fp, fn = n_pred - tp, n_true - tp
    return tp, fp, fn, pred.numel() - tp - fp - fn


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 1.0


def dice_score(pred: torch.Tensor, target: torch.Tensor) -> float:
    """``2·|P∩G| / (|P| + |G|)`` of two boolean masks (1 when both are empty)."""
    tp, fp, fn, _ = binary_counts(pred, target)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def scores_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """accuracy, Jaccard and F1 from pooled counts (Dice is added per slice by the caller)."""
    total = tp + fp + fn + tn
    return {
        "accuracy": _ratio(tp + tn, total),
        "jaccard": _ratio(tp, tp + fp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


@dataclass
class SegmentationScores:
    """Accumulates the metrics over slices: ``add(logits, mask)`` per slice, then ``result()``.

    ``logits`` are pre-sigmoid outputs; the prediction is ``σ(logit) > threshold``.
    """

    threshold: float = 0.5
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    dice_per_slice: list[float] = field(default_factory=list)
    soft_num: float = 0.0
    soft_den: float = 0.0

    def add(self, logits: torch.Tensor, mask: torch.Tensor) -> None:
        """Add one or more slices: ``logits`` and ``mask`` ``[n, 1, H, W]`` (or ``[H, W]``)."""
        if logits.shape != mask.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and mask {tuple(mask.shape)} differ in shape")
        logits = logits.float()
        if logits.dim() == 2:
            logits, mask = logits[None], mask[None]
        target = mask.bool()
        # σ(z) > t  ⇔  z > logit(t): no sigmoid needed for the decision.
        cut = torch.logit(torch.tensor(self.threshold, dtype=torch.float64)).item()
        pred = logits > cut
        for i in range(logits.shape[0]):
            c = binary_counts(pred[i], target[i])
            self.counts = [a + b for a, b in zip(self.counts, c)]
            tp, fp, fn, _ = c
            self.dice_per_slice.append(_ratio(2 * tp, 2 * tp + fp + fn))
        prob = torch.sigmoid(logits)
        g = target.float()
        self.soft_num += 2 * float((prob * g).sum())
        self.soft_den += float(prob.sum() + g.sum())

    def result(self) -> dict[str, float]:
        """``{"accuracy", "dice", "jaccard", "f1", "soft_dice"}``."""
        if not self.dice_per_slice:
            raise ValueError("no slices were added")
        out = scores_from_counts(*self.counts)
        out["dice"] = sum(self.dice_per_slice) / len(self.dice_per_slice)
        out["soft_dice"] = _ratio(self.soft_num, self.soft_den)
        return {k: out[k] for k in (*METRIC_KEYS, "soft_dice")}
