"""Training-dynamics scores as plain functions over arrays (cleanlab style).

Per-batch raw quantities (what ``keepset.training.dynamics_observer.DynamicsObserver`` records, one value per
sample per epoch, i.e. arrays ``[E, N]`` with NaN where a sample was not seen):

- ``loss``       cross-entropy of the assigned label
- ``correct``    1.0 when the prediction equals the assigned label, else 0.0
- ``margin``     assigned logit minus the largest other logit (the AUM margin, Pleiss et al. 2020)
- ``el2n``       ``||softmax(z) - onehot(y)||_2`` (Paul et al. 2021)
- ``grand``      per-sample gradient norm ``||g_i||`` (Paul et al. 2021)
- ``entropy``    ``-sum_k p_k log p_k``
- ``confidence`` ``max_k p_k``
- ``prob_margin`` top-1 minus top-2 probability

Scores over those arrays (each returns float64 [N]):

- ``forgetting_events(correct)``: number of correct -> incorrect transitions (Toneva et al. 2019);
  samples never predicted correctly get ``E`` (more than any learned sample can reach).
- ``area_under_margin(margins)``: mean margin over epochs (low / negative: likely mislabelled).
- ``early_mean(values, early_epochs)``: EL2N / GraNd averaged over the first epochs.
- ``entropy``, ``prob_margin``, ``least_confidence``, ``el2n``, ``logit_margin``: per-snapshot maths
  on probabilities or logits [N, K].
"""

from __future__ import annotations

import numpy as np

from keepset.training.dynamics_observer import DYNAMICS_FIELDS  # noqa: E402,F401  (the recorded fields)

# how each score column is oriented: True when a HIGH value means hard / suspicious (likely mislabelled)
HIGH_IS_HARD = {"loss": True, "el2n": True, "grand": True, "forgetting": True, "aum": False,
                "entropy": True, "margin": False, "least_confidence": True}


def _2d(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [epochs, N] (one row per epoch), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no epoch recorded")
    return arr


def _probs(probs, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{name} must be [N, K] with K >= 2 classes, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must hold finite non-negative probabilities")
    if p.size and np.abs(p.sum(1) - 1).max() > 1e-4:
        raise ValueError(f"rows of {name} must sum to 1 (pass softmax(logits), not logits)")
    return p


def _labels(labels, n: int, k: int) -> np.ndarray:
    from keepset._checks import check_labels

    y = check_labels(labels, k)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    return y


def forgetting_events(correct, never_learned: float | None = None) -> np.ndarray:
    """Forgetting events of every sample: how often it went from correct to incorrect.

    correct : [E, N] of 1.0 / 0.0 (NaN where not seen), in visit order.
    never_learned : value given to samples never predicted correctly; default ``E``.
    Returns float64 [N].
    """
    c = _2d(correct, "correct")
    seen = ~np.isnan(c)
    e, n = c.shape
    # forward-fill unseen visits with the previous visit's value, so gaps do not break transitions
    rows = np.where(seen, np.arange(e)[:, None], 0)
    rows = np.maximum.accumulate(rows, axis=0)
    filled = c[rows, np.arange(n)]
    prev, cur = filled[:-1], c[1:]
    events = ((prev == 1.0) & (cur == 0.0)).sum(0).astype(np.float64)
    learned = (c == 1.0).any(0)
    return np.where(learned, events, float(e) if never_learned is None else float(never_learned))


def area_under_margin(margins) -> np.ndarray:
    """AUM: each sample's margin (assigned logit minus largest other logit) averaged over the epochs
    it was seen. margins [E, N] -> float64 [N] (NaN if never seen)."""
    m = _2d(margins, "margins")
    seen = ~np.isnan(m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen, m, 0.0).sum(0) / seen.sum(0)


def early_mean(values, early_epochs: int | None = None) -> np.ndarray:
    """Mean over the first ``early_epochs`` recorded epochs (all when None): EL2N and GraNd are
    measured early in training. values [E, N] -> float64 [N]."""
    v = _2d(values, "values")
    if early_epochs is not None:
        if int(early_epochs) < 1:
            raise ValueError(f"early_epochs must be >= 1, got {early_epochs}")
        v = v[: int(early_epochs)]
    seen = ~np.isnan(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen, v, 0.0).sum(0) / seen.sum(0)


def last_value(values) -> np.ndarray:
    """Each sample's value at its last recorded visit. values [E, N] -> float64 [N]."""
    v = _2d(values, "values")
    seen = ~np.isnan(v)
    last = v.shape[0] - 1 - np.argmax(seen[::-1], axis=0)
    out = v[last, np.arange(v.shape[1])]
    return np.where(seen.any(0), out, np.nan)


def el2n(probs, labels) -> np.ndarray:
    """``||p_i - onehot(y_i)||_2``: probs [N, K], labels [N] -> float64 [N]."""
    p = _probs(probs)
    y = _labels(labels, len(p), p.shape[1])
    r = p.copy()
    r[np.arange(len(y)), y] -= 1.0
    return np.sqrt((r * r).sum(1))


def entropy(probs) -> np.ndarray:
    """Predictive entropy in nats: probs [N, K] -> float64 [N] (0 log 0 = 0)."""
    p = _probs(probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(1)


def prob_margin(probs) -> np.ndarray:
    """Top-1 minus top-2 probability (margin sampling; low = uncertain): probs [N, K] -> [N]."""
    p = _probs(probs)
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def least_confidence(probs) -> np.ndarray:
    """``1 - max_k p_k`` (high = uncertain): probs [N, K] -> float64 [N]."""
    return 1.0 - _probs(probs).max(1)


def logit_margin(logits, labels) -> np.ndarray:
    """AUM's per-epoch margin: assigned logit minus the largest other logit. logits [N, K], labels [N]."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be [N, K] with K >= 2, got shape {z.shape}")
    y = _labels(labels, len(z), z.shape[1])
    assigned = z[np.arange(len(y)), y]
    other = z.copy()
    other[np.arange(len(y)), y] = -np.inf
    return assigned - other.max(1)


def dynamics_scores(values: dict, early_epochs: int | None = None) -> dict[str, np.ndarray]:
    """Every score column from recorded dynamics ``{field: [E, N]}`` (e.g. ``DynamicsRecorder.values``).

    Returns {column: float64 [N]} with the columns present for the fields given:
    ``loss`` (mean over epochs), ``el2n`` and ``grand`` (mean over the first ``early_epochs``),
    ``forgetting``, ``aum``, and ``entropy`` / ``margin`` / ``least_confidence`` at the last visit.
    See ``HIGH_IS_HARD`` for the orientation of each column.
    """
    out: dict[str, np.ndarray] = {}
    if "loss" in values:
        out["loss"] = early_mean(values["loss"])
    if "el2n" in values:
        out["el2n"] = early_mean(values["el2n"], early_epochs)
    if "grand" in values:
        out["grand"] = early_mean(values["grand"], early_epochs)
    if "correct" in values:
        out["forgetting"] = forgetting_events(values["correct"])
    if "margin" in values:
        out["aum"] = area_under_margin(values["margin"])
    if "entropy" in values:
        out["entropy"] = last_value(values["entropy"])
    if "prob_margin" in values:
        out["margin"] = last_value(values["prob_margin"])
    if "confidence" in values:
        out["least_confidence"] = 1.0 - last_value(values["confidence"])
    return out
