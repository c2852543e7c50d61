"""DataComp's metadata layout: ``DIR/*.parquet`` shards beside same-stem ``*.npz`` embedding files.

Each parquet shard has a ``uid`` column (32 hex digits, unique across the pool) and a ``text`` column,
optionally ``clip_b32_similarity_score`` / ``clip_l14_similarity_score`` and others. The npz beside it
holds one embedding row per parquet row, in the same order (that alignment is DataComp's format):

- ``b32_img`` / ``b32_txt``: CLIP ViT-B/32 image / text embeddings (DataComp's names);
- ``l14_img`` / ``l14_txt``: CLIP ViT-L/14 (DataComp's names);
- ``image_emb`` / ``text_emb``: embeddings from any other encoders ("generic"; what ``keepset make-pool``
  writes, since its embeddings are not CLIP's and must not be mistaken for them).

A shard without an npz still gives uids, texts and scores; its batches have ``image_emb = None`` and
``PairBatch.require("image_emb")`` names it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from keepset.data.pairs.base import PairBatch, PairSource, list_files, require_dir

EMBEDDING_KEYS = {"b32": ("b32_img", "b32_txt"), "l14": ("l14_img", "l14_txt"),
                  "generic": ("image_emb", "text_emb")}
EMBEDDING_CHOICES = ("auto", *EMBEDDING_KEYS)
SCORE_COLUMNS = ("clip_b32_similarity_score", "clip_l14_similarity_score")
REQUIRED_COLUMNS = ("uid", "text")

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def uid_to_u64(uids, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """32-hex-digit uids [n] -> (high, low) uint64 [n] each (vectorised; case-insensitive).

    ValueError naming how many and a few when a uid is not exactly 32 hex digits.
    """
    arr = np.asarray(uids)
    if arr.dtype.kind not in "US" and len(arr):
        raise ValueError(f"uids{where} must be strings of 32 hex digits, got dtype {arr.dtype}")
    try:
        b = arr.astype("S")
    except UnicodeEncodeError:  # non-ASCII: never hex; encoded, such uids are longer than 32 bytes or non-hex
        b = np.char.encode(arr.astype(str), "utf-8")
    ok = np.char.str_len(b) == 32 if len(b) else np.zeros(0, bool)
    fixed = np.zeros(len(b), dtype="S32")
    fixed[ok] = b[ok]
    digits = _HEX[np.frombuffer(fixed.tobytes(), dtype=np.uint8).reshape(len(b), 32)] if len(b) else \
        np.zeros((0, 32), np.uint8)
    ok &= (digits != 255).all(axis=1)
    if not ok.all():
        bad = arr[~ok]
        raise ValueError(f"{len(bad)} uids{where} are not 32 hex digits (e.g. {[str(u) for u in bad[:3]]}); "
                         "DataComp uids are 128-bit hex strings")
    shifts = (np.arange(15, -1, -1, dtype=np.uint64) * np.uint64(4))
    d = digits.astype(np.uint64)
    high = np.bitwise_or.reduce(d[:, :16] << shifts, axis=1)
    low = np.bitwise_or.reduce(d[:, 16:] << shifts, axis=1)
    return high, low


def _npz_headers(path: Path) -> dict[str, tuple[tuple, np.dtype]]:
    """Shapes and dtypes of every array in an .npz, read from the npy headers only (no data, no pickle)."""
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                out[info.filename[:-4]] = (shape, dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npz of plain arrays: {exc}") from None
    return out


class DataCompSource(PairSource):
    """A DataComp-style pool in ``path``: ``*.parquet`` (uid, text, scores) + same-stem ``*.npz`` embeddings.

    Parameters
    ----------
    path : folder holding the shards (``00000000.parquet``, ``00000000.npz``, ...), read in sorted name order
    embeddings : "auto" (default: the first of b32, l14, generic present in the npz files), "b32", "l14",
        or "generic" (``image_emb`` / ``text_emb``); see the module docstring
    check_duplicates : read every shard's uid column once at construction and refuse duplicates across
        the pool (holds 20 bytes per pair while it runs, then frees them). Iteration itself is bounded by a
        shard. Turn off only for pools already checked.

    Construction reads only parquet footers, npz headers and (with ``check_duplicates``) uid columns; it
    raises a one-line ValueError for a corrupt file, a missing column, mismatched row counts, duplicate or
    non-hex uids.
    """

    def __init__(self, path, embeddings: str = "auto", check_duplicates: bool = True):
        import pyarrow.parquet as pq

        if embeddings not in EMBEDDING_CHOICES:
            raise ValueError(f"embeddings must be one of {EMBEDDING_CHOICES}, got {embeddings!r}")
        root = require_dir(path, "DataComp pool folder", "Give a folder of *.parquet shards (+ same-stem *.npz).")
        self.root = root
        self.name = f"datacomp:{root}"
        parquets = list_files(root, "*.parquet")
        if not parquets:
            raise ValueError(f"no *.parquet shards in {root}; a DataComp pool folder holds NNNNNNNN.parquet "
                             "files (and same-stem .npz embeddings)")
        self._parquet = {p.stem: p for p in parquets}
        self.shards = [p.stem for p in parquets]
        self._rows: dict[str, int] = {}
        self._schema_names: dict[str, list[str]] = {}
        for stem, p in self._parquet.items():
            try:
                meta = pq.ParquetFile(p).metadata
                names = meta.schema.to_arrow_schema().names
            except Exception as exc:
                raise ValueError(f"shard {p} is not a readable parquet file: {exc}") from None
            missing = [c for c in REQUIRED_COLUMNS if c not in names]
            if missing:
                raise ValueError(f"shard {p} has no {missing} column(s) (found {names}); DataComp shards need "
                                 "`uid` and `text`")
            self._rows[stem] = meta.num_rows
            self._schema_names[stem] = names
        self._npz = {s: p.with_suffix(".npz") for s, p in self._parquet.items() if p.with_suffix(".npz").exists()}
        self.shards_without_embeddings = [s for s in self.shards if s not in self._npz]
        self.embeddings, self.keys = self._resolve_embeddings(embeddings)
        if check_duplicates:
            self._check_uids()

    # ------------------------------------------------------------ validation
    def _resolve_embeddings(self, choice: str) -> tuple[str | None, tuple[str, str] | None]:
        headers = {s: _npz_headers(p) for s, p in self._npz.items()}
        self.image_dim = self.text_dim = None
        if not headers:
            return None, None
        if choice == "auto":
            first = next(iter(headers.values()))
            found = [fam for fam, keys in EMBEDDING_KEYS.items() if keys[0] in first]
            if not found:
                s, p = next(iter(self._npz.items()))
                raise ValueError(f"{p} holds none of the embedding arrays {[k[0] for k in EMBEDDING_KEYS.values()]} "
                                 f"(found {sorted(first)})")
            choice = found[0]
        img_key, txt_key = EMBEDDING_KEYS[choice]
        dims: dict[str, int] = {}
        for s, head in headers.items():
            p = self._npz[s]
            for key in (img_key, txt_key):
                if key not in head:
                    raise ValueError(f"{p} has no `{key}` array (found {sorted(head)}); pass embeddings= one of "
                                     f"{EMBEDDING_CHOICES} matching the files")
                shape, dtype = head[key]
                if dtype.kind != "f" or len(shape) != 2:
                    raise ValueError(f"`{key}` in {p} must be a 2-D float array [rows, dim], got {dtype} {shape}")
                if shape[0] != self._rows[s]:
                    raise ValueError(f"shard {s}: {p.name} `{key}` has {shape[0]} rows but {s}.parquet has "
                                     f"{self._rows[s]}; the npz rows must align with the parquet rows")
                if dims.setdefault(key, shape[1]) != shape[1]:
                    raise ValueError(f"`{key}` in {p} has dimension {shape[1]}, other shards {dims[key]}")
        self.image_dim, self.text_dim = dims[img_key], dims[txt_key]
        return choice, (img_key, txt_key)

    def _check_uids(self) -> None:
        """Refuse non-hex uids and duplicates anywhere in the pool (one pass over the uid columns)."""
        import pyarrow.parquet as pq

        highs, lows, where = [], [], []
        for i, s in enumerate(self.shards):
            uids = self._read_uids(pq.read_table(self._parquet[s], columns=["uid"]).column("uid"), s)
            high, low = uid_to_u64(uids, f" in shard {s}")
            highs.append(high)
            lows.append(low)
            where.append(np.full(len(high), i, dtype=np.int32))
        high, low, shard = np.concatenate(highs), np.concatenate(lows), np.concatenate(where)
        del highs, lows, where
        order = np.lexsort((low, high))
        dup_next = (high[order][1:] == high[order][:-1]) & (low[order][1:] == low[order][:-1])
        if dup_next.any():
            first = order[1:][dup_next]
            n_dup = int(dup_next.sum())
            examples = [f"{int(high[k]):016x}{int(low[k]):016x} (shard {self.shards[shard[k]]})" for k in first[:3]]
            raise ValueError(f"{n_dup} duplicate uids in {self.root} (e.g. {', '.join(examples)}); every pair "
                             "needs its own uid: deduplicate the shards first")

    def _read_uids(self, column, shard: str) -> np.ndarray:
        import pyarrow as pa

        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise ValueError(f"shard {shard}: the uid column must hold strings (32 hex digits), got {column.type}")
        if column.null_count:
            raise ValueError(f"shard {shard}: {column.null_count} pairs have no uid (null); every pair needs one")
        return column.to_numpy(zero_copy_only=False).astype(str)

    def num_pairs(self) -> int:
        return int(sum(self._rows.values()))

    def _files(self) -> list[Path]:
        return [f for s in self.shards for f in (self._parquet[s], self._npz.get(s)) if f is not None]

    def _options(self) -> dict:
        return {"embeddings": self.embeddings}

    # ------------------------------------------------------------ reading
    def _extra_columns(self, shard: str, columns: Sequence[str] | None) -> list[str]:
        names = self._schema_names[shard]
        if columns is None:
            return [c for c in SCORE_COLUMNS if c in names]
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"shard {shard} has no column(s) {missing} (found {names})")
        return [c for c in columns if c not in REQUIRED_COLUMNS]

    def _load_embeddings(self, shard: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        if shard not in self._npz:
            return None, None
        p = self._npz[shard]
        try:
            with np.load(p, allow_pickle=False) as z:
                img, txt = (np.asarray(z[k], dtype=np.float32) for k in self.keys)
        except Exception as exc:
            raise ValueError(f"shard {shard}: {p.name} is not a readable .npz of plain arrays: {exc}") from None
        for key, arr in zip(self.keys, (img, txt)):
            if len(arr) != self._rows[shard]:
                raise ValueError(f"shard {shard}: `{key}` has {len(arr)} rows but the parquet has {self._rows[shard]}")
            if not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).any(axis=1).sum())
                raise ValueError(f"shard {shard}: `{key}` in {p.name} has {bad} rows with NaN or inf; "
                                 "recompute those embeddings")
        return img, txt

    def _read_shard(self, shard: str, columns, batch_size, state) -> Iterator[PairBatch]:
        extras = self._extra_columns(shard, columns)
        img, txt = self._load_embeddings(shard)
        start = 0
        for table in parquet_tables(self._parquet[shard], [*REQUIRED_COLUMNS, *extras], batch_size):
            n = table.num_rows
            uids = self._read_uids(table.column("uid"), shard)
            uid_to_u64(uids, f" in shard {shard}")  # hex check (vectorised)
            text_col = table.column("text")
            if text_col.null_count:
                raise ValueError(f"shard {shard}: {text_col.null_count} pairs have no text (null)")
            yield PairBatch(
                ids=uids, texts=text_col.to_pylist(),
                image_emb=None if img is None else img[start:start + n],
                text_emb=None if txt is None else txt[start:start + n],
                columns={c: table.column(c).to_numpy(zero_copy_only=False) for c in extras}, shard=shard)
            start += n
        if start != self._rows[shard]:
            raise ValueError(f"shard {shard} changed while reading: {start} rows read, {self._rows[shard]} expected")


def parquet_tables(path: Path, columns: list[str], batch_size: int | None):
    """The columns of a parquet file as one table (``batch_size=None``) or record batches of at most
    ``batch_size`` rows; any read failure becomes a one-line ValueError naming the file."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        if batch_size is None:
            yield pf.read(columns=columns)
            return
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable parquet file: {exc}") from None
