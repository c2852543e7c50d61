"""Confident learning (cleanlab) as the peer for mislabel detection.

``out_of_sample_probs`` gives k-fold out-of-sample predicted probabilities of a multinomial
logistic regression on fixed features (e.g. a frozen backbone's embeddings);
``cleanlab_label_issues`` runs ``cleanlab.filter.find_label_issues`` on them and returns its flags
and cleanlab's label-quality score (self-confidence). cleanlab is an optional dependency
(``pip install keepset[peers]``), imported only when used.
"""

from __future__ import annotations

import numpy as np

from keepset._checks import check_labels


def _cleanlab():
    try:
        import cleanlab.filter
        import cleanlab.rank
    except ImportError:
        raise ImportError("the cleanlab peer needs the optional dependency cleanlab: "
                          "pip install 'keepset[peers]' (or pip install cleanlab)") from None
    return cleanlab


def out_of_sample_probs(features, labels, *, n_folds: int = 5, seed: int = 0, C: float = 1.0,
                        max_iter: int = 200) -> np.ndarray:
    """k-fold out-of-sample predicted probabilities: features float [N, d], labels int [N] -> float [N, K].

    Each fold's probabilities come from a logistic regression (standardised features) trained on
    the other folds; stratified folds drawn from ``seed``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError(f"features must be a finite [N, d] array, got shape {x.shape}")
    y = check_labels(labels)
    if y.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {y.shape}")
    k = int(y.max()) + 1
    if int(n_folds) < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    counts = np.bincount(y, minlength=k)
    folds = min(int(n_folds), int(counts[counts > 0].min()))
    if folds < 2:
        raise ValueError("every class needs at least 2 samples for out-of-sample probabilities")
    probs = np.zeros((len(y), k))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        clf.fit(x[train], y[train])
        probs[np.ix_(test, clf[-1].classes_)] = clf.predict_proba(x[test])
    return probs


def cleanlab_label_issues(labels, pred_probs, *, filter_by: str = "prune_by_noise_rate",
                          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's flags and label-quality scores.

    labels int [N], pred_probs float [N, K] out-of-sample probabilities.
    Returns (issues bool [N], quality float [N]; low quality = likely mislabelled).
    """
    cl = _cleanlab()
    p = np.asarray(pred_probs, dtype=np.float64)
    y = check_labels(labels, p.shape[1] if p.ndim == 2 else None)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"pred_probs must be [N, K] with N = {len(y)}, got {p.shape}")
    np.random.seed(seed)  # cleanlab draws from numpy's global generator in some paths
    issues = cl.filter.find_label_issues(labels=y, pred_probs=p, filter_by=filter_by)
    quality = cl.rank.get_label_quality_scores(y, p, method="self_confidence")
    return np.asarray(issues, dtype=bool), np.asarray(quality, dtype=np.float64)
