"""Per-step binarisation of recorded scores, vectorised over every step at once.

Inputs are flat records: ``values [M]`` (one recorded score per sample visit) and ``step [M]`` (the
global step of each visit), holding complete steps. Each step's batch is split into a "keep" and a
"drop" group. Output: bool ``keep [M]``.

- ``threshold``: keep when the normed score exceeds ``1 / B`` (B = the number of records of that step,
  i.e. its batch size): the sample gets more than the uniform weight.
- ``kmeans``: exact 1-D 2-means per step (the best split of the sorted scores); keep the high cluster.
- ``gmm``: a 2-component Gaussian mixture per step (EM run for all steps together); keep samples
  whose posterior for the higher-mean component exceeds 0.5.
"""

from __future__ import annotations

import numpy as np

BINARIZE_METHODS = ("threshold", "kmeans", "gmm")


def _flat(values, step) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(values, dtype=np.float64)
    g = np.asarray(step)
    if v.ndim != 1 or v.shape != g.shape:
        raise ValueError(f"values and step must both be 1-D records of one length; got {v.shape} and {g.shape}")
    if not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"step must hold integers, got dtype {g.dtype}")
    if not np.isfinite(v).all():
        raise ValueError(f"{int((~np.isfinite(v)).sum())} recorded scores are NaN or inf; record finite scores")
    return v, g.astype(np.int64)


def binarize_threshold(normed, step) -> np.ndarray:
    """Keep where ``normed > 1 / B_step``, B_step the number of records of the step. [M] -> bool [M]."""
    v, g = _flat(normed, step)
    if not len(g):
        return np.zeros(0, bool)
    _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    return v > 1.0 / counts[inverse]


def _group_sort(v: np.ndarray, g: np.ndarray):
    order = np.lexsort((v, g))
    gs, vs = g[order], v[order]
    starts = np.r_[0, np.flatnonzero(np.diff(gs)) + 1]
    sizes = np.diff(np.r_[starts, len(gs)])
    group_of = np.repeat(np.arange(len(starts)), sizes)
    return order, vs, starts, sizes, group_of


def kmeans_split(v: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Exact 1-D 2-means inside every group ``g`` (flat arrays [M]); True for the high cluster.

    For a sorted group of n values centred on their mean, a split after j values has between-cluster
    sum of squares ``S_j^2 n / (j (n - j))`` (S_j: sum of the first j); the best split maximises it.
    Groups of one value, or of identical values, are kept whole.
    """
    order, vs, starts, sizes, group_of = _group_sort(v, g)
    means = np.bincount(group_of, vs) / sizes
    c = vs - means[group_of]
    cs = np.cumsum(c)
    base = np.r_[0.0, cs][starts]  # cumulative sum before each group's start
    s_left = cs - base[group_of]
    j = np.arange(len(vs)) - starts[group_of] + 1  # size of the left part if split after this element
    n = sizes[group_of]
    valid = (j < n) & (np.r_[np.diff(vs), 0.0] > 0)  # split only between distinct values
    with np.errstate(divide="ignore", invalid="ignore"):
        obj = np.where(valid, s_left ** 2 * n / (j * (n - j)), -np.inf)
    # per-group argmax: first position of the group's best objective
    best_order = np.lexsort((-obj, group_of))
    first = np.r_[0, np.flatnonzero(np.diff(group_of[best_order])) + 1]
    best_pos = best_order[first]
    split_j = np.where(np.isfinite(obj[best_pos]), j[best_pos], 0)  # 0: keep the whole group
    high_sorted = (np.arange(len(vs)) - starts[group_of]) >= split_j[group_of]
    high = np.empty(len(vs), dtype=bool)
    high[order] = high_sorted
    return high


def gmm_split(v: np.ndarray, g: np.ndarray, n_iter: int = 100, tol: float = 1e-8) -> np.ndarray:
    """2-component 1-D Gaussian mixture inside every group (EM for all groups at once); True where the
    posterior of the higher-mean component exceeds 0.5. Initialised from the 2-means split, so it is
    deterministic (no seed needed)."""
    v = np.asarray(v, dtype=np.float64)
    _, _, starts, sizes, _ = _group_sort(v, g)
    # group index of every element in original order
    uniq, gi = np.unique(g, return_inverse=True)
    k = len(uniq)
    init_high = kmeans_split(v, g)
    resp = init_high.astype(np.float64)  # responsibility of the "high" component
    gvar = np.bincount(gi, v * v, k) / np.bincount(gi, minlength=k) - (np.bincount(gi, v, k) / np.bincount(gi, minlength=k)) ** 2
    floor = np.maximum(gvar, 0) * 1e-4 + 1e-12
    prev = None
    for _ in range(n_iter):
        r1, r0 = resp, 1.0 - resp
        n1, n0 = np.bincount(gi, r1, k), np.bincount(gi, r0, k)
        tot = n1 + n0
        w1 = n1 / tot
        mu1 = np.bincount(gi, r1 * v, k) / np.maximum(n1, 1e-300)
        mu0 = np.bincount(gi, r0 * v, k) / np.maximum(n0, 1e-300)
        var1 = np.bincount(gi, r1 * (v - mu1[gi]) ** 2, k) / np.maximum(n1, 1e-300) + floor
        var0 = np.bincount(gi, r0 * (v - mu0[gi]) ** 2, k) / np.maximum(n0, 1e-300) + floor
        log1 = np.log(np.maximum(w1, 1e-300))[gi] - 0.5 * np.log(var1[gi]) - 0.5 * (v - mu1[gi]) ** 2 / var1[gi]
        log0 = np.log(np.maximum(1 - w1, 1e-300))[gi] - 0.5 * np.log(var0[gi]) - 0.5 * (v - mu0[gi]) ** 2 / var0[gi]
        log0 = np.where(n0[gi] > 0, log0, -np.inf)
        log1 = np.where(n1[gi] > 0, log1, -np.inf)
        mx = np.maximum(log0, log1)
        resp = np.exp(log1 - mx) / (np.exp(log1 - mx) + np.exp(log0 - mx))
        if prev is not None and np.max(np.abs(resp - prev)) < tol:
            break
        prev = resp
    # component "1" started as the high cluster; make sure it is still the higher-mean one
    swapped = mu1 < mu0
    high_post = np.where(swapped[gi], 1.0 - resp, resp)
    return high_post > 0.5


def binarize_records(values, step, *, method: str = "threshold") -> np.ndarray:
    """Binarise every step's records: ``values [M]`` (normed scores for ``threshold``, raw ones for
    ``kmeans`` / ``gmm``), ``step [M]`` holding complete steps. Returns bool keep [M]."""
    if method not in BINARIZE_METHODS:
        raise ValueError(f"unknown binarize method {method!r}; choose one of {BINARIZE_METHODS}")
    if method == "threshold":
        return binarize_threshold(values, step)
    v, g = _flat(values, step)
    if not len(v):
        return np.zeros(0, bool)
    return kmeans_split(v, g) if method == "kmeans" else gmm_split(v, g)
