"""SDS at scale: the exact and the approximate same-label kNN behind SDS, side by side (issue 15).

    python -m keepset.bench.sds_knn --sizes 100000 300000 1000000 --threads 2 --json sds-scale.json
    python -m keepset.bench.sds_knn --data fashion-mnist --methods exact ivf hnsw faiss-ivf --threads 2

For every size N (``--data synthetic``: seeded Gaussian mixtures, ``--classes`` labels of equal expected
size, d = ``--dim``) and every method, one subprocess generates the data, runs
``keepset.scoring.knn.same_label_knn`` and reports its wall time and its peak resident memory during the
search (VmHWM, reset after the data was generated; it includes the N x d data itself). Accuracy is
measured on ``--sample`` random query rows: their exact neighbours (``same_label_knn(..., rows=...)``)
against each method's, as recall@(K-1) (the fraction of the true K-1 neighbours found) and as the Spearman
rank correlation of SDS (the mean distance to the K-1 neighbours) over those rows. Above ``--exact-max``
rows the full exact search is not run: its time is then *estimated*, quadratically from the largest N
searched exactly in the same run (each class grows by N / N0 and exact search is quadratic in the class
size), or, with none, from the timed exact search of the sampled rows (time per query x N; measured ~3x
pessimistic at N = 300,000); the table says "(estimate)".

Methods: ``exact``, ``ivf`` (keepset's inverted file searched with matrix products), ``hnsw`` (faiss
HNSW), ``faiss-ivf`` (faiss ``IndexIVFFlat`` with the same cells and probes, for comparison).

``--data fashion-mnist``: the 60,000 Fashion-MNIST training images, pixels projected to ``--dim`` by a
seeded Gaussian random projection (distances preserved up to a few percent), labels as classes;
``--one-class`` pools them into one class of 60,000 (the approximate search then runs on one large class).

The synthetic mixture: each class has a centre ~ N(0, I); 50 sub-centres per class at ``--spread`` x
N(0, I) around it; a point is its sub-centre plus rank-64 noise with scales 3/sqrt(j) and isotropic noise
0.05. ``--spread 0.5`` (default) makes the inverted file's recall-vs-nprobe curve match Fashion-MNIST's;
smaller spreads make the neighbour search harder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from keepset._argtypes import int_at_least, nonnegative_int, positive_float, positive_int, seed
from keepset.bench._script import script_main

METHODS = ("exact", "ivf", "hnsw", "faiss-ivf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="synthetic", choices=("synthetic", "fashion-mnist"),
                        help="synthetic clustered embeddings, or Fashion-MNIST's 60,000 training images "
                             "projected to --dim")
    parser.add_argument("--sizes", type=int_at_least(2), nargs="+", default=[100_000, 300_000, 1_000_000],
                        help="N for --data synthetic")
    parser.add_argument("--dim", type=positive_int, default=512, help="embedding dimension d")
    parser.add_argument("--classes", type=positive_int, default=10, help="labels of the synthetic data")
    parser.add_argument("--one-class", action="store_true", help="fashion-mnist: all 60,000 rows in one class")
    parser.add_argument("--spread", type=positive_float, default=0.5, help="synthetic sub-centre spread")
    parser.add_argument("--k", type=int_at_least(2), default=10, help="K, the sample itself included")
    parser.add_argument("--methods", nargs="+", default=["exact", "ivf"], choices=METHODS, help="methods to run")
    parser.add_argument("--exact-max", type=nonnegative_int, default=300_000,
                        help="largest N searched exactly in full; above, the exact time is estimated")
    parser.add_argument("--sample", type=positive_int, default=2000,
                        help="query rows for recall and rank correlation")
    parser.add_argument("--nlist", type=positive_int, default=None,
                        help="ivf / faiss-ivf cells per class (default: sqrt(class size))")
    parser.add_argument("--nprobe", type=positive_int, default=None,
                        help="ivf / faiss-ivf cells probed (default: keepset.scoring.knn.default_nprobe)")
    parser.add_argument("--ef-search", type=positive_int, default=None,
                        help="hnsw search beam (default: keepset.scoring.knn.DEFAULT_EF_SEARCH)")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch and faiss threads")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the synthetic embeddings and the ivf k-means")
    parser.add_argument("--in-process", action="store_true",
                        help="run every configuration in this process (peak memory then not isolated)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the figures as JSON (default: not written)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


# ----------------------------------------------------------------------------------------------- data
def synthetic_embeddings(n: int, dim: int = 512, classes: int = 10, spread: float = 0.5, seed: int = 0,
                         sub: int = 50, rank: int = 64, iso: float = 0.05, chunk: int = 65_536):
    """Seeded Gaussian-mixture embeddings float32 [n, dim] and labels int64 [n] (see the module docstring).

    Generated in chunks of rows (memory ~ n x dim float32); same arguments, same bytes.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    sub_of = rng.integers(0, sub, n)
    centers = rng.standard_normal((classes, 1, dim), dtype=np.float32)
    subc = centers + np.float32(spread) * rng.standard_normal((classes, sub, dim), dtype=np.float32)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.float32(np.sqrt(rank))
    scales = (3.0 / np.sqrt(np.arange(1, rank + 1))).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        z = rng.standard_normal((b - a, rank), dtype=np.float32) * scales
        x[a:b] = subc[labels[a:b], sub_of[a:b]] + z @ basis
        x[a:b] += np.float32(iso) * rng.standard_normal((b - a, dim), dtype=np.float32)
    return x, labels


def fashion_mnist_embeddings(dim: int = 512, seed: int = 0, one_class: bool = False):
    """The Fashion-MNIST training images as float32 [60000, dim] (seeded Gaussian random projection of the
    784 pixels) and their labels (all 0 with ``one_class``)."""
    from keepset.data import load_fashion_mnist_set

    s = load_fashion_mnist_set()
    pixels = s.inputs.reshape(len(s.labels), -1).astype(np.float32)
    proj = np.random.default_rng(seed).standard_normal((pixels.shape[1], dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    labels = np.zeros(len(s.labels), dtype=np.int64) if one_class else np.asarray(s.labels, dtype=np.int64)
    return pixels @ proj, labels


def _data(cfg: dict):
    if cfg["data"] == "fashion-mnist":
        return fashion_mnist_embeddings(cfg["dim"], cfg["seed"], cfg["one_class"])
    return synthetic_embeddings(cfg["n"], cfg["dim"], cfg["classes"], cfg["spread"], cfg["seed"])


# ----------------------------------------------------------------------------------------------- one run
def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def faiss_ivf_knn(x, labels, k: int, *, nlist=None, nprobe=None, seed: int = 0, threads: int = 1,
                  chunk_rows: int = 4096):
    """faiss ``IndexIVFFlat`` per class with keepset's "ivf" settings (cells round(sqrt(n)), probes
    ``default_nprobe``, seeded k-means on 32 rows per cell, 10 iterations; classes of at most
    ``APPROX_EXACT_MAX`` rows exact), the row itself dropped by position. Returns positions int64 [N, k-1]."""
    import faiss

    from keepset.scoring.knn import APPROX_EXACT_MAX, default_nprobe, same_label_knn

    faiss.omp_set_num_threads(threads)
    out = np.full((len(x), k - 1), -1, dtype=np.int64)
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        kk = min(k, len(pos)) - 1
        if kk < 1:
            continue
        xc = np.ascontiguousarray(x[pos])
        if len(pos) <= APPROX_EXACT_MAX:
            out[pos, :kk] = same_label_knn(xc, np.zeros(len(pos), dtype=np.int64), kk + 1)[1]
            continue
        cells = nlist or max(1, int(round(np.sqrt(len(pos)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(xc.shape[1]), xc.shape[1], cells)
        index.cp.seed, index.cp.niter, index.cp.max_points_per_centroid = seed, 10, 32
        index.cp.min_points_per_centroid = 1
        index.train(xc)
        index.add(xc)
        index.nprobe = min(cells, nprobe or default_nprobe(len(pos), cells))
        for a in range(0, len(pos), chunk_rows):
            _, ids = index.search(xc[a:a + chunk_rows], kk + 1)
            own = np.arange(a, a + len(ids))[:, None]
            keep = (ids != own) & (ids >= 0)
            rank = np.cumsum(keep, 1) - 1
            r, col = np.nonzero(keep & (rank < kk))
            out[pos[a + r], rank[r, col]] = pos[ids[r, col]]
    return out


def _run_child(cfg: dict) -> dict:
    """Generate the data, run one configuration, return its figures (and the sampled rows' neighbours)."""
    import torch

    from keepset.scoring.knn import same_label_knn

    torch.set_num_threads(cfg["threads"])
    x, labels = _data(cfg)
    rows = np.asarray(cfg["rows"], dtype=np.int64)
    opts = {k: cfg[k] for k in ("nlist", "nprobe") if cfg.get(k)}
    if cfg.get("ef_search"):
        opts["ef_search"] = cfg["ef_search"]
    isolated = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    if cfg["method"] == "exact-sample":
        dist, pos = same_label_knn(x, labels, cfg["k"], method="exact", rows=rows, threads=cfg["threads"])
    elif cfg["method"] == "faiss-ivf":
        pos = faiss_ivf_knn(x, labels, cfg["k"], seed=cfg["seed"], threads=cfg["threads"], **opts)[rows]
        dist = None
    else:
        dist, pos = same_label_knn(x, labels, cfg["k"], method=cfg["method"], seed=cfg["seed"],
                                   threads=cfg["threads"], **opts)
        dist, pos = dist[rows], pos[rows]
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if dist is None:  # recompute the found neighbours' distances (faiss-ivf reports positions only)
        nb = np.where(pos >= 0, pos, rows[:, None])
        dist = np.where(pos >= 0, np.linalg.norm(x[nb] - x[rows, None, :], axis=-1), np.inf).astype(np.float32)
    return {"seconds": elapsed, "cpu_seconds": cpu, "peak_mb": _peak_mb(), "peak_isolated": isolated,
            "data_mb": x.nbytes / 2**20, "n": len(x), "positions": pos.tolist(), "distances": dist.tolist()}


def _launch(cfg: dict, in_process: bool) -> dict:
    if in_process:
        return _run_child(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.json"
        path.write_text(json.dumps(cfg))
        proc = subprocess.run([sys.executable, "-m", "keepset.bench.sds_knn", "--child", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark subprocess for {cfg['method']} failed:\n{proc.stderr[-2000:]}")
        return json.loads((Path(tmp) / "out.json").read_text())


# ----------------------------------------------------------------------------------------------- figures
def _sds(dist: np.ndarray) -> np.ndarray:
    found = np.isfinite(dist)
    return np.where(found, dist, 0.0).sum(1) / np.maximum(found.sum(1), 1)


def compare(approx_pos, approx_dist, exact_pos, exact_dist) -> dict:
    """recall@(K-1) of the approximate neighbours and Spearman correlation of SDS on the same rows."""
    from scipy.stats import spearmanr

    from keepset.scoring.knn import recall_at_k

    a_sds, e_sds = _sds(np.asarray(approx_dist)), _sds(np.asarray(exact_dist))
    rel = np.abs(a_sds - e_sds) / np.maximum(e_sds, 1e-12)
    return {"recall": recall_at_k(approx_pos, exact_pos), "spearman_sds": float(spearmanr(a_sds, e_sds)[0]),
            "sds_max_rel_err": float(rel.max()), "sds_mean_rel_err": float(rel.mean())}


def _machine() -> dict:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg": [round(v, 2) for v in load]}


def format_table(rows: list[dict]) -> str:
    lines = ["| N | classes | method | wall (s) | CPU (s) | recall@K-1 | SDS Spearman | SDS max rel. err | peak RSS (MB) "
             "| data (MB) |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        est = " (estimate)" if r.get("estimated") else ""
        t = f"{r['seconds']:.1f}{est} | {r['cpu_seconds']:.1f}{est}"
        peak = "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        rec = "-" if r.get("recall") is None else f"{r['recall']:.4f}"
        sp = "-" if r.get("spearman_sds") is None else f"{r['spearman_sds']:.4f}"
        err = "-" if r.get("sds_max_rel_err") is None else f"{r['sds_max_rel_err']:.2e}"
        lines.append(f"| {r['n']:,} | {r['classes']} | {r['method']} | {t} | {rec} | {sp} | {err} | {peak} | "
                     f"{r['data_mb']:.0f} |")
    return "\n".join(lines)


def run(args) -> int:
    from keepset.io import write_text_atomic

    if args.child:
        cfg = json.loads(Path(args.child).read_text())
        out = _run_child(cfg)
        (Path(args.child).parent / "out.json").write_text(json.dumps(out))
        return 0
    if args.json is not None and args.json.exists() and not args.overwrite:
        raise FileExistsError(f"{args.json} exists; pass --overwrite to replace it")
    faiss_methods = [m for m in args.methods if m in ("hnsw", "faiss-ivf")]
    if faiss_methods:
        from keepset._checks import check_installed

        check_installed("faiss", f"--methods {' '.join(faiss_methods)}", "knn")
    sizes = [60_000] if args.data == "fashion-mnist" else args.sizes
    if any(n < 2 for n in sizes):
        raise ValueError("--sizes must be >= 2")
    machine_before = _machine()
    print(f"{args.data}: sizes {sizes}, d = {args.dim}, K = {args.k}, threads {args.threads}, "
          f"{machine_before['cpus']} CPUs, load average before {machine_before['loadavg']}", flush=True)
    results = []
    for n in sizes:
        base = {"data": args.data, "n": n, "dim": args.dim, "classes": args.classes, "spread": args.spread,
                "one_class": args.one_class, "k": args.k, "seed": args.seed, "threads": args.threads,
                "nlist": args.nlist, "nprobe": args.nprobe, "ef_search": args.ef_search}
        rows = np.sort(np.random.default_rng(args.seed + 1).choice(n, min(args.sample, n), replace=False))
        base["rows"] = rows.tolist()
        ref = _launch({**base, "method": "exact-sample"}, args.in_process)
        n_classes = 1 if args.one_class else (10 if args.data == "fashion-mnist" else args.classes)
        print(f"N = {n:,}: exact search of {len(rows)} sampled rows {ref['seconds']:.1f} s", flush=True)
        for method in args.methods:
            if method == "exact" and n > args.exact_max:
                timed = [r for r in results if r["method"] == "exact" and not r.get("estimated")]
                if timed:  # quadratic: every class grows by n / n0 (same number of classes)
                    base_row = max(timed, key=lambda r: r["n"])
                    f = (n / base_row["n"]) ** 2
                    est = {"seconds": base_row["seconds"] * f, "cpu_seconds": base_row["cpu_seconds"] * f,
                           "estimate_basis": f"(N / {base_row['n']})^2 x the exact search timed at N = {base_row['n']}"}
                else:
                    est = {"seconds": ref["seconds"] * n / len(rows), "cpu_seconds": ref["cpu_seconds"] * n / len(rows),
                           "estimate_basis": f"N / {len(rows)} x the exact search of the sampled rows"}
                row = {"method": "exact", "estimated": True, **est,
                       "peak_mb": None, "recall": 1.0, "spearman_sds": 1.0, "sds_max_rel_err": 0.0}
                print(f"exact at N = {n:,} not run (> --exact-max): time estimated as {est['estimate_basis']}")
            else:
                out = _launch({**base, "method": method}, args.in_process)
                row = {"method": method, "seconds": out["seconds"], "cpu_seconds": out["cpu_seconds"],
                       "peak_mb": out["peak_mb"],
                       "peak_isolated": out["peak_isolated"] and not args.in_process,
                       **compare(out["positions"], out["distances"], ref["positions"], ref["distances"])}
            row.update({"n": n, "classes": n_classes, "data_mb": ref["data_mb"], "sample": len(rows)})
            if method == "exact" and not row.get("estimated"):  # the sampled rows' extrapolation, for comparison
                row["sample_extrapolated_seconds"] = ref["seconds"] * n / len(rows)
            results.append(row)
            print(format_table([row]).splitlines()[-1], flush=True)
    machine_after = _machine()
    print()
    print(format_table(results))
    print(f"\nwall: elapsed time of the search; CPU: its process CPU time over all threads (a quiet machine needs "
          f"about CPU / threads); recall@K-1 and SDS Spearman on {min(args.sample, min(sizes))} random query rows "
          f"per N against their exact neighbours; '(estimate)': exact search not run, its time extrapolated "
          f"(quadratically from the largest N timed, else from the sampled rows: the JSON's estimate_basis); peak "
          f"RSS: the search subprocess's high-water mark, data included. Load average before "
          f"{machine_before['loadavg']}, after {machine_after['loadavg']} ({machine_before['cpus']} CPUs).")
    if args.json is not None:
        record = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "child", "overwrite")},
                  "machine_before": machine_before, "machine_after": machine_after, "rows": results}
        write_text_atomic(args.json, json.dumps(record, indent=2, default=str) + "\n", overwrite=args.overwrite)
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
