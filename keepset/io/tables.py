"""Score tables: parquet keyed by sample id.

Columns: ``id`` first (int64 or string; unique), then ``label`` when the data has classes, then one column
per score (float), flag (bool) or attribute. The schema metadata key ``keepset`` holds JSON with each
score column's direction (``"higher_keeps"``: a high value argues for keeping the sample, e.g. a Mimic
Score; ``"higher_drops"``: e.g. a loss) and whatever else the writer describes (method, data spec).
A foreign table (DataComp's metadata, with ``uid``) is read with ``id_column="uid"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from keepset._ids import check_ids
from keepset.io.atomic import atomic_path

DIRECTIONS = ("higher_keeps", "higher_drops")
META_KEY = b"keepset"

#: directions of the columns keepset writes, by name (a writer may add or override)
KNOWN_DIRECTIONS = {
    **{c: "higher_keeps" for c in ("mimic", "mimic_mean", "mimic_last", "mimic_normed_mean", "mimic_sgd_mean",
                                   "proj", "cos", "normed_proj", "normed_cos", "sas", "sds", "clip_score", "aum",
                                   "margin", "keep")},
    **{c: "higher_drops" for c in ("loss", "el2n", "grand", "forgetting", "entropy", "least_confidence",
                                   "reference_loss", "issue_score")},
}


def write_score_table(path: str | Path, ids, columns: dict[str, np.ndarray], *, labels=None,
                      directions: dict[str, str] | None = None, metadata: dict | None = None,
                      overwrite: bool = False) -> Path:
    """Write a score table atomically.

    ids : [N] unique sample ids (int or str); columns : {name: array [N]} (float, int, bool or str);
    labels : [N] int class labels or None; directions : {column: "higher_keeps" | "higher_drops"} added to
    the known directions of keepset's own columns; metadata : more JSON-serialisable description.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = check_ids(ids, "ids")
    n = len(ids)
    cols: dict[str, np.ndarray] = {"id": ids}
    if labels is not None:
        cols["label"] = np.asarray(labels, dtype=np.int64)
        if cols["label"].shape != (n,):
            raise ValueError(f"labels have shape {cols['label'].shape}, expected ({n},)")
    for name, col in columns.items():
        if name in ("id", "label"):
            raise ValueError(f"a score column may not be named {name!r}")
        col = np.asarray(col)
        if col.shape != (n,):
            raise ValueError(f"score column {name!r} has shape {col.shape}, expected ({n},)")
        cols[name] = col
    dirs = {c: KNOWN_DIRECTIONS[c] for c in cols if c in KNOWN_DIRECTIONS}
    for c, d in (directions or {}).items():
        if c not in cols or d not in DIRECTIONS:
            raise ValueError(f"direction {d!r} of column {c!r}: the column must exist and the direction be one of "
                             f"{DIRECTIONS}")
        dirs[c] = d
    doc = {"directions": dirs, **(metadata or {})}
    table = pa.table({k: pa.array(v) for k, v in cols.items()})
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           META_KEY: json.dumps(doc, sort_keys=True, default=str).encode()})
    with atomic_path(path, overwrite) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def _open(path: Path):
    import pyarrow.parquet as pq

    if not path.exists():
        raise FileNotFoundError(f"score table not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the score table's .parquet file (e.g. {path}/scores.parquet)")
    try:
        return pq.read_table(path)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable parquet file: {str(exc).splitlines()[0]}") from None


def read_score_table(path: str | Path, id_column: str = "id") -> dict[str, np.ndarray]:
    """Read a score table into {column: array [N]} with the ids under ``id``.

    id_column : the column holding the sample ids (``uid`` for DataComp metadata); it is returned as ``id``.
    Duplicate or missing ids raise ValueError.
    """
    path = Path(path)
    table = _open(path)
    cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    if id_column not in cols:
        hint = " (pass --id-column NAME for a table whose ids are in another column)" if id_column == "id" else ""
        raise ValueError(f"{path} has no `{id_column}` column{hint}; its columns: {', '.join(cols)}")
    ids = cols.pop(id_column)
    if ids.dtype == object:
        if any(v is None for v in ids.tolist()):
            raise ValueError(f"{path}: column `{id_column}` has missing ids; every row needs an id")
    if "id" in cols and id_column != "id":
        raise ValueError(f"{path} has both `id` and `{id_column}` columns; say which holds the ids")
    return {"id": check_ids(ids, f"ids of {path.name}"), **cols}


def read_table_metadata(path: str | Path) -> dict:
    """The ``keepset`` schema metadata of a score table ({} for a foreign table)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"score table not found: {path}")
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as exc:
        raise ValueError(f"{path} is not a readable parquet file: {str(exc).splitlines()[0]}") from None
    raw = meta.get(META_KEY)
    return json.loads(raw) if raw else {}


def column_direction(name: str, metadata: dict | None = None) -> str | None:
    """A column's direction from the table's metadata, else from keepset's known columns (None if unknown)."""
    dirs = (metadata or {}).get("directions", {})
    return dirs.get(name) or KNOWN_DIRECTIONS.get(name)
