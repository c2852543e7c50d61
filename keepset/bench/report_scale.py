"""Time ``keepset report`` on a large synthetic run folder (default 100,000 samples of 28x28 images).

    python -m keepset.bench.report_scale --n 100000 --flagged 0.4 --out /tmp/report-scale

Writes seeded synthetic IDX images and labels (10 classes), a run folder (scores.parquet with four score
columns, reference predictions, the known corruption and the keep decision; summary.json), then writes the
report with the default caps and prints the wall time of each part, the page weight and the issues table's
size. The data files and the run folder are left in --out for inspection.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
from keepset._argtypes import nonnegative_int, positive_int, seed
from keepset.bench._script import script_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=positive_int, default=100_000, help="samples in the run")
    parser.add_argument("--flagged", type=float, default=0.4, help="fraction flagged, in (0, 1)")
    parser.add_argument("--out", default="out/bench/report-scale",
                        help="working folder (replaced on each run; refused if it holds other files)")
    parser.add_argument("--max-gallery", type=nonnegative_int, default=None,
                        help="gallery rows (default: the report's)")
    parser.add_argument("--max-thumbnails", type=nonnegative_int, default=None,
                        help="thumbnails (default: the report's)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the synthetic run")


def _write_idx(path: Path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes(), compresslevel=1))


def make_run(out: Path, n: int, flagged: float, seed: int) -> Path:
    """Synthetic IDX data (``out/data``) and a run folder over it (``out/run``); returns the run folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    data, run = out / "data", out / "run"
    data.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    true = rng.integers(0, 10, n).astype(np.uint8)
    # one blurry blob per class, plus noise: images differ, like real ones, so the PNGs are not trivial
    yy, xx = np.mgrid[0:28, 0:28]
    centres = np.stack([7 + 14 * (np.arange(10) % 2), 4 + 5 * (np.arange(10) // 2)], 1)
    blobs = np.exp(-((yy[None] - centres[:, 1, None, None]) ** 2 + (xx[None] - centres[:, 0, None, None]) ** 2) / 18)
    images = np.clip(blobs[true] * 220 + rng.integers(0, 36, (n, 28, 28)), 0, 255).astype(np.uint8)
    _write_idx(data / "train-images-idx3-ubyte.gz", images)
    _write_idx(data / "train-labels-idx1-ubyte.gz", true)
    corrupted = rng.random(n) < flagged
    given = np.where(corrupted, (true + rng.integers(1, 10, n)) % 10, true).astype(np.int64)
    mimic = np.where(corrupted, rng.normal(-1, 0.6, n), rng.normal(0.4, 0.3, n)).astype(np.float32)
    keep = np.zeros(n, bool)
    keep[np.argsort(-mimic, kind="stable")[: n - int(round(flagged * n))]] = True
    ids = rng.permutation(n).astype(np.int64)  # rows in shuffled id order: the report must join by id
    cols = {"id": ids, "label": given[ids], "true_label": true[ids].astype(np.int64), "corrupted": corrupted[ids],
            "mimic_mean": mimic[ids], "mimic_last": (mimic + rng.normal(0, 0.2, n)).astype(np.float32)[ids],
            "mimic_normed_mean": (0.01 + 0.002 * mimic).astype(np.float32)[ids],
            "reference_loss": np.where(corrupted, rng.gamma(3, 1, n), rng.gamma(1, 0.2, n)).astype(np.float32)[ids],
            "reference_pred": np.where(rng.random(n) < 0.9, true, given).astype(np.int64)[ids], "keep": keep[ids]}
    table = pa.table({k: pa.array(v) for k, v in cols.items()})
    table = table.replace_schema_metadata({b"keepset": json.dumps({"directions": {
        "mimic_mean": "higher_keeps", "mimic_last": "higher_keeps", "mimic_normed_mean": "higher_keeps",
        "reference_loss": "higher_drops"}}).encode()})
    pq.write_table(table, run / "scores.parquet")
    (run / "summary.json").write_text(json.dumps({
        "data": f"idx:{data.resolve()}", "n": n, "kept": int(keep.sum()), "flagged": int(n - keep.sum()),
        "class_names": [f"class {c}" for c in range(10)],
        "quality": {"estimated": float(keep.mean()), "reference_check": None, "true": float(1 - corrupted.mean())},
        "warnings": []}))
    return run


def run(args) -> int:
    from keepset.report.build import MAX_GALLERY, MAX_THUMBNAILS, write_report

    from keepset.bench._script import working_folder

    if not 0 < args.flagged < 1:
        raise ValueError(f"--flagged must be in (0, 1), got {args.flagged}")
    out = working_folder(args.out, owned=("data", "run"))
    t0 = time.perf_counter()
    run_dir = make_run(out, args.n, args.flagged, args.seed)
    print(f"synthetic run folder of {args.n:,} samples written in {time.perf_counter() - t0:.1f} s: {run_dir}",
          file=sys.stderr)
    res = write_report(run_dir, overwrite=True, max_gallery=args.max_gallery or MAX_GALLERY,
                       max_thumbnails=args.max_thumbnails or MAX_THUMBNAILS)
    issues_mb = Path(res["issues"]).stat().st_size / 1e6
    print(f"report of {res['rows']:,} samples ({res['flagged']:,} flagged; gallery {res['gallery_rows']:,} rows, "
          f"{res['thumbnails']:,} thumbnails)")
    print(f"  total {res['seconds']:.2f} s: issues table {res['issues_s']:.2f} s, thumbnails (loading the data "
          f"included) {res['thumbnails_s']:.2f} s, figures {res['figures_s']:.2f} s, HTML {res['html_s']:.2f} s")
    print(f"  report.html {res['bytes'] / 1e6:.2f} MB, issues.parquet {issues_mb:.2f} MB")
    return 0


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
