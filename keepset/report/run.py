"""Read a run folder (what ``keepset filter`` and ``keepset demo`` write) for the report and the issues table.

A run folder holds ``scores.parquet`` (``id`` first, ``label``, score columns, ``keep``; optional
``caption``, ``true_label``, ``corrupted`` (older demos: ``noisy``), ``reference_pred``; the schema metadata key
``keepset`` holds JSON with each column's direction) and ``summary.json`` (quality estimate and check,
counts, class names, warnings). Optional parts may be missing; the kept ids may come from ``keep.npy``
instead of a ``keep`` column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: columns that describe a sample rather than score it
RESERVED = ("id", "label", "caption", "true_label", "corrupted", "noisy", "keep", "reference_pred")
HIGHER_KEEPS, HIGHER_DROPS = "higher_keeps", "higher_drops"
_KEEP_PREFIXES = ("mimic", "sas", "sds", "clip", "proj", "cos", "normed_proj", "normed_cos", "aum", "margin")
_DROP_PREFIXES = ("el2n", "grand", "forgetting", "entropy", "least_confidence", "issue_score")


def guess_direction(name: str) -> str | None:
    """A score column's direction from its name when the table does not say: ``higher_keeps`` for Mimic
    Scores, SAS / SDS / CLIP scores, AUM and margins; ``higher_drops`` for losses, EL2N, GraNd, forgetting
    counts and uncertainties; None when the name says nothing."""
    n = name.lower()
    if "loss" in n or n.startswith(_DROP_PREFIXES):
        return HIGHER_DROPS
    if n.startswith(_KEEP_PREFIXES):
        return HIGHER_KEEPS
    return None


@dataclass
class Run:
    """A run folder, read and checked.

    table : the score table as a pandas DataFrame [N rows], in the file's row order.
    keep : bool [N], the filter's decision per row (flagged = ~keep).
    corrupted : bool [N] or None, the known corruption (demo, noisy copies).
    score_columns : numeric columns that score samples, in table order.
    directions : {score column: "higher_keeps" | "higher_drops"} for the columns whose direction is known.
    class_names : list[str] or None.
    """

    path: Path
    summary: dict
    table: object
    keep: np.ndarray
    corrupted: np.ndarray | None
    score_columns: list[str]
    directions: dict[str, str]
    class_names: list[str] | None
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ids(self) -> np.ndarray:
        return self.table["id"].to_numpy()

    @property
    def labels(self) -> np.ndarray | None:
        return self.table["label"].to_numpy(dtype=np.int64) if "label" in self.table else None

    @property
    def reference_pred(self) -> np.ndarray | None:
        return self.table["reference_pred"].to_numpy(dtype=np.int64) if "reference_pred" in self.table else None

    @property
    def true_labels(self) -> np.ndarray | None:
        return self.table["true_label"].to_numpy(dtype=np.int64) if "true_label" in self.table else None

    @property
    def captions(self) -> np.ndarray | None:
        return self.table["caption"].to_numpy(dtype=object) if "caption" in self.table else None


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path; FileNotFoundError / NotADirectoryError with the fix when it is not a folder."""
    path = Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"run folder not found: {path}; give the folder `keepset filter`, `keepset demo` "
                                "or `keepset bench` wrote")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; give the run folder that holds it (e.g. {path.parent})")
    return path


def read_summary(run_dir: Path) -> dict:
    """summary.json as a dict ({} when absent); ValueError when it is not a JSON object."""
    p = run_dir / "summary.json"
    if not p.exists():
        return {}
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p} is not readable JSON ({exc}); rerun the command that wrote it") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{p} must hold a JSON object, found {type(doc).__name__}")
    return doc


def _read_table(path: Path):
    import pyarrow.parquet as pq

    if not path.exists():
        raise FileNotFoundError(f"{path.parent} has no scores.parquet (nor results.json): not a keepset run "
                                "folder; give the folder `keepset filter`, `keepset demo` or `keepset bench` wrote")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path} is not a readable parquet file: {first}") from None
    raw = (table.schema.metadata or {}).get(b"keepset")
    meta = {}
    if raw:
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: its `keepset` schema metadata is not JSON; rewrite the table") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: its `keepset` schema metadata must be a JSON object")
    return table.to_pandas(), meta


def _check_ids(df, path: Path) -> None:
    if "id" not in df:
        raise ValueError(f"{path} has no `id` column; a keepset score table has the sample ids first")
    ids = df["id"]
    if ids.isna().any():
        raise ValueError(f"{path}: {int(ids.isna().sum())} rows have no id; every row needs one")
    if not ids.is_unique:
        dup = ids[ids.duplicated()].head(3).tolist()
        raise ValueError(f"{path}: ids must be unique, found duplicates such as {dup}")


def _keep_mask(df, run_dir: Path) -> np.ndarray:
    if "keep" in df:
        col = df["keep"]
        if col.isna().any() or col.dtype.kind != "b":
            raise ValueError(f"{run_dir / 'scores.parquet'}: column `keep` must be boolean with no missing values")
        return col.to_numpy(dtype=bool)
    p = run_dir / "keep.npy"
    if not p.exists():
        raise ValueError(f"{run_dir} has neither a `keep` column in scores.parquet nor keep.npy: no filter "
                         "decision to report; run `keepset filter` or `keepset select` first")
    from keepset.io import read_keep_list

    kept = read_keep_list(p)
    ids = df["id"].to_numpy()
    if kept.dtype.kind != ids.dtype.kind and not (kept.dtype.kind in "iu" and ids.dtype.kind in "iu"):
        kept, ids = kept.astype(str), ids.astype(str)
    mask = np.isin(ids, kept)
    if mask.sum() != len(np.unique(kept)):
        raise ValueError(f"{p} names {len(np.unique(kept)) - int(mask.sum())} ids that scores.parquet does not "
                         "hold; the keep list belongs to another run")
    return mask


def _bool_column(df, names: tuple[str, ...], path: Path) -> np.ndarray | None:
    for name in names:
        if name in df:
            col = df[name]
            if col.isna().any() or col.dtype.kind != "b":
                raise ValueError(f"{path}: column `{name}` must be boolean with no missing values")
            return col.to_numpy(dtype=bool)
    return None


def load_run(run_dir: str | Path) -> Run:
    """Read and check a run folder; one-line errors name the problem and the fix."""
    run_dir = check_run_dir(run_dir)
    path = run_dir / "scores.parquet"
    summary = read_summary(run_dir)
    df, meta = _read_table(path)
    _check_ids(df, path)
    keep = _keep_mask(df, run_dir)
    corrupted = _bool_column(df, ("corrupted", "noisy"), path)
    for name in ("label", "true_label", "reference_pred"):
        if name in df:
            col = df[name]
            if col.isna().any() or col.dtype.kind not in "iu":
                raise ValueError(f"{path}: column `{name}` must hold integer class indices with no missing values")
    names = summary.get("class_names") or meta.get("class_names")
    class_names = [str(c) for c in names] if isinstance(names, list) and names else None
    if class_names is not None:
        for name in ("label", "true_label", "reference_pred"):
            if name in df and len(df) and (df[name].min() < 0 or df[name].max() >= len(class_names)):
                raise ValueError(f"{path}: column `{name}` holds classes outside [0, {len(class_names)}) but the run "
                                 f"names {len(class_names)} classes; the table and summary.json disagree")
    score_columns = [c for c in df.columns if c not in RESERVED and df[c].dtype.kind in "iuf"]
    from keepset.io.tables import column_direction

    if not isinstance(meta.get("directions", {}), dict):
        raise ValueError(f"{path}: `directions` in its keepset metadata must be a JSON object")
    directions = {}
    for c in score_columns:
        d = column_direction(c, meta) or guess_direction(c)
        if d is not None:
            if d not in (HIGHER_KEEPS, HIGHER_DROPS):
                raise ValueError(f"{path}: direction {d!r} of column {c!r} is neither {HIGHER_KEEPS!r} nor "
                                 f"{HIGHER_DROPS!r}")
            directions[c] = d
    return Run(path=run_dir, summary=summary, table=df, keep=keep, corrupted=corrupted, score_columns=score_columns,
               directions=directions, class_names=class_names, metadata=meta)
