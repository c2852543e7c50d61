"""Stage 2 binarisation and voting against brute force / scikit-learn / hand computations."""


import numpy as np
import pytest

from keepset.recorder import DynamicsRecorder
from keepset.selection.binarize import binarize_records, gmm_split, kmeans_split
from keepset.selection.stage2 import aggregate_votes, estimate_quality, rank_by_dynamics, stage2_filter
from keepset.selection.topk import select_top


def brute_force_2means(v):
    """Best split of sorted values by within-cluster sum of squares, trying every split."""
    s = np.sort(v)
    best, thr = np.inf, None
    for j in range(1, len(s)):
        if s[j - 1] == s[j]:
            continue
        sse = ((s[:j] - s[:j].mean()) ** 2).sum() + ((s[j:] - s[j:].mean()) ** 2).sum()
        if sse < best - 1e-12:
            best, thr = sse, s[j]
    return v >= thr


def test_kmeans_matches_brute_force_in_every_group():
    rng = np.random.default_rng(0)
    groups = [rng.normal(0, 1, n) * rng.uniform(0.1, 5) + rng.choice([0, 3], n) for n in (2, 3, 7, 40, 64)]
    v = np.concatenate(groups)
    g = np.repeat(np.arange(len(groups)), [len(x) for x in groups])
    perm = rng.permutation(len(v))  # order must not matter
    got = np.empty(len(v), bool)
    got[perm] = kmeans_split(v[perm], g[perm])
    start = 0
    for grp in groups:
        assert np.array_equal(got[start:start + len(grp)], brute_force_2means(grp))
        start += len(grp)


def test_kmeans_keeps_constant_and_singleton_groups():
    v = np.array([1.0, 1.0, 1.0, 5.0])
    g = np.array([0, 0, 0, 1])
    assert kmeans_split(v, g).all()


def test_gmm_matches_sklearn_on_separated_mixtures():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(1)
    vs, gs, want = [], [], []
    for k in range(5):
        v = np.r_[rng.normal(-1, 0.3, 30 + 5 * k), rng.normal(1.5, 0.6, 40)]
        gm = GaussianMixture(2, random_state=0).fit(v[:, None])
        hi = np.argmax(gm.means_.ravel())
        want.append(gm.predict_proba(v[:, None])[:, hi] > 0.5)
        vs.append(v); gs.append(np.full(len(v), k))
    got = gmm_split(np.concatenate(vs), np.concatenate(gs))
    assert (got == np.concatenate(want)).mean() > 0.99


def test_threshold_is_one_over_batch_size():
    normed = np.array([0.5, 0.2, 0.3, 0.1, 0.4, 0.5, 0.2, 0.3])
    step = np.array([0, 0, 0, 1, 1, 1, 2, 2])  # batch sizes 3, 3, 2
    assert binarize_records(normed, step, method="threshold").tolist() == [1, 0, 0, 0, 1, 1, 0, 0]


def test_votes_by_hand():
    d = np.array([[1, 0, 1, -1], [1, 0, 0, -1], [0, 1, 0, 1]], np.int8)
    assert aggregate_votes(d).tolist() == [True, False, False, True]
    # weighted 1,2,3: sample 1 gets 3/6 keep -> kept; sample 0 gets 3/6 -> kept; sample 2 gets 1/6
    assert aggregate_votes(d, vote="weighted").tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="never scored"):
        aggregate_votes(np.array([[1, -1]], np.int8))
    assert aggregate_votes(np.array([[1, -1]], np.int8), unseen="drop").tolist() == [True, False]


def test_stage2_filter_on_recorded_dynamics(tmp_path):
    rec = DynamicsRecorder(tmp_path, ("mimic", "mimic_normed"), chunk_rows=4)
    ids = np.array([f"{i:032x}" for i in (5, 9, 1, 7, 3, 8)])
    good = np.array([True, True, False, True, False, True])
    rng = np.random.default_rng(0)
    for epoch in range(2):
        for step_in_epoch, idx in enumerate(np.split(rng.permutation(6), 2)):
            raw = np.where(good[idx], 1.0, -1.0) + rng.normal(0, 0.05, 3)
            normed = np.exp(raw) / np.exp(raw).sum()
            rec.record(ids[idx], epoch * 2 + step_in_epoch, epoch, mimic=raw, mimic_normed=normed)
    rec.flush()
    reopened = DynamicsRecorder.open(tmp_path)
    assert reopened.n_records == 12 and len(list(tmp_path.glob("part-*.parquet"))) == 2  # flushed at 6 and 12
    assert np.array_equal(stage2_filter(reopened, binarize="threshold", ids=ids), good)
    # the same decisions in any order of the ids (a shuffled table)
    perm = rng.permutation(6)
    assert np.array_equal(stage2_filter(reopened, ids=ids[perm]), good[perm])
    assert estimate_quality(good) == pytest.approx(4 / 6)
    assert rank_by_dynamics(reopened, 0.5, ids=ids).sum() == 3
    with pytest.raises(ValueError, match="2 ids that the samples lack"):
        stage2_filter(reopened, ids=ids[:4])
    extra = np.r_[ids, np.array(["f" * 32])]
    with pytest.raises(ValueError, match="1 samples were never scored"):
        stage2_filter(reopened, ids=extra)
    assert stage2_filter(reopened, ids=extra, unseen="keep")[-1]


def test_select_top_ties_and_errors():
    s = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert select_top(s, 0.4).tolist() == [False, True, True, False, False]  # earlier tie wins
    assert select_top(s, 0.4, largest=False).tolist() == [True, False, False, True, False]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        select_top(s, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        select_top(np.array([1.0, np.nan]), 0.5)


@pytest.mark.parametrize("method", ["threshold", "kmeans", "gmm"])
def test_streamed_filter_equals_whole_array_binarisation(method, tmp_path):
    """Reading the log in small chunks (steps cut across chunks) gives the decisions of one pass over
    all records, voted by hand."""
    rng = np.random.default_rng(7)
    n, epochs, bs = 50, 4, 8
    rec = DynamicsRecorder(tmp_path, ("mimic", "mimic_normed"), chunk_rows=13)
    rows = {"id": [], "step": [], "epoch": [], "mimic": [], "mimic_normed": []}
    step = 0
    for e in range(epochs):
        for idx in np.array_split(rng.permutation(n), int(np.ceil(n / bs))):
            raw = rng.normal(size=len(idx)) + (idx % 3 == 0)
            normed = np.exp(raw) / np.exp(raw).sum()
            rec.record(idx, step, e, mimic=raw, mimic_normed=normed)
            for k, v in (("id", idx), ("step", np.full(len(idx), step)), ("epoch", np.full(len(idx), e)),
                         ("mimic", raw), ("mimic_normed", normed)):
                rows[k].append(v)
            step += 1
    rec.flush()
    flat = {k: np.concatenate(v) for k, v in rows.items()}
    field = "mimic_normed" if method == "threshold" else "mimic"
    keep = binarize_records(flat[field], flat["step"], method=method)
    w = flat["epoch"] + 1.0
    yes = np.bincount(flat["id"], w * keep, n)
    total = np.bincount(flat["id"], w, n)
    from keepset.selection import stage2

    got = stage2.stage2_filter(DynamicsRecorder.open(tmp_path), binarize=method, vote="weighted",
                               ids=np.arange(n))
    assert np.array_equal(got, yes / total >= 0.5)
    # a tiny read chunk cuts steps in pieces: the same decisions
    chunks = list(stage2.step_decisions(DynamicsRecorder.open(tmp_path), binarize=method, rows=5))
    assert np.array_equal(np.concatenate([c["keep"] for c in chunks]), keep)
