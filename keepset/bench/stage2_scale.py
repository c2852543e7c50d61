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

from keepset._argtypes import int_at_least, positive_int, seed
from keepset.bench._script import script_main
from keepset.cli._common import add_quiet

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
    p.add_argument("--samples", type=int_at_least(2), default=1_000_000, help="distinct sample ids")
    p.add_argument("--epochs", type=positive_int, default=10, help="visits per sample (10: 10^7 records)")
    p.add_argument("--batch-size", type=int_at_least(2), default=256, help="records per step")
    p.add_argument("--uids", action="store_true", help="32-hex-digit string ids (DataComp uids) instead of int64")
    p.add_argument("--binarize", nargs="+", default=["threshold", "kmeans"], choices=("threshold", "kmeans", "gmm"),
                   help="Stage 2 binarisations timed, one process each")
    p.add_argument("--seed", type=seed, default=0, help="seed of the synthetic recording")
    p.add_argument("--out", default="out/bench/stage2-scale",
                   help="working folder for the log (replaced on each run; refused if it holds other files)")
    p.add_argument("--json", default=None, help="also write the figures here (default: not written)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_quiet(p, "no progress bar")


def record_log(directory: Path, samples: int, epochs: int, batch_size: int, uids: bool, seed: int,
               progress: bool = True) -> tuple[float, Path]:
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
    with progress_bar(total=steps, desc="recording", enabled=progress) as bar:
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

    from keepset.bench._script import working_folder
    from keepset.io import check_output_file

    if args.json:
        check_output_file(args.json, args.overwrite)
    out = working_folder(args.out, owned=("dynamics", "noisy_ids.npy"))
    log = out / "dynamics"
    shutil.rmtree(log, ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    rec_s, noisy = record_log(log, args.samples, args.epochs, args.batch_size, args.uids, args.seed,
                              progress=not args.quiet)
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

        write_text_atomic(args.json, json.dumps(doc, indent=2) + "\n", overwrite=args.overwrite)
    return 0


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
