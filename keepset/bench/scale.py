"""Scoring pools at scale (issue 15): ``keepset score-pool`` in one process and on Ray, side by side.

For every size N in ``--sizes`` a synthetic pool is written in DataComp's layout (``--shard-size`` pairs per
shard: 32-hex-digit uids, captions, ``b32_img`` / ``b32_txt`` embeddings of ``--dim``, text embeddings
correlated with the image ones) with a pair run's three probes; then ``keepset score-pool`` scores it (clip_score,
sas, mimic) with the local executor and with Ray (``--workers`` actors on a local instance), each in a fresh
process. Printed per run: wall seconds of the shard pass, pairs per second, and peak resident memory, sampled
every 0.1 s over the whole process tree (the driver, and Ray's raylet, object store and workers: "driver" is
the command's own process, "tree" the largest sum over all of them). The local and the Ray run's scores are
compared (same ids, largest absolute difference). Then SDS over the pool's image embeddings: the exact and the
approximate (``ivf``) same-label kNN, their times and the approximate one's recall@K-1 on 2,000 sampled rows
(``keepset.bench.sds_knn``).

  keepset bench scale                                   # 10^5, 3x10^5 and 10^6 pairs
  keepset bench scale --sizes 20000 --shard-size 5000   # quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from keepset._argtypes import int_at_least, positive_int, seed
from keepset.bench._script import script_main
from keepset.cli._common import add_quiet


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int_at_least(2), nargs="+", default=[100_000, 300_000, 1_000_000],
                   help="pairs per synthetic pool")
    p.add_argument("--shard-size", type=int_at_least(2), default=20_000, help="pairs per shard")
    p.add_argument("--dim", type=positive_int, default=512, help="size of the image and the text embeddings")
    p.add_argument("--workers", type=positive_int, default=2, help="Ray actors")
    p.add_argument("--executors", nargs="+", default=["local", "ray"], choices=("local", "ray"),
                   help="executors timed, side by side")
    p.add_argument("--no-sds", action="store_true", help="skip the SDS exact vs approximate comparison")
    p.add_argument("--exact-max", type=int_at_least(0), default=100_000,
                   help="largest N whose exact SDS search is run (above: not run)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the synthetic pools and probes")
    p.add_argument("--json", default=None, help="also write the figures here (default: not written)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_quiet(p, "no progress lines")


def write_synthetic_pool(root: Path, shards: list[int], *, d_img: int = 512, d_txt: int = 512,
                         seed: int = 0) -> np.ndarray:
    """A DataComp-layout pool in ``root``: per shard ``NNNNNNNN.parquet`` (uid, text) and ``NNNNNNNN.npz``
    (b32_img float32 [n, d_img], b32_txt float32 [n, d_txt]). Image embeddings are 50 seeded
    clusters plus noise; a text embedding is a fixed random map of its image embedding plus noise. Returns
    every uid [N] in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d_img)).astype(np.float32)
    mix = (rng.normal(size=(d_img, d_txt)) / np.sqrt(d_img)).astype(np.float32)
    uids = []
    for i, n in enumerate(shards):
        u = rng.integers(0, 2**63, size=(n, 2), dtype=np.uint64)
        ids = np.array([f"{a:016x}{b:016x}" for a, b in u])
        img = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, d_img)).astype(np.float32)
        txt = img @ mix + 0.5 * rng.normal(size=(n, d_txt)).astype(np.float32)
        stem = f"{i:08d}"
        pq.write_table(pa.table({"uid": ids, "text": [f"a photo number {j}" for j in range(n)]}),
                       root / f"{stem}.parquet")
        np.savez(root / f"{stem}.npz", b32_img=img.astype(np.float32), b32_txt=txt.astype(np.float32))
        uids.append(ids)
    return np.concatenate(uids)


def write_probes(run: Path, d_img: int, d_txt: int, dim: int = 64, seed: int = 0) -> Path:
    """A pair run's three probes (reference, model, sas_probe) from seeded initialisations."""
    import torch

    from keepset.models import TwoTowerProbe
    from keepset.models.checkpoint import save_checkpoint

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("reference", "model", "sas_probe")):
        torch.manual_seed(seed + i)
        save_checkpoint(TwoTowerProbe(d_img, d_txt, dim), run / f"{name}.safetensors", {"role": name})
    return run


def _tree_rss(proc) -> tuple[float, float]:
    """(the process's RSS, the sum over it and all its descendants) in MiB."""
    import psutil

    try:
        own = proc.memory_info().rss
        total = own + sum(c.memory_info().rss for c in proc.children(recursive=True) if c.is_running())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0, 0.0
    return own / 2**20, total / 2**20


def run_measured(argv: list[str]) -> dict:
    """Run a command, sampling its process tree's memory every 0.1 s: {seconds, peak_driver_mb, peak_tree_mb}."""
    import psutil

    t0 = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    peaks = [0.0, 0.0]

    def sample():
        while child.poll() is None:
            own, tree = _tree_rss(proc)
            peaks[0], peaks[1] = max(peaks[0], own), max(peaks[1], tree)
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = child.communicate()
    t.join()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed: {(err.strip().splitlines() or ['?'])[-1]}")
    return {"seconds": time.perf_counter() - t0, "peak_driver_mb": peaks[0], "peak_tree_mb": peaks[1]}


def run(args) -> int:
    from keepset.io import check_output_file

    if args.json:
        check_output_file(args.json, args.overwrite)
    rows, sds_rows = [], []
    with tempfile.TemporaryDirectory(prefix="keepset-scale-") as tmp:
        tmp = Path(tmp)
        for n in args.sizes:
            shards = [args.shard_size] * (n // args.shard_size) + ([n % args.shard_size] if n % args.shard_size else [])
            pool = tmp / f"pool-{n}"
            t0 = time.perf_counter()
            write_synthetic_pool(pool, shards, d_img=args.dim, d_txt=args.dim, seed=args.seed)
            run_dir = write_probes(tmp / f"run-{n}", args.dim, args.dim, seed=args.seed)
            if not args.quiet:
                print(f"N = {n:,}: pool of {len(shards)} shards written in {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr)
            tables = {}
            for ex in args.executors:
                out = tmp / f"scores-{n}-{ex}"
                argv = [sys.executable, "-m", "keepset.cli.main", "score-pool", "--data", f"datacomp:{pool}",
                        "--run", str(run_dir), "--out", str(out), "--executor", ex, "--quiet"]
                if ex == "ray":
                    argv += ["--workers", str(args.workers)]
                m = run_measured(argv)
                s = json.loads((out / "summary.json").read_text())
                row = {"n": n, "executor": ex, "workers": args.workers if ex == "ray" else 1,
                       "seconds_total": m["seconds"], "seconds_shards": s["seconds_shards"],
                       "pairs_per_second": n / s["seconds_shards"], "peak_driver_mb": m["peak_driver_mb"],
                       "peak_tree_mb": m["peak_tree_mb"], "startup_seconds": s.get("startup_seconds"),
                       "steady_pairs_per_second": s.get("steady_pairs_per_second")}
                import pyarrow.parquet as pq

                tables[ex] = pq.read_table(out / "scores.parquet").to_pandas().set_index("id").sort_index()
                rows.append(row)
                if not args.quiet:
                    print(_row(row), file=sys.stderr)
            if len(tables) == 2:
                a, b = tables["local"], tables["ray"]
                same = bool((a.index == b.index).all())
                diff = float(np.max(np.abs(a.to_numpy(np.float64) - b.to_numpy(np.float64)))) if same else None
                rows[-1]["same_ids_as_local"], rows[-1]["max_abs_diff_vs_local"] = same, diff
            if not args.no_sds:
                sds_rows += _sds(pool, shards, n, args)
    print(format_table(rows, sds_rows))
    if args.json:
        from keepset.io import write_text_atomic

        write_text_atomic(args.json, json.dumps({"rows": rows, "sds": sds_rows, "dim": args.dim,
                                                 "shard_size": args.shard_size}, indent=2) + "\n",
                          overwrite=args.overwrite)
    return 0


def _sds(pool: Path, shards: list[int], n: int, args) -> list[dict]:
    from keepset.bench.sds_knn import compare
    from keepset.scoring.knn import same_label_knn

    emb = np.concatenate([np.load(pool / f"{i:08d}.npz")["b32_img"] for i in range(len(shards))])
    labels = np.zeros(n, np.int64)
    rng = np.random.default_rng(args.seed)
    rows_q = np.sort(rng.choice(n, min(2000, n), replace=False))
    t0 = time.perf_counter()
    exact_pos, exact_dist = same_label_knn(emb, labels, 10, method="exact", rows=rows_q)
    sample_s = time.perf_counter() - t0
    out = []
    for method in ("exact", "ivf"):
        if method == "exact" and n > args.exact_max:
            out.append({"n": n, "method": method, "seconds": None, "recall": 1.0, "spearman_sds": 1.0,
                        "note": f"not run above --exact-max; its 2,000 sampled rows took {sample_s:.1f} s"})
            continue
        t0 = time.perf_counter()
        pos, dist = same_label_knn(emb, labels, 10, method=method, seed=args.seed)
        sec = time.perf_counter() - t0
        c = compare(pos[rows_q], dist[rows_q], exact_pos, exact_dist)
        out.append({"n": n, "method": method, "seconds": sec, **c})
        if not args.quiet:
            print(f"SDS N = {n:,} {method}: {sec:.1f} s, recall {c['recall']:.4f}", file=sys.stderr)
    return out


def _row(r: dict) -> str:
    ray = r["executor"] == "ray"
    steady = f"{r['steady_pairs_per_second']:,.0f}" if ray and r.get("steady_pairs_per_second") else "-"
    start = f"{r['startup_seconds']:.1f}" if ray and r.get("startup_seconds") is not None else "-"
    return (f"| {r['n']:,} | {r['executor']}{' x ' + str(r['workers']) if ray else ''} | "
            f"{r['seconds_shards']:.1f} | {r['seconds_total']:.1f} | {r['pairs_per_second']:,.0f} | {start} | "
            f"{steady} | {r['peak_driver_mb']:.0f} | {r['peak_tree_mb']:.0f} |")


def format_table(rows: list[dict], sds_rows: list[dict]) -> str:
    lines = ["| N | executor | shard pass (s) | command (s) | pairs/s | Ray start to 1st shard (s) | pairs/s after it "
             "| peak RSS driver (MiB) | peak RSS tree (MiB) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"] + [_row(r) for r in rows]
    same = [r for r in rows if "same_ids_as_local" in r]
    for r in same:
        lines.append(f"\nN = {r['n']:,}: Ray's scores vs local: same ids {r['same_ids_as_local']}, largest absolute "
                     f"difference {r['max_abs_diff_vs_local']:.2e}")
    if sds_rows:
        lines += ["", "| N | SDS kNN | seconds | recall@9 | SDS Spearman |", "|---:|---|---:|---:|---:|"]
        for r in sds_rows:
            sec = "not run" if r["seconds"] is None else f"{r['seconds']:.1f}"
            lines.append(f"| {r['n']:,} | {r['method']} | {sec} | {r['recall']:.4f} | {r['spearman_sds']:.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
