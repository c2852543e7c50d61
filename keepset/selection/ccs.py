"""CCS: coverage-centric coreset selection (Zheng et al., ICLR 2023, Algorithm 1).

1. Drop the ``hard_cutoff`` fraction of hardest samples (mislabelled / too hard).
2. Split the remaining score range into ``n_strata`` equal-width bins.
3. Spread the budget ``m = round(ratio * N)`` from the sparsest bin up: repeatedly take the bin
   with fewest samples, draw ``min(|B|, floor(m / #bins left))`` of its samples uniformly at random,
   remove the bin and subtract what was taken from ``m``.

If ``ratio + hard_cutoff > 1`` the cutoff is lowered to ``1 - ratio`` so the budget can be met.
"""

from __future__ import annotations

import numpy as np

from keepset._checks import check_nonempty_array, check_ratio, check_scores
from keepset.selection.topk import n_to_keep


def ccs_budgets(bin_counts, budget: int) -> np.ndarray:
    """How many samples CCS takes from each bin: bin_counts int [k], budget int -> int [k].

    Bins are visited from the sparsest up (ties: lower bin index first); each takes
    ``min(count, floor(remaining / bins_left))``.
    """
    raw = np.asarray(bin_counts)
    if raw.ndim != 1 or raw.dtype.kind not in "iu" or (raw < 0).any():
        raise ValueError(f"bin_counts must be a 1-D array of non-negative integer counts, got {raw.dtype} {raw.shape}")
    counts = raw.astype(np.int64)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise ValueError(f"budget must be an integer number of samples, got {budget!r}")
    if budget < 0 or budget > counts.sum():
        raise ValueError(f"budget {budget} must be in [0, {int(counts.sum())}] (the samples in the bins)")
    take = np.zeros(len(counts), dtype=np.int64)
    remaining = int(budget)
    order = np.lexsort((np.arange(len(counts)), counts))
    for left, b in zip(range(len(order), 0, -1), order):
        take[b] = min(int(counts[b]), remaining // left)
        remaining -= int(take[b])
    return take


def ccs_select(scores, ratio: float, *, hard_cutoff: float = 0.0, n_strata: int = 50,
               hardest: str = "high", seed: int = 0) -> np.ndarray:
    """CCS keep mask.

    scores : float [N] difficulty scores (e.g. AUM, EL2N, forgetting).
    ratio : fraction of samples to keep, in (0, 1].
    hard_cutoff : fraction beta of the hardest samples removed first, in [0, 1).
    n_strata : number of equal-width score bins k.
    hardest : "high" when a high score means hard (EL2N, forgetting), "low" when a low score does (AUM).
    seed : seed of the uniform draws inside bins.
    Returns bool [N] with exactly ``round(ratio * N)`` True.
    """
    s = check_scores(scores)
    check_nonempty_array(len(s), "scores")
    ratio = check_ratio(ratio)
    try:
        cutoff_ok = 0.0 <= float(hard_cutoff) < 1.0
    except (TypeError, ValueError):
        cutoff_ok = False
    if not cutoff_ok:
        raise ValueError(f"hard_cutoff must be a number in [0, 1) (the fraction of hardest samples dropped), "
                         f"got {hard_cutoff!r}")
    if isinstance(n_strata, bool) or not isinstance(n_strata, (int, np.integer)) or n_strata < 1:
        raise ValueError(f"n_strata must be an integer >= 1 (the number of score bins), got {n_strata!r}")
    if hardest not in ("high", "low"):
        raise ValueError(f"hardest must be 'high' or 'low', got {hardest!r}")
    n = len(s)
    budget = n_to_keep(n, ratio)
    n_drop = min(int(round(float(hard_cutoff) * n)), n - budget)
    hard_key = -s if hardest == "high" else s  # ascending hard_key: hardest first
    order = np.lexsort((np.arange(n), hard_key))
    pool = np.sort(order[n_drop:])
    v = s[pool]
    lo, hi = float(v.min()), float(v.max())
    if hi > lo:
        bins = np.minimum(((v - lo) / (hi - lo) * n_strata).astype(np.int64), n_strata - 1)
    else:
        bins = np.zeros(len(v), dtype=np.int64)
    counts = np.bincount(bins, minlength=n_strata)
    take = ccs_budgets(counts, budget)
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    for b in np.flatnonzero(take):
        members = pool[bins == b]
        mask[rng.choice(members, size=int(take[b]), replace=False)] = True
    return mask
