"""Stage 2 out of core: time and peak memory of the streaming filter on a recorded log of 10^7 records.

A synthetic training run is recorded through ``keepset.recorder.DynamicsRecorder`` exactly as ``GradMimic``
records one (one ``record()`` call per batch): ``--samples`` ids (int64, or 32-hex-digit uids with ``--uids``)
visited once per epoch in a seeded random order, batches of ``--batch-size``, a Mimic Score per visit that is
lower for a planted 30% of "noisy" samples, and its softmax over the batch. Then ``stage2_filter`` runs in a
fresh process per binariser (so its peak RSS is its own), reading the log chunk by chunk; the table prints
the wall time, the peak RSS of that process (``ru_maxrss``) and, as a check, the filter's F1 on the planted
noise. The log's size on disk is printed too.

  keepset bench stage2-scale                              # 10^6 samples x 10 epochs = 10^7 records
  keepset bench stage2-scale --samples 100000 --epochs 5  # quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from keepset.bench._script import script_main

CHILD = """
import json, resource, sys, time
import numpy as np
from keepset.recorder import DynamicsRecorder
from keepset.selection.stage2 import stage2_votes
t0 = time.perf_counter()
rec = DynamicsRecorder.open(sys.argv[1])
ids, yes, total = stage2_votes(rec, binarize=sys.argv[2], vote="majority")
keep = yes / total >= 0.5
seconds = time.perf_counter() - t0
noisy = np.load(sys.argv[3], allow_pickle=False)
flag = ~keep
truth = np.isin(ids, noisy)
tp = float((flag & truth).sum())
f1 = 2 * tp / max(flag.sum() + truth.sum(), 1)
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "kept": int(keep.sum()), "n": int(len(keep)), "f1": f1}))
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int, default=1_000_000, help="distinct sample ids (default 10^6)")
    p.add_argument("--epochs", type=int, default=10, help="visits per sample (default 10: 10^7 records)")
    p.add_argument("--batch-size", type=int, default=256, help="records per step (default 256)")
    p.add_argument("--uids", action="store_true", help="32-hex-digit string ids (DataComp uids) instead of int64")
    p.add_argument("--binarize", nargs="+", default=["threshold", "kmeans"], choices=("threshold", "kmeans", "gmm"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/stage2-scale", help="folder for the log and the results")
    p.add_argument("--json", default=None, help="also write the figures here")


def record_log(directory: Path, samples: int, epochs: int, batch_size: int, uids: bool, seed: int) -> tuple[float, Path]:
    """Record the synthetic run; returns (seconds, path of the .npy of noisy ids)."""
    from keepset._progress import progress_bar
    from keepset.recorder import DynamicsRecorder

    rng = np.random.default_rng(seed)
    ids = (np.array([f"{v:032x}" for v in rng.choice(2**62, samples, replace=False)]) if uids
           else rng.choice(10**12, samples, replace=False).astype(np.int64))
    noisy = rng.random(samples) < 0.3
    rec = DynamicsRecorder(directory, ("mimic", "mimic_normed", "weight"))
    t0 = time.perf_counter()
    step = 0
    steps = epochs * -(-samples // batch_size)
    with progress_bar(total=steps, desc="recording") as bar:
        for e in range(epochs):
            order = rng.permutation(samples)
            for s in range(0, samples, batch_size):
                pos = order[s:s + batch_size]
                score = rng.normal(size=len(pos)) - 1.5 * noisy[pos]
                w = np.exp(score - score.max())
                w /= w.sum()
                rec.record(ids[pos], step, e, mimic=score, mimic_normed=w, weight=w)
                step += 1
                bar.update(1)
    rec.close()
    np.save(directory.parent / "noisy_ids.npy", ids[noisy])
    return time.perf_counter() - t0, directory.parent / "noisy_ids.npy"


def run(args) -> int:
    import shutil

    if args.samples < 2 or args.epochs < 1 or args.batch_size < 2:
        raise ValueError("need --samples >= 2, --epochs >= 1 and --batch-size >= 2")
    out = Path(args.out)
    log = out / "dynamics"
    shutil.rmtree(log, ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    rec_s, noisy = record_log(log, args.samples, args.epochs, args.batch_size, args.uids, args.seed)
    size_mb = sum(p.stat().st_size for p in log.iterdir()) / 2**20
    n_records = args.samples * args.epochs
    print(f"{n_records:,} records of {args.samples:,} {'uid' if args.uids else 'int64'} ids, batches of "
          f"{args.batch_size}: recorded in {rec_s:.1f} s, {size_mb:.0f} MiB on disk", file=sys.stderr)
    rows = []
    for method in args.binarize:
        done = subprocess.run([sys.executable, "-c", CHILD, str(log), method, str(noisy)], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise ValueError(f"the stage 2 run ({method}) failed: {done.stderr.strip().splitlines()[-1]}")
        rows.append({"binarize": method, **json.loads(done.stdout.strip().splitlines()[-1])})
    print(f"Stage 2 on {n_records:,} records ({'uids' if args.uids else 'int64 ids'}), one process each:")
    print(f"{'binarize':<10}{'seconds':>10}{'peak RSS MiB':>14}{'kept':>12}{'F1 (planted)':>14}")
    for r in rows:
        print(f"{r['binarize']:<10}{r['seconds']:>10.1f}{r['peak_rss_mb']:>14.0f}{r['kept']:>12,}{r['f1']:>14.3f}")
    doc = {"records": n_records, "samples": args.samples, "epochs": args.epochs, "batch_size": args.batch_size,
           "ids": "uid" if args.uids else "int64", "record_seconds": rec_s, "log_mib": size_mb, "stage2": rows}
    if args.json:
        from keepset.io import write_text_atomic

        write_text_atomic(args.json, json.dumps(doc, indent=2) + "\n", overwrite=True)
    return 0


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
