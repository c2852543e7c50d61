"""Detection metrics: how well a filter's flags (or a score's ranking) find the corrupted samples."""

from __future__ import annotations

import numpy as np

from keepset._checks import check_scores


ORDER = "the order is (y_true, y_pred) / (y_true, y_score), as in sklearn.metrics"


def _binary(a, name: str, n: int | None = None, other: str = "") -> np.ndarray:
    """``a`` as a bool [N] array: booleans, or integers / floats holding only 0 and 1."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample), got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{other} has {n} values but {name} has {len(arr)}; give one per sample")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iuf":
        bad = (arr != 0) & (arr != 1)
        if not bad.any():
            return arr == 1
        raise ValueError(f"{name} must hold booleans or 0/1, found {int(bad.sum())} other values (e.g. "
                         f"{arr[bad][:3].tolist()}); {ORDER}")
    raise ValueError(f"{name} must hold booleans or 0/1, got dtype {arr.dtype}; {ORDER}")


def detection_metrics(y_true, y_pred) -> dict[str, float]:
    """Precision, recall and F1 of the flags ``y_pred`` [N] against the truth ``y_true`` [N] (True = corrupted).

    sklearn's argument order and definitions (``precision_score`` / ``recall_score`` / ``f1_score`` with
    ``zero_division=0``: precision is 0 when nothing is flagged, F1 is 0 when precision + recall is 0).
    Both arrays are booleans or 0/1. Returns {"precision", "recall", "f1", "flagged" (the number of flags)}.
    """
    from sklearn.metrics import f1_score, precision_score, recall_score

    t = _binary(y_true, "y_true")
    p = _binary(y_pred, "y_pred", len(t), "y_true")
    if not len(t):
        raise ValueError("y_true is empty: there are no samples to evaluate")
    return {"precision": float(precision_score(t, p, zero_division=0)),
            "recall": float(recall_score(t, p, zero_division=0)),
            "f1": float(f1_score(t, p, zero_division=0)), "flagged": int(p.sum())}


def auroc(y_true, y_score) -> float:
    """Area under the ROC curve of ``y_score`` [N] (higher = more likely positive) for ``y_true`` [N].

    sklearn's argument order (``roc_auc_score(y_true, y_score)``) and value: the Mann-Whitney statistic with
    average ranks for ties. ``y_true`` is booleans or 0/1; NaN (sklearn raises) when one class is empty.
    """
    t = _binary(y_true, "y_true")
    s = check_scores(y_score, "y_score")
    if len(s) != len(t):
        raise ValueError(f"y_true has {len(t)} values but y_score has {len(s)}; give one per sample")
    n_pos, n_neg = int(t.sum()), int((~t).sum())
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
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def quality_error(estimated: float, true: float) -> float:
    """Absolute error of a dataset-quality estimate (fraction of clean samples)."""
    return abs(float(estimated) - float(true))
