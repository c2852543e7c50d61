"""``keepset report``: a static HTML page of a run folder (``filter``, ``demo``) or a benchmark folder, and the
issues table (``issues.parquet``, one row per sample, worst first) beside it, with their manifest
(``report.html.manifest.json``). See keepset.report."""

from __future__ import annotations

from keepset.cli._common import command_parser, nonnegative_int, positive_int

EXAMPLES = """examples:
  keepset report out/demo                         # out/demo/report.html and out/demo/issues.parquet
  keepset report out/filter --out review/filter.html --max-gallery 5000
  keepset report out/bench/detection-digits-mlp   # tables and plots of a benchmark
"""


def add_parser(subparsers) -> None:
    from keepset.report.build import MAX_GALLERY, MAX_THUMBNAILS, PAGE_SIZE

    p = command_parser(subparsers, "report", help="an HTML page of a run or benchmark folder and the issues table "
                                                  "(issues.parquet)", description=__doc__, epilog=EXAMPLES)
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by keepset filter, demo or bench")
    p.add_argument("--out", default=None, help="the HTML file (default: RUN_DIR/report.html); issues.parquet and "
                                               "the manifest are written beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report, issues.parquet and manifest")
    p.add_argument("--max-gallery", type=nonnegative_int, default=MAX_GALLERY,
                   help="flagged samples listed in the gallery, worst first")
    p.add_argument("--max-thumbnails", type=nonnegative_int, default=MAX_THUMBNAILS,
                   help="gallery samples shown with a thumbnail, worst first")
    p.add_argument("--page-size", type=positive_int, default=PAGE_SIZE, help="gallery cards per page")
    p.add_argument("--data", default=None,
                   help="data spec for the thumbnails when the run's data moved (default: the run's own)")
    p.add_argument("--no-thumbnails", action="store_true", help="no thumbnails (no data loading)")
    p.set_defaults(func=run)


def run(args) -> int:
    from keepset.report.build import MAX_THUMBNAILS, write_report

    if args.no_thumbnails:  # these would be ignored
        for flag, value, default in (("--max-thumbnails", args.max_thumbnails, MAX_THUMBNAILS),
                                     ("--data", args.data, None)):
            if value != default:
                raise ValueError(f"{flag} applies to thumbnails, which --no-thumbnails turns off: drop one of them")
    res = write_report(args.run_dir, args.out, overwrite=args.overwrite, max_gallery=args.max_gallery,
                       max_thumbnails=args.max_thumbnails, page_size=args.page_size, data=args.data,
                       thumbnails=not args.no_thumbnails, manifest=True)
    extra = f" and {res['issues']} ({res['rows']:,} rows)" if res.get("issues") else ""
    print(f"wrote {res['html']} ({res['bytes'] / 1e6:.2f} MB){extra} in {res['seconds']:.1f} s")
    for note in res.get("notes", []):
        print(f"note: {note}")
    return 0
