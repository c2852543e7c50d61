"""Same-label k-nearest neighbours (the search behind SDS), exact or approximate, as plain functions over arrays.

``same_label_knn(x [N, d], labels [N], k)`` returns, for every row, its K-1 nearest rows *of the same label*
(Euclidean), the row itself excluded by position: a duplicate of the row at distance 0 is a neighbour,
the row is not. Each label is searched on its own.

Methods
-------
``"exact"``  brute force per class: faiss ``IndexFlatL2`` when installed (measured ~1.4x faster per core),
             otherwise ``||b||^2 - 2 a.b`` in float32 blocks of at most ``chunk_rows x chunk_rows``
             (torch matrix products, a running top-k merged block by block). Quadratic in the class size.
``"ivf"``    an inverted file searched with matrix products: per class, seeded k-means (``nlist`` cells,
             default ``round(sqrt(n))``); each row probes its ``nprobe`` nearest cells (default 12, more in classes
             under 28,000 rows so that at least 2,000 rows are compared) and is
             compared with every row of those cells: its own cell first (the best K-1 there bound what
             another cell can contribute), then one matrix product per (query chunk, probed cell). It probes
             exactly as faiss ``IndexIVFFlat`` does, at the speed of a matrix product instead of faiss's
             per-query scan (see docs/performance.md, "SDS at scale"). No faiss needed.
``"hnsw"``   faiss ``IndexHNSWFlat`` per class (needs ``pip install "keepset[knn]"``); the graph is built on
             one thread so that it, and hence the result, is the same on every run (slow to build).
``"auto"``   per class: exact up to ``AUTO_EXACT_MAX`` rows, ``"ivf"`` above.

Classes of at most ``APPROX_EXACT_MAX`` rows are always searched exactly, whatever the method; so is any
row for which an approximate search found fewer than K-1 candidates.

The returned distances are recomputed from the two rows (``||a - b||`` in float32, so an exact duplicate is
at 0.0 exactly) and each row's neighbours are sorted by (distance, position).

A class with fewer than K rows has fewer than K-1 neighbours: the missing entries are distance ``inf`` and
position ``-1`` (a row alone in its class has none).

Threads: ``threads`` Python workers share the row chunks, with torch and faiss single-threaded inside each
(restored afterwards): no OpenMP barrier, so a core taken by another process costs its share only.
Determinism: every random choice (k-means training sample and initial centroids) comes from ``seed``;
same seed and thread count, same bytes ("ivf" does not even depend on the thread count).

Memory: besides ``x``, one class copy and O(threads * chunk_rows^2) floats for "exact", or
O(threads * chunk_rows * (nprobe + K + cell size)) for "ivf".
"""

from __future__ import annotations

import numbers

import numpy as np

#: the methods of ``same_label_knn``
METHODS = ("exact", "ivf", "hnsw", "auto")
#: ``method="auto"`` searches a class exactly up to this many rows. Measured per core, d = 512: exact takes
#: 4.6 s for a class of 20,000 (ivf 3.6x faster) and 1.2 s for 10,000 (ivf 2.2x faster, recall 0.96):
#: exactness is kept where it costs seconds, and every data set keepset ships (<= 6,000 per class) stays exact
AUTO_EXACT_MAX = 20_000
#: an approximate method searches a class of at most this many rows exactly (0.5 s per core at d = 512; the
#: index would save little and lose recall)
APPROX_EXACT_MAX = 5000
#: default cells probed per row by ``"ivf"``: at least ``DEFAULT_NPROBE`` cells and at least
#: ``DEFAULT_MIN_CANDIDATES`` rows (smaller classes have smaller cells, and their neighbours are relatively
#: farther: measured recall@9 on the synthetic bench data, 10,000 rows in 100 cells: 0.956 with 12 probes,
#: 0.985 with 20, the rule's choice)
DEFAULT_NPROBE = 12
DEFAULT_MIN_CANDIDATES = 2000
#: default HNSW parameters: neighbours per node, construction and search beam widths
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 64
DEFAULT_EF_SEARCH = 64
#: k-means for ``"ivf"``: iterations and training rows per cell (a seeded subsample of the class)
KMEANS_ITERATIONS = 10
KMEANS_POINTS_PER_CELL = 32

_FAISS_HINT = 'pip install "keepset[knn]"'


# --------------------------------------------------------------------------------------------- validation
def _positive_int(value, name: str, minimum: int = 1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_inputs(x, labels, k, method):
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"x must be a 2-D array [rows, dim], got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError("x has 0 columns; pass at least one embedding dimension")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"x must hold numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.concatenate([np.isfinite(arr[a:a + 65536]).all(1) for a in range(0, len(arr), 65536)] or [[]])
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"x has {len(bad)} rows with NaN or inf (first at positions {bad[:5].tolist()}); "
                         "re-encode those samples or drop them")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per row of x), got shape {y.shape}")
    if len(y) != len(arr):
        raise ValueError(f"labels has {len(y)} entries but x has {len(arr)} rows; pass one label per row")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    k = _positive_int(k, "k (the neighbourhood size including the sample itself)", 2)
    if method not in METHODS:
        raise ValueError(f"unknown kNN method {method!r}; choose one of {', '.join(METHODS)}")
    return arr, y.astype(np.int64, copy=False), k


def _faiss(what: str = 'method="hnsw"'):
    try:
        import faiss
    except ImportError:
        raise ImportError(f"{what} needs faiss, which is not installed: {_FAISS_HINT}") from None
    return faiss


# --------------------------------------------------------------------------------------------- threads
class _Pool:
    """Runs ``fn(a, b)`` over row ranges ``[a, b)`` on ``threads`` Python threads.

    Torch and faiss run single-threaded inside (``same_label_knn`` sets that): each chunk is computed by
    one thread with no OpenMP barrier, so a core taken by another process slows the search down by its
    share only (OpenMP's spin-waiting threads measured ~5x more CPU time on a loaded 2-core machine), and
    the result does not depend on the thread count.
    """

    def __init__(self, threads: int):
        from concurrent.futures import ThreadPoolExecutor

        self.threads = threads
        self._ex = ThreadPoolExecutor(threads, thread_name_prefix="keepset-knn") if threads > 1 else None

    def map_ranges(self, fn, n: int, step: int) -> None:
        ranges = [(a, min(n, a + step)) for a in range(0, n, max(1, step))]
        if self._ex is None or len(ranges) < 2:
            for a, b in ranges:
                fn(a, b)
            return
        for future in [self._ex.submit(fn, a, b) for a, b in ranges]:
            future.result()

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown()


class _SingleThreadedLibraries:
    """Within the block torch (and faiss, when loaded) use one thread; the previous counts come back after."""

    def __enter__(self):
        import torch

        self._torch = torch.get_num_threads()
        torch.set_num_threads(1)
        self._faiss = None
        try:
            import faiss
        except ImportError:
            return self
        self._faiss = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self._torch)
        if self._faiss is not None:
            import faiss

            faiss.omp_set_num_threads(self._faiss)
        return False


# --------------------------------------------------------------------------------------------- exact
def _exact_block_search(q, qpos, xb, kk: int, chunk_rows: int, pool: _Pool):
    """Nearest ``kk`` rows of ``xb`` [n, d] for each row of ``q`` [m, d] (torch float32), brute force.

    ``qpos`` [m] (int64 tensor) are the queries' own positions in ``xb`` (excluded), or None.
    Blocks of at most ``chunk_rows^2`` distances (wider ones when there are few queries), query blocks
    spread over the pool's threads. Returns the positions [m, kk] int64, ascending distance, -1 where
    n - 1 < kk.
    """
    import torch

    m, n = len(q), len(xb)
    rows_per_block = max(1, min(chunk_rows, -(-m // pool.threads)))
    cols_per_block = max(chunk_rows, chunk_rows * chunk_rows // rows_per_block)  # few queries: wider blocks
    sq_b = (xb * xb).sum(1)
    best_i = torch.full((m, kk), -1, dtype=torch.int64)

    def block(a: int, b: int) -> None:
        qa = q[a:b]
        run_d = torch.full((b - a, kk), float("inf"))
        run_i = torch.full((b - a, kk), -1, dtype=torch.int64)
        for c in range(0, n, cols_per_block):
            xc = xb[c:c + cols_per_block]
            # ||b||^2 - 2 a.b: ||a||^2 is constant along a row, so the row's order is that of the distances
            d2 = torch.addmm(sq_b[None, c:c + len(xc)], qa, xc.T, alpha=-2.0)
            if qpos is not None:
                own = qpos[a:b] - c
                rows = torch.nonzero((own >= 0) & (own < len(xc))).flatten()
                d2[rows, own[rows]] = float("inf")
            vd, vi = torch.topk(d2, min(kk, len(xc)), dim=1, largest=False)
            cat_d = torch.cat([run_d, vd], 1)
            cat_i = torch.cat([run_i, vi + c], 1)
            run_d, sel = torch.topk(cat_d, kk, dim=1, largest=False)
            run_i = torch.gather(cat_i, 1, sel)
        run_i[torch.isinf(run_d)] = -1
        best_i[a:b] = run_i

    pool.map_ranges(block, m, rows_per_block)
    return best_i


def _drop_self(ids, own, kk: int):
    """The ``kk`` best of ``kk + 1`` search results [m, kk + 1] per row without the row itself (row r is
    the query at position ``own[r]``); when the row was not returned (more than ``kk`` exact duplicates of
    it) the last result is dropped instead. Returns positions [m, kk] (-1 where none)."""
    keep = (ids != np.asarray(own)[:, None]) & (ids >= 0)
    rank = np.cumsum(keep, axis=1) - 1
    r, c = np.nonzero(keep & (rank < kk))
    out = np.full((len(ids), kk), -1, dtype=np.int64)
    out[r, rank[r, c]] = ids[r, c]
    return out


def _faiss_search(index, x, kk: int, chunk_rows: int, pool: _Pool):
    """Search every row of ``x`` [n, d] (numpy float32) in a built faiss ``index`` holding all of ``x``,
    the query itself excluded; chunks of ``chunk_rows`` queries spread over the pool's threads.
    Returns positions [n, kk] (torch int64)."""
    import torch

    out = np.full((len(x), kk), -1, dtype=np.int64)

    def block(a: int, b: int) -> None:
        _, ids = index.search(x[a:b], kk + 1)
        out[a:b] = _drop_self(ids, np.arange(a, b), kk)

    pool.map_ranges(block, len(x), min(chunk_rows, -(-len(x) // pool.threads)))
    return torch.from_numpy(out)


def _exact_class(xc, kk: int, chunk_rows: int, pool: _Pool, *, exact_backend: str, **_):
    import torch

    if exact_backend == "faiss":
        faiss = _faiss()
        x = np.ascontiguousarray(xc.numpy())
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x)
        return _faiss_search(index, x, kk, chunk_rows, pool)
    return _exact_block_search(xc, torch.arange(len(xc)), xc, kk, chunk_rows, pool)


# --------------------------------------------------------------------------------------------- ivf
def _nearest_cells(x, cent, p: int, chunk_rows: int, pool: _Pool):
    """The ``p`` nearest centroids of every row of ``x`` [n, d]: int64 [n, p], nearest first."""
    import torch

    sq_c = (cent * cent).sum(1)
    out = torch.empty((len(x), p), dtype=torch.int64)

    def block(a: int, b: int) -> None:
        d2 = torch.addmm(sq_c[None, :], x[a:b], cent.T, alpha=-2.0)  # ||x||^2 does not change the order
        out[a:b] = torch.topk(d2, p, dim=1, largest=False).indices

    pool.map_ranges(block, len(x), chunk_rows)
    return out


def kmeans(x, n_clusters: int, *, seed: int = 0, iterations: int = KMEANS_ITERATIONS,
           points_per_cluster: int = KMEANS_POINTS_PER_CELL, chunk_rows: int = 4096, threads: int = 1):
    """Seeded Lloyd k-means of ``x`` [n, d] (torch float32) on a seeded subsample of
    ``points_per_cluster * n_clusters`` rows. Returns centroids [n_clusters, d] float32 (torch).

    Initial centroids are distinct random training rows; a cell left empty is re-seeded at a random
    training row. Everything random comes from ``seed``; the result does not depend on ``threads``.
    """
    import torch

    n = len(x)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}] (the number of rows), got {n_clusters}")
    rng = np.random.default_rng(seed)
    m = min(n, points_per_cluster * n_clusters)
    train = x if m == n else x[torch.from_numpy(np.sort(rng.choice(n, m, replace=False)))]
    cent = train[torch.from_numpy(rng.choice(m, n_clusters, replace=False))].clone()
    pool = _Pool(threads)
    try:
        with _SingleThreadedLibraries():
            for _ in range(iterations):
                assign = _nearest_cells(train, cent, 1, chunk_rows, pool)[:, 0]
                counts = torch.bincount(assign, minlength=n_clusters)
                sums = torch.zeros_like(cent).index_add_(0, assign, train)
                full = counts > 0
                cent[full] = sums[full] / counts[full, None].to(cent.dtype)
                empty = torch.nonzero(~full).flatten()
                if len(empty):
                    cent[empty] = train[torch.from_numpy(rng.choice(m, len(empty), replace=False))]
    finally:
        pool.close()
    return cent


def default_nprobe(n: int, n_cells: int) -> int:
    """Cells probed by default in a class of ``n`` rows split into ``n_cells``: at least ``DEFAULT_NPROBE``,
    and enough for ``DEFAULT_MIN_CANDIDATES`` rows at the mean cell size."""
    return max(DEFAULT_NPROBE, int(np.ceil(DEFAULT_MIN_CANDIDATES * n_cells / n)))


def _ivf_class(xc, kk: int, chunk_rows: int, pool: _Pool, *, seed: int, nlist, nprobe, **_):
    """Approximate kNN of a class [n, d]: an inverted file searched with one matrix product per (query
    chunk, probed cell). Returns positions [n, kk] (-1 where fewer than kk candidates were seen)."""
    import torch

    n = len(xc)
    n_cells = min(n, nlist if nlist is not None else max(1, int(round(np.sqrt(n)))))
    p = min(n_cells, nprobe if nprobe is not None else default_nprobe(n, n_cells))
    cent = kmeans(xc, n_cells, seed=seed, chunk_rows=chunk_rows, threads=pool.threads)
    probes = _nearest_cells(xc, cent, p, chunk_rows, pool)  # [n, p], probes[:, 0] is the row's own cell
    order = torch.argsort(probes[:, 0], stable=True)  # rows sorted by own cell: each cell is a slice
    xs = xc[order]
    ps = probes[order]
    sq = (xs * xs).sum(1)
    starts = [0] + torch.cumsum(torch.bincount(ps[:, 0], minlength=n_cells), 0).tolist()
    out_i = torch.empty((n, kk), dtype=torch.int64)
    inf = float("inf")

    def chunk(a: int, b: int) -> None:
        m = b - a
        # 1. each query's own cell (rows sorted by own cell: both sides are contiguous slices); the kk-th
        #    best there bounds what another cell can contribute
        best_d = torch.full((m, kk), inf)
        best_i = torch.full((m, kk), -1, dtype=torch.int64)
        own_cells, counts = torch.unique_consecutive(ps[a:b, 0], return_counts=True)
        q0 = 0
        for cell, count in zip(own_cells.tolist(), counts.tolist()):
            c0, c1 = starts[cell], starts[cell + 1]
            q1 = q0 + count
            # ||b||^2 - 2 q.b (+ ||q||^2, the same for all of q's candidates, would give the squared distance)
            d2 = torch.addmm(sq[None, c0:c1], xs[a + q0:a + q1], xs[c0:c1].T, alpha=-2.0)
            mine = torch.arange(count)
            d2[mine, a + q0 + mine - c0] = inf  # the query itself, by position
            kb = min(kk, c1 - c0)
            vd, vi = torch.topk(d2, kb, dim=1, largest=False)
            best_d[q0:q1, :kb], best_i[q0:q1, :kb] = vd, vi + c0
            q0 = q1
        bound = best_d[:, kk - 1]
        # 2. the other probed cells: one product per cell with the queries that probe it; only entries
        #    below the query's bound can enter its top kk
        if p > 1:
            cells = ps[a:b, 1:].reshape(-1)
            by_cell = torch.argsort(cells, stable=True)
            pair_row = by_cell // (p - 1)  # query row within the chunk
            ends = torch.cumsum(torch.bincount(cells, minlength=n_cells), 0).tolist()
            cand_q, cand_i, cand_d = [], [], []
            lo = 0
            for cell, hi in enumerate(ends):
                if hi == lo:
                    continue
                c0, c1 = starts[cell], starts[cell + 1]
                rows = pair_row[lo:hi]
                lo = hi
                if c1 == c0:
                    continue
                d2 = torch.addmm(sq[None, c0:c1], xs[a + rows], xs[c0:c1].T, alpha=-2.0)
                r, c = torch.nonzero(d2 < bound[rows, None], as_tuple=True)
                if len(r):
                    cand_q.append(rows[r])
                    cand_i.append(c + c0)
                    cand_d.append(d2[r, c])
            if cand_q:
                # merge: every query's own-cell best and its candidates, sorted by (query, value); keep kk
                qs = torch.cat([torch.arange(m).repeat_interleave(kk)] + cand_q)
                ds = torch.cat([best_d.reshape(-1)] + cand_d)
                ids = torch.cat([best_i.reshape(-1)] + cand_i)
                o = torch.argsort(ds, stable=True)
                o = o[torch.argsort(qs[o], stable=True)]
                qs, ds, ids = qs[o], ds[o], ids[o]
                first = torch.zeros(m + 1, dtype=torch.int64)
                first[1:] = torch.cumsum(torch.bincount(qs, minlength=m), 0)
                rank = torch.arange(len(qs)) - first[qs]
                keep = rank < kk
                best_d[qs[keep], rank[keep]] = ds[keep]
                best_i[qs[keep], rank[keep]] = ids[keep]
        best_i[torch.isinf(best_d)] = -1
        out_i[a:b] = torch.where(best_i >= 0, order[best_i.clamp(min=0)], best_i)

    pool.map_ranges(chunk, n, chunk_rows)
    res = torch.empty_like(out_i)
    res[order] = out_i
    return res


# --------------------------------------------------------------------------------------------- hnsw
def _hnsw_class(xc, kk: int, chunk_rows: int, pool: _Pool, *, hnsw_m, ef_construction, ef_search, **_):
    faiss = _faiss()
    x = np.ascontiguousarray(xc.numpy())
    index = faiss.IndexHNSWFlat(x.shape[1], hnsw_m)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = max(ef_search, kk + 1)
    index.add(x)  # on one thread (same_label_knn sets faiss to one): a parallel build inserts in a racy order
    return _faiss_search(index, x, kk, chunk_rows, pool)


_SEARCHERS = {"exact": _exact_class, "ivf": _ivf_class, "hnsw": _hnsw_class}


# --------------------------------------------------------------------------------------------- public
def _refine_and_sort(xc, idx, chunk_rows: int, pool: _Pool, queries=None):
    """Exact float32 distances of the chosen neighbours (``idx`` [m, kk], -1 = none; row r belongs to the
    class row ``queries[r]``, default r) and each row sorted by (distance, position).
    Returns float32 distances [m, kk] (inf where none), positions int64 [m, kk]."""
    import torch

    n, kk = idx.shape
    dist = torch.full((n, kk), float("inf"))

    def block(a: int, b: int) -> None:
        ia = idx[a:b]
        q = xc[a:b] if queries is None else xc[queries[a:b]]
        d = torch.linalg.vector_norm(xc[ia.clamp(min=0)] - q[:, None, :], dim=-1)
        dist[a:b] = torch.where(ia >= 0, d, torch.full_like(d, float("inf")))

    pool.map_ranges(block, n, max(1, chunk_rows // kk))
    idx, by_pos = torch.sort(torch.where(idx >= 0, idx, torch.full_like(idx, torch.iinfo(torch.int64).max)), 1)
    dist = torch.gather(dist, 1, by_pos)
    dist, by_dist = torch.sort(dist, dim=1, stable=True)
    idx = torch.gather(idx, 1, by_dist)
    idx[torch.isinf(dist)] = -1
    return dist, idx


def _resolve_exact_backend(exact_backend: str) -> str:
    if exact_backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"unknown exact_backend {exact_backend!r}; choose 'auto', 'faiss' or 'torch'")
    if exact_backend == "auto":
        try:
            import faiss  # noqa: F401
        except ImportError:
            return "torch"
        return "faiss"
    if exact_backend == "faiss":
        _faiss('exact_backend="faiss"')
    return exact_backend


def _check_rows(rows, method: str, n: int):
    if rows is None:
        return None
    if method != "exact":
        raise ValueError(f"rows= searches a subset exactly; it needs method='exact', got {method!r}")
    query = np.asarray(rows)
    if query.ndim != 1 or (query.size and not np.issubdtype(query.dtype, np.integer)):
        raise ValueError(f"rows must be a 1-D array of integer positions, got shape {query.shape}, dtype {query.dtype}")
    if query.size and (query.min() < 0 or query.max() >= n):
        raise ValueError(f"rows must be positions in [0, {n}), got values from {query.min()} to {query.max()}")
    return query.astype(np.int64, copy=False)


def same_label_knn(x, labels, k: int, *, method: str = "exact", seed: int = 0, chunk_rows: int = 4096,
                   nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = DEFAULT_HNSW_M,
                   ef_construction: int = DEFAULT_EF_CONSTRUCTION, ef_search: int = DEFAULT_EF_SEARCH,
                   exact_backend: str = "auto", rows=None, threads: int | None = None, progress: bool = False):
    """The K-1 nearest rows of the same label of every row of ``x`` (Euclidean), the row itself excluded.

    Parameters
    ----------
    x : float [N, d]          embeddings (cast to float32); NaN / inf rejected
    labels : int [N]          neighbours are searched among rows with the same label only
    k : int >= 2              neighbourhood size K *including the row itself*: K-1 neighbours are returned
    method : "exact" | "ivf" | "hnsw" | "auto"   (see the module docstring)
    seed : int >= 0           seeds the k-means of "ivf"
    chunk_rows : int          rows per block (memory: see the module docstring)
    nlist, nprobe : int       "ivf" cells per class (default round(sqrt(class size))) and cells probed per
                              row (default: the most of ``DEFAULT_NPROBE`` = 12 and enough cells for
                              ``DEFAULT_MIN_CANDIDATES`` = 2,000 rows)
    hnsw_m, ef_construction, ef_search : int   "hnsw" graph degree and beam widths
    exact_backend : "auto" | "faiss" | "torch"   engine of the exact search of whole classes: faiss
                              ``IndexFlatL2`` (measured ~1.4x faster per core than torch's matrix products)
                              or chunked torch; "auto" = faiss when installed
    rows : int [M] or None    with ``method="exact"`` only: search for these rows only (positions into
                              ``x``, e.g. a random sample to check an approximate search); outputs are [M, K-1]
    threads : int             worker threads (default ``torch.get_num_threads()``); torch and faiss run
                              single-threaded inside each, and are restored afterwards
    progress : bool           a progress bar over the classes

    Returns
    -------
    distances : float32 [N, K-1]  ascending per row; ``inf`` where the class has fewer than K rows
    positions : int64 [N, K-1]    row indices into ``x`` of the neighbours (``-1`` where none); ties in
                                  distance are ordered by position
    """
    import torch

    arr, y, k = _check_inputs(x, labels, k, method)
    chunk_rows = _positive_int(chunk_rows, "chunk_rows")
    seed = _positive_int(seed, "seed", 0)
    if nlist is not None:
        nlist = _positive_int(nlist, "nlist")
    if nprobe is not None:
        nprobe = _positive_int(nprobe, "nprobe")
    hnsw_m = _positive_int(hnsw_m, "hnsw_m", 2)
    ef_construction = _positive_int(ef_construction, "ef_construction")
    ef_search = _positive_int(ef_search, "ef_search")
    threads = torch.get_num_threads() if threads is None else _positive_int(threads, "threads")
    exact_backend = _resolve_exact_backend(exact_backend)
    if method == "hnsw":
        _faiss()  # fail before any work when faiss is missing
    query = _check_rows(rows, method, len(arr))

    n_out = len(arr) if query is None else len(query)
    out_d = np.full((n_out, k - 1), np.inf, dtype=np.float32)
    out_i = np.full((n_out, k - 1), -1, dtype=np.int64)
    classes, inverse = np.unique(y, return_inverse=True)
    members = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(classes)))])
    it = range(len(classes))
    if progress:
        from keepset._progress import progress_bar

        it = progress_bar(it, desc=f"same-label kNN ({method})")
    options = dict(seed=seed, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_construction=ef_construction,
                   ef_search=ef_search, exact_backend=exact_backend)
    pool = _Pool(threads)
    try:
        with _SingleThreadedLibraries():
            for c in it:
                pos = members[bounds[c]:bounds[c + 1]]  # ascending positions of this class
                kk = min(k, len(pos)) - 1
                if kk < 1:
                    continue
                if query is not None:
                    out_rows = np.flatnonzero(inverse[query] == c)  # where this class's queries go
                    if not len(out_rows):
                        continue
                xc = torch.from_numpy(arr[pos])
                xc -= xc.mean(0)  # centred: smaller norms, less round-off in a.b
                if query is not None:
                    qsel = torch.from_numpy(np.searchsorted(pos, query[out_rows]))  # positions within the class
                    idx = _exact_block_search(xc[qsel], qsel, xc, kk, chunk_rows, pool)
                    dist, idx = _refine_and_sort(xc, idx, chunk_rows, pool, queries=qsel)
                    out_d[out_rows, :kk] = dist.numpy()
                    out_i[out_rows, :kk] = np.where(idx.numpy() >= 0, pos[idx.numpy().clip(min=0)], -1)
                    continue
                chosen = method
                if method == "auto":
                    chosen = "exact" if len(pos) <= AUTO_EXACT_MAX else "ivf"
                if len(pos) <= APPROX_EXACT_MAX:
                    chosen = "exact"
                idx = _SEARCHERS[chosen](xc, kk, chunk_rows, pool, **options)
                short = torch.nonzero((idx < 0).any(1)).flatten()
                if chosen != "exact" and len(short):  # too few candidates in the probed cells: search exactly
                    idx[short] = _exact_block_search(xc[short], short, xc, kk, chunk_rows, pool)
                dist, idx = _refine_and_sort(xc, idx, chunk_rows, pool)
                out_d[pos, :kk] = dist.numpy()
                out_i[pos, :kk] = np.where(idx.numpy() >= 0, pos[idx.numpy().clip(min=0)], -1)
    finally:
        pool.close()
    return out_d, out_i


def recall_at_k(approx_positions, exact_positions) -> float:
    """Mean over rows of |approx ∩ exact| / |exact| for neighbour positions [N, K-1] (-1 entries ignored).

    Rows with no exact neighbour are skipped. Returns a float in [0, 1].
    """
    a = np.asarray(approx_positions)
    e = np.asarray(exact_positions)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(f"approx {a.shape} and exact {e.shape} must be the same [N, K-1] shape")
    valid = e >= 0
    n_true = valid.sum(1)
    hit = ((a[:, :, None] == e[:, None, :]) & valid[:, None, :] & (a[:, :, None] >= 0)).any(1).sum(1)
    rows = n_true > 0
    if not rows.any():
        return 1.0
    return float((hit[rows] / n_true[rows]).mean())
