"""Baseline selectors over a score table, for ``keepset select --method NAME``.

Each is ``fn(table: dict[str, ndarray [N]], **options) -> bool [N]``:

- ``random``     --ratio [--balanced] [--seed]
- ``balanced``   --column --ratio [--lowest]       top (bottom) ratio of every class
- ``ccs``        --column --ratio [--hard-cutoff 0.1] [--strata 50] [--hardest high|low] [--seed]
- ``moderate``   --features FEATS.npz --ratio       Moderate-DS on features joined to the table by id
- ``kcenter``    --features FEATS.npz --ratio [--seed]
- ``expr``       --expr "top(clip, 0.3) - bottom(mimic, 0.2)"   set algebra (keepset.selection.setops)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keepset._argtypes import fraction_open, positive_int


def _add(parser, *flags, **kwargs) -> None:
    """Add a flag unless another selector module already defined it (selectors share one parser)."""
    if any(f in getattr(parser, "_option_string_actions", {}) for f in flags):
        return
    parser.add_argument(*flags, **kwargs)


def add_arguments(parser) -> None:
    """Flags of these selectors; --ratio, --seed (keepset select) and --column, --lowest (the ``top``
    selector's module) are shared and declared there."""
    _add(parser, "--balanced", action="store_true", help="random: keep the same ratio of every class")
    _add(parser, "--hard-cutoff", dest="hard_cutoff", type=fraction_open, default=0.0,
         help="ccs: fraction of hardest samples dropped first (beta)")
    _add(parser, "--strata", type=positive_int, default=50, help="ccs: number of score bins")
    _add(parser, "--hardest", choices=("high", "low"), default="high",
         help="ccs: whether high (EL2N, forgetting) or low (AUM) scores are hard")
    _add(parser, "--features", default=None,
         help="moderate/kcenter: .npz with ids [N] and features [N, d], joined to the table by id "
              "(required by moderate and kcenter)")
    _add(parser, "--expr", default=None,
         help="expr: e.g. \"top(clip, 0.3) - bottom(mimic, 0.2)\" (& | - ^ ~, top/bottom(COLUMN, RATIO)) "
              "(required by expr)")


def _need(options: dict, key: str, flag: str, method: str):
    value = options.get(key)
    if value is None:
        raise ValueError(f"--method {method} needs {flag}")
    return value


def _n(table: dict) -> int:
    return len(table["id"])


def _labels(table: dict, method: str) -> np.ndarray:
    if "label" not in table:
        raise ValueError(f"--method {method} selects within classes and needs a `label` column; the table has none")
    return table["label"]


def _score(table: dict, options: dict, method: str) -> np.ndarray:
    col = _need(options, "column", "--column NAME", method)
    if col not in table:
        raise ValueError(f"the score table has no column {col!r}; columns: {', '.join(table)}")
    return np.asarray(table[col], dtype=np.float64)


def _features(table: dict, options: dict, method: str) -> np.ndarray:
    """The features of the table's samples, in the table's row order, joined by id."""
    from keepset._ids import check_ids, check_same_ids

    path = Path(_need(options, "features", "--features FEATS.npz", method))
    if not path.exists():
        raise FileNotFoundError(f"features file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise ValueError(f"{path} is not an .npz of plain arrays (`ids`, `features`): {str(exc).splitlines()[0]}") from None
    if "ids" not in arrays or "features" not in arrays:
        raise ValueError(f"{path} needs `ids` [N] and `features` [N, d] arrays (found {sorted(arrays)}); features "
                         "are joined to the score table by id, never by row position")
    x = arrays["features"]
    ids = check_ids(arrays["ids"], f"ids of {path.name}")
    if x.ndim != 2 or len(x) != len(ids):
        raise ValueError(f"`features` in {path} must be [N, d] with one row per id ({len(ids)}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"`features` in {path} hold NaN or inf values")
    pos = check_same_ids(table["id"], ids, a_name="the score table", b_name=str(path))
    return x[pos]


def select_random_table(table: dict, **options) -> np.ndarray:
    from keepset.selection.baselines import select_random, select_random_class_balanced

    ratio = _need(options, "ratio", "--ratio R", "random")
    seed = int(options.get("seed") or 0)
    if options.get("balanced"):
        return select_random_class_balanced(_labels(table, "random --balanced"), ratio, seed)
    return select_random(_n(table), ratio, seed)


def select_balanced_table(table: dict, **options) -> np.ndarray:
    from keepset.selection.baselines import select_class_balanced

    return select_class_balanced(_score(table, options, "balanced"), _labels(table, "balanced"),
                                 _need(options, "ratio", "--ratio R", "balanced"),
                                 largest=not options.get("lowest"))


def select_ccs_table(table: dict, **options) -> np.ndarray:
    from keepset.selection.ccs import ccs_select

    return ccs_select(_score(table, options, "ccs"), _need(options, "ratio", "--ratio R", "ccs"),
                      hard_cutoff=float(options.get("hard_cutoff") or 0.0),
                      n_strata=int(options.get("strata") or 50), hardest=options.get("hardest") or "high",
                      seed=int(options.get("seed") or 0))


def select_moderate_table(table: dict, **options) -> np.ndarray:
    from keepset.selection.moderate import moderate_ds

    return moderate_ds(_features(table, options, "moderate"), _labels(table, "moderate"),
                       _need(options, "ratio", "--ratio R", "moderate"))


def select_kcenter_table(table: dict, **options) -> np.ndarray:
    from keepset.selection.kcenter import k_center_greedy

    return k_center_greedy(_features(table, options, "kcenter"), _need(options, "ratio", "--ratio R", "kcenter"),
                           seed=int(options.get("seed") or 0))


def select_expr_table(table: dict, **options) -> np.ndarray:
    from keepset.selection.setops import evaluate_expression

    return evaluate_expression(_need(options, "expr", "--expr EXPRESSION", "expr"), table)
