"""The issues table: one row per sample, like cleanlab Datalab's ``get_issues()``.

Columns, in order:

- ``id``: the sample id (int64 or string);
- ``is_issue``: the filter flagged the sample (``~keep``);
- ``issue_score``: higher = more likely an issue. It is the filter's main score turned so that higher means
  worse: ``-mimic_mean`` for a Grad-Mimic run (a low Mimic Score flags a sample), ``+x`` for a column whose
  higher values argue for dropping (a loss). The column it came from is in ``DataFrame.attrs["issue_score"]``
  and in the parquet metadata. Main score, first present of: ``MAIN_SCORES``, else the first score column
  with a known direction; with none, ``is_issue`` as 0/1;
- ``given_label``: the label in the data (nullable Int64; <NA> for image-text pairs);
- ``predicted_label``: the reference network's predicted class (``reference_pred``) or <NA>;
- ``given_class`` / ``predicted_class``: the class names, when the run knows them;
- ``true_label`` / ``corrupted``: the known truth, when the run has it (demo, noisy copies);
- ``caption``: image-text pairs only;
- every score column of ``scores.parquet``, unchanged.

Rows are sorted worst first: flagged samples before kept ones, then by ``issue_score`` (descending, NaN
last), then by id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keepset.report.run import HIGHER_DROPS, HIGHER_KEEPS, Run, load_run

#: the filter's main score, in order of preference
MAIN_SCORES = ("mimic_mean", "mimic", "mimic_normed_mean", "mimic_last", "proj", "cos", "normed_proj", "normed_cos",
               "sas", "clip_score", "reference_loss")


def main_score(score_columns, directions: dict[str, str]) -> tuple[str | None, str | None]:
    """(column, direction) of the run's main score, or (None, None) when no score column has a direction."""
    for c in MAIN_SCORES:
        if c in score_columns and c in directions:
            return c, directions[c]
    for c in score_columns:
        if c in directions:
            return c, directions[c]
    return None, None


def issue_scores(run: Run) -> tuple[np.ndarray, dict]:
    """issue_score [N] float64 (higher = more likely an issue) and a description of where it came from."""
    col, direction = main_score(run.score_columns, run.directions)
    if col is None:
        return (~run.keep).astype(np.float64), {"from": "is_issue", "direction": HIGHER_DROPS}
    values = run.table[col].to_numpy(dtype=np.float64)
    return (-values if direction == HIGHER_KEEPS else values), {"from": col, "direction": direction}


def worst_first(is_issue: np.ndarray, score: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row order: flagged first, then by score descending (NaN last), then by id ascending."""
    s = np.where(np.isnan(score), -np.inf, score)
    return np.lexsort((ids, -s, np.isnan(score), ~is_issue))


def issues_table(run: Run):
    """The issues DataFrame of a loaded run (see the module docstring for the columns)."""
    import pandas as pd

    score, origin = issue_scores(run)
    df = run.table
    n = len(df)
    cols: dict[str, object] = {"id": df["id"].to_numpy(), "is_issue": ~run.keep, "issue_score": score}
    na = pd.array([pd.NA] * n, dtype="Int64")
    cols["given_label"] = pd.array(run.labels, dtype="Int64") if run.labels is not None else na
    pred = run.reference_pred
    cols["predicted_label"] = pd.array(pred, dtype="Int64") if pred is not None else na
    if run.class_names is not None:
        names = np.asarray(run.class_names, dtype=object)
        cols["given_class"] = pd.array(names[run.labels], dtype="string") if run.labels is not None else \
            pd.array([pd.NA] * n, dtype="string")
        cols["predicted_class"] = pd.array(names[pred], dtype="string") if pred is not None else \
            pd.array([pd.NA] * n, dtype="string")
    if run.true_labels is not None:
        cols["true_label"] = pd.array(run.true_labels, dtype="Int64")
    if run.corrupted is not None:
        cols["corrupted"] = run.corrupted
    if run.captions is not None:
        cols["caption"] = pd.array(run.captions, dtype="string")
    for c in run.score_columns:
        cols[c] = df[c].to_numpy()
    out = pd.DataFrame(cols)
    order = worst_first(~run.keep, score, _sortable_ids(df["id"].to_numpy()))
    out = out.iloc[order].reset_index(drop=True)
    out.attrs["issue_score"] = origin
    out.attrs["directions"] = {**{c: run.directions[c] for c in run.score_columns if c in run.directions},
                               "issue_score": HIGHER_DROPS}
    return out


def _sortable_ids(ids: np.ndarray) -> np.ndarray:
    return ids.astype(str) if ids.dtype == object else ids


def issues(run_dir: str | Path):
    """The issues table of a run folder as a pandas DataFrame, one row per sample, worst first.

    run_dir : a folder written by ``keepset filter`` or ``keepset demo`` (scores.parquet, summary.json).
    Returns a DataFrame with ``id, is_issue, issue_score, given_label, predicted_label``, the class names
    when known, the known truth when present, and every score column (see ``keepset.report.issues``).

    >>> df = keepset.issues("out/demo")
    >>> df[df.is_issue].head()
    """
    return issues_table(load_run(run_dir))


def write_issues(df, path: str | Path, overwrite: bool = False) -> Path:
    """Write an issues DataFrame to parquet atomically, with the columns' directions and the issue score's
    origin in the ``keepset`` schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from keepset.io.atomic import atomic_path

    table = pa.Table.from_pandas(df, preserve_index=False)
    doc = {"directions": df.attrs.get("directions", {}), "issue_score": df.attrs.get("issue_score", {})}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"keepset": json.dumps(doc, sort_keys=True).encode()})
    with atomic_path(path, overwrite) as tmp:
        pq.write_table(table, tmp)
    return Path(path)
