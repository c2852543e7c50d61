"""Turning a ranking score into flags when a method has no threshold of its own.

``two_means_flags(suspicion)``: exact 1-D 2-means (the split of the sorted values that maximises
the between-cluster sum of squares); samples in the high cluster are flagged.
"""

from __future__ import annotations

import numpy as np

from keepset._checks import check_scores


def two_means_threshold(values) -> float:
    """The value t such that the exact 1-D 2-means puts ``values > t`` in the high cluster.

    values [N] float. With fewer than two distinct values, returns +inf (nothing is high).
    """
    v = np.sort(check_scores(values, "values"))
    n = len(v)
    if n < 2 or v[0] == v[-1]:
        return float("inf")
    c = v - v.mean()
    s = np.cumsum(c)[:-1]  # sum of the first j values, j = 1..n-1
    j = np.arange(1, n)
    obj = s * s * n / (j * (n - j))
    obj[np.diff(v) <= 0] = -np.inf  # split only between distinct values
    best = int(np.argmax(obj))
    return float(v[best])


def two_means_flags(suspicion) -> np.ndarray:
    """Flag the high cluster of ``suspicion`` [N] (higher = more suspicious): bool [N]."""
    s = check_scores(suspicion, "suspicion")
    return s > two_means_threshold(s)
