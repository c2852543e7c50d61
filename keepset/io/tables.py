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
                                   "margin", "keep", "pvalue")},
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


JOINS = ("same", "inner")
_PREFIX = __import__("re").compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_table_arg(arg: str) -> tuple[str | None, Path]:
    """``"NAME=PATH"`` -> (NAME, PATH), ``"PATH"`` -> (None, PATH).

    NAME (a Python identifier: letters, digits, underscores) prefixes the table's columns when tables are
    joined (``dc=pool.parquet`` gives ``dc.clip_score``). A path that exists as given is never split, so a
    file literally named ``a=b.parquet`` still reads as a path.
    """
    if not isinstance(arg, str) or not arg:
        raise ValueError("empty score table argument; give PATH or NAME=PATH")
    name, sep, rest = arg.partition("=")
    if sep and _PREFIX.fullmatch(name) and rest and not Path(arg).exists():
        return name, Path(rest)
    if sep and not Path(arg).exists() and rest:
        raise ValueError(f"bad table prefix {name!r} in {arg!r}: a prefix is a name of letters, digits and "
                         "underscores (not starting with a digit), e.g. dc=pool.parquet")
    return None, Path(arg)


def join_score_tables(tables, *, how: str = "same") -> tuple[dict[str, np.ndarray], dict]:
    """Join score tables by id: {column: [N]} dicts with ids under ``id`` (as ``read_score_table`` returns).

    tables : [(prefix or None, table, display name)], in order. A prefix renames every column but ``id`` to
        ``prefix.column``; other tables' columns keep their names. Two tables giving the same column name is
        refused (naming the clashes), except ``label`` when both hold the same label for every id.
    how : "same" (default): every table must hold exactly the same ids, else ValueError naming how many
        differ; "inner": keep the ids every table holds (``info["dropped"]`` says how many each table lost).
    Rows follow the first table's order. Returns (joined table, info {"n", "dropped": {name: count}}).
    """
    from keepset._ids import align

    if how not in JOINS:
        raise ValueError(f"join must be one of {JOINS}, got {how!r}")
    if not tables:
        raise ValueError("give at least one score table")
    prefixes = [p for p, _, _ in tables if p is not None]
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"table prefixes must differ; got {prefixes}")
    (_, first, first_name) = tables[0]
    keep = np.ones(len(first["id"]), dtype=bool)
    positions = []
    for prefix, t, name in tables[1:]:
        pos = align(first["id"], t["id"], what=f"ids of {first_name}", source=name, allow_missing=True)
        only_first = int((pos < 0).sum())
        only_other = len(t["id"]) - (len(first["id"]) - only_first)
        if how == "same" and (only_first or only_other):
            shared = len(first["id"]) - only_first
            raise ValueError(f"{first_name} and {name} hold different ids: {only_first} only in {first_name}, "
                             f"{only_other} only in {name}; pass --join inner (how='inner') to keep the {shared} "
                             "shared ids, or join tables of the same pool")
        keep &= pos >= 0
        positions.append(pos)
    rows = np.flatnonzero(keep)
    out: dict[str, np.ndarray] = {"id": first["id"][rows]}
    origin: dict[str, str] = {}
    clashes: list[str] = []
    for k, (prefix, t, name) in enumerate(tables):
        take = rows if k == 0 else positions[k - 1][rows]
        for col, values in t.items():
            if col == "id":
                continue
            new = f"{prefix}.{col}" if prefix else col
            values = np.asarray(values)[take]
            if new in out:
                if new == "label" and np.array_equal(out[new], values):
                    continue
                clashes.append(f"{new!r} ({origin[new]} and {name})")
                continue
            out[new], origin[new] = values, name
    if clashes:
        raise ValueError(f"column name clash: {', '.join(clashes)}; prefix a table's columns with NAME=PATH "
                         "(e.g. --scores dc=pool.parquet gives dc.clip_score)")
    n_total = {name: len(t["id"]) for _, t, name in tables}
    info = {"n": int(len(rows)), "dropped": {name: int(n - len(rows)) for name, n in n_total.items()}}
    return out, info


class ScoreTableWriter:
    """Write a score table chunk by chunk (memory bounded by one chunk), atomically: the file appears
    whole when the writer closes without error, and an existing file is only replaced with ``overwrite``.

        with ScoreTableWriter("scores.parquet", metadata={...}) as w:
            for shard in ...:
                w.write(ids, {"caption": texts, "clip_score": s, "keep": k})

    Every chunk has the columns of the first, in the same order. Ids are checked unique inside each chunk;
    across chunks the caller guarantees it (a pair source refuses duplicate ids).
    """

    def __init__(self, path: str | Path, *, directions: dict[str, str] | None = None,
                 metadata: dict | None = None, overwrite: bool = False):
        import contextlib

        self.path = Path(path)
        self._directions = dict(directions or {})
        self._metadata = dict(metadata or {})
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path, overwrite))
        self._writer = None
        self._names: list[str] | None = None
        self.rows = 0

    def write(self, ids, columns: dict[str, np.ndarray]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids = check_ids(ids, "ids")
        cols = {"id": ids}
        for name, col in columns.items():
            if name == "id":
                raise ValueError("a score column may not be named 'id'")
            col = col if isinstance(col, list) else np.asarray(col)
            if len(col) != len(ids):
                raise ValueError(f"score column {name!r} has {len(col)} rows, expected {len(ids)}")
            cols[name] = col
        if self._names is None:
            self._names = list(cols)
            dirs = {c: KNOWN_DIRECTIONS[c] for c in cols if c in KNOWN_DIRECTIONS}
            for c, d in self._directions.items():
                if c not in cols or d not in DIRECTIONS:
                    raise ValueError(f"direction {d!r} of column {c!r}: the column must exist and the direction be "
                                     f"one of {DIRECTIONS}")
                dirs[c] = d
            doc = {"directions": dirs, **self._metadata}
            table = pa.table({k: pa.array(v) for k, v in cols.items()})
            schema = table.schema.with_metadata({META_KEY: json.dumps(doc, sort_keys=True, default=str).encode()})
            self._writer = pq.ParquetWriter(self._tmp, schema)
        elif list(cols) != self._names:
            raise ValueError(f"every chunk needs the columns {self._names}, got {list(cols)}")
        table = pa.table({k: pa.array(v) for k, v in cols.items()})
        self._writer.write_table(table.cast(self._writer.schema))
        self.rows += len(ids)

    def close(self) -> Path:
        """Finish the file and move it into place."""
        if self._writer is None:
            raise ValueError(f"no rows were written to {self.path}; a score table needs at least one chunk")
        self._writer.close()
        self._stack.close()
        return self.path

    def abort(self) -> None:
        """Drop the partial file (the target is left as it was)."""
        if self._writer is not None:
            self._writer.close()
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
