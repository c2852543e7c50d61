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
    Returns bool [N] with k True. Ties in the farthest distance go to the lowest position.
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"features must be [N, d], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("features hold NaN or inf values")
    n = len(x)
    k = n_to_keep(n, ratio)
    chosen = np.zeros(n, dtype=bool)
    if initial is not None:
        init = np.asarray(initial)
        if init.dtype != np.bool_ or init.shape != (n,):
            raise ValueError(f"initial must be a bool mask of shape ({n},)")
        chosen |= init
    sq = (x * x).sum(1)
    min_d = torch.full((n,), float("inf"))

    def update(centres: np.ndarray) -> None:
        nonlocal min_d
        c = x[torch.as_tensor(centres)]
        d2 = (sq[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]).clamp_min(0)
        min_d = torch.minimum(min_d, d2.min(1).values)

    if chosen.any():
        for start in range(0, int(chosen.sum()), 1024):
            update(np.flatnonzero(chosen)[start:start + 1024])
    else:
        first = int(np.random.default_rng(seed).integers(n))
        chosen[first] = True
        update(np.array([first]))
    min_d[torch.as_tensor(chosen)] = -1.0  # never pick a centre twice
    from tqdm.auto import tqdm

    todo = k - int(chosen.sum())
    for _ in tqdm(range(max(0, todo)), desc="k-center", disable=not progress, leave=False):
        nxt = int(torch.argmax(min_d))  # first maximum = lowest position
        chosen[nxt] = True
        d2 = (sq - 2 * (x @ x[nxt]) + sq[nxt]).clamp_min(0)
        min_d = torch.minimum(min_d, d2)
        min_d[nxt] = -1.0
    return chosen
