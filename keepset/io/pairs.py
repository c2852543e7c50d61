"""Writers for image-text pair shards, byte-for-byte deterministic (same inputs, same bytes).

- ``write_npz``: an uncompressed ``.npz`` (what ``np.savez`` writes) with fixed zip timestamps;
- ``write_datacomp_shard``: DataComp's ``NNNNNNNN.parquet`` + same-stem ``.npz``;
- ``write_wds_shard``: a webdataset tar, members sorted by key then extension, mtime 0, owner 0;
- ``encode_png``: uint8 [C, H, W] -> PNG bytes with fixed encoder settings.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from keepset.io.atomic import atomic_path

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
PNG_COMPRESS_LEVEL = 6


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray], overwrite: bool = False) -> Path:
    """Save ``arrays`` (name -> array, in the mapping's order) as an uncompressed .npz, atomically.

    Unlike ``np.savez`` the zip entries carry a fixed date, so the file's bytes depend on the arrays only.
    Object arrays are refused (readers load with ``allow_pickle=False``).
    """
    with atomic_path(path, overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                arr = np.ascontiguousarray(arr)
                if arr.dtype == object:
                    raise ValueError(f"array {name!r} has dtype object; store plain numeric or string arrays")
                info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, arr, allow_pickle=False)
    return Path(path)


def write_datacomp_shard(folder: str | Path, stem: str, table_columns: Mapping[str, object],
                         embeddings: Mapping[str, np.ndarray] | None, overwrite: bool = False) -> tuple[Path, Path | None]:
    """``folder/stem.parquet`` (the columns, ``uid`` first) and ``folder/stem.npz`` (the embeddings, rows
    aligned with the parquet's). Returns the two paths (npz None when ``embeddings`` is None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if "uid" not in table_columns:
        raise ValueError("a DataComp shard needs a `uid` column")
    cols = {"uid": table_columns["uid"], **{k: v for k, v in table_columns.items() if k != "uid"}}
    table = pa.table({k: pa.array(list(v) if isinstance(v, np.ndarray) and v.dtype.kind == "U" else v)
                      for k, v in cols.items()})
    folder = Path(folder)
    pq_path = folder / f"{stem}.parquet"
    with atomic_path(pq_path, overwrite) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    npz_path = None
    if embeddings is not None:
        for k, v in embeddings.items():
            if len(v) != table.num_rows:
                raise ValueError(f"embedding {k!r} has {len(v)} rows, the shard {table.num_rows}")
        npz_path = write_npz(folder / f"{stem}.npz", embeddings, overwrite)
    return pq_path, npz_path


def write_wds_shard(path: str | Path, samples: Iterable[tuple[str, Mapping[str, bytes]]],
                    overwrite: bool = False) -> Path:
    """A webdataset tar: for every (key, {extension: bytes}) the members ``key.extension``, sorted by key and
    then extension, with mtime 0, owner 0 and mode 0644 (the bytes depend on the samples only)."""
    with atomic_path(path, overwrite) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for key, files in sorted(samples, key=lambda s: s[0]):
                for ext in sorted(files):
                    data = files[ext]
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tf.addfile(info, io.BytesIO(data))
    return Path(path)


def encode_png(image_u8: np.ndarray) -> bytes:
    """uint8 [C, H, W] (C = 1 or 3) -> PNG bytes (compress level 6, no optimisation: deterministic)."""
    from PIL import Image

    arr = np.asarray(image_u8)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"encode_png needs uint8 [1|3, H, W], got {arr.dtype} {arr.shape}")
    im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()
