"""The report page of a run folder: summary, per-class noise, score distributions, agreement, gallery."""

from __future__ import annotations

import json
import math

import numpy as np

from keepset.report.html import esc, fmt, img, pct, table, tiles
from keepset.report.run import Run
from keepset.report.stats import agreement, confusions, per_class, worst_k

QUALITY_LABELS = {
    "estimated": "estimated (fraction the filter keeps)",
    "reference_check": "independent check (reference agreement, corrected)",
    "reference_agreement": "reference agrees with the labels",
    "reference_holdout_accuracy": "reference accuracy, held-out trusted",
    "true": "true quality (known corruption)",
    "error": "error of the estimate",
}
SHOWN_KEYS = {"data", "n", "kept", "flagged", "class_names", "quality", "detection", "warnings", "accuracy"}


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def summary_section(run: Run, n: int, kept: int, issue_score: np.ndarray) -> str:
    s, q = run.summary, run.summary.get("quality") or {}
    flagged = n - kept
    items = [(f"{n:,}", "samples filtered"), (f"{kept:,} ({pct(kept, n)})", "kept"),
             (f"{flagged:,} ({pct(flagged, n)})", "flagged")]
    if _num(q.get("estimated")) is not None:
        items.append((f"{q['estimated']:.3f}", "estimated quality"))
    check = _num(q.get("reference_check"))
    items.append((f"{check:.3f}" if check is not None else "–", "independent check (reference)"))
    if _num(q.get("true")) is not None:
        items.append((f"{q['true']:.3f}", "true quality (known)"))
    parts = ["<h2 id=\"summary\">Summary</h2>", tiles(items)]
    if check is None:
        parts.append("<p class=\"note\">No independent check: the run has no held-out trusted samples to correct "
                     "the reference's agreement with the labels.</p>")
    rows = [[esc(QUALITY_LABELS.get(k, k)), fmt(_num(v)) if _num(v) is not None or v is None else esc(v)]
            for k, v in q.items()]
    row_of_tables = []
    if rows:
        row_of_tables.append(table(["dataset quality", "value"], rows))
    det = s.get("detection")
    if not isinstance(det, dict) and run.corrupted is not None:
        from keepset.evaluation.metrics import auroc, detection_metrics

        det = detection_metrics(run.corrupted, ~run.keep)  # sklearn's order: (y_true, y_pred)
        finite = np.isfinite(issue_score)
        det["auroc"] = auroc(run.corrupted[finite], issue_score[finite])
    if isinstance(det, dict):
        keys = [k for k in ("precision", "recall", "f1", "auroc") if k in det]
        row_of_tables.append(table(["mislabel detection", "flagged vs corrupted"],
                                   [[esc(k), fmt(_num(det.get(k)))] for k in keys]))
    acc = s.get("accuracy")
    if isinstance(acc, dict) and acc:
        row_of_tables.append(table(["test accuracy", "model"], [[esc(k), fmt(_num(v))] for k, v in acc.items()]))
    parts.append("<div class=\"row\">" + "".join(row_of_tables) + "</div>")
    other = [(k, v) for k, v in s.items() if k not in SHOWN_KEYS]
    if other or s.get("data"):
        rows = [[esc("data"), esc(s.get("data", "–"))]] + [
            [esc(k), esc(v if isinstance(v, str) else _short(json.dumps(v, default=str)))] for k, v in other]
        parts.append("<details><summary>run details</summary>" + table(["key", "value"], rows, text_cols=(0, 1))
                     + "</details>")
    return "\n".join(parts)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _class(c: int, names: list[str] | None) -> str:
    if names is None or not 0 <= c < len(names) or names[c] == str(c):
        return esc(str(c))
    return esc(f"{names[c]} ({c})")


def per_class_section(run: Run) -> str:
    labels = run.labels
    parts = ["<h2 id=\"classes\">Per class</h2>",
             "<p class=\"note\">Estimated noise: the fraction of the class's samples the filter flags. "
             "Reference disagrees: the reference network predicts another class. True noise: the known "
             "corruption, when the run has it. Confusions: the given label against the reference's prediction "
             "(or, without one, against the known true label).</p>"]
    if labels is None:
        return parts[0] + "\n<p class=\"note\">No class labels (image-text pairs): no per-class picture.</p>"
    names = run.class_names
    pred, true = run.reference_pred, run.true_labels
    k = len(names) if names is not None else 1 + int(max(a.max(initial=0) for a in (labels, pred, true)
                                                         if a is not None))
    flagged = ~run.keep
    st = per_class(labels, flagged, k, pred=pred, corrupted=run.corrupted)
    if pred is not None:
        other, what = pred, "reference"
    elif true is not None and run.corrupted is not None:
        other, what = true, "true label"
    else:
        other, what = None, None
    conf = confusions(labels, other, k, flagged) if other is not None else []
    top_by_class: dict[int, list] = {}
    for g, o, c, _ in conf:
        top_by_class.setdefault(g, [])
        if len(top_by_class[g]) < 3:
            top_by_class[g].append(f"{_class(o, names)} ×{c}")
    header = ["given class", "samples", "flagged", "estimated noise"]
    if "disagree_rate" in st:
        header.append("reference disagrees")
    if "true_rate" in st:
        header.append("true noise")
    if other is not None:
        header.append(f"→ {what} (top 3)")
    rows = []
    for c in range(k):
        row = [_class(c, names), fmt(int(st["n"][c])), fmt(int(st["flagged"][c])), _rate(st["flagged_rate"][c])]
        if "disagree_rate" in st:
            row.append(_rate(st["disagree_rate"][c]))
        if "true_rate" in st:
            row.append(_rate(st["true_rate"][c]))
        if other is not None:
            row.append(", ".join(top_by_class.get(c, [])) or "–")
        rows.append(row)
    tables = [table(header, rows, text_cols=(0, len(header) - 1) if other is not None else (0,))]
    if conf:
        tables.append(table(["given", what, "samples", "of them flagged"],
                            [[_class(g, names), _class(o, names), fmt(c), fmt(f)] for g, o, c, f in conf[:10]],
                            text_cols=(0, 1), caption=f"most frequent confusions: given → {what}"))
    parts.append("<div class=\"row\">" + "".join(tables) + "</div>")
    if other is None:
        parts.append("<p class=\"note\">No reference predictions in scores.parquet (column "
                     "<code>reference_pred</code>) and no known corruption: no confusion table.</p>")
    elif pred is None:
        parts.append("<p class=\"note\">No reference predictions in scores.parquet (column "
                     "<code>reference_pred</code>): the confusions shown are the known corruptions.</p>")
    return "\n".join(parts)


def _rate(v: float) -> str:
    return "–" if not np.isfinite(v) else f"{100 * v:.1f}%"


def distributions_section(uri: str | None, n_columns: int, shown: int) -> str:
    head = "<h2 id=\"scores\">Score distributions</h2>"
    if uri is None:
        return head + "<p class=\"note\">No score columns in scores.parquet.</p>"
    note = "" if shown >= n_columns else f" The first {shown} of {n_columns} score columns are shown."
    return (head + "<p class=\"note\">Density of every score for the kept and the flagged samples (and for the "
            "clean and the corrupted ones when the truth is known); the 1% most extreme values are clipped into "
            f"the end bins.{esc(note)}</p>" + img(uri, "score distributions"))


def agreement_section(run: Run) -> str:
    head = "<h2 id=\"agreement\">Agreement between flags</h2>"
    flagged = ~run.keep
    k = int(flagged.sum())
    if k == 0:
        return head + "<p class=\"note\">The filter flags nothing: no agreement to show.</p>"
    flags = {"filter (flagged)": flagged}
    for c in run.score_columns:
        if c in run.directions:
            flags[f"{c}: worst {k:,}"] = worst_k(run.table[c].to_numpy(dtype=np.float64), run.directions[c], k)
    if run.reference_pred is not None and run.labels is not None:
        flags["reference disagrees"] = run.reference_pred != run.labels
    if run.corrupted is not None:
        flags["corrupted (truth)"] = run.corrupted
    names, jac, inter, count = agreement(flags)
    rows, classes = [], []
    for i, a in enumerate(names):
        rows.append([esc(a), fmt(int(count[i]))] + [fmt(float(jac[i, j]), 2) for j in range(len(names))])
        classes.append(["", ""] + [f"s{min(9, int(jac[i, j] * 10))}" if np.isfinite(jac[i, j]) else ""
                                   for j in range(len(names))])
    note = ("<p class=\"note\">Jaccard overlap |A ∩ B| / |A ∪ B| of the samples each row flags. Every score "
            f"column flags its {k:,} worst samples (as many as the filter flags), by its direction"
            + ("; “reference disagrees”: the reference predicts another class than the label" if
               "reference disagrees" in flags else "") + ".</p>")
    return head + note + table(["flags", "count"] + names, rows, cell_class=classes)


def gallery_section(n_flagged: int, n_rows: int, n_thumbs: int, page_size: int, notes: list[str],
                    class_names: list[str] | None, classes_present: list[int]) -> str:
    head = "<h2 id=\"gallery-title\">Flagged samples, worst first</h2>"
    if n_flagged == 0:
        return head + "<p class=\"note\">The filter flags nothing.</p>"
    if n_rows == 0:
        return head + (f"<p class=\"note\">{n_flagged:,} flagged samples; the gallery is turned off "
                       "(--max-gallery 0): issues.parquet lists them.</p>")
    info = [f"{n_flagged:,} flagged samples, sorted by issue score (most likely issue first)."]
    if n_rows < n_flagged:
        info.append(f"The page lists the {n_rows:,} worst; issues.parquet lists all of them.")
    if n_thumbs < n_rows:
        info.append(f"Thumbnails for the {n_thumbs:,} worst.")
    body = [head, "<p class=\"note\">" + esc(" ".join(info)) + "</p>"]
    body += [f"<p class=\"note\">{esc(n)}</p>" for n in notes]
    options = "<option value=\"\">all classes</option>" + "".join(
        f"<option value=\"{c}\">{_class(c, class_names)}</option>" for c in classes_present)
    picker = (f"<label>given class <select id=\"gallery-class\">{options}</select></label>"
              if classes_present else "")
    body.append("<div class=\"controls\"><button id=\"gallery-prev\" type=\"button\">previous</button>"
                "<button id=\"gallery-next\" type=\"button\">next</button>"
                f"<span id=\"gallery-status\" class=\"note\"></span>{picker}"
                f"<span class=\"note\">{page_size} per page</span></div>")
    body.append("<noscript><p class=\"warn\">The gallery needs JavaScript; issues.parquet lists the same samples."
                "</p></noscript>")
    body.append("<div id=\"gallery\" class=\"gallery\"></div>")
    return "\n".join(body)
