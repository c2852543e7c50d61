"""Selectors over a score table (the ``keepset select`` methods ``top`` and ``stage2``)."""

from __future__ import annotations

import numpy as np

from keepset.selection.stage2 import stage2_filter
from keepset.selection.topk import select_top


def add_arguments(parser) -> None:
    g = parser.add_argument_group("top / stage2")
    g.add_argument("--column", help="score column to rank by (required by top, balanced and ccs)")
    g.add_argument("--lowest", action="store_true", help="keep the lowest scores instead of the highest")
    g.add_argument("--dynamics", help="folder of recorded dynamics, e.g. out/demo/dynamics/gradmimic "
                                      "(required by stage2)")
    g.add_argument("--binarize", choices=("threshold", "kmeans", "gmm"), default="threshold",
                   help="stage2: per-step binarisation (default threshold 1/B on the normed score)")
    g.add_argument("--vote", choices=("majority", "weighted"), default="majority",
                   help="stage2: majority of visits, or later epochs weighted more (default majority)")
    g.add_argument("--unseen", choices=("error", "keep", "drop"), default="error",
                   help="stage2: table samples the dynamics never recorded (default: error)")


def _column(table: dict, column: str | None) -> np.ndarray:
    if not column:
        raise ValueError(f"give --column, one of: {', '.join(c for c in table if c not in ('id', 'label'))}")
    if column not in table:
        raise ValueError(f"the score table has no column {column!r}; it has: {', '.join(table)}")
    return table[column]


def select_top_column(table: dict, *, ratio=None, column=None, lowest: bool = False, **_) -> np.ndarray:
    """Keep the top (or, with ``lowest``, bottom) ``ratio`` of ``table[column]``."""
    if ratio is None:
        raise ValueError("method top needs --ratio")
    return select_top(_column(table, column), ratio, largest=not lowest)


def select_stage2(table: dict, *, dynamics=None, binarize: str = "threshold", vote: str = "majority",
                  unseen: str = "error", ratio=None, **_) -> np.ndarray:
    """The Grad-Mimic Stage 2 filter from recorded dynamics, joined to the table by id (rows in any order)."""
    from keepset.recorder import DynamicsRecorder

    if not dynamics:
        raise ValueError("method stage2 needs --dynamics DIR (a folder written by keepset filter / demo or by "
                         "GradMimic(record_to=DIR))")
    if ratio is not None:
        raise ValueError("the stage2 filter decides how many to keep itself; drop --ratio "
                         "(or use --method top --column mimic_mean --ratio R)")
    rec = DynamicsRecorder.open(dynamics)
    return stage2_filter(rec, binarize=binarize, vote=vote, unseen=unseen, ids=table["id"])
