"""Baseline selectors against hand computations and brute force."""

import itertools

import numpy as np
import pytest

from keepset.evaluation.flagging import two_means_flags, two_means_threshold
from keepset.selection.baselines import (
    class_quotas, select_class_balanced, select_random, select_random_class_balanced,
)
from keepset.selection.ccs import ccs_budgets, ccs_select
from keepset.selection.kcenter import k_center_greedy, k_center_order
from keepset.selection.moderate import class_centre_distances, moderate_ds, moderate_scores
from keepset.selection.registry import get_selector
from keepset.selection.setops import complement, difference, evaluate_expression, intersect, union


def test_random_is_seeded_and_exact():
    a, b = select_random(100, 0.3, seed=4), select_random(100, 0.3, seed=4)
    assert a.sum() == 30 and (a == b).all() and not (a == select_random(100, 0.3, seed=5)).all()
    with pytest.raises(ValueError, match="ratio"):
        select_random(10, 1.5)


def test_class_quotas_largest_remainder():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)  # ratio 0.5: exact 2.5, 1.5, 1.0 -> total 5
    # remainders 0.5 and 0.5 tie; the smaller class index wins
    assert class_quotas(labels, 0.5) == {0: 3, 1: 1, 2: 1}


def test_class_balanced_top_by_hand():
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    keep = select_class_balanced(scores, labels, 0.5)
    assert np.flatnonzero(keep).tolist() == [1, 2, 4, 6]
    keep_low = select_class_balanced(scores, labels, 0.5, largest=False)
    assert np.flatnonzero(keep_low).tolist() == [0, 3, 5, 7]
    rb = select_random_class_balanced(labels, 0.5, seed=0)
    assert rb[:4].sum() == 2 and rb[4:].sum() == 2


def test_ccs_budgets_by_hand():
    # sparsest first: bin1 (1): min(1, 12//4=3)=1 -> 11 left; bin3 (2): min(2, 11//3=3)=2 -> 9;
    # bin0 (5): min(5, 9//2=4)=4 -> 5; bin2 (10): min(10, 5)=5
    assert ccs_budgets([5, 1, 10, 2], 12).tolist() == [4, 1, 5, 2]
    assert ccs_budgets([0, 3, 3], 4).tolist() == [0, 2, 2]  # empty bin takes nothing
    assert ccs_budgets([2, 2], 4).tolist() == [2, 2]
    with pytest.raises(ValueError, match="budget"):
        ccs_budgets([1, 1], 3)


def test_ccs_select_cutoff_and_strata():
    scores = np.arange(100, dtype=float)  # uniform scores, high = hard
    keep = ccs_select(scores, 0.2, hard_cutoff=0.1, n_strata=9, seed=0)
    assert keep.sum() == 20
    assert not keep[90:].any()  # the 10 hardest are cut
    # remaining 0..89 in 9 equal-width bins of 10 samples: budgets 2 each (sparsest first, 20 // 9 ...)
    per_bin = np.bincount(np.minimum((np.arange(90) / 89 * 9).astype(int), 8), weights=keep[:90], minlength=9)
    expected = ccs_budgets(np.bincount(np.minimum((np.arange(90) / 89 * 9).astype(int), 8), minlength=9), 20)
    np.testing.assert_array_equal(per_bin, expected)
    # hardest = low cuts the lowest scores instead
    keep_low = ccs_select(scores, 0.2, hard_cutoff=0.1, hardest="low", seed=0)
    assert not keep_low[:10].any() and keep_low.sum() == 20
    # the cutoff shrinks when ratio + cutoff > 1
    assert ccs_select(scores, 0.95, hard_cutoff=0.2).sum() == 95
    assert (ccs_select(scores, 0.3, seed=1) == ccs_select(scores, 0.3, seed=1)).all()


def test_ccs_covers_sparse_regions():
    # 90 samples crowd near 0, 10 spread out: CCS keeps all of the sparse ones, top-k by score would not
    scores = np.r_[np.linspace(0, 0.1, 90), np.linspace(0.5, 1.0, 10)]
    keep = ccs_select(scores, 0.3, n_strata=10, seed=0)
    assert keep[90:].all() and keep.sum() == 30


def test_moderate_ds_on_hand_made_points():
    # class 0 around the origin: coordinate-wise median of its 5 points is (0, 0)
    pts0 = np.array([[1, 0], [0, 2], [-3, 0], [0, -4], [5, 0]], dtype=float)  # distances 1, 2, 3, 4, 5
    # class 1: median (101, 0) -> distances 1, 0, 3
    pts1 = np.array([[100, 0], [101, 0], [104, 0]], dtype=float)
    x = np.vstack([pts0, pts1])
    y = np.array([0] * 5 + [1] * 3)
    d = class_centre_distances(x, y)
    np.testing.assert_allclose(d, [1, 2, 3, 4, 5, 1, 0, 3])
    np.testing.assert_allclose(class_centre_distances(x, y, centre="mean")[5:], [5 / 3, 2 / 3, 7 / 3])
    # global ranking (stable): 6(0) 0(1) 5(1) 1(2) 2(3) 7(3) 3(4) 4(5); k=4 keeps ranks 2..5
    keep = moderate_ds(x, y, 0.5)
    assert np.flatnonzero(keep).tolist() == sorted([5, 1, 2, 7])
    # k=2 keeps ranks 3..4: samples 1 and 2
    assert np.flatnonzero(moderate_ds(x, y, 0.25)).tolist() == [1, 2]
    s = moderate_scores(x, y)
    assert set(np.argsort(-s, kind="stable")[:2].tolist()) == {1, 2}
    with pytest.raises(ValueError, match="centre"):
        class_centre_distances(x, y, centre="mode")


def _greedy_loop(x, k, first):
    chosen = [first]
    while len(chosen) < k:
        best, best_d = None, -1.0
        for i in range(len(x)):
            if i in chosen:
                continue
            d = min(np.linalg.norm(x[i] - x[c]) for c in chosen)
            if d > best_d + 1e-9:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def _radius(x, centres):
    return max(min(np.linalg.norm(x[i] - x[c]) for c in centres) for i in range(len(x)))


def test_k_center_vs_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2))
    first = int(np.random.default_rng(3).integers(12))
    order = k_center_order(x, 4, seed=3)
    assert order.tolist() == _greedy_loop(x, 4, first)
    keep = k_center_greedy(x, 4 / 12, seed=3)
    assert sorted(np.flatnonzero(keep).tolist()) == sorted(order.tolist())
    best = min(_radius(x, c) for c in itertools.combinations(range(12), 4))
    assert _radius(x, np.flatnonzero(keep)) <= 2 * best + 1e-9  # greedy's 2-approximation guarantee
    # nested: smaller selections are prefixes; initial centres count towards k
    assert k_center_order(x, 2, seed=3).tolist() == order[:2].tolist()
    init = np.zeros(12, dtype=bool)
    init[[0, 1]] = True
    keep2 = k_center_greedy(x, 0.5, initial=init)
    assert keep2.sum() == 6 and keep2[[0, 1]].all()


def test_set_algebra_and_expressions():
    a = np.array([1, 1, 0, 0, 1], dtype=bool)
    b = np.array([1, 0, 1, 0, 1], dtype=bool)
    assert intersect(a, b).tolist() == [1, 0, 0, 0, 1]
    assert union(a, b).tolist() == [1, 1, 1, 0, 1]
    assert difference(a, b).tolist() == [0, 1, 0, 0, 0]
    assert complement(a).tolist() == [0, 0, 1, 1, 0]
    with pytest.raises(ValueError, match="same length"):
        union(a, b[:3])
    table = {"id": np.arange(5), "label": np.zeros(5, int), "clip": np.array([5.0, 4, 3, 2, 1]),
             "mimic": np.array([0.0, 1, 2, 3, 4]), "flag": a}
    # CLIP top 60% = {0,1,2}; mimic bottom 40% = {0,1} -> {2}
    assert evaluate_expression("top(clip, 0.6) - bottom(mimic, 0.4)", table).tolist() == [0, 0, 1, 0, 0]
    assert evaluate_expression("(top(clip, 0.4) | flag) & ~bottom(mimic, 0.2)", table).tolist() == [0, 1, 0, 0, 1]
    assert evaluate_expression("flag ^ top(mimic, 0.4)", table).tolist() == [1, 1, 0, 1, 0]
    for bad in ("__import__('os')", "clip", "top(clip)", "top(nope, 0.5)", "flag +", "flag * flag"):
        with pytest.raises(ValueError):
            evaluate_expression(bad, table)


def test_registered_table_selectors():
    n = 50
    rng = np.random.default_rng(0)
    table = {"id": np.arange(n), "label": np.repeat([0, 1], 25), "el2n": rng.random(n)}
    assert get_selector("ccs")(table, column="el2n", ratio=0.3, hard_cutoff=0.1).sum() == 15
    assert get_selector("random")(table, ratio=0.2, seed=1).sum() == 10
    bal = get_selector("random")(table, ratio=0.2, balanced=True)
    assert bal[:25].sum() == 5 and bal[25:].sum() == 5
    assert (get_selector("balanced")(table, column="el2n", ratio=0.4)
            == select_class_balanced(table["el2n"], table["label"], 0.4)).all()
    assert get_selector("expr")(table, expr="top(el2n, 0.5) - top(el2n, 0.2)").sum() == 15
    with pytest.raises(ValueError, match="--column"):
        get_selector("ccs")(table, ratio=0.3)
    with pytest.raises(FileNotFoundError):
        get_selector("moderate")(table, ratio=0.3, features="/nonexistent/feats.npy")


def test_registered_feature_selectors_join_features_by_id(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(30, 4)).astype(np.float32)
    ids = np.arange(30) * 10
    perm = rng.permutation(30)  # the features file lists the samples in another order
    np.savez(tmp_path / "f.npz", ids=ids[perm], features=feats[perm])
    table = {"id": ids, "label": np.repeat([0, 1, 2], 10)}
    m = get_selector("moderate")(table, ratio=0.5, features=str(tmp_path / "f.npz"))
    assert (m == moderate_ds(feats, table["label"], 0.5)).all()
    k = get_selector("kcenter")(table, ratio=0.2, features=str(tmp_path / "f.npz"), seed=2)
    assert k.sum() == 6
    np.savez(tmp_path / "bad.npz", ids=ids[:5], features=feats[:5])
    with pytest.raises(ValueError, match="25 ids only in the score table"):
        get_selector("kcenter")(table, ratio=0.2, features=str(tmp_path / "bad.npz"))
    np.save(tmp_path / "f.npy", feats)  # a bare array has no ids: refused, never joined by row position
    with pytest.raises(ValueError, match="ids"):
        get_selector("kcenter")(table, ratio=0.2, features=str(tmp_path / "f.npy"))


def test_two_means_flags_vs_brute_force():
    rng = np.random.default_rng(2)
    v = np.r_[rng.normal(0, 1, 30), rng.normal(5, 1, 10)]
    s = np.sort(v)
    costs = [((s[:j] - s[:j].mean()) ** 2).sum() + ((s[j:] - s[j:].mean()) ** 2).sum() for j in range(1, len(s))]
    j = int(np.argmin(costs)) + 1
    assert two_means_threshold(v) == s[j - 1]
    assert two_means_flags(v).sum() == len(s) - j
    assert not two_means_flags(np.ones(5)).any()


def test_cleanlab_peer_finds_flipped_labels():
    pytest.importorskip("cleanlab")
    from keepset.scoring.peers import cleanlab_label_issues, out_of_sample_probs

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [6, 0], [0, 6]], dtype=float)
    y_true = np.repeat([0, 1, 2], 60)
    x = centres[y_true] + rng.normal(size=(180, 2))
    y = y_true.copy()
    flipped = rng.choice(180, 18, replace=False)
    y[flipped] = (y[flipped] + 1) % 3
    probs = out_of_sample_probs(x, y, n_folds=4, seed=0)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
    issues, quality = cleanlab_label_issues(y, probs)
    truth = y != y_true
    assert (issues & truth).sum() >= 15 and (issues & ~truth).sum() <= 5
    np.testing.assert_allclose(quality, probs[np.arange(180), y])  # self-confidence


def test_class_balanced_on_a_small_subset_of_a_large_label_set_needs_num_classes():
    scores = np.array([0.3, 0.1, 0.9, 0.5])
    labels = np.array([0, 7, 7, 9])  # 4 samples of a 10-class set: labels above N need num_classes
    with pytest.raises(ValueError, match="pass num_classes"):
        select_class_balanced(scores, labels, 0.5)
    keep = select_class_balanced(scores, labels, 0.5, num_classes=10)
    assert keep.sum() == 2 and keep[2]  # class 7's best (0.9) is kept
    assert select_random_class_balanced(labels, 0.5, num_classes=10).sum() == 2
    assert moderate_ds(np.eye(4), labels, 0.5, num_classes=10).sum() == 2
