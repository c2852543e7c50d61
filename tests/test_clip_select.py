"""CLIP-powered selection: the exact fast path against the faithful optimiser and a brute-force minimiser."""

import itertools

import numpy as np
import pytest

from keepset.scoring.semantic import minmax
from keepset.selection.clip_select import clip_select, combined_objective, effective_count, select_clip_powered


def _scores(n, dist, seed=0):
    rng = np.random.default_rng(seed)
    s = {"beta": rng.beta(5, 2, n), "exp": rng.exponential(1.0, n)}[dist]
    return minmax(s), minmax(rng.gamma(2.0, 1.0, n))


def _jaccard(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.mark.parametrize("dist,ratio", [("beta", 0.3), ("exp", 0.05)])
def test_exact_matches_faithful_optimiser(dist, ratio):
    n = 2000
    s, g = _scores(n, dist)
    exact, info_e = clip_select(s, g, ratio, exact=True, return_info=True)
    faithful, info_f = clip_select(s, g, ratio, exact=False, return_info=True, patience=1000)
    assert info_f["steps"] < 100_000  # early stop fired
    assert _jaccard(exact, faithful) >= 0.99
    assert abs(int(exact.sum()) - int(faithful.sum())) <= 0.001 * n  # same count within 0.1 % of N
    if dist == "exp":
        # more than k samples have v > beta: the published objective keeps them all
        assert info_e["count"] > info_e["k"]


def test_exact_is_the_minimiser_of_the_hard_loss():
    """Brute force over every mask of a small problem (independent of the top-k argument)."""
    rng = np.random.default_rng(4)
    for trial in range(20):
        n = 10
        s = rng.exponential(1.0, n) if trial % 2 else rng.uniform(size=n)
        g = rng.uniform(size=n)
        ratio = [0.1, 0.3, 0.5, 0.8][trial % 4]
        k = int(round(ratio * n))
        sp, gp = s / s.mean(), g / g.mean()
        best, best_mask = np.inf, None
        for bits in itertools.product([0, 1], repeat=n):
            m = np.array(bits, dtype=float)
            loss = -(m * sp).mean() - 0.1 * (m * gp).mean() + 2.0 * abs((m.sum() - k) / n)
            if loss < best - 1e-12:
                best, best_mask = loss, m.astype(bool)
        assert np.array_equal(clip_select(s, g, ratio), best_mask)


def test_effective_count_formula():
    v = np.array([3.0, 2.5, 1.0, 0.5, -3.0])
    assert effective_count(v, 1, 2.0) == 2          # two values above beta are always kept
    assert effective_count(v, 5, 2.0) == 4          # one value below -beta is always dropped
    assert effective_count(v, 3, 2.0) == 3


def test_lam_weights_diversity():
    s = np.array([1.0, 1.0, 0.0, 0.0])
    g = np.array([0.0, 1.0, 1.0, 0.0])
    assert combined_objective(s, g, 0.5).tolist() == pytest.approx([2.0, 3.0, 1.0, 0.0])
    assert clip_select(s, g, 0.25, lam=0.5).tolist() == [False, True, False, False]


def test_bad_inputs():
    s, g = np.ones(4), np.ones(4)
    with pytest.raises(ValueError, match="ratio"):
        clip_select(s, g, 1.5)
    with pytest.raises(ValueError, match="same length"):
        clip_select(s, np.ones(3), 0.5)
    with pytest.raises(ValueError, match="non-negative"):
        clip_select(-s, g, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        clip_select(np.array([np.nan, 1, 1, 1]), g, 0.5)
    with pytest.raises(ValueError, match="beta"):
        clip_select(s, g, 0.5, beta=-1)
    with pytest.raises(TypeError, match="exact=False"):
        clip_select(s, g, 0.5, steps=10)


def test_selector_reads_score_table_columns():
    s, g = _scores(100, "beta", seed=3)
    table = {"id": np.arange(100), "label": np.zeros(100, dtype=int), "sas": s * 5 + 1, "sds": g}
    mask = select_clip_powered(table, ratio=0.4)
    assert mask.dtype == np.bool_ and mask.sum() == 40
    assert np.array_equal(mask, clip_select(s, g, 0.4))  # columns min-max normalised first
    with pytest.raises(ValueError, match="no column"):
        select_clip_powered({"id": table["id"], "sas": s}, ratio=0.4)
    with pytest.raises(ValueError, match="--ratio"):
        select_clip_powered(table)
