"""Markdown tables from the calibration study's ``heads.jsonl`` and ``stage2.jsonl`` (mean ± std over seeds)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ms(vals, digits=3) -> str:
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    if not vals:
        return "–"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def _cols(rows):
    cols = sorted({(r["kind"], r["rate"]) for r in rows}, key=lambda c: (c[0] != "none", c[0] != "symmetric", c[1]))
    return cols, ["none 0" if k == "none" else f"{k[:4]} {r:g}" for k, r in cols]


def stage2_tables(rows, data, model, setting, variant, rules, metrics=("f1", "quality_err")) -> str:
    rows = [r for r in rows if (r["data"], r["model"], r["setting"], r["variant"]) == (data, model, setting, variant)]
    if not rows:
        return ""
    cols, names = _cols(rows)
    text = []
    for metric in metrics + ("kept",):
        g = defaultdict(list)
        for r in rows:
            for rule, m in r["metrics"].items():
                g[(rule, r["kind"], r["rate"])].append(m[metric])
        use_cols = cols if metric != "kept" else [c for c in cols if c[0] == "none"]
        use_names = names if metric != "kept" else ["none 0"]
        if metric == "f1":
            use_cols = [c for c in cols if c[0] != "none"]
            use_names = [n for c, n in zip(cols, names) if c[0] != "none"]
        text.append(f"\n{metric} — {data} {model} ({setting} reference), Stage 1 `{variant}`, "
                    f"seeds {sorted({r['seed'] for r in rows})}\n")
        text.append("| rule | " + " | ".join(use_names) + " |")
        text.append("|---" * (len(use_names) + 1) + "|")
        for rule in rules:
            text.append(f"| {rule} | " + " | ".join(_ms(g.get((rule,) + c, [])) for c in use_cols) + " |")
    return "\n".join(text)


def accuracy_table(rows, data, model, setting, variants) -> str:
    rows = [r for r in rows if (r["data"], r["model"], r["setting"]) == (data, model, setting)]
    if not rows:
        return ""
    cols, names = _cols(rows)
    g = defaultdict(list)
    for r in rows:
        g[(r["variant"], r["kind"], r["rate"])].append(r["accuracy"])
    text = [f"\nTest accuracy — {data} {model} ({setting} reference), seeds {sorted({r['seed'] for r in rows})}\n",
            "| Stage 1 | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for v in variants:
        if any(k[0] == v for k in g):
            text.append(f"| {v} | " + " | ".join(_ms(g.get((v,) + c, [])) for c in cols) + " |")
    return "\n".join(text)


def run_report(args) -> int:
    root = Path(args.root)
    heads, s2 = _load(root / "heads.jsonl"), _load(root / "stage2.jsonl")
    from keepset.bench.calibration import variants

    combos = sorted({(r["data"], r["model"], r["setting"]) for r in heads})
    for data, model, setting in combos:
        print(accuracy_table(heads, data, model, setting, list(variants())))
    rules = ["paper_threshold", "paper_kmeans", "paper_gmm", "reference", "count_l0.05", "count_l0.1", "count_l0.2",
             "count_l0.5", "count_l0.1_nocap", "count_l0.1_raw", "count_ref", "count_avg", "count_avg_l0.2",
             "count_avg_raw", "alpha0.01", "alpha0.02", "alpha0.05", "alpha0.02_storey",
             "bh0.05", "bh0.1", "bh0.2", "bh0.1_storey"]
    for data, model, setting in sorted({(r["data"], r["model"], r["setting"]) for r in s2}):
        for v in args.variants:
            print(stage2_tables(s2, data, model, setting, v, rules))
    return 0


def summary_table(rows, data, model, setting, *, default=("lfdr", "count_avg"), today=("tau1", "paper_threshold"),
                  extra=(("lfdr", "count_l0.1"), ("lfdr", "reference"))) -> str:
    """One table per metric: today's Stage 2 (the paper's threshold on today's Grad-Mimic recording), the
    chosen default, and extra (variant, rule) rows, over noise kinds and rates."""
    rows = [r for r in rows if (r["data"], r["model"], r["setting"]) == (data, model, setting)]
    if not rows:
        return ""
    cols, names = _cols(rows)
    g = defaultdict(list)
    for r in rows:
        for rule, m in r["metrics"].items():
            for metric in ("f1", "quality_err", "quality_est", "kept", "precision", "recall"):
                g[(r["variant"], rule, metric, r["kind"], r["rate"])].append(m[metric])
    pairs = [today, default] + list(extra)
    label = {today: f"today: {today[1]} on `{today[0]}`", default: f"**default: {default[1]} on `{default[0]}`**"}
    out = [f"\n{data} {model} ({setting} reference), seeds {sorted({r['seed'] for r in rows})}\n",
           "| metric | Stage 1 / rule | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for metric in ("f1", "quality_err", "kept"):
        for v, rule in pairs:
            cells = []
            for c in cols:
                if metric == "f1" and c[0] == "none":
                    cells.append("–")
                elif metric == "kept" and c[0] != "none":
                    cells.append("")
                else:
                    cells.append(_ms(g.get((v, rule, metric) + c, [])))
            if metric == "kept":
                cells = [cells[0]] + [""] * (len(cols) - 1)
            out.append(f"| {metric} | {label.get((v, rule), f'{rule} on `{v}`')} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def shift_table(rows, variant="lfdr") -> str:
    """Fraction of clean training samples whose calibrated p-value is <= alpha (calibrated: = alpha)."""
    g = defaultdict(list)
    for r in rows:
        if r["variant"] != variant:
            continue
        key = (r["data"], r["model"], r["setting"], "noise 0" if r["rate"] == 0 else "noisy")
        g[key].append([r["clean_p_below"][a] for a in ("0.01", "0.02", "0.05", "0.1")])
    out = ["| data | model | reference | labels | p <= 0.01 | p <= 0.02 | p <= 0.05 | p <= 0.1 | runs |",
           "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(g):
        a = np.array(g[key])
        out.append("| " + " | ".join(key) + " | " + " | ".join(f"{m:.4f}" for m in a.mean(0)) + f" | {len(a)} |")
    return "\n".join(out)
