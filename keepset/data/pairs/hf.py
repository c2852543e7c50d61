"""Hugging Face datasets on disk: a ``Dataset.save_to_disk`` folder, or parquet files (the Hub's layout).

Both are read with pyarrow alone (the ``datasets`` package is not needed to read): a saved dataset's
``state.json`` lists its Arrow stream files (the shards); a parquet folder's shards are its ``*.parquet``
files (searched recursively, sorted by relative path). Images may be stored as ``datasets.Image``
structs (``{"bytes", "path"}`` with embedded bytes), raw encoded bytes, or arrays (uint8, or floats in
[0, 1]); they are decoded to float32 [C, H, W] in [0, 1] and resized to one size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from keepset.data.pairs.base import PairBatch, PairSource, list_files
from keepset.data.pairs.decode import MAX_IMAGE_PIXELS, ImageDecoder
from keepset.data.pairs.ids import IdTracker


def _arrow_files(root: Path) -> list[Path]:
    try:
        state = json.loads((root / "state.json").read_text(encoding="utf-8"))
        names = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{root}/state.json is not a datasets save_to_disk state file: {exc}") from None
    files = []
    for name in names:
        if not isinstance(name, str) or Path(name).name != name:
            raise ValueError(f"{root}/state.json names a data file outside its folder: {name!r}")
        f = root / name
        if not f.is_file():
            raise FileNotFoundError(f"{root}/state.json lists {name}, which is missing; the saved dataset is incomplete")
        files.append(f)
    if not files:
        raise ValueError(f"{root}/state.json lists no data files")
    return files


class HFSource(PairSource):
    """Image-text pairs from a Hugging Face dataset saved to disk, or from parquet files.

    Parameters
    ----------
    path : a ``save_to_disk`` folder (``state.json`` + ``*.arrow``), a folder of ``*.parquet`` files, or one
        ``.parquet`` file. A saved ``DatasetDict`` is refused with its split names: give ``PATH/<split>``.
    image_column, text_column : the columns holding the image and the caption
    id_column : the column holding unique pair ids (str or int); None: the row's position in the whole
        dataset (int64, shards in order)
    image_size, mode : the common image size and mode (see ``ImageDecoder``; default: the first image's)
    decode_images : False to read ids, texts and columns only
    check_duplicates : refuse an id seen before in the pool (8 bytes per pair while streaming)
    """

    def __init__(self, path, image_column: str = "image", text_column: str = "text", id_column: str | None = None,
                 *, image_size=None, mode: str | None = None, decode_images: bool = True,
                 check_duplicates: bool = True, max_pixels: int = MAX_IMAGE_PIXELS):
        import pyarrow as pa

        root = Path(path).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"Hugging Face dataset not found: {root}. Give a save_to_disk folder or a folder "
                                    "of parquet files")
        if root.is_file():
            if root.suffix != ".parquet":
                raise ValueError(f"{root} is neither a save_to_disk folder nor a .parquet file")
            files, self.format, base = [root], "parquet", root.parent
        elif (root / "dataset_dict.json").exists():
            splits = sorted(p.name for p in root.iterdir() if (p / "state.json").exists())
            raise ValueError(f"{root} is a DatasetDict with splits {splits}; give one split's folder, "
                             f"e.g. hf:{root / (splits[0] if splits else 'train')}")
        elif (root / "state.json").exists():
            files, self.format, base = _arrow_files(root), "arrow", root
        else:
            files, self.format, base = list_files(root, "**/*.parquet"), "parquet", root
            if not files:
                raise ValueError(f"{root} holds no dataset: expected state.json (Dataset.save_to_disk) or *.parquet files")
        for c, name in (("image_column", image_column), ("text_column", text_column)):
            if not isinstance(name, str) or not name:
                raise ValueError(f"{c} must be a column name, got {name!r}")
        self.root = root
        self.name = f"hf:{root}"
        self.image_column, self.text_column, self.id_column = image_column, text_column, id_column
        self.decode_images = bool(decode_images)
        self.check_duplicates = bool(check_duplicates)
        self.decoder = ImageDecoder(image_size, mode, max_pixels)
        self._image_size, self._mode = image_size, mode
        self.shards = [f.relative_to(base).as_posix() for f in files]
        self._paths = dict(zip(self.shards, files))
        self._rows, self._schema = {}, None
        for s, f in self._paths.items():
            schema, rows = self._inspect(f, pa)
            self._rows[s] = rows
            self._schema = self._schema or schema
            needed = [c for c in (image_column, text_column, id_column) if c is not None]
            missing = [c for c in needed if c not in schema.names]
            if missing:
                raise ValueError(f"shard {s} of {root} has no column(s) {missing} (found {schema.names}); name the "
                                 "columns with image=/text=/id= (hf:PATH?image=img&text=caption&id=key)")
        self._offsets = dict(zip(self.shards, np.cumsum([0] + [self._rows[s] for s in self.shards])[:-1].tolist()))

    def _inspect(self, f: Path, pa) -> tuple:
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                meta = pq.ParquetFile(f).metadata
                return meta.schema.to_arrow_schema(), meta.num_rows
            with pa.memory_map(str(f)) as source:
                reader = pa.ipc.open_stream(source)
                rows = sum(b.num_rows for b in reader)  # memory-mapped: no copy of the data
                return reader.schema, rows
        except Exception as exc:
            raise ValueError(f"shard {f} is not a readable {self.format} file: {exc}") from None

    def num_pairs(self) -> int:
        return int(sum(self._rows.values()))

    def _files(self) -> list[Path]:
        return [self._paths[s] for s in self.shards]

    def _options(self) -> dict:
        return {"image": self.image_column, "text": self.text_column, "id": self.id_column,
                "image_size": self._image_size, "mode": self._mode, "decode_images": self.decode_images}

    def _new_pass(self) -> dict:
        return {"ids": IdTracker(self.name) if self.check_duplicates else None}

    # ------------------------------------------------------------ reading
    def _tables(self, shard: str, columns: list[str], batch_size: int | None):
        import pyarrow as pa

        f = self._paths[shard]
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(f)
                if batch_size is None:
                    yield pf.read(columns=columns)
                else:
                    yield from pf.iter_batches(batch_size=batch_size, columns=columns)
                return
            with pa.memory_map(str(f)) as source:
                reader = pa.ipc.open_stream(source)
                if batch_size is None:
                    yield reader.read_all().select(columns)
                else:
                    for b in reader:
                        yield b.select(columns)
        except Exception as exc:
            raise ValueError(f"shard {f} is not a readable {self.format} file: {exc}") from None

    def _images(self, column, shard: str, start: int) -> list[np.ndarray]:
        import pyarrow as pa

        t = column.type
        values = column.to_pylist()
        out = []
        for i, v in enumerate(values):
            where = f"at row {start + i} of shard {shard}"
            if v is None:
                raise ValueError(f"image {where} is missing (null)")
            if pa.types.is_struct(t):
                data = v.get("bytes")
                if data is None:
                    raise ValueError(f"image {where} is stored as a file reference ({v.get('path')!r}), not embedded "
                                     "bytes; save the dataset with embedded images (datasets.Image with bytes)")
            else:
                data = v
            out.append(self.decoder.decode(data, where))
        return out

    def _read_shard(self, shard: str, columns: Sequence[str] | None, batch_size, state) -> Iterator[PairBatch]:
        extras = [c for c in (columns or []) if c not in (self.image_column, self.text_column, self.id_column)]
        missing = [c for c in extras if c not in self._schema.names]
        if missing:
            raise ValueError(f"shard {shard} has no column(s) {missing} (found {self._schema.names})")
        wanted = [self.text_column, *( [self.image_column] if self.decode_images else []),
                  *([self.id_column] if self.id_column else []), *extras]
        tracker = state.get("ids")
        start = 0
        for table in self._tables(shard, wanted, batch_size):
            n = table.num_rows
            text_col = table.column(self.text_column)
            if text_col.null_count:
                raise ValueError(f"shard {shard}: {text_col.null_count} pairs have no {self.text_column!r} (null)")
            texts = text_col.to_pylist()
            if not all(isinstance(t, str) for t in texts):
                raise ValueError(f"shard {shard}: column {self.text_column!r} must hold strings (captions)")
            if self.id_column:
                id_col = table.column(self.id_column)
                if id_col.null_count:
                    raise ValueError(f"shard {shard}: {id_col.null_count} pairs have a null {self.id_column!r}")
                ids = np.asarray(id_col.to_pylist())
                if ids.dtype.kind not in "iuU":
                    raise ValueError(f"shard {shard}: ids in {self.id_column!r} must be strings or integers, "
                                     f"got {id_col.type}")
                ids = ids.astype(np.int64) if ids.dtype.kind in "iu" else ids
            else:
                ids = np.arange(n, dtype=np.int64) + self._offsets[shard] + start
            if tracker is not None:
                tracker.add(ids, shard)
            images = None
            if self.decode_images:
                images = ImageDecoder.stack(self._images(table.column(self.image_column), shard, start))
            yield PairBatch(ids=ids, texts=texts, images=images,
                            columns={c: table.column(c).to_numpy(zero_copy_only=False) for c in extras}, shard=shard)
            start += n
