"""Moderate-DS (Xia et al., ICLR 2023): keep the samples of moderate difficulty, measured as the
distance of each sample's features to its class prototype (the class's coordinate-wise median
feature vector, as in the authors' code). All distances are ranked together and the middle band
of the ranking is kept: the ``k`` samples around the median distance."""

from __future__ import annotations

import numpy as np

from keepset._checks import check_class_labels, check_nonempty_array, check_ratio
from keepset.selection.topk import n_to_keep

CENTRES = ("median", "mean")


def class_centre_distances(features, labels, centre: str = "median", *, num_classes: int | None = None
                           ) -> np.ndarray:
    """Euclidean distance of every sample to its class prototype: [N, d], [N] -> float64 [N].

    centre : "median" (coordinate-wise median of the class's features, the authors' choice) or "mean".
    labels : class indices 0..K-1, K at most N unless ``num_classes`` is given.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, d], got shape {x.shape}")
    check_nonempty_array(len(x), "features")
    if not np.isfinite(x).all():
        raise ValueError("features hold NaN or inf values")
    if centre not in CENTRES:
        raise ValueError(f"centre must be one of {CENTRES}, got {centre!r}")
    y = check_class_labels(labels, num_classes)
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {y.shape}")
    classes, inv = np.unique(y, return_inverse=True)
    reduce = np.median if centre == "median" else np.mean
    centres = np.stack([reduce(x[inv == c], axis=0) for c in range(len(classes))])
    return np.linalg.norm(x - centres[inv], axis=1)


def moderate_scores(features, labels, centre: str = "median", *, num_classes: int | None = None) -> np.ndarray:
    """``-|rank_i - (N - 1) / 2|`` of each sample's distance rank: higher = more moderate. float64 [N]."""
    d = class_centre_distances(features, labels, centre, num_classes=num_classes)
    ranks = np.empty(len(d))
    ranks[np.argsort(d, kind="stable")] = np.arange(len(d))
    return -np.abs(ranks - (len(d) - 1) / 2.0)


def moderate_ds(features, labels, ratio: float, centre: str = "median", *, num_classes: int | None = None
                ) -> np.ndarray:
    """Moderate-DS keep mask: positions ``[(N - k) // 2, (N - k) // 2 + k)`` of the distance ranking
    (stable sort, ties by position), k = round(ratio N). features [N, d], labels [N] -> bool [N]."""
    ratio = check_ratio(ratio)
    d = class_centre_distances(features, labels, centre, num_classes=num_classes)
    n = len(d)
    k = n_to_keep(n, ratio)
    order = np.argsort(d, kind="stable")
    start = (n - k) // 2
    mask = np.zeros(n, dtype=bool)
    mask[order[start:start + k]] = True
    return mask
