"""k-center greedy coreset (Sener & Savarese 2018) on features, with vectorised distance updates.

Repeatedly add the sample farthest from the current centres; each step updates every sample's
distance to its nearest centre with one batched distance computation (no loop over samples).
"""

from __future__ import annotations

import numpy as np
import torch

from keepset.selection.topk import n_to_keep


def k_center_greedy(features, ratio: float, *, seed: int = 0, initial=None, progress: bool = False) -> np.ndarray:
    """Greedy k-center keep mask.

    features : float [N, d]; ratio : fraction to keep (k = round(ratio N));
    seed : picks the first centre uniformly when ``initial`` is None;
    initial : optional bool [N] of already chosen centres (they count towards k).
    Returns bool [N] with k True (or the ``initial`` centres if they are more).
    Ties in the farthest distance go to the lowest position.
    """
    n = len(np.asarray(features))
    k = n_to_keep(n, ratio)
    chosen = np.zeros(n, dtype=bool)
    if initial is not None:
        init = np.asarray(initial)
        if init.dtype != np.bool_ or init.shape != (n,):
            raise ValueError(f"initial must be a bool mask of shape ({n},)")
        chosen |= init
    order = k_center_order(features, max(0, k - int(chosen.sum())), seed=seed,
                           initial=chosen if chosen.any() else None, progress=progress)
    chosen[order] = True
    return chosen


def k_center_order(features, count: int, *, seed: int = 0, initial=None, progress: bool = False) -> np.ndarray:
    """The first ``count`` centres greedy k-center adds, in order: int64 [count].

    Greedy k-center is nested, so the first k entries are the k-center selection of size k (plus
    ``initial``): compute the order once for the largest k and take prefixes for smaller ones.
    Without ``initial`` the first centre is drawn uniformly from ``seed``.
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"features must be [N, d], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("features hold NaN or inf values")
    n = len(x)
    chosen = np.zeros(n, dtype=bool)
    if initial is not None:
        chosen |= np.asarray(initial, dtype=bool)
    count = min(int(count), n - int(chosen.sum()))
    sq = (x * x).sum(1)
    min_d = torch.full((n,), float("inf"))
    order: list[int] = []
    if chosen.any():
        idx = np.flatnonzero(chosen)
        for start in range(0, len(idx), 1024):
            c = x[torch.as_tensor(idx[start:start + 1024])]
            d2 = (sq[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]).clamp_min(0)
            min_d = torch.minimum(min_d, d2.min(1).values)
        min_d[torch.as_tensor(chosen)] = -1.0  # never pick a centre twice
    elif count > 0:
        first = int(np.random.default_rng(seed).integers(n))
        order.append(first)
        min_d = (sq - 2 * (x @ x[first]) + sq[first]).clamp_min(0)
        min_d[first] = -1.0
    from keepset._progress import progress_bar

    for _ in progress_bar(range(count - len(order)), desc="k-center", enabled=progress):
        nxt = int(torch.argmax(min_d))  # first maximum = lowest position
        order.append(nxt)
        d2 = (sq - 2 * (x @ x[nxt]) + sq[nxt]).clamp_min(0)
        min_d = torch.minimum(min_d, d2)
        min_d[nxt] = -1.0
    return np.asarray(order, dtype=np.int64)
