"""Stage 2 out of core: time and peak memory of the streaming filter on a recorded log of 10^7 records.

A synthetic training run is recorded through ``keepset.recorder.DynamicsRecorder`` exactly as ``GradMimic``
records one (one ``record()`` call per batch): ``--samples`` ids (int64, or 32-hex-digit uids with ``--uids``)
visited once per epoch in a seeded random order, batches of ``--batch-size``, a Mimic Score per visit that is
lower for a planted 30% of "noisy" samples, and its softmax over the batch; beside it, the log of
``--holdout`` held-out clean samples, ``--holdout-per-step`` of them scored at every step as
``GradMimic(holdout=...)`` records them (keepset's default, calibrated Stage 2 reads both). Then each Stage 2
rule runs in a fresh process (so its peak RSS is its own), reading the log chunk by chunk; the table prints
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
if sys.argv[2] == "calibrated":
    from keepset.selection.stage2 import calibrated_stage2
    hold = DynamicsRecorder.open(sys.argv[4])
    res = calibrated_stage2(rec, hold)
    ids, keep = res.ids, res.keep
else:
    ids, yes, total = stage2_votes(rec, binarize=sys.argv[2], vote="majority")
    keep = yes / total >= 0.5
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Stage 2's own, before the F1 check below
noisy = np.load(sys.argv[3], allow_pickle=False)
flag = ~keep
truth = np.isin(ids, noisy)
tp = float((flag & truth).sum())
f1 = 2 * tp / max(flag.sum() + truth.sum(), 1)
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak,
                  "kept": int(keep.sum()), "n": int(len(keep)), "f1": f1}))
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--samples", type=int_at_least(2), default=1_000_000, help="distinct sample ids")
    p.add_argument("--epochs", type=positive_int, default=10, help="visits per sample (10: 10^7 records)")
    p.add_argument("--batch-size", type=int_at_least(2), default=256, help="records per step")
    p.add_argument("--uids", action="store_true", help="32-hex-digit string ids (DataComp uids) instead of int64")
    p.add_argument("--binarize", nargs="+", default=["calibrated", "threshold", "kmeans"],
                   choices=("calibrated", "threshold", "kmeans", "gmm"),
                   help="Stage 2 rules timed, one process each (calibrated: keepset's default)")
    p.add_argument("--holdout", type=int_at_least(2), default=20_000,
                   help="held-out clean samples (their own ids) for the calibrated rule")
    p.add_argument("--holdout-per-step", type=positive_int, default=32,
                   help="held-out samples scored at every step")
    p.add_argument("--seed", type=seed, default=0, help="seed of the synthetic recording")
    p.add_argument("--out", default="out/bench/stage2-scale",
                   help="working folder for the log (replaced on each run; refused if it holds other files)")
    p.add_argument("--json", default=None, help="also write the figures here (default: not written)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_quiet(p, "no progress bar")


def record_log(directory: Path, samples: int, epochs: int, batch_size: int, uids: bool, seed: int,
               progress: bool = True, holdout: int = 20_000, holdout_per_step: int = 32) -> tuple[float, Path]:
    """Record the synthetic run into ``directory`` and its held-out samples' log into ``directory``-holdout;
    returns (seconds, path of the .npy of noisy ids)."""
    from keepset._progress import progress_bar
    from keepset.recorder import DynamicsRecorder

    rng = np.random.default_rng(seed)
    drawn = rng.choice(2**62 if uids else 10**12, samples + holdout, replace=False)
    all_ids = np.array([f"{v:032x}" for v in drawn]) if uids else drawn.astype(np.int64)
    ids, h_ids = all_ids[:samples], all_ids[samples:]
    noisy = rng.random(samples) < 0.3
    rec = DynamicsRecorder(directory, ("mimic", "mimic_normed", "weight"))
    hold = DynamicsRecorder(holdout_dir(directory), ("mimic",))
    h_order, h_at = rng.permutation(holdout), 0
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
                if h_at + holdout_per_step > holdout:
                    h_order, h_at = rng.permutation(holdout), 0
                h_pos = h_order[h_at:h_at + holdout_per_step]
                h_at += holdout_per_step
                hold.record(h_ids[h_pos], step, e, mimic=rng.normal(size=len(h_pos)))
                step += 1
                bar.update(1)
    rec.close()
    hold.close()
    np.save(directory.parent / "noisy_ids.npy", ids[noisy])
    return time.perf_counter() - t0, directory.parent / "noisy_ids.npy"


def holdout_dir(directory: Path) -> Path:
    return directory.parent / "holdout"


def run(args) -> int:
    import shutil

    from keepset.bench._script import working_folder
    from keepset.io import check_output_file

    if args.json:
        check_output_file(args.json, args.overwrite)
    out = working_folder(args.out, owned=("dynamics", "holdout", "noisy_ids.npy"))
    log = out / "dynamics"
    shutil.rmtree(log, ignore_errors=True)
    shutil.rmtree(holdout_dir(log), ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    rec_s, noisy = record_log(log, args.samples, args.epochs, args.batch_size, args.uids, args.seed,
                              progress=not args.quiet, holdout=args.holdout, holdout_per_step=args.holdout_per_step)
    size_mb = sum(p.stat().st_size for p in log.iterdir()) / 2**20
    n_records = args.samples * args.epochs
    print(f"{n_records:,} records of {args.samples:,} {'uid' if args.uids else 'int64'} ids, batches of "
          f"{args.batch_size}: recorded in {rec_s:.1f} s, {size_mb:.0f} MiB on disk", file=sys.stderr)
    rows = []
    for method in args.binarize:
        done = subprocess.run([sys.executable, "-c", CHILD, str(log), method, str(noisy), str(holdout_dir(log))], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise ValueError(f"the stage 2 run ({method}) failed: {done.stderr.strip().splitlines()[-1]}")
        rows.append({"binarize": method, **json.loads(done.stdout.strip().splitlines()[-1])})
    print(f"Stage 2 on {n_records:,} records ({'uids' if args.uids else 'int64 ids'}), one process each:")
    print(f"{'rule':<10}{'seconds':>10}{'peak RSS MiB':>14}{'kept':>12}{'F1 (planted)':>14}")
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
