"""Argument validation shared by every stage: one place for the error messages users read."""

from __future__ import annotations

import numpy as np


def check_ratio(ratio: float, name: str = "ratio") -> float:
    """Return ``ratio`` as a float in (0, 1], or raise a ValueError that says how to fix it."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1], got {ratio!r}") from None
    if not np.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (the fraction of samples to keep), got {ratio!r}")
    return value


def check_scores(scores, name: str = "scores") -> np.ndarray:
    """Return ``scores`` as a 1-D float64 array with no NaN/inf, or raise naming the bad entries."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one float per sample), got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite values (NaN or inf), first at positions {idx}; "
            "drop or impute those samples before selecting"
        )
    return arr


def check_labels(labels, num_classes: int | None = None, name: str = "labels") -> np.ndarray:
    """Return integer labels as int64 [N]; with ``num_classes``, require every label in [0, num_classes)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must be integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if num_classes is not None and arr.size:
        bad = (arr < 0) | (arr >= num_classes)
        if bad.any():
            raise ValueError(
                f"{name} has {int(bad.sum())} values outside [0, {num_classes}) "
                f"(e.g. {arr[bad][:5].tolist()}); map them to known classes or pass the right num_classes"
            )
    return arr


def check_mask(mask, n: int, name: str = "mask") -> np.ndarray:
    """Return a boolean [n] keep mask, or raise when its shape or dtype is wrong."""
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must be a boolean array, got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr
