"""Top-ratio selection with deterministic tie breaking."""

from __future__ import annotations

import numpy as np

from keepset._checks import check_ratio, check_scores


def n_to_keep(n: int, ratio: float) -> int:
    """Number of samples a ratio keeps: ``round(ratio * n)``, at least 1 when n > 0."""
    ratio = check_ratio(ratio)
    return min(n, max(1, int(round(ratio * n)))) if n else 0


def select_top(scores, ratio: float, *, largest: bool = True) -> np.ndarray:
    """Keep the ``round(ratio * N)`` samples with the highest (or lowest) scores.

    Ties are broken by position: among equal scores the earlier sample is kept, so the result
    never depends on the sort algorithm. scores [N] float (no NaN) -> bool mask [N].
    """
    s = check_scores(scores)
    k = n_to_keep(len(s), ratio)
    key = -s if largest else s
    order = np.lexsort((np.arange(len(s)), key))  # primary: key ascending; secondary: position
    mask = np.zeros(len(s), dtype=bool)
    mask[order[:k]] = True
    return mask
