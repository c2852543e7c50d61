"""Calibrated Stage 2 (keepset.selection.calibrated): clean data is kept at every noise level, planted
noise is dropped, the quality estimate follows, the streaming accumulator equals the whole-array call."""

import numpy as np
import pytest

from keepset.selection.calibrated import (
    CalibratedStage2, calibrated_filter, clean_fraction, conformal_pvalues, decide, holdout_null, visit_keys,
)

HOLD0 = 100_000  # holdout ids start here


def simulate(n_train=2000, n_hold=400, noise=0.0, *, epochs=5, steps_per_epoch=25, hold_per_step=64,
             shift=-4.0, seed=0):
    """Records of a synthetic training run.

    Every step has its own location and scale (the score's drift during training); a sample's score at a
    visit is ``loc_t + scale_t * (effect_i + 0.7 * eps)``; clean effects are Student-t(4) (a heavy tail),
    mislabelled ones are shifted by ``shift``. Training samples are visited once per epoch (a permutation cut
    into batches), holdout samples ``hold_per_step`` per step in consecutive permutations, like the
    recorder of a real run. Returns (train records, holdout records, corrupted mask).
    """
    rng = np.random.default_rng(seed)
    s_total = epochs * steps_per_epoch
    loc = rng.normal(0, 3, s_total)
    scale = np.exp(rng.normal(0, 0.5, s_total))
    eff = rng.standard_t(4, n_train)
    corrupted = np.zeros(n_train, dtype=bool)
    corrupted[rng.choice(n_train, int(noise * n_train), replace=False)] = True
    eff[corrupted] += shift
    t_ids, t_steps = [], []
    for e in range(epochs):
        order = rng.permutation(n_train)
        t_ids.append(order)
        t_steps.append(e * steps_per_epoch + np.arange(n_train) * steps_per_epoch // n_train)
    t_ids, t_steps = np.concatenate(t_ids), np.concatenate(t_steps)
    t_score = loc[t_steps] + scale[t_steps] * (eff[t_ids] + 0.7 * rng.standard_normal(len(t_ids)))
    h_eff = rng.standard_t(4, n_hold)
    need = steps_per_epoch * hold_per_step
    h_pos = np.concatenate([np.concatenate([rng.permutation(n_hold) for _ in range(-(-need // n_hold))])[:need]
                            for _ in range(epochs)])
    h_steps = np.repeat(np.arange(s_total), hold_per_step)
    h_score = loc[h_steps] + scale[h_steps] * (h_eff[h_pos] + 0.7 * rng.standard_normal(len(h_pos)))
    train = (t_ids.astype(np.int64), t_steps, t_score)
    hold = (h_pos.astype(np.int64) + HOLD0, h_steps // steps_per_epoch, h_steps, h_score)
    return train, hold, corrupted


def run(noise=0.0, sim_seed=0, **kw):
    train, hold, corrupted = simulate(noise=noise, seed=sim_seed)
    return calibrated_filter(*train, *hold, **kw), corrupted


def test_clean_data_is_kept_at_noise_zero():
    kept, quality = [], []
    for seed in range(12):
        res, _ = run(0.0, seed)
        kept.append(res.keep.mean())
        quality.append(res.quality)
    assert min(kept) >= 0.96 and np.mean(kept) >= 0.985
    assert min(quality) >= 0.96


def test_false_discard_rate_is_controlled():
    # method "alpha": the fraction of clean samples dropped is about alpha (conformal guarantee), whatever
    # the per-step drift of the score's location and scale
    rates = [1 - run(0.0, seed, method="alpha", false_discard_rate=0.05)[0].keep.mean() for seed in range(12)]
    assert 0.03 <= np.mean(rates) <= 0.06


def test_planted_noise_is_dropped_and_quality_follows():
    # mislabelled effects 8 below the clean ones (Student-t(4) both): the two groups barely overlap
    for noise in (0.2, 0.4, 0.6):
        train, hold, corrupted = simulate(noise=noise, shift=-8.0, seed=3)
        res = calibrated_filter(*train, *hold)
        tp = np.sum(~res.keep & corrupted)
        assert tp / corrupted.sum() >= 0.95  # recall
        assert np.mean(~res.keep[~corrupted]) <= 0.05  # clean samples dropped
        assert abs(res.quality - (1 - noise)) <= 0.03
        assert abs(res.keep.mean() - res.quality) <= 0.01  # "count" keeps what it estimates


def test_reference_quality_is_averaged_in():
    train, hold, corrupted = simulate(noise=0.3, seed=4)
    alone = calibrated_filter(*train, *hold)
    both = calibrated_filter(*train, *hold, reference_quality=0.5)
    assert both.quality == pytest.approx(0.5 * (alone.quality + 0.5))
    assert abs(both.keep.mean() - both.quality) <= 0.01


def test_streaming_in_any_chunks_equals_whole_arrays():
    (ids, steps, score), (h_ids, h_ep, h_st, h_sc), _ = simulate(noise=0.3, seed=5)
    whole = calibrated_filter(ids, steps, score, h_ids, h_ep, h_st, h_sc)
    acc = CalibratedStage2(np.arange(2000), np.arange(400) + HOLD0)
    # chunks of whole steps, in a shuffled order, records shuffled inside each chunk
    rng = np.random.default_rng(0)
    for chunk in np.array_split(rng.permutation(steps.max() + 1), 6):
        t = rng.permutation(np.flatnonzero(np.isin(steps, chunk)))
        h = rng.permutation(np.flatnonzero(np.isin(h_st, chunk)))
        acc.add_steps(ids[t], steps[t], score[t], h_ids[h], h_ep[h], h_st[h], h_sc[h])
    res = acc.result()
    np.testing.assert_array_equal(res.keep, whole.keep)
    np.testing.assert_array_equal(res.pvalues, whole.pvalues)
    assert res.quality == whole.quality


def test_holdout_null_matches_a_direct_computation():
    _, (h_ids, h_ep, h_st, h_sc), _ = simulate(n_hold=60, hold_per_step=30, seed=6)
    null = holdout_null(h_ids, h_ep, h_st, h_sc, draws=3, seed=2)
    keys = visit_keys(h_ids, h_st, seed=2)
    expect = np.full((60, 3), np.nan)
    for j, hid in enumerate(np.unique(h_ids)):
        per_epoch = []
        for e in np.unique(h_ep):
            sel = np.flatnonzero((h_ids == hid) & (h_ep == e))
            per_epoch.append(h_sc[sel[np.argsort(keys[sel])][:3]])
        expect[j] = np.mean(per_epoch, axis=0)
    np.testing.assert_allclose(null, expect)


def test_visit_draw_is_uniform_over_the_epoch():
    # 2000 holdout samples, each visited at all 20 steps of one epoch: the drawn step is uniform
    ids = np.repeat(np.arange(2000), 20)
    steps = np.tile(np.arange(20), 2000)
    keys = visit_keys(ids, steps, seed=0)
    first = steps[np.lexsort((keys, ids))][::20]
    counts = np.bincount(first, minlength=20)
    chi2 = ((counts - 100) ** 2 / 100).sum()
    assert chi2 < 43.8  # chi-square(19) 0.999 quantile


def test_conformal_pvalues_and_storey_against_direct_formulas():
    rng = np.random.default_rng(0)
    stat, null = rng.normal(size=300), rng.normal(size=(80, 4))
    direct = (1 + (null[None, :, :] <= stat[:, None, None]).sum(1).mean(1)) / 81
    np.testing.assert_allclose(conformal_pvalues(stat, null), direct)
    p = rng.uniform(size=1000) * 0.999 + 0.001
    assert clean_fraction(p, lam=0.2) == pytest.approx(min(1.0, np.mean(p > 0.2) / 0.8))


def test_bh_decision_against_a_direct_step_up():
    rng = np.random.default_rng(1)
    p = np.r_[rng.uniform(size=700), rng.uniform(size=300) * 1e-3]
    keep, pi0 = decide(p, method="bh", false_discard_rate=0.1)
    srt = np.sort(p)
    k = max([i + 1 for i in range(len(p)) if pi0 * srt[i] * len(p) / (i + 1) <= 0.1], default=0)
    assert np.sum(~keep) == k
    assert np.all(p[~keep] <= srt[k - 1])


def test_determinism_and_seed():
    a, _ = run(0.3, 7)
    b, _ = run(0.3, 7)
    np.testing.assert_array_equal(a.keep, b.keep)
    np.testing.assert_array_equal(a.pvalues, b.pvalues)
    c, _ = run(0.3, 7, seed=1)
    assert not np.array_equal(a.pvalues, c.pvalues)


@pytest.mark.parametrize("mutate, message", [
    (lambda t, h: ((t[0], t[1], np.r_[t[2][:-1], np.nan]), h), "NaN or inf"),
    (lambda t, h: (t, tuple(a[h[0] < HOLD0 + 10] for a in h)), "hold out at least 20"),
    (lambda t, h: (t, (h[0] - HOLD0, h[1], h[2], h[3])), "also training ids"),
    (lambda t, h: (t, (h[0], h[1][:-1], h[2], h[3])), "one entry per record"),
    (lambda t, h: ((t[0].astype(float) + 0.5, t[1], t[2]), h), "integer ids"),
    (lambda t, h: (t, tuple(a[h[2] != 3] for a in h)), "no holdout records"),
])
def test_bad_inputs_one_line_errors(mutate, message):
    train, hold, _ = simulate(n_train=200, n_hold=100, seed=8)
    train, hold = mutate(train, hold)
    with pytest.raises(ValueError, match=message) as exc:
        calibrated_filter(*train, *hold)
    assert "\n" not in str(exc.value)


def test_bad_options_and_unknown_ids():
    (ids, steps, score), hold, _ = simulate(n_train=200, n_hold=100, seed=9)
    for kw, message in (({"method": "vote"}, "unknown decision"), ({"lam": 1.0}, "lam must be"),
                        ({"reference_quality": 1.5}, "reference_quality"), ({"normalize": "z"}, "normalize"),
                        ({"false_discard_rate": 0.0}, "false_discard_rate")):
        with pytest.raises(ValueError, match=message):
            calibrated_filter(ids, steps, score, *hold, **kw)
    acc = CalibratedStage2(np.arange(100), np.arange(100) + HOLD0)
    with pytest.raises(ValueError, match="not declared"):
        acc.add_train(ids, score)
    with pytest.raises(ValueError, match="no holdout records"):
        CalibratedStage2(np.arange(200), np.arange(100) + HOLD0).result()
    with pytest.raises(ValueError, match="no record"):
        acc2 = CalibratedStage2(np.arange(201), np.arange(100) + HOLD0)
        acc2.add_train(ids, score)
        acc2.add_holdout(*hold)
        acc2.result()


def test_per_step_standardisation_removes_the_score_drift():
    # the location and scale of the scores drift from step to step; standardising each step by the holdout
    # scores of that step finds far more of the planted noise than averaging raw scores
    train, hold, corrupted = simulate(noise=0.2, shift=-4.0, seed=10)
    recall = {}
    for norm in ("step", "none"):
        res = calibrated_filter(*train, *hold, normalize=norm)
        recall[norm] = np.mean(~res.keep[corrupted])
        assert np.mean(~res.keep[~corrupted]) <= 0.05
    assert recall["step"] >= 0.75  # the t(4) tails of the two groups overlap: ~0.8 is what the data allow
    assert recall["step"] >= recall["none"] + 0.15
