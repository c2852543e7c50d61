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
