"""Selector registry: ``keepset select --method NAME`` looks NAME up here.

A selector is ``fn(table: dict[str, ndarray [N]], **options) -> bool keep mask [N]``, where ``table``
is a score table (``id``, ``label``, score columns) and ``options`` holds the CLI flags (``ratio`` ...).
Its module may define ``add_arguments(parser)``. Adding a selector is one file plus one entry in
``SELECTORS`` and one in ``SELECTOR_FLAGS`` below.
"""

from __future__ import annotations

import importlib

SELECTORS: dict[str, tuple[str, str, str]] = {
    "top": ("keepset.selection.table_selectors", "select_top_column",
            "keep the top --ratio of --column (--lowest for the bottom)"),
    "stage2": ("keepset.selection.table_selectors", "select_stage2",
               "Grad-Mimic Stage 2 filter from recorded dynamics (--dynamics DIR)"),
    "clip-powered": ("keepset.selection.clip_select", "select_clip_powered", "CLIP-powered multi-objective selection from sas and sds"),
    "random": ("keepset.selection.baseline_selectors", "select_random_table",
               "uniform random --ratio (--balanced: per class)"),
    "balanced": ("keepset.selection.baseline_selectors", "select_balanced_table",
                 "top --ratio of --column inside every class (--lowest for the bottom)"),
    "ccs": ("keepset.selection.baseline_selectors", "select_ccs_table",
            "coverage-centric stratified sampling on --column (--hard-cutoff, --strata, --hardest)"),
    "moderate": ("keepset.selection.baseline_selectors", "select_moderate_table",
                 "Moderate-DS: samples nearest their class's median distance to centre (--features)"),
    "kcenter": ("keepset.selection.baseline_selectors", "select_kcenter_table",
                "k-center greedy coreset on --features"),
    "expr": ("keepset.selection.baseline_selectors", "select_expr_table",
             "set algebra, e.g. --expr \"top(clip, 0.3) - bottom(mimic, 0.2)\""),
}

#: the ``keepset select`` flags (argparse dests) each selector reads; any other method flag (--ratio and --seed
#: included) given with that selector is refused rather than ignored
SELECTOR_FLAGS: dict[str, frozenset[str]] = {
    "top": frozenset({"ratio", "column", "lowest"}),
    "stage2": frozenset({"ratio", "dynamics", "binarize", "vote", "unseen"}),
    "clip-powered": frozenset({"ratio", "lam", "beta", "faithful", "sas_column", "sds_column"}),
    "random": frozenset({"ratio", "balanced", "seed"}),
    "balanced": frozenset({"ratio", "column", "lowest"}),
    "ccs": frozenset({"ratio", "column", "hard_cutoff", "strata", "hardest", "seed"}),
    "moderate": frozenset({"ratio", "features"}),
    "kcenter": frozenset({"ratio", "features", "seed"}),
    "expr": frozenset({"expr"}),
}


def selector_names() -> list[str]:
    return sorted(SELECTORS)


def get_selector(name: str):
    if name not in SELECTORS:
        raise ValueError(f"unknown selection method {name!r}; known: {', '.join(selector_names())}")
    module, func, _ = SELECTORS[name]
    return getattr(importlib.import_module(module), func)


def selector_modules() -> list[str]:
    return sorted({m for m, _, _ in SELECTORS.values()})
