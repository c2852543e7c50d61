"""Detection metrics: how well a filter's flags (or a score's ranking) find the corrupted samples."""

from __future__ import annotations

import numpy as np

from keepset._checks import check_scores


def _bool(a, name: str, n: int | None = None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must be a boolean array, got dtype {arr.dtype}")
    if arr.ndim != 1 or (n is not None and len(arr) != n):
        raise ValueError(f"{name} must have shape ({n if n is not None else 'N'},), got {arr.shape}")
    return arr


def detection_metrics(flagged, corrupted) -> dict[str, float]:
    """Precision, recall and F1 of ``flagged`` [N] bool against the truth ``corrupted`` [N] bool.

    Precision is defined as 0 when nothing is flagged; F1 as 0 when precision + recall is 0.
    """
    corrupted = _bool(corrupted, "corrupted")
    flagged = _bool(flagged, "flagged", len(corrupted))
    tp = int((flagged & corrupted).sum())
    fp = int((flagged & ~corrupted).sum())
    fn = int((~flagged & corrupted).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "flagged": int(flagged.sum())}


def auroc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` [N] (higher = more likely positive) for ``positives`` [N] bool.

    The Mann-Whitney statistic with average ranks for ties; NaN when one class is empty.
    """
    s = check_scores(scores)
    pos = _bool(positives, "positives", len(s))
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average rank of each tie group (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def quality_error(estimated: float, true: float) -> float:
    """Absolute error of a dataset-quality estimate (fraction of clean samples)."""
    return abs(float(estimated) - float(true))
