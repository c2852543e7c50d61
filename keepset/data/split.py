"""Seeded, stratified train / trusted / test splits."""

from __future__ import annotations

import numpy as np

from keepset._checks import check_labels


def split_indices(labels, fractions=(0.6, 0.15, 0.25), seed: int = 0) -> list[np.ndarray]:
    """Split positions into parts of the given fractions, stratified by label.

    Parameters
    ----------
    labels : int array [N]
    fractions : sequence of floats summing to 1 (e.g. train, trusted, test)
    seed : int

    Returns
    -------
    list of sorted int64 position arrays, one per fraction; together they cover every sample once.
    """
    try:
        fr = np.asarray(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"fractions must be numbers summing to 1, got {fractions!r}") from None
    if fr.ndim != 1 or not np.isfinite(fr).all() or (fr <= 0).any() or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be positive and sum to 1, got {tuple(fr.tolist()) if fr.ndim else fractions}")
    labels = check_labels(labels)
    if labels.size == 0:
        raise ValueError("labels is empty: there are no samples to split")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    bounds = np.cumsum(fr)[:-1]
    for c in np.unique(labels):
        pos = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(bounds * len(pos)).astype(int)
        for k, chunk in enumerate(np.split(pos, cuts)):
            parts[k].append(chunk)
    out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    for k, p in enumerate(out):
        if len(p) == 0:
            raise ValueError(f"split part {k} (fraction {fr[k]}) is empty; use more data or larger fractions")
    return out
