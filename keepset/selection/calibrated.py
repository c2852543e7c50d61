"""Calibrated Grad-Mimic Stage 2: keep clean data at every noise level, 0 included.

The trusted split is clean. A held-out part of it ("holdout": never trained on by the reference nor by
the model) is scored during training exactly like the training samples (same weights, same steps, no
gradient contribution), so its Mimic Scores show what a clean sample's score looks like at every step.
Stage 2 then asks, per training sample: is its score lower than clean samples' scores usually are?

1. **Per-step standardisation** (``standardize_steps``, default): every score recorded at step t becomes
   ``(score - mean_t) / sd_t``, the mean and standard deviation of the holdout scores at that step. The
   score's location and scale drift as the model trains; measured against the clean scores of the same
   step, what is left is how the sample compares with clean samples, at every step alike.
   **Per-sample aggregate.** A training sample's statistic is the mean of its standardised scores
   over its visits (one per epoch). A holdout sample is scored many times per epoch; to make its
   statistic exchangeable with a clean training sample's, one visit per epoch is drawn at random
   (seeded hash of id and step) and averaged over epochs; ``draws`` disjoint draws per holdout sample
   give ``draws`` null values each (``holdout_null``).
2. **Conformal p-value** of each training sample: ``p_i = (1 + #{null <= A_i} / draws) / (n_holdout + 1)``
   (``conformal_pvalues``). A clean training sample's p-value is (close to) uniform, whatever the noise
   level, the model or the score's scale; a mislabelled sample's is small.
3. **Clean fraction** (the dataset-quality estimate): Storey's estimator
   ``pi0 = #{p > lam} / (N (1 - lam))`` (``clean_fraction``): clean p-values are uniform, so the
   fraction above ``lam`` is ``pi0 (1 - lam)`` plus the few mislabelled samples that look clean (an
   upward bias of up to 0.03-0.04 at 60% noise). Where the reference's own quality estimate is at hand
   (its agreement with the labels corrected for its error rate on the holdout), pass it as
   ``reference_quality``: ``pi0`` is then the mean of both, which halves that bias and the variance of
   a small holdout (docs/stage2-calibration.md).
4. **Decision** (``decide``):
   - ``"count"`` (default): drop the ``round(N (1 - pi0))`` samples with the smallest p-values, never one
     with ``p > max_drop_pvalue``. The kept fraction equals the quality estimate (up to that cap).
   - ``"alpha"``: drop ``p <= false_discard_rate`` (a fixed false-discard rate on clean samples).
   - ``"bh"``: Storey-adaptive Benjamini-Hochberg at level ``false_discard_rate`` (the expected fraction
     of clean samples among the dropped ones).

The records are flat arrays (the streaming recorder's rows): training records (id, step, score) and
holdout records (id, epoch, step, score). ``CalibratedStage2.add_steps`` accumulates them one chunk of
steps at a time (a step's training and holdout records in the same chunk) in memory bounded by (number of
training ids + holdout ids x epochs x draws); ``calibrated_filter`` is the same on whole arrays. No loop
over samples: per-step moments and per-id sums with ``bincount``, per-(id, epoch) draws with one sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DECISIONS = ("count", "alpha", "bh")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A seeded-hash building block (SplitMix64 finaliser) on uint64 arrays; wraps modulo 2^64."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def visit_keys(ids, steps, seed: int = 0) -> np.ndarray:
    """A seeded pseudo-random uint64 key per record, a function of (id, step, seed) only, so any chunking
    of the records gives the same keys. ids, steps: int [M]."""
    a = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    b = np.asarray(steps, dtype=np.int64).astype(np.uint64)
    s = np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)
    return _splitmix64(_splitmix64(a ^ _splitmix64(s)) ^ b)


def _int_ids(ids, name: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integer ids, got dtype {arr.dtype}; map string uids to int64 "
                         "positions first (np.unique(uids, return_inverse=True))")
    return arr.astype(np.int64, copy=False)


def _finite(values, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like the ids, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} NaN or inf values; drop those records "
                         "(a diverged run) before Stage 2")
    return arr


def _positions(universe: np.ndarray, ids: np.ndarray, name: str) -> np.ndarray:
    """Positions of ``ids`` in the sorted unique ``universe``; raises on an unknown id."""
    pos = np.searchsorted(universe, ids)
    pos = np.minimum(pos, len(universe) - 1) if len(universe) else pos
    bad = (len(universe) == 0) | (universe[pos] != ids) if len(ids) else np.zeros(0, bool)
    if np.any(bad):
        raise ValueError(f"{name} holds {int(np.sum(bad))} ids not declared up front (e.g. "
                         f"{ids[bad][:3].tolist()}); pass every id in the constructor's id list")
    return pos


def standardize_steps(steps, scores, holdout_steps, holdout_scores) -> tuple[np.ndarray, np.ndarray]:
    """Scores standardised by the holdout scores of the same step: ``(s - mean_t) / sd_t``.

    steps, scores : training records, int [M] and float [M]; holdout_steps, holdout_scores : [H'].
    Every step needs at least 3 holdout records with distinct scores. A holdout score is standardised with
    the other holdout scores of its step (leave-one-out), as a training score is.
    Returns (standardised training scores [M], standardised holdout scores [H']).
    """
    st = _int_ids(steps, "steps")
    hs = _int_ids(holdout_steps, "holdout steps")
    s = _finite(scores, "scores", len(st))
    h = _finite(holdout_scores, "holdout scores", len(hs))
    if (len(st) and st.min() < 0) or (len(hs) and hs.min() < 0):
        raise ValueError("steps must be >= 0")
    uniq, inv = np.unique(hs, return_inverse=True)
    cnt = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    tot = np.bincount(inv, h, len(uniq))
    mu = tot / np.maximum(cnt, 1)
    ss = np.bincount(inv, (h - mu[inv]) ** 2, len(uniq))  # centred sum of squares per step
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(ss / (cnt - 1))
        # a holdout score is standardised leaving itself out, as a training score is by the others
        c1 = cnt[inv] - 1
        mu_loo = (tot[inv] - h) / c1
        ss_loo = ss[inv] - (h - mu[inv]) ** 2 * cnt[inv] / c1
        sd_loo = np.sqrt(np.maximum(ss_loo, 0.0) / (c1 - 1))
    pos = np.minimum(np.searchsorted(uniq, st), max(len(uniq) - 1, 0))
    missing = (len(uniq) == 0) | (uniq[pos] != st) if len(st) else np.zeros(0, bool)
    if np.any(missing):
        raise ValueError(f"{len(np.unique(st[missing]))} steps have training records but no holdout records "
                         f"(e.g. step {st[missing][0]}); score holdout samples at every step, and pass a step's "
                         "training and holdout records in the same chunk")
    bad_h = ~(sd_loo > 0)
    if np.any(bad_h) or np.any(~(sd[pos] > 0)):
        step = hs[bad_h][0] if np.any(bad_h) else st[~(sd[pos] > 0)][0]
        raise ValueError(f"step {step} has fewer than 3 distinct holdout scores; score more holdout samples "
                         "per step (at least 3, better 32 or more)")
    return (s - mu[pos]) / sd[pos], (h - mu_loo) / sd_loo


class CalibratedStage2:
    """Streaming accumulator of the calibrated Stage 2 statistics.

    Parameters
    ----------
    train_ids : int [N] every training id that records may carry (unique).
    holdout_ids : int [H] every holdout id (unique, disjoint from the training ids; H >= 20).
    draws : visits drawn per (holdout sample, epoch): the null sample holds ``H * draws`` values.
    seed : seed of the visit draws.

    Feed ``add_steps(...)`` one chunk of steps at a time (each step's training and holdout records in one
    call; the steps of a chunk in any order, chunks in any order: the result does not depend on it), then
    call ``result(...)``. ``add_train`` / ``add_holdout`` take scores as they are (no standardisation).
    """

    def __init__(self, train_ids, holdout_ids, *, draws: int = 8, seed: int = 0):
        t = _int_ids(train_ids, "train_ids")
        h = _int_ids(holdout_ids, "holdout_ids")
        if len(np.unique(t)) != len(t) or len(np.unique(h)) != len(h):
            raise ValueError("train_ids and holdout_ids must each be unique; deduplicate them")
        if len(t) == 0:
            raise ValueError("train_ids is empty: there is nothing to filter")
        if len(h) < 20:
            raise ValueError(f"{len(h)} holdout samples cannot calibrate a filter (the smallest p-value is "
                             f"1/(H+1)); hold out at least 20 trusted samples, better several hundred")
        if np.intersect1d(t, h).size:
            raise ValueError("some holdout ids are also training ids; the holdout must be samples the model "
                             "never trains on")
        if int(draws) != draws or draws < 1:
            raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
        self.train_ids, self.holdout_ids = np.sort(t), np.sort(h)
        self.draws, self.seed = int(draws), int(seed)
        self._sum = np.zeros(len(t))
        self._count = np.zeros(len(t), dtype=np.int64)
        # per epoch: the `draws` smallest visit keys of every holdout sample and their scores
        self._keys: dict[int, np.ndarray] = {}
        self._vals: dict[int, np.ndarray] = {}

    def add_steps(self, ids, steps, scores, holdout_ids, holdout_epochs, holdout_steps, holdout_scores) -> None:
        """The records of whole steps: training ids, steps int [M], scores [M]; holdout ids, epochs,
        steps int [H'], scores [H']. Scores are standardised per step (``standardize_steps``) first."""
        z, hz = standardize_steps(steps, scores, holdout_steps, holdout_scores)
        self.add_train(ids, z)
        self.add_holdout(holdout_ids, holdout_epochs, holdout_steps, hz)

    def add_train(self, ids, scores) -> None:
        """Training records: ids int [M], Mimic Scores float [M]."""
        ids = _int_ids(ids, "ids")
        s = _finite(scores, "scores", len(ids))
        pos = _positions(self.train_ids, ids, "ids")
        self._sum += np.bincount(pos, s, len(self.train_ids))
        self._count += np.bincount(pos, minlength=len(self.train_ids))

    def add_holdout(self, ids, epochs, steps, scores) -> None:
        """Holdout records: ids, epochs, steps int [M], Mimic Scores float [M] (scored at ``steps``)."""
        ids = _int_ids(ids, "holdout ids")
        m = len(ids)
        ep = _int_ids(epochs, "epochs")
        st = _int_ids(steps, "steps")
        if ep.shape != (m,) or st.shape != (m,):
            raise ValueError(f"holdout ids, epochs and steps must have one entry per record ({m}); got "
                             f"{ep.shape} and {st.shape}")
        if m and (ep.min() < 0 or st.min() < 0):
            raise ValueError("epochs and steps must be >= 0")
        s = _finite(scores, "holdout scores", m)
        pos = _positions(self.holdout_ids, ids, "holdout ids")
        key = visit_keys(ids, st, self.seed)
        r, hn = self.draws, len(self.holdout_ids)
        for e in np.unique(ep):  # a loop over epochs (groups), never over samples
            sel = ep == e
            old_k = self._keys.get(int(e), np.full((hn, r), np.iinfo(np.uint64).max, dtype=np.uint64))
            old_v = self._vals.get(int(e), np.full((hn, r), np.nan))
            cell = np.r_[np.repeat(np.arange(hn), r), pos[sel]]
            kk = np.r_[old_k.ravel(), key[sel]]
            vv = np.r_[old_v.ravel(), s[sel]]
            order = np.lexsort((vv, kk, cell))  # a repeated (id, step) ties on the key: the score decides
            cell_s = cell[order]
            start = np.searchsorted(cell_s, np.arange(hn))
            rank = np.arange(len(order)) - start[cell_s]
            keep = rank < r
            new_k = np.empty((hn, r), dtype=np.uint64)
            new_v = np.empty((hn, r))
            new_k[cell_s[keep], rank[keep]] = kk[order][keep]
            new_v[cell_s[keep], rank[keep]] = vv[order][keep]
            self._keys[int(e)], self._vals[int(e)] = new_k, new_v

    def statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train_ids [N], per-sample mean score [N] (NaN where never recorded), holdout null [H, draws])."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self._sum / self._count
        mean[self._count == 0] = np.nan
        if not self._vals:
            raise ValueError("no holdout records were added: score the holdout samples during training "
                             "(keepset's GradMimic with holdout=...) before running the calibrated Stage 2")
        vals = np.stack([self._vals[e] for e in sorted(self._vals)])  # [E, H, draws]
        null = _nanmean0(vals)
        # a draw no holdout sample reached (fewer visits per epoch than draws) is left out
        return self.train_ids, mean, null[:, np.isfinite(null).any(axis=0)]

    def result(self, **kwargs) -> "CalibratedResult":
        """The decision; keyword arguments as ``decide``."""
        ids, mean, null = self.statistics()
        return _finish(ids, mean, null, **kwargs)


def _nanmean0(vals: np.ndarray) -> np.ndarray:
    cnt = np.isfinite(vals).sum(0)
    tot = np.where(np.isfinite(vals), vals, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def holdout_null(ids, epochs, steps, scores, *, draws: int = 8, seed: int = 0) -> np.ndarray:
    """The null sample of the per-sample statistic from holdout records: float [H, draws], row h for the h-th
    smallest holdout id. Draw r of sample h = the mean over epochs of the visit with the r-th smallest
    seeded key among h's visits in that epoch (NaN where h has fewer than r + 1 visits in every epoch)."""
    ids = _int_ids(ids, "holdout ids")
    acc = CalibratedStage2(np.array([np.iinfo(np.int64).min]), np.unique(ids), draws=draws, seed=seed)
    acc.add_holdout(ids, epochs, steps, scores)
    return acc.statistics()[2]


def conformal_pvalues(stat, null) -> np.ndarray:
    """Conformal p-values of ``stat`` [N] against the clean null sample ``null`` [n] or [n, draws]:
    ``(1 + mean over draws of #{null <= stat}) / (n + 1)``, in (0, 1]. NaN entries of ``null`` are
    skipped (a draw missing for one sample)."""
    s = np.asarray(stat, dtype=np.float64)
    z = np.asarray(null, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"stat must be 1-D, got shape {s.shape}")
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] < 1:
        raise ValueError(f"null must be [n] or [n, draws] with n >= 1, got shape {np.shape(null)}")
    n = z.shape[0]
    counts = np.zeros(len(s))
    for r in range(z.shape[1]):  # a loop over draws (a handful), never over samples
        col = np.sort(z[:, r][np.isfinite(z[:, r])])
        if len(col) == 0:
            raise ValueError(f"draw {r} of the null sample is empty; use fewer draws")
        counts += np.searchsorted(col, s, side="right") * (n / len(col))
    return (1.0 + counts / z.shape[1]) / (n + 1.0)


def clean_fraction(pvalues, *, lam: float = 0.1) -> float:
    """Storey's estimate of the fraction of clean samples: ``min(1, #{p > lam} / (N (1 - lam)))``.

    Clean p-values are uniform, so ``#{p > lam} ~ N pi0 (1 - lam)``; mislabelled samples that look clean add
    a small upward bias, and a small ``lam`` (0.05-0.2) keeps the variance low (see docs/stage2-calibration.md).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or not np.all((p > 0) & (p <= 1)):
        raise ValueError("pvalues must be a non-empty 1-D array of values in (0, 1]")
    if not 0 <= lam < 1:
        raise ValueError(f"lam must be in [0, 1), got {lam}")
    return float(min(1.0, np.mean(p > lam) / (1.0 - lam)))


def decide(pvalues, *, method: str = "count", false_discard_rate: float = 0.01, lam: float = 0.1,
           max_drop_pvalue: float = 0.2, reference_quality: float | None = None,
           tiebreak=None) -> tuple[np.ndarray, float]:
    """Keep mask bool [N] and the clean-fraction estimate ``pi0`` from conformal p-values [N].

    ``pi0`` is Storey's estimate (``clean_fraction``), or its mean with ``reference_quality`` when given
    (an independent estimate in [0, 1], e.g. the reference's agreement with the labels corrected for its
    error rate on the holdout: ``keepset.scoring.reference_agreement.quality_from_agreement``).

    method "count": drop the ``round(N (1 - pi0))`` smallest p-values (ties broken by ``tiebreak``, lower
    dropped first, e.g. the per-sample mean score), but none with ``p > max_drop_pvalue``.
    "alpha": drop ``p <= false_discard_rate``. "bh": Storey-BH at FDR level ``false_discard_rate``.
    """
    if method not in DECISIONS:
        raise ValueError(f"unknown decision {method!r}; choose one of {DECISIONS}")
    if not 0 < false_discard_rate < 1:
        raise ValueError(f"false_discard_rate must be in (0, 1), got {false_discard_rate}")
    if not 0 < max_drop_pvalue <= 1:
        raise ValueError(f"max_drop_pvalue must be in (0, 1], got {max_drop_pvalue}")
    p = np.asarray(pvalues, dtype=np.float64)
    pi0 = clean_fraction(p, lam=lam)
    if reference_quality is not None:
        rq = float(reference_quality)
        if not 0.0 <= rq <= 1.0:
            raise ValueError(f"reference_quality must be a fraction in [0, 1], got {reference_quality!r}")
        pi0 = 0.5 * (pi0 + rq)
    n = len(p)
    if method == "alpha":
        return p > false_discard_rate, pi0
    tb = np.zeros(n) if tiebreak is None else np.asarray(tiebreak, dtype=np.float64)
    if tb.shape != (n,):
        raise ValueError(f"tiebreak must have shape ({n},), got {tb.shape}")
    order = np.lexsort((tb, p))
    if method == "count":
        n_drop = int(round(n * (1.0 - pi0)))
    else:  # Storey-BH: the largest k with pi0 * p_(k) * N / k <= level
        ps = p[order]
        ok = np.flatnonzero(max(pi0, 1.0 / n) * ps * n / np.arange(1, n + 1) <= false_discard_rate)
        n_drop = int(ok[-1] + 1) if len(ok) else 0
    keep = np.ones(n, dtype=bool)
    drop = order[:n_drop]
    keep[drop[p[drop] <= max_drop_pvalue]] = False
    return keep, pi0


@dataclass
class CalibratedResult:
    """ids [N]; keep bool [N]; pvalues [N]; statistic [N] (mean recorded score); quality (estimated clean
    fraction); method, and the number of holdout samples the null came from."""

    ids: np.ndarray
    keep: np.ndarray
    pvalues: np.ndarray
    statistic: np.ndarray
    quality: float
    method: str
    n_holdout: int


def _finish(ids, mean, null, *, unseen: str = "error", **kwargs) -> CalibratedResult:
    never = ~np.isfinite(mean)
    if never.any() and unseen == "error":
        raise ValueError(f"{int(never.sum())} training ids have no record; pass unseen='keep' or 'drop', "
                         "or record more steps")
    if unseen not in ("error", "keep", "drop"):
        raise ValueError(f"unseen must be 'error', 'keep' or 'drop', got {unseen!r}")
    seen = ~never
    p = np.ones(len(ids))
    p[seen] = conformal_pvalues(mean[seen], null)
    keep_seen, pi0 = decide(p[seen], tiebreak=mean[seen], **kwargs)
    keep = np.full(len(ids), unseen == "keep")
    keep[seen] = keep_seen
    return CalibratedResult(ids, keep, p, mean, pi0, kwargs.get("method", "count"), int(null.shape[0]))


def calibrated_filter(ids, steps, scores, holdout_ids, holdout_epochs, holdout_steps, holdout_scores, *,
                      method: str = "count", false_discard_rate: float = 0.01, lam: float = 0.1,
                      max_drop_pvalue: float = 0.2, reference_quality: float | None = None,
                      normalize: str = "step", draws: int = 8, seed: int = 0,
                      unseen: str = "error") -> CalibratedResult:
    """The calibrated Stage 2 on whole record arrays (``CalibratedStage2`` streams the same).

    ids, steps, scores : training records, int [M], int [M], float [M] (the Mimic Score of that visit).
    holdout_* : holdout records, int [H'] ids, epochs, steps and float [H'] scores.
    normalize : "step" (standardise by the holdout scores of the same step, default) or "none".
    Other options as ``decide``. Returns a ``CalibratedResult`` over the sorted unique training ids.
    """
    if normalize not in ("step", "none"):
        raise ValueError(f"normalize must be 'step' or 'none', got {normalize!r}")
    ids = _int_ids(ids, "ids")
    acc = CalibratedStage2(np.unique(ids), np.unique(_int_ids(holdout_ids, "holdout_ids")), draws=draws,
                           seed=seed)
    if normalize == "step":
        acc.add_steps(ids, steps, scores, holdout_ids, holdout_epochs, holdout_steps, holdout_scores)
    else:
        acc.add_train(ids, scores)
        acc.add_holdout(holdout_ids, holdout_epochs, holdout_steps, holdout_scores)
    return acc.result(method=method, false_discard_rate=false_discard_rate, lam=lam,
                      max_drop_pvalue=max_drop_pvalue, reference_quality=reference_quality, unseen=unseen)
