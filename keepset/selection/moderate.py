"""Moderate-DS (Xia et al., ICLR 2023): keep the samples whose distance to their class centre in
feature space is closest to the median distance of their class ("moderate" samples)."""

from __future__ import annotations

import numpy as np

from keepset._checks import check_labels
from keepset.selection.topk import select_top


def class_centre_distances(features, labels) -> np.ndarray:
    """Euclidean distance of every sample to the mean feature of its class: [N, d], [N] -> float64 [N]."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, d], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features hold NaN or inf values")
    y = check_labels(labels)
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {y.shape}")
    classes, inv = np.unique(y, return_inverse=True)
    sums = np.zeros((len(classes), x.shape[1]))
    np.add.at(sums, inv, x)
    centres = sums / np.bincount(inv)[:, None]
    return np.linalg.norm(x - centres[inv], axis=1)


def moderate_scores(features, labels) -> np.ndarray:
    """``-|d_i - median_{c = y_i}(d)|``: higher = more moderate. [N, d], [N] -> float64 [N]."""
    d = class_centre_distances(features, labels)
    y = check_labels(labels)
    classes, inv = np.unique(y, return_inverse=True)
    medians = np.array([np.median(d[inv == c]) for c in range(len(classes))])
    return -np.abs(d - medians[inv])


def moderate_ds(features, labels, ratio: float) -> np.ndarray:
    """Moderate-DS keep mask: the ``round(ratio * N)`` samples with the highest ``moderate_scores``."""
    return select_top(moderate_scores(features, labels), ratio)
