"""``keepset report``: a static HTML page of a run folder (``filter``, ``demo``) or a benchmark folder, and the
issues table (``issues.parquet``, one row per sample, worst first) beside it. See keepset.report."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  keepset report out/demo                         # out/demo/report.html and out/demo/issues.parquet
  keepset report out/filter --out review/filter.html --max-gallery 5000
  keepset report out/bench/detection-digits-mlp   # tables and plots of a benchmark
"""


def add_parser(subparsers) -> None:
    from keepset.report.build import MAX_GALLERY, MAX_THUMBNAILS, PAGE_SIZE

    p = subparsers.add_parser(
        "report", help="an HTML page of a run or benchmark folder and the issues table (issues.parquet)",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by keepset filter, demo or bench")
    p.add_argument("--out", default=None, help="the HTML file (default RUN_DIR/report.html); issues.parquet is "
                                               "written beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report and issues.parquet")
    p.add_argument("--max-gallery", type=int, default=MAX_GALLERY,
                   help=f"flagged samples listed in the gallery, worst first (default {MAX_GALLERY})")
    p.add_argument("--max-thumbnails", type=int, default=MAX_THUMBNAILS,
                   help=f"gallery samples shown with a thumbnail, worst first (default {MAX_THUMBNAILS})")
    p.add_argument("--page-size", type=int, default=PAGE_SIZE, help=f"gallery cards per page (default {PAGE_SIZE})")
    p.add_argument("--data", default=None, help="data spec for the thumbnails when the run's data moved")
    p.add_argument("--no-thumbnails", action="store_true", help="no thumbnails (no data loading)")
    p.set_defaults(func=run)


def run(args) -> int:
    from keepset.report.build import write_report

    res = write_report(args.run_dir, args.out, overwrite=args.overwrite, max_gallery=args.max_gallery,
                       max_thumbnails=args.max_thumbnails, page_size=args.page_size, data=args.data,
                       thumbnails=not args.no_thumbnails)
    extra = f" and {res['issues']} ({res['rows']:,} rows)" if res.get("issues") else ""
    print(f"wrote {res['html']} ({res['bytes'] / 1e6:.2f} MB){extra} in {res['seconds']:.1f} s")
    for note in res.get("notes", []):
        print(f"note: {note}")
    return 0
