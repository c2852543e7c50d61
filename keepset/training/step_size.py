"""Default SGD step for a linear head on fixed features."""

from __future__ import annotations

import numpy as np


def probe_learning_rate(features, scale: float = 10.0) -> float:
    """SGD step for a linear head on ``features`` [N, d]: ``scale / mean ||h||^2``.

    The curvature of cross-entropy in the head's weights grows with ||h||^2, so a fixed step that is
    right for one backbone diverges on another (Fashion-MNIST features of an AdamW-trained MLP are twice
    as long as digits' and lr 0.1 gave a head at 0.38 test accuracy); normalising by the squared norm
    fixes that. ``scale`` 10 gives about 0.1 on digits.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) == 0:
        raise ValueError(f"features must be a non-empty [N, d] array, got shape {f.shape}")
    mean_sq = float(np.mean(np.sum(f * f, axis=1)))
    if not np.isfinite(mean_sq):
        raise ValueError("features contain NaN or inf; cannot derive a step size from them")
    return float(scale / max(mean_sq, 1e-12))
