"""Selectors over a score table (the ``keepset select`` methods ``top`` and ``stage2``)."""

from __future__ import annotations

import numpy as np

from keepset.selection.stage2 import calibrated_stage2, stage2_filter
from keepset.selection.topk import select_top


def add_arguments(parser) -> None:
    g = parser.add_argument_group("top / stage2")
    g.add_argument("--column", help="score column to rank by (required by top, balanced and ccs)")
    g.add_argument("--lowest", action="store_true", help="keep the lowest scores instead of the highest")
    g.add_argument("--dynamics", help="folder of recorded dynamics, e.g. out/demo/dynamics/gradmimic "
                                      "(required by stage2)")
    g.add_argument("--binarize", choices=("auto", "calibrated", "threshold", "kmeans", "gmm"), default="auto",
                   help="stage2: calibrated (against the held-out trusted samples the run recorded in DYNAMICS/holdout), "
                        "or the paper's per-step threshold 1/B, 2-means or GMM; auto: calibrated when the run "
                        "recorded held-out samples, else threshold")
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


def select_stage2(table: dict, *, dynamics=None, binarize: str = "auto", vote: str = "majority",
                  unseen: str = "error", ratio=None, **_) -> np.ndarray:
    """The Grad-Mimic Stage 2 filter from recorded dynamics, joined to the table by id (rows in any order).

    The calibrated rule reads the held-out samples' log (DYNAMICS/holdout) and the settings the run used
    (DYNAMICS/calibration.json: the reference's quality estimate, the seed), so it reproduces the run's keep list.
    """
    import json
    from pathlib import Path

    from keepset.recorder import DynamicsRecorder

    if not dynamics:
        raise ValueError("method stage2 needs --dynamics DIR (a folder written by keepset filter / demo or by "
                         "GradMimic(record_to=DIR))")
    if ratio is not None:
        raise ValueError("the stage2 filter decides how many to keep itself; drop --ratio "
                         "(or use --method top --column mimic_mean --ratio R)")
    rec = DynamicsRecorder.open(dynamics)
    held = Path(dynamics) / "holdout"
    if binarize == "auto":
        binarize = "calibrated" if (held / "recorder.json").exists() else "threshold"
    if binarize != "calibrated":
        return stage2_filter(rec, binarize=binarize, vote=vote, unseen=unseen, ids=table["id"])
    if not (held / "recorder.json").exists():
        raise ValueError(f"--binarize calibrated needs the held-out samples' scores ({held}), which this run did not "
                         "record: choose --binarize threshold, kmeans or gmm")
    settings = {}
    if (Path(dynamics) / "calibration.json").exists():
        settings = json.loads((Path(dynamics) / "calibration.json").read_text(encoding="utf-8"))
    res = calibrated_stage2(rec, DynamicsRecorder.open(held), ids=table["id"], unseen=unseen,
                            reference_quality=settings.get("reference_quality"), seed=int(settings.get("seed", 0)))
    return res.keep
