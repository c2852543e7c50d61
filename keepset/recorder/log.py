"""A streaming log of per-sample training dynamics: one record per sample visit.

A record is ``(id, step, epoch, field_1, ..., field_k)``: the sample's id (int64 or string), the global
step (one step = one scored batch), the epoch, and one float32 per recorded field (e.g. ``mimic``,
``mimic_normed``, ``weight``). The log needs neither the number of samples nor the number of epochs up
front; a sample may be seen any number of times or never.

On disk (``directory`` given) records are buffered and written in chunks as ``part-NNNNNN.parquet``
files, each moved into place atomically, beside ``recorder.json`` (format, fields, id type). A killed run
loses at most the unflushed buffer; ``DynamicsRecorder(directory, resume=True)`` reopens the log and
appends after the last complete part (``next_step`` says where the step count resumes). Without a
directory the chunks stay in memory. Reading is chunked too (``iter_chunks``), so Stage 2 runs out of core.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from keepset._ids import as_ids

FORMAT = "keepset-dynamics"
VERSION = 1
META_FILE = "recorder.json"
#: records buffered before a part file is written
DEFAULT_CHUNK_ROWS = 1 << 18
BASE_COLUMNS = ("id", "step", "epoch")


def _np(v) -> np.ndarray:
    """A tensor (any device or float dtype) or array-like as a numpy array."""
    if hasattr(v, "detach"):
        v = v.detach()
        return (v.float() if v.dtype.is_floating_point else v).cpu().numpy()
    return np.asarray(v)


class DynamicsRecorder:
    """Append-only log of ``(id, step, epoch, *fields)`` records, in memory or as parquet parts.

    Parameters
    ----------
    directory : folder of the log (created); None keeps the records in memory.
    fields : names of the float32 values stored with every record (e.g. ``("mimic", "mimic_normed")``).
    chunk_rows : records buffered before a part is written (memory bound of the writer).
    resume : reopen an existing log in ``directory`` and append to it (its fields must match); without it
        an existing non-empty log is refused, so nothing is silently overwritten.
    """

    def __init__(self, directory: str | Path | None = None, fields: Sequence[str] = ("mimic", "mimic_normed"), *,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, resume: bool = False):
        fields = tuple(str(f) for f in fields)
        if not fields or len(set(fields)) != len(fields) or set(fields) & set(BASE_COLUMNS):
            raise ValueError(f"fields must be distinct names other than {BASE_COLUMNS}, got {fields}")
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.fields = fields
        self.chunk_rows = int(chunk_rows)
        self.directory = Path(directory) if directory is not None else None
        self.id_kind: str | None = None  # "int" or "str", fixed by the first record
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffered = 0
        self._chunks: list[dict[str, np.ndarray]] = []  # in-memory log
        self._parts: list[Path] = []
        self._last_step = -1
        self.read_only = False
        if self.directory is not None:
            self._open_dir(resume)

    # ------------------------------------------------------------------ opening
    def _open_dir(self, resume: bool) -> None:
        d = self.directory
        meta = d / META_FILE
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"{d} is a file; the recorder needs a folder")
        if meta.exists():
            if not resume:
                raise FileExistsError(f"{d} already holds recorded dynamics; pass resume=True to append to them "
                                      "or choose an empty folder")
            doc = _read_meta(d)
            if tuple(doc["fields"]) != self.fields:
                raise ValueError(f"{d} records fields {doc['fields']}, not {list(self.fields)}; resume with the "
                                 "same fields or use another folder")
            self.id_kind = doc.get("id_kind")
            for tmp in d.glob(".part-*.tmp"):  # a write interrupted by a kill: its records were never complete
                tmp.unlink()
            self._parts = _part_files(d)
            self._last_step = _max_step(self._parts)
        else:
            if d.exists() and any(p.name.startswith("part-") for p in d.iterdir()):
                raise FileExistsError(f"{d} holds part files but no {META_FILE}; choose an empty folder")
            d.mkdir(parents=True, exist_ok=True)
            self._write_meta()

    @classmethod
    def open(cls, directory: str | Path) -> "DynamicsRecorder | MergedLogs":
        """Open recorded dynamics for reading (the files are never modified). A folder of per-process logs
        (``rank-NNNNN/``, as ``GradMimic`` writes under DDP) opens as one log merged in step order."""
        d = Path(directory)
        if not d.exists():
            raise FileNotFoundError(f"no recorded dynamics at {d}")
        ranks = sorted(p for p in d.glob("rank-*") if (p / META_FILE).exists())
        if ranks and not (d / META_FILE).exists():
            return MergedLogs([cls.open(p) for p in ranks])
        if not (d / META_FILE).exists():
            raise FileNotFoundError(f"{d} holds no recorded dynamics ({META_FILE} is missing); record them with "
                                    "keepset.GradMimic(record_to=...) or DynamicsRecorder(directory=...)")
        doc = _read_meta(d)
        self = cls.__new__(cls)
        self.fields = tuple(doc["fields"])
        self.chunk_rows = DEFAULT_CHUNK_ROWS
        self.directory = d
        self.id_kind = doc.get("id_kind")
        self._buffer, self._buffered, self._chunks = [], 0, []
        self._parts = _part_files(d)
        self._last_step = _max_step(self._parts)
        self.read_only = True
        return self

    def _write_meta(self) -> None:
        from keepset.io.atomic import write_text_atomic

        doc = {"format": FORMAT, "version": VERSION, "fields": list(self.fields), "id_kind": self.id_kind}
        write_text_atomic(self.directory / META_FILE, json.dumps(doc, indent=1) + "\n", overwrite=True)

    # ------------------------------------------------------------------ writing
    @property
    def next_step(self) -> int:
        """The step after the last recorded one (0 for an empty log): where a resumed run continues."""
        return self._last_step + 1

    def record(self, ids, step: int, epoch: int = -1, **values) -> None:
        """Append one record per sample: ids [B] (int or str), the batch's step and epoch, values[f] [B]."""
        if self.read_only:
            raise ValueError("this recorder was opened for reading; create a DynamicsRecorder to record")
        ids = as_ids(ids, "recorded ids")
        kind = "str" if ids.dtype.kind == "U" else "int"
        if self.id_kind is None:
            self.id_kind = kind
            if self.directory is not None:
                self._write_meta()
        elif kind != self.id_kind:
            raise ValueError(f"this log records {self.id_kind} ids; got {kind} ids")
        missing = set(self.fields) - set(values)
        unknown = set(values) - set(self.fields)
        if missing or unknown:
            raise ValueError(f"record() needs exactly the fields {list(self.fields)}; "
                             f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        b = len(ids)
        row = {"id": ids, "step": np.full(b, int(step), np.int64), "epoch": np.full(b, int(epoch), np.int32)}
        for f in self.fields:
            v = _np(values[f]).astype(np.float32, copy=False).reshape(-1)
            if v.shape != (b,):
                raise ValueError(f"field {f!r} has {v.shape[0]} values for {b} ids")
            row[f] = v.copy()
        if int(step) < self._last_step:
            raise ValueError(f"step {step} comes after step {self._last_step}: record steps in order")
        self._last_step = max(self._last_step, int(step))
        self._buffer.append(row)
        self._buffered += b
        if self._buffered >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records (a new part file on disk, a new chunk in memory)."""
        if not self._buffer:
            return
        chunk = {k: np.concatenate([r[k] for r in self._buffer]) for k in self._buffer[0]}
        self._buffer, self._buffered = [], 0
        if self.directory is None:
            self._chunks.append(chunk)
            return
        import pyarrow.parquet as pq

        path = self.directory / f"part-{len(self._parts):06d}.parquet"
        tmp = self.directory / f".{path.name}.tmp"
        pq.write_table(_to_table(chunk, self.fields), tmp, compression="zstd")
        os.replace(tmp, path)
        self._parts.append(path)

    def close(self) -> None:
        """Flush; the log stays readable."""
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ reading
    @property
    def n_records(self) -> int:
        """Records written so far (flushed or buffered)."""
        if self.directory is None:
            done = sum(len(c["step"]) for c in self._chunks)
        else:
            import pyarrow.parquet as pq

            done = sum(pq.ParquetFile(p).metadata.num_rows for p in self._parts)
        return done + self._buffered

    def iter_chunks(self, columns: Sequence[str] | None = None, rows: int = DEFAULT_CHUNK_ROWS
                    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield the records in the order they were written, as {column: array} chunks of at most ``rows``.

        Buffered records are included (call ``flush`` first when other processes read the files).
        """
        cols = list(columns) if columns is not None else [*BASE_COLUMNS, *self.fields]
        unknown = set(cols) - {*BASE_COLUMNS, *self.fields}
        if unknown:
            raise ValueError(f"the log has no columns {sorted(unknown)}; it has {[*BASE_COLUMNS, *self.fields]}")
        if self.directory is None:
            sources = iter(self._chunks)
        else:
            sources = _read_parts(self._parts, cols, rows)
        for chunk in sources:
            n = len(chunk[cols[0]])
            for s in range(0, n, rows):
                yield {c: chunk[c][s:s + rows] for c in cols}
        if self._buffer:
            chunk = {k: np.concatenate([r[k] for r in self._buffer]) for k in cols}
            n = len(chunk[cols[0]])
            for s in range(0, n, rows):
                yield {c: chunk[c][s:s + rows] for c in cols}

    def read(self, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every record at once (small logs): {column: array [M]}."""
        chunks = list(self.iter_chunks(columns))
        cols = list(columns) if columns is not None else [*BASE_COLUMNS, *self.fields]
        if not chunks:
            empty_id = np.zeros(0, dtype="<U1" if self.id_kind == "str" else np.int64)
            return {c: (empty_id if c == "id" else np.zeros(0, np.int64 if c == "step" else
                                                               np.int32 if c == "epoch" else np.float32))
                    for c in cols}
        return {c: np.concatenate([ch[c] for ch in chunks]) for c in cols}


class MergedLogs:
    """Several logs of one run (one per DDP rank) read as one, in step order: the records of step s from
    every rank form the global batch s. Same reading API as ``DynamicsRecorder`` (read-only)."""

    read_only = True

    def __init__(self, logs: Sequence[DynamicsRecorder]):
        if not logs:
            raise ValueError("no logs to merge")
        fields = {tuple(log.fields) for log in logs}
        kinds = {log.id_kind for log in logs} - {None}
        if len(fields) != 1 or len(kinds) > 1:
            raise ValueError(f"the per-rank logs disagree on their fields {sorted(fields)} or id types {sorted(kinds)}; "
                             "they are not one run")
        self.logs, self.fields = list(logs), logs[0].fields
        self.id_kind = next(iter(kinds), None)
        self.directory = logs[0].directory.parent if logs[0].directory is not None else None

    @property
    def n_records(self) -> int:
        return sum(log.n_records for log in self.logs)

    @property
    def next_step(self) -> int:
        return max(log.next_step for log in self.logs)

    def iter_chunks(self, columns: Sequence[str] | None = None, rows: int = DEFAULT_CHUNK_ROWS
                    ) -> Iterator[dict[str, np.ndarray]]:
        """The records of every log merged by step (each log is in step order), chunk by chunk."""
        cols = list(columns) if columns is not None else [*BASE_COLUMNS, *self.fields]
        read = cols if "step" in cols else [*cols, "step"]
        streams = [log.iter_chunks(read, rows) for log in self.logs]
        buffers: list[dict | None] = [None] * len(streams)
        live = [True] * len(streams)
        while True:
            for k, it in enumerate(streams):  # every live stream holds at least one record
                while live[k] and (buffers[k] is None or not len(buffers[k]["step"])):
                    nxt = next(it, None)
                    if nxt is None:
                        live[k] = False
                    else:
                        buffers[k] = nxt if buffers[k] is None else {c: np.concatenate([buffers[k][c], nxt[c]])
                                                                         for c in read}
            held = [k for k in range(len(streams)) if buffers[k] is not None and len(buffers[k]["step"])]
            if not held:
                return
            # steps below every live stream's last buffered step are complete in every stream
            bound = min((int(buffers[k]["step"][-1]) for k in held if live[k]), default=None)
            parts = []
            for k in held:
                take = buffers[k]["step"] < bound if bound is not None else np.ones(len(buffers[k]["step"]), bool)
                if bound is not None and not take.any() and live[k]:
                    continue
                parts.append({c: buffers[k][c][take] for c in read})
                buffers[k] = {c: buffers[k][c][~take] for c in read}
            if bound is not None and not any(len(p["step"]) for p in parts):
                # the lowest stream ends its buffer exactly at the bound: read more of the streams at the bound
                for k in held:
                    if live[k] and int(buffers[k]["step"][-1]) == bound:
                        nxt = next(streams[k], None)
                        if nxt is None:
                            live[k] = False
                        else:
                            buffers[k] = {c: np.concatenate([buffers[k][c], nxt[c]]) for c in read}
                continue
            merged = {c: np.concatenate([p[c] for p in parts]) for c in read}
            order = np.argsort(merged["step"], kind="stable")
            for s in range(0, len(order), rows):
                sel = order[s:s + rows]
                yield {c: merged[c][sel] for c in cols}

    def read(self, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        cols = list(columns) if columns is not None else [*BASE_COLUMNS, *self.fields]
        chunks = list(self.iter_chunks(cols))
        if not chunks:
            return self.logs[0].read(cols)
        return {c: np.concatenate([ch[c] for ch in chunks]) for c in cols}


def _to_table(chunk: dict[str, np.ndarray], fields: Sequence[str]):
    import pyarrow as pa

    cols = {"id": pa.array(chunk["id"]), "step": pa.array(chunk["step"], pa.int64()),
            "epoch": pa.array(chunk["epoch"], pa.int32())}
    for f in fields:
        cols[f] = pa.array(chunk[f], pa.float32())
    return pa.table(cols)


def _read_parts(parts: Sequence[Path], cols: list[str], rows: int) -> Iterator[dict[str, np.ndarray]]:
    import pyarrow.parquet as pq

    for p in parts:
        try:
            pf = pq.ParquetFile(p)
            for batch in pf.iter_batches(batch_size=rows, columns=cols):
                yield {c: _column(batch.column(c)) for c in cols}
        except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for corrupt files
            raise ValueError(f"{p} is not a readable part of recorded dynamics: {exc}") from None


def _column(arr) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        fixed = _fixed_width_ascii(arr)
        return fixed if fixed is not None else np.asarray(arr.to_numpy(zero_copy_only=False)).astype(str)
    return arr.to_numpy(zero_copy_only=False)


def _fixed_width_ascii(arr) -> np.ndarray | None:
    """A string column whose values are all ASCII of one length (uids), read straight from its buffers into a
    numpy unicode array (25x faster than through Python strings); None otherwise."""
    import pyarrow as pa

    if arr.null_count or len(arr) == 0:
        return None
    offsets = np.frombuffer(arr.buffers()[1], np.int64 if pa.types.is_large_string(arr.type) else np.int32)
    offsets = offsets[arr.offset:arr.offset + len(arr) + 1]
    widths = np.diff(offsets)
    if widths[0] == 0 or (widths != widths[0]).any():
        return None
    data = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
    if (data > 127).any():
        return None
    width = int(widths[0])
    return data.reshape(len(arr), width).astype(np.uint32).view(f"<U{width}").reshape(len(arr))


def _part_files(d: Path) -> list[Path]:
    return sorted(p for p in d.glob("part-*.parquet"))


def _max_step(parts: Sequence[Path]) -> int:
    """The largest recorded step, from the parquet column statistics (no data read)."""
    import pyarrow.parquet as pq

    best = -1
    for p in parts:
        try:
            meta = pq.ParquetFile(p).metadata
        except (OSError, ValueError) as exc:
            raise ValueError(f"{p} is not a readable part of recorded dynamics: {exc}") from None
        col = meta.schema.names.index("step")
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(col).statistics
            if stats is not None and stats.has_min_max:
                best = max(best, int(stats.max))
    return best


def _read_meta(d: Path) -> dict:
    try:
        doc = json.loads((d / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{d / META_FILE} is not readable JSON: {exc}") from None
    if doc.get("format") != FORMAT or "fields" not in doc:
        raise ValueError(f"{d / META_FILE} does not describe keepset dynamics (format {doc.get('format')!r})")
    return doc
