"""Same-label kNN (keepset.scoring.knn) against a float64 numpy brute force: duplicates, ties, labels,
small classes, approximate recall, determinism and bad inputs."""

import sys

import numpy as np
import pytest
import torch

from keepset.scoring import knn
from keepset.scoring.knn import recall_at_k, same_label_knn

try:
    import faiss  # noqa: F401
    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False

needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss-cpu not installed (pip install 'keepset[knn]')")
EXACT_BACKENDS = ["torch", pytest.param("faiss", marks=needs_faiss)]


def _reference(x, labels, k):
    """Float64 distance matrix per label, the row itself at +inf, full argsort: [N, k-1] distances and ids."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    dist = np.full((n, k - 1), np.inf)
    ids = np.full((n, k - 1), -1)
    full = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    full[labels[:, None] != labels[None, :]] = np.inf  # other labels are never neighbours
    np.fill_diagonal(full, np.inf)  # the row itself, by position
    order = np.argsort(full, axis=1, kind="stable")[:, :k - 1]
    d = np.take_along_axis(full, order, 1)
    ok = np.isfinite(d)
    dist[ok], ids[ok] = d[ok], order[ok]
    return dist, ids, full


def _check_against_reference(x, labels, k, got_d, got_i, atol=1e-5):
    ref_d, ref_i, full = _reference(x, labels, k)
    assert got_d.shape == got_i.shape == (len(x), k - 1)
    assert got_d.dtype == np.float32 and got_i.dtype == np.int64
    # the sorted distances are unique whatever the order among ties
    assert np.array_equal(np.isinf(got_d), np.isinf(ref_d))
    fin = np.isfinite(ref_d)
    assert np.allclose(got_d[fin], ref_d[fin], atol=atol)
    assert np.all(got_i[~fin] == -1)
    rows, cols = np.nonzero(fin)
    ids = got_i[rows, cols]
    assert np.all(ids != rows)  # never the row itself
    assert np.all(labels[ids] == labels[rows])  # same label only
    assert np.allclose(full[rows, ids], got_d[rows, cols], atol=atol)  # each id really is at that distance
    for r in range(len(x)):  # no neighbour twice; ids equal the reference's where no tie makes order ambiguous
        found = got_i[r][got_i[r] >= 0]
        assert len(set(found.tolist())) == len(found)
        strict = ref_d[r] < (ref_d[r][fin[r]].max() if fin[r].any() else 0) - 1e-6
        assert set(ref_i[r][strict].tolist()) <= set(found.tolist())


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_exact_matches_numpy_bruteforce_with_duplicates_ties_and_labels(backend):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 5)).astype(np.float32)
    x[:60] = rng.integers(-2, 3, size=(60, 5))  # integer grid: many exactly equal distances (ties)
    x[100] = x[101] = x[102] = x[7]  # exact duplicates
    labels = rng.permutation(np.repeat([0, 1, 2, 3], [100, 80, 57, 3]))  # interleaved; one class smaller than K
    labels[[7, 100, 101]] = 1
    labels[102] = 2  # a duplicate under another label is not a neighbour of the others
    got_d, got_i = same_label_knn(x, labels, 6, method="exact", exact_backend=backend, chunk_rows=7)
    _check_against_reference(x, labels, 6, got_d, got_i)
    # a duplicate at distance 0 that is not the row itself is a neighbour, exactly 0, ordered by position
    assert got_i[7, :2].tolist() == [100, 101] and got_d[7, :2].tolist() == [0.0, 0.0]
    assert got_i[100, :2].tolist() == [7, 101] and 102 not in got_i[7]


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_hand_example_small_classes_capped(backend):
    x = np.array([[0, 0], [0, 0], [3, 4], [0, 0], [9, 9], [1, 1]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 2, 2])
    d, i = same_label_knn(x, labels, 4, method="exact", exact_backend=backend)
    inf = np.inf
    assert np.array_equal(d, np.array([[0, 5, inf], [0, 5, inf], [5, 5, inf], [inf, inf, inf],
                                       [np.hypot(8, 8)] + [inf] * 2, [np.hypot(8, 8)] + [inf] * 2], dtype=np.float32))
    # class 0 has 3 rows: K = 4 is capped at 2 neighbours; row 3 is alone in its class: none (-1)
    assert i.tolist() == [[1, 2, -1], [0, 2, -1], [0, 1, -1], [-1, -1, -1], [5, -1, -1], [4, -1, -1]]


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_more_duplicates_than_k_never_returns_the_row_itself(backend):
    x = np.zeros((15, 3), dtype=np.float32)  # 15 identical rows
    x = np.vstack([x, np.ones((5, 3), dtype=np.float32)])
    d, i = same_label_knn(x, np.zeros(20, dtype=int), 5, method="exact", exact_backend=backend)
    assert np.all(d[:15] == 0.0) and np.all(i[:15] < 15)
    assert np.all(i != np.arange(20)[:, None])
    assert all(len(set(r)) == 4 for r in i.tolist())


def _clusters(n, d=32, centres=60, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(scale=4.0, size=(centres, d))
    return (c[rng.integers(0, centres, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("method", ["ivf", pytest.param("hnsw", marks=needs_faiss)])
def test_approximate_recall_on_clustered_data(method):
    x = _clusters(6500)
    labels = np.zeros(len(x), dtype=np.int64)  # one class above APPROX_EXACT_MAX: the index is really used
    labels[:500] = 1  # and a small class, searched exactly
    exact_d, exact_i = same_label_knn(x, labels, 10, method="exact")
    got_d, got_i = same_label_knn(x, labels, 10, method=method)
    assert recall_at_k(got_i, exact_i) >= 0.95
    assert np.array_equal(got_i[:500], exact_i[:500])
    # approximate neighbours are real same-label rows at their true distances, never the row itself
    assert np.all(got_i != np.arange(len(x))[:, None]) and np.all(labels[got_i] == labels[:, None])
    true = np.linalg.norm(x[got_i] - x[:, None, :], axis=-1)
    assert np.allclose(true, got_d, atol=1e-4)
    assert np.all(got_d >= exact_d - 1e-4)  # an approximate k-th neighbour is never nearer than the exact one


def test_ivf_probing_every_cell_is_exact():
    x = _clusters(6000, d=8, centres=20, seed=3)
    labels = np.zeros(len(x), dtype=np.int64)
    d_ivf, i_ivf = same_label_knn(x, labels, 5, method="ivf", nlist=16, nprobe=16)
    d_ex, i_ex = same_label_knn(x, labels, 5, method="exact")
    assert np.allclose(d_ivf, d_ex) and recall_at_k(i_ivf, i_ex) == 1.0


def test_auto_is_exact_up_to_the_threshold_and_ivf_above(monkeypatch):
    x = _clusters(3000, d=16)
    labels = np.arange(3000) % 3
    exact = same_label_knn(x, labels, 10, method="exact")
    auto = same_label_knn(x, labels, 10, method="auto")
    assert all(np.array_equal(a, b) for a, b in zip(exact, auto))  # classes of 1,000 <= AUTO_EXACT_MAX
    monkeypatch.setattr(knn, "AUTO_EXACT_MAX", 500)
    monkeypatch.setattr(knn, "APPROX_EXACT_MAX", 100)
    ivf = same_label_knn(x, labels, 10, method="ivf", seed=4)
    auto = same_label_knn(x, labels, 10, method="auto", seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(ivf, auto))


@pytest.mark.parametrize("method", ["exact", "ivf", pytest.param("hnsw", marks=needs_faiss)])
def test_same_seed_same_bytes_with_two_threads(method, monkeypatch):
    monkeypatch.setattr(knn, "APPROX_EXACT_MAX", 100)  # the index is used on this small class
    x = _clusters(2500, d=24, seed=5)
    labels = np.zeros(len(x), dtype=np.int64)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = same_label_knn(x, labels, 8, method=method, seed=1, nprobe=4)
        b = same_label_knn(x, labels, 8, method=method, seed=1, nprobe=4)
    finally:
        torch.set_num_threads(before)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_rows_searches_a_subset_exactly(backend):
    x = _clusters(700, d=6, seed=2)
    labels = np.arange(700) % 4
    full = same_label_knn(x, labels, 7, exact_backend=backend)
    rows = np.array([699, 0, 5, 5, 321])
    sub = same_label_knn(x, labels, 7, exact_backend=backend, rows=rows)
    assert np.array_equal(sub[0], full[0][rows]) and np.array_equal(sub[1], full[1][rows])


def test_recall_at_k_by_hand():
    exact = np.array([[1, 2, 3], [0, 2, -1]])
    approx = np.array([[3, 9, 1], [2, 0, -1]])
    assert recall_at_k(approx, exact) == pytest.approx((2 / 3 + 1) / 2)
    with pytest.raises(ValueError, match="same"):
        recall_at_k(approx[:, :2], exact)


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=np.array([[0.0, np.nan], [1, 1]])), "NaN"),
    (dict(x=np.ones((2, 2, 2))), "2-D"),
    (dict(labels=[0, 0, 0]), "labels has 3 entries but x has 4 rows"),
    (dict(labels=[0.5, 0, 1, 1]), "integers"),
    (dict(k=1), "k .* >= 2"),
    (dict(k=True), "k .* >= 2"),
    (dict(method="lsh"), "unknown kNN method"),
    (dict(chunk_rows=0), "chunk_rows"),
    (dict(nprobe=0, method="ivf"), "nprobe"),
    (dict(seed=-1), "seed"),
    (dict(rows=[0, 1], method="ivf"), "rows= .* method='exact'"),
    (dict(rows=[0, 9]), r"rows must be positions in \[0, 4\)"),
    (dict(exact_backend="blas"), "exact_backend"),
])
def test_bad_inputs_raise_one_line_value_errors(kwargs, match):
    args = dict(x=np.ones((4, 2)), labels=[0, 0, 1, 1], k=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as err:
        same_label_knn(args.pop("x"), args.pop("labels"), args.pop("k"), **args)
    assert "\n" not in str(err.value)


def test_hnsw_without_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "keepset\[knn\]"') as err:
        same_label_knn(np.ones((4, 2)), [0, 0, 1, 1], 2, method="hnsw")
    assert "\n" not in str(err.value)
    # exact and ivf need no faiss
    d, _ = same_label_knn(np.eye(4), [0, 0, 0, 0], 2, method="ivf")
    assert np.allclose(d, np.sqrt(2))
