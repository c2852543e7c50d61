"""The numbers behind the report's tables: per-class noise, label confusions, agreement between flags.

Plain functions over arrays, vectorised.
"""

from __future__ import annotations

import numpy as np


def per_class(labels: np.ndarray, flagged: np.ndarray, num_classes: int, *, pred: np.ndarray | None = None,
              corrupted: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per given class c (arrays [K]): ``n`` samples labelled c, ``flagged`` among them, ``flagged_rate``
    (the filter's estimate of the class's noise), ``disagree_rate`` (the reference predicts another class;
    needs ``pred``), ``true_rate`` (known corruption; needs ``corrupted``). Rates are NaN for empty classes."""
    labels = np.asarray(labels, dtype=np.int64)
    n = np.bincount(labels, minlength=num_classes).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"n": n, "flagged": np.bincount(labels, weights=flagged.astype(np.float64), minlength=num_classes)}
        out["flagged_rate"] = out["flagged"] / n
        if pred is not None:
            out["disagree_rate"] = np.bincount(labels, weights=(pred != labels).astype(np.float64),
                                               minlength=num_classes) / n
        if corrupted is not None:
            out["true_rate"] = np.bincount(labels, weights=corrupted.astype(np.float64), minlength=num_classes) / n
    return out


def confusions(given: np.ndarray, other: np.ndarray, num_classes: int,
               flagged: np.ndarray | None = None) -> list[tuple[int, int, int, int]]:
    """(given class, other class, count, flagged count) of every pair with given != other, most frequent
    first (ties: by given, then other class). ``flagged`` [N] bool counts how many of each pair are flagged."""
    given, other = np.asarray(given, dtype=np.int64), np.asarray(other, dtype=np.int64)
    off = given != other
    code = given[off] * num_classes + other[off]
    counts = np.bincount(code, minlength=num_classes * num_classes)
    fl = (np.bincount(code, weights=flagged[off].astype(np.float64), minlength=num_classes * num_classes)
          if flagged is not None else np.zeros_like(counts))
    nz = np.flatnonzero(counts)
    order = nz[np.lexsort((nz, -counts[nz]))]
    return [(int(c // num_classes), int(c % num_classes), int(counts[c]), int(fl[c])) for c in order]


def worst_k(values: np.ndarray, direction: str, k: int) -> np.ndarray:
    """Bool [N]: the ``k`` samples a score ranks worst (lowest for ``higher_keeps``, highest for
    ``higher_drops``; NaN never flagged, ties broken by row order)."""
    v = np.asarray(values, dtype=np.float64)
    bad = -v if direction == "higher_keeps" else v
    bad = np.where(np.isnan(bad), -np.inf, bad)
    out = np.zeros(len(v), dtype=bool)
    k = int(min(k, int(np.isfinite(v).sum())))
    if k > 0:
        out[np.argsort(-bad, kind="stable")[:k]] = True
    return out


def agreement(flags: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise agreement of boolean flag vectors {name: [N]}.

    Returns names [M], Jaccard overlaps [M, M] (|A and B| / |A or B|; 1 on the diagonal; NaN when both are
    empty), intersections [M, M] and flag counts [M].
    """
    names = list(flags)
    f = np.stack([np.asarray(flags[n], dtype=np.float32) for n in names]) if names else np.zeros((0, 0), np.float32)
    inter = np.rint(f @ f.T).astype(np.int64)
    count = np.rint(f.sum(1)).astype(np.int64)
    union = count[:, None] + count[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return names, jac, inter, count
