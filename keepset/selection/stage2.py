"""Grad-Mimic Stage 2: aggregate per-step keep/drop decisions into one filter; estimate dataset quality."""

from __future__ import annotations

import numpy as np

from keepset.selection.binarize import binarize_steps
from keepset.selection.topk import select_top

VOTES = ("majority", "weighted")


def _row_weights(n_rows: int, vote: str, weights) -> np.ndarray:
    if vote not in VOTES:
        raise ValueError(f"unknown vote {vote!r}; choose one of {VOTES}")
    if vote == "majority":
        return np.ones(n_rows)
    w = np.arange(1, n_rows + 1, dtype=np.float64) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (n_rows,) or (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights must be {n_rows} finite non-negative numbers, one per row")
    return w


def _decide(yes: np.ndarray, total: np.ndarray, unseen: str) -> np.ndarray:
    never = total == 0
    if never.any():
        if unseen == "error":
            raise ValueError(f"{int(never.sum())} samples were never scored; pass unseen='keep' or 'drop' "
                             "to decide for them, or record more steps")
        if unseen not in ("keep", "drop"):
            raise ValueError(f"unseen must be 'error', 'keep' or 'drop', got {unseen!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = yes / total >= 0.5
    keep[never] = unseen == "keep"
    return keep


def aggregate_votes(decisions, *, vote: str = "majority", weights=None, unseen: str = "error") -> np.ndarray:
    """One keep mask from per-step decisions.

    decisions : int8 [E, N] (1 keep, 0 drop, -1 not seen), e.g. from ``binarize_steps``.
    vote : "majority" (keep when at least half of a sample's visits say keep) or "weighted"
        (the same with per-row ``weights`` [E]; default weights grow linearly, 1..E, so later,
        better-informed steps count more).
    unseen : what to do with samples never seen: "error" (default), "keep" or "drop".

    Returns bool [N].
    """
    d = np.asarray(decisions)
    if d.ndim != 2:
        raise ValueError(f"decisions must be [E, N], got shape {d.shape}")
    if d.dtype != np.bool_:
        if d.dtype.kind not in "iuf":
            raise ValueError(f"decisions must hold 1 (keep), 0 (drop) or -1 (not seen), got dtype {d.dtype}")
        bad = (d != 1) & (d != 0) & (d != -1)  # NaN is bad too
        if bad.any():
            shown = [v if v == v else "NaN" for v in d[bad][:3].tolist()]
            raise ValueError(f"decisions must hold only 1 (keep), 0 (drop) or -1 (not seen); found {int(bad.sum())} "
                             f"other values (e.g. {shown}), first at row, column {np.argwhere(bad)[0].tolist()}")
    w = _row_weights(d.shape[0], vote, weights)
    return _decide((w[:, None] * (d == 1)).sum(0), (w[:, None] * (d >= 0)).sum(0), unseen)


def estimate_quality(keep) -> float:
    """Estimated dataset quality: the fraction of samples the filter keeps."""
    keep = np.asarray(keep)
    if keep.dtype != np.bool_ or keep.ndim != 1 or keep.size == 0:
        raise ValueError("keep must be a non-empty 1-D boolean mask")
    return float(keep.mean())


def stage2_filter(recorder, *, binarize: str = "threshold", vote: str = "majority", weights=None,
                  field: str | None = None, unseen: str = "error") -> np.ndarray:
    """The Stage 2 keep mask from a ``DynamicsRecorder`` holding "mimic" and "mimic_normed",
    streamed one epoch row at a time.

    ``threshold`` binarises the normed score against 1/B; ``kmeans`` and ``gmm`` cluster the raw score
    (or ``field`` if given). Returns bool [N].
    """
    if field is None:
        field = "mimic_normed" if binarize == "threshold" else "mimic"
    if field not in recorder.values:
        raise ValueError(f"the recorded dynamics have no field {field!r} (have {list(recorder.values)})")
    values, step, sizes = recorder.values[field], recorder.step, recorder.batch_sizes
    w = _row_weights(values.shape[0], vote, weights)
    yes = np.zeros(values.shape[1])
    total = np.zeros(values.shape[1])
    # every step lies inside one epoch row, so rows are binarised one at a time: a memory-mapped
    # recording never has to fit in RAM
    for e in range(values.shape[0]):
        d = binarize_steps(np.asarray(values[e:e + 1]), np.asarray(step[e:e + 1]), method=binarize,
                           batch_sizes=sizes)[0]
        yes += w[e] * (d == 1)
        total += w[e] * (d >= 0)
    return _decide(yes, total, unseen)


def rank_by_dynamics(recorder, ratio: float, *, how: str = "mean", field: str = "mimic") -> np.ndarray:
    """Keep the top ``ratio`` of samples ranked by their last-step or mean recorded ``field``."""
    if how not in ("last", "mean"):
        raise ValueError(f"how must be 'last' or 'mean', got {how!r}")
    scores = recorder.last(field) if how == "last" else recorder.mean(field)
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} samples have no recorded {field!r}; record more steps")
    return select_top(scores, ratio)
