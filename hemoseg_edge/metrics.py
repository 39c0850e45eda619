"""Segmentation metrics as small pure numpy functions.

Confusion counts first (``confusion``), then each metric from the counts. Conventions for empty
cases: a ratio whose denominator is 0 is 1.0 when its numerator is also "perfect" (nothing to
find and nothing found), else 0.0; see each function. ``PrHistogram`` accumulates per-bin
positive/negative counts so that AUPR and any threshold's counts over hundreds of millions of
pixels need only a few kB of memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Counts:
    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )


def confusion(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> Counts:
    """Pixel confusion counts of boolean ``pred`` vs ``truth`` (optionally inside ``valid``)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch {pred.shape} vs {truth.shape}")
    if valid is not None:
        valid = np.asarray(valid, bool)
        pred, truth = pred[valid], truth[valid]
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    tn = int(pred.size) - tp - fp - fn
    return Counts(tp, fp, fn, tn)


def _ratio(num: float, den: float, empty: float) -> float:
    return float(num / den) if den else empty


def dice(c: Counts) -> float:
    """2TP / (2TP + FP + FN); 1.0 when both prediction and truth are empty."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, 1.0)


def iou(c: Counts) -> float:
    """TP / (TP + FP + FN); 1.0 when both are empty."""
    return _ratio(c.tp, c.tp + c.fp + c.fn, 1.0)


def precision(c: Counts) -> float:
    """TP / (TP + FP); 1.0 when nothing is predicted and nothing is there, else 0.0."""
    return _ratio(c.tp, c.tp + c.fp, 1.0 if c.fn == 0 else 0.0)


def sensitivity(c: Counts) -> float:
    """Recall, TP / (TP + FN); 1.0 when there is nothing to find."""
    return _ratio(c.tp, c.tp + c.fn, 1.0)


def specificity(c: Counts) -> float:
    """TN / (TN + FP); 1.0 when there are no negatives."""
    return _ratio(c.tn, c.tn + c.fp, 1.0)


def accuracy(c: Counts) -> float:
    return _ratio(c.tp + c.tn, c.tp + c.fp + c.fn + c.tn, 1.0)


ALL = {
    "accuracy": accuracy,
    "precision": precision,
    "dice": dice,
    "iou": iou,
    "sensitivity": sensitivity,
    "specificity": specificity,
}


def summarize(c: Counts) -> dict[str, float]:
    return {name: fn(c) for name, fn in ALL.items()}


class PrHistogram:
    """Per-bin counts of positive and negative pixels by predicted probability.

    Bin ``k`` holds probabilities in ``[k/n, (k+1)/n)`` (1.0 goes to the last bin). A threshold
    ``t = k/n`` predicts positive for bins ``>= k``.
    """

    def __init__(self, bins: int = 1000):
        self.bins = bins
        self.pos = np.zeros(bins, np.int64)
        self.neg = np.zeros(bins, np.int64)

    def add(self, prob: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> None:
        prob, truth = np.asarray(prob, np.float32), np.asarray(truth, bool)
        if valid is not None:
            prob, truth = prob[valid], truth[valid]
        idx = np.clip((prob * self.bins).astype(np.int64), 0, self.bins - 1)
        self.pos += np.bincount(idx[truth], minlength=self.bins)
        self.neg += np.bincount(idx[~truth], minlength=self.bins)

    def counts_at(self, threshold: float) -> Counts:
        k = int(np.clip(np.ceil(threshold * self.bins - 1e-9), 0, self.bins))
        tp, fp = int(self.pos[k:].sum()), int(self.neg[k:].sum())
        return Counts(tp, fp, int(self.pos.sum()) - tp, int(self.neg.sum()) - fp)

    def aupr(self) -> float:
        """Area under the precision-recall curve (step-wise, average-precision style)."""
        tp = np.cumsum(self.pos[::-1])
        fp = np.cumsum(self.neg[::-1])
        total = tp[-1] if tp.size else 0
        if total == 0:
            return 0.0
        recall = tp / total
        prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
        prev = np.concatenate([[0.0], recall[:-1]])
        return float(np.sum((recall - prev) * prec))

    def aupr_trapezoid(self, points: int = 11) -> float:
        """AUPR as the M2MRF / HRDecoder lesion-segmentation code computes it: precision and
        recall at ``points`` evenly spaced thresholds (0, 0.1, ..., 1), joined by trapezoids
        over recall between consecutive thresholds. An empty prediction (threshold 1) counts as
        precision 1 at recall 0."""
        total = int(self.pos.sum())
        if total == 0:
            return 0.0
        recall, prec = [], []
        for t in np.linspace(0.0, 1.0, points):
            c = self.counts_at(float(t))
            recall.append(c.tp / total)
            prec.append(c.tp / (c.tp + c.fp) if c.tp + c.fp else 1.0)
        # consecutive thresholds, as sklearn.metrics.auc integrates the (monotone) recall array
        r, p = np.asarray(recall), np.asarray(prec)
        return float(np.sum(np.abs(r[1:] - r[:-1]) * (p[1:] + p[:-1]) / 2.0))

    def best_threshold(
        self, metric=dice, lo: float = 0.01, hi: float = 0.99
    ) -> tuple[float, float]:
        """(threshold, metric value) maximising ``metric`` over the bin edges in [lo, hi]."""
        best = (0.5, -1.0)
        for k in range(int(lo * self.bins), int(hi * self.bins) + 1):
            t = k / self.bins
            v = metric(self.counts_at(t))
            if v > best[1]:
                best = (t, v)
        return best


def best_threshold_dice(
    probs: list[np.ndarray], truths: list[np.ndarray], bins: int = 100
) -> tuple[float, float, float]:
    """(Dice at 0.5, best pooled Dice, its threshold) over a set of images."""
    h = PrHistogram(bins)
    for p, t in zip(probs, truths, strict=True):
        h.add(p, t)
    thr, best = h.best_threshold(dice)
    return dice(h.counts_at(0.5)), best, thr


def threshold_for_sensitivity(
    positive_scores: list[float], target: float, decimals: int | None = None
) -> float:
    """The highest threshold ``t`` with ``mean(score >= t) >= target`` over positive images
    (an image-level operating point); raises ValueError for an empty list. With ``decimals``,
    ``t`` is rounded *down* to that many: short enough to write into metadata, and still met
    by every score it counted (rounding to nearest could lift it over the lowest of them)."""
    if not positive_scores:
        raise ValueError("no positive scores to choose an operating point from")
    ordered = sorted(float(s) for s in positive_scores)
    misses = int(np.floor((1.0 - target) * len(ordered) + 1e-9))
    t = ordered[misses]
    if decimals is None:
        return t
    floored = float(np.floor(t * 10**decimals) / 10**decimals)
    return floored if floored <= t else float(np.nextafter(floored, -np.inf))


def roc_auc(positive_scores: list[float], negative_scores: list[float]) -> float:
    """Area under the ROC curve: the chance that a positive image outscores a negative one
    (ties count half); raises ValueError when either list is empty."""
    if not positive_scores or not negative_scores:
        raise ValueError("ROC AUC needs at least one positive and one negative score")
    pos = np.asarray(positive_scores, np.float64)[:, None]
    neg = np.asarray(negative_scores, np.float64)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def roc_points(
    positive_scores: list[float], negative_scores: list[float]
) -> list[tuple[float, float, float]]:
    """(threshold, sensitivity, specificity) at every distinct score, highest threshold first;
    an image is called positive when its score is >= the threshold."""
    pos = np.asarray(positive_scores, np.float64)
    neg = np.asarray(negative_scores, np.float64)
    out = []
    for t in sorted(set(pos.tolist()) | set(neg.tolist()), reverse=True):
        sens = float(np.mean(pos >= t)) if pos.size else 0.0
        spec = float(np.mean(neg < t)) if neg.size else 1.0
        out.append((t, sens, spec))
    return out
