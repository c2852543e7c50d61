"""Score tables: parquet with ``id``, ``label`` and one column per score (plus any extra columns)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keepset.io.atomic import atomic_path


def write_score_table(path: str | Path, ids, labels, scores: dict[str, np.ndarray],
                      overwrite: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Write a score table atomically.

    ids [N] (int or str), labels [N] int, scores {column: array [N]} (float, int or bool).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = np.asarray(ids)
    n = len(ids)
    cols = {"id": ids, "label": np.asarray(labels, dtype=np.int64)}
    for name, col in scores.items():
        if name in ("id", "label"):
            raise ValueError(f"score column may not be named {name!r}")
        col = np.asarray(col)
        if col.shape != (n,):
            raise ValueError(f"score column {name!r} has shape {col.shape}, expected ({n},)")
        cols[name] = col
    if cols["label"].shape != (n,):
        raise ValueError(f"labels have shape {cols['label'].shape}, expected ({n},)")
    table = pa.table({k: pa.array(v) for k, v in cols.items()})
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    with atomic_path(path, overwrite) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_score_table(path: str | Path) -> dict[str, np.ndarray]:
    """Read a score table into {column: array [N]}; requires ``id`` and ``label`` columns."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"score table not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable parquet file: {exc}") from None
    cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    for key in ("id", "label"):
        if key not in cols:
            raise ValueError(f"{path} has no `{key}` column; a keepset score table has id, label and score columns")
    return cols
