"""``write_report``: the HTML report (and the issues table) of a run folder or a benchmark folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from keepset.report.html import esc, page
from keepset.report.run import Run, check_run_dir, load_run

#: gallery defaults: rows listed on the page, rows with a thumbnail, cards per page
MAX_GALLERY = 20_000
MAX_THUMBNAILS = 2_000
PAGE_SIZE = 100


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _sig(v: float) -> float | None:
    """A float rounded to 4 significant digits for the page (None for NaN / inf)."""
    return float(f"{v:.4g}") if np.isfinite(v) else None


def gallery_data(run: Run, issues, max_rows: int, thumbs: list[str | None], page_size: int) -> dict:
    """The gallery's JSON: the flagged rows of the issues table (worst first, at most ``max_rows``), each as
    [id, given, predicted, true, corrupted (1/0/null), caption, issue score, [scores], thumbnail index]."""
    flagged = issues[issues["is_issue"]].head(max_rows)
    n = len(flagged)

    def ints(col):
        if col not in flagged:
            return [None] * n
        v = flagged[col]
        return [None if m else int(x) for x, m in zip(v.to_numpy(dtype=np.float64, na_value=np.nan).tolist(),
                                                     v.isna().to_numpy().tolist())]

    ids = flagged["id"].to_numpy()
    ids = [int(x) for x in ids.tolist()] if ids.dtype.kind in "iu" else [str(x) for x in ids.tolist()]
    corrupted = (flagged["corrupted"].astype(int).tolist() if "corrupted" in flagged else [None] * n)
    captions = ([None if c is None or c != c else str(c) for c in flagged["caption"].astype(object).tolist()]
                if "caption" in flagged else [None] * n)
    scores = flagged[run.score_columns].to_numpy(dtype=np.float64) if run.score_columns else np.zeros((n, 0))
    score_rows = [[_sig(v) for v in row] for row in scores.tolist()]
    issue = [_sig(v) for v in flagged["issue_score"].to_numpy(dtype=np.float64).tolist()]
    thumb_index, kept_thumbs = [], []
    for i in range(n):
        t = thumbs[i] if i < len(thumbs) else None
        if t is None:
            thumb_index.append(None)
        else:
            thumb_index.append(len(kept_thumbs))
            kept_thumbs.append(t)
    rows = [list(r) for r in zip(ids, ints("given_label"), ints("predicted_label"), ints("true_label"), corrupted,
                                  captions, issue, score_rows, thumb_index)]
    return {"page_size": page_size, "classes": run.class_names, "score_columns": list(run.score_columns),
            "rows": rows, "thumbs": kept_thumbs}


def render_run(run: Run, issues, *, max_rows: int = MAX_GALLERY, max_thumbnails: int = MAX_THUMBNAILS,
               page_size: int = PAGE_SIZE, data: str | None = None, thumbnails: bool = True) -> tuple[str, dict]:
    """The report page of a loaded run and its issues table; returns (html, facts)."""
    from keepset.report import runpage
    from keepset.report.figures import score_distributions
    from keepset.report.issues import issue_scores
    from keepset.report.thumbnails import thumbnails as make_thumbnails

    timings: dict[str, float] = {}
    t = time.perf_counter()
    n, kept = len(run.keep), int(run.keep.sum())
    flagged_ids = issues.loc[issues["is_issue"], "id"].to_numpy()
    n_rows = min(len(flagged_ids), max_rows)
    n_thumbs = min(n_rows, max_thumbnails)
    spec = data or run.summary.get("data") or run.metadata.get("data")
    notes = []
    thumbs: list[str | None] = []
    if n_thumbs and thumbnails:
        thumbs, note = make_thumbnails(spec, flagged_ids[:n_thumbs])
        if note:
            notes.append(note)
    elif n_thumbs:
        notes.append("no thumbnails: turned off (--no-thumbnails)")
    timings["thumbnails_s"] = time.perf_counter() - t
    t = time.perf_counter()
    issue_score = issue_scores(run)[0]  # in the table's row order
    shown_cols = run.score_columns[:8]
    uri = score_distributions({c: run.table[c].to_numpy(dtype=np.float64) for c in shown_cols}, run.directions,
                              run.keep, run.corrupted) if n else None
    timings["figures_s"] = time.perf_counter() - t
    t = time.perf_counter()
    classes_present = (sorted(set(issues.loc[issues["is_issue"], "given_label"].dropna().astype(int).tolist()))
                       if run.labels is not None else [])
    warnings = [w for w in run.summary.get("warnings", []) if isinstance(w, str)]
    origin = issues.attrs.get("issue_score", {})
    body = [
        f"<h1>keepset report: {esc(run.path.resolve().name)}</h1>",
        f"<p class=\"sub\">{esc(run.path.resolve())} · data {esc(spec or 'unknown')}</p>",
        *[f"<div class=\"warn\">{esc(w)}</div>" for w in warnings],
        runpage.summary_section(run, n, kept, issue_score),
        runpage.per_class_section(run),
        runpage.distributions_section(uri, len(run.score_columns), len(shown_cols)),
        runpage.agreement_section(run),
        runpage.gallery_section(len(flagged_ids), n_rows, sum(x is not None for x in thumbs), page_size, notes,
                                run.class_names, classes_present),
        "<footer>issue score = " + esc(_origin_text(origin)) + ". The issues table (issues.parquet, "
        "<code>keepset.issues(run_dir)</code>) lists every sample. " + _version() + "</footer>",
    ]
    data_block = gallery_data(run, issues, n_rows, thumbs, page_size) if n_rows else None
    html = page(f"keepset report: {run.path.resolve().name}", "\n".join(body), data_block)
    timings["html_s"] = time.perf_counter() - t
    return html, {"rows": n, "flagged": len(flagged_ids), "gallery_rows": n_rows,
                  "thumbnails": sum(x is not None for x in thumbs), "notes": notes, **timings}


def _origin_text(origin: dict) -> str:
    col, d = origin.get("from"), origin.get("direction")
    if col == "is_issue":
        return "1 for flagged samples, 0 for kept ones (no score column has a known direction)"
    return f"-{col} (higher {col} keeps)" if d == "higher_keeps" else f"{col} (higher {col} drops)"


def _version() -> str:
    from keepset._version import __version__

    return f"Written by keepset {esc(__version__)}; a static page: no network, no external resource."


def write_report(run_dir: str | Path, out: str | Path | None = None, *, overwrite: bool = False,
                 max_gallery: int = MAX_GALLERY, max_thumbnails: int = MAX_THUMBNAILS, page_size: int = PAGE_SIZE,
                 data: str | None = None, thumbnails: bool = True, manifest: bool = False) -> dict:
    """Write the HTML report of a run folder (and ``issues.parquet`` beside it) or of a benchmark folder.

    run_dir : what ``keepset filter`` / ``keepset demo`` wrote (scores.parquet, summary.json) or a benchmark
        folder (results.json).
    out : the HTML file (default ``run_dir/report.html``); must end in .html.
    max_gallery : flagged rows listed in the gallery (worst first; issues.parquet always has all rows).
    max_thumbnails : rows of the gallery with a thumbnail (the worst ones).
    data : data spec for the thumbnails when the run's own (summary.json's ``data``) moved.
    manifest : also write ``OUT.manifest.json`` (the run folder's files read, with their hashes; the outputs).
    The outputs are written as a group: all of them or, on any failure, none (existing ones untouched).
    Returns {"html": Path, "issues": Path | None, "manifest": Path | None, "bytes": int, "seconds": float, ...}.
    """
    t0 = time.perf_counter()
    folder = check_run_dir(run_dir)
    out = Path(out) if out is not None else folder / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out must name an .html file, got {out}")
    max_gallery = _positive(max_gallery, "max_gallery")
    max_thumbnails = _positive(max_thumbnails, "max_thumbnails")
    page_size = _positive(page_size, "page_size") or PAGE_SIZE
    from keepset.io.atomic import atomic_files, check_output_file, write_text_atomic

    is_bench = (folder / "results.json").exists() and not (folder / "scores.parquet").exists()
    if not is_bench:  # its optional packages, before any work
        from keepset._checks import check_installed

        check_installed("pandas", "keepset report (the issues table)", "report")
        check_installed("matplotlib", "keepset report (the score distributions)", "report")
    if is_bench:  # the gallery options describe a run folder's samples: refused rather than ignored
        given = [name for name, value, default in (
            ("max_gallery", max_gallery, MAX_GALLERY), ("max_thumbnails", max_thumbnails, MAX_THUMBNAILS),
            ("page_size", page_size, PAGE_SIZE), ("data", data, None), ("thumbnails", thumbnails, True))
            if value != default]
        if given:
            flags = ", ".join("--no-thumbnails" if g == "thumbnails" else "--" + g.replace("_", "-") for g in given)
            raise ValueError(f"{folder} is a benchmark folder (results.json): {flags} apply to the sample gallery "
                             "of a run folder; drop them")
    issues_path = None if is_bench else out.parent / "issues.parquet"
    manifest_path = out.with_name(out.name + ".manifest.json") if manifest else None
    outputs = [p for p in (out, issues_path, manifest_path) if p is not None]
    for p in outputs:
        check_output_file(p, overwrite)
    if is_bench:
        from keepset.report.benchmarks import render_benchmark

        html, facts = render_benchmark(folder)
    else:
        from keepset.report.issues import issues_table, write_issues

        run = load_run(folder)
        t = time.perf_counter()
        df = issues_table(run)
        issues_s = time.perf_counter() - t
        html, facts = render_run(run, df, max_rows=max_gallery, max_thumbnails=max_thumbnails,
                                 page_size=page_size, data=data, thumbnails=thumbnails)
        facts["issues_s"] = issues_s
    with atomic_files(outputs, overwrite) as tmp:  # all of them or none
        if issues_path is not None:
            write_issues(df, tmp / issues_path.name)
        write_text_atomic(tmp / out.name, html)
        if manifest_path is not None:
            from keepset.io.manifest import write_manifest

            read = ("scores.parquet", "summary.json", "manifest.json", "results.json")
            write_manifest(tmp / manifest_path.name, method="keepset-report",
                           params={"run_dir": str(run_dir), "max_gallery": max_gallery,
                                   "max_thumbnails": max_thumbnails, "page_size": page_size, "data": data,
                                   "thumbnails": thumbnails},
                           inputs={name: folder / name for name in read if (folder / name).is_file()},
                           outputs={"html": out.name, **({"issues": issues_path.name} if issues_path else {})})
    return {"html": out, "issues": issues_path, "manifest": manifest_path, "bytes": out.stat().st_size,
            "seconds": time.perf_counter() - t0, **facts}
