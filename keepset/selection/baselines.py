"""Random and class-balanced selection: bool keep masks [N] from scores and labels."""

from __future__ import annotations

import numpy as np

from keepset._checks import check_class_labels, check_nonempty_array, check_ratio, check_scores
from keepset.selection.topk import n_to_keep


def select_random(n: int, ratio: float, seed: int = 0) -> np.ndarray:
    """Keep ``round(ratio * n)`` samples drawn uniformly without replacement (seeded)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer (the number of samples), got {n!r}")
    k = n_to_keep(int(n), ratio)
    mask = np.zeros(int(n), dtype=bool)
    mask[np.random.default_rng(seed).choice(int(n), size=k, replace=False)] = True
    return mask


def class_quotas(labels, ratio: float, *, num_classes: int | None = None) -> dict[int, int]:
    """How many samples of each class a class-balanced selection keeps.

    Each class gets ``ratio * n_c`` rounded by largest remainder so the total is
    ``n_to_keep(N, ratio)`` (ties in the remainder go to the smaller class index). Labels are class
    indices 0..K-1: K at most N unless ``num_classes`` is given (``keepset._checks.check_class_labels``).
    """
    y = check_class_labels(labels, num_classes)
    check_nonempty_array(len(y), "labels")
    ratio = check_ratio(ratio)
    classes, counts = np.unique(y, return_counts=True)
    total = n_to_keep(len(y), ratio)
    exact = counts * ratio
    base = np.minimum(np.floor(exact).astype(np.int64), counts)
    rest = total - int(base.sum())
    order = np.lexsort((classes, -(exact - base)))
    for i in order:
        if rest <= 0:
            break
        if base[i] < counts[i]:
            base[i] += 1
            rest -= 1
    return {int(c): int(q) for c, q in zip(classes, base)}


def select_class_balanced(scores, labels, ratio: float, *, largest: bool = True,
                          num_classes: int | None = None) -> np.ndarray:
    """Top (``largest``) or bottom ``ratio`` of each class by ``scores``, quotas from ``class_quotas``.

    scores [N] float, labels [N] int (0..K-1, see ``class_quotas``) -> bool [N]. Ties broken by position
    (earlier kept).
    """
    s = check_scores(scores)
    y = check_class_labels(labels, num_classes)
    if y.shape != s.shape:
        raise ValueError(f"labels have shape {y.shape} but scores have {s.shape}")
    check_nonempty_array(len(s), "scores")
    quotas = class_quotas(y, ratio, num_classes=num_classes)
    key = -s if largest else s
    order = np.lexsort((np.arange(len(s)), key, y))  # by class, then key, then position
    ys = y[order]
    starts = np.searchsorted(ys, ys, side="left")
    rank = np.arange(len(s)) - starts  # rank inside the class
    classes = np.array(sorted(quotas), dtype=np.int64)
    quota = np.array([quotas[int(c)] for c in classes], dtype=np.int64)[np.searchsorted(classes, ys)]
    mask = np.zeros(len(s), dtype=bool)
    mask[order[rank < quota]] = True
    return mask


def select_random_class_balanced(labels, ratio: float, seed: int = 0, *, num_classes: int | None = None
                                 ) -> np.ndarray:
    """Random selection with the class quotas of ``class_quotas`` (seeded)."""
    y = check_class_labels(labels, num_classes)
    return select_class_balanced(np.random.default_rng(seed).random(len(y)), y, ratio, num_classes=num_classes)
