"""On-disk embedding cache: one ``.npy`` per (encoder fingerprint, data fingerprint).

Files are written atomically (keepset.io) and read with ``allow_pickle=False``; a file whose shape
does not match the request is treated as corrupt and recomputed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from keepset.data import SampleSet
from keepset.encoders.base import hash_strings
from keepset.io import atomic_path


def default_cache_dir() -> Path:
    """``$KEEPSET_CACHE``, else ``$XDG_CACHE_HOME/keepset``, else ``~/.cache/keepset``."""
    if os.environ.get("KEEPSET_CACHE"):
        return Path(os.environ["KEEPSET_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "keepset"


def _load(path: Path, rows: int) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None  # corrupt or truncated: recompute
    if arr.ndim != 2 or arr.shape[0] != rows or arr.dtype != np.float32 or not np.isfinite(arr).all():
        return None
    return arr


def _store(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)


def _load_or_compute(path: Path | None, n: int, compute) -> np.ndarray:
    """The cached float32 [n, d] array at ``path``, else ``compute()`` stored there (no cache when None)."""
    if path is None:
        return compute()
    arr = _load(path, n)
    if arr is None:
        arr = np.asarray(compute(), dtype=np.float32)
        _store(path, arr)
    return arr


def cached_image_embeddings(encoder, samples: SampleSet, cache_dir: str | Path | None) -> np.ndarray:
    """``encoder.encode_images(samples)`` [N, d], read from / written to ``cache_dir`` (None: no cache).

    The key is ``encoder.fingerprint`` and ``samples.fingerprint()``: ids, labels and the inputs' content, so
    data changed at the same path is re-encoded, never served stale.
    """
    path = None if cache_dir is None else (
        Path(cache_dir) / "embeddings" / f"img-{encoder.fingerprint}-{samples.fingerprint()}.npy")
    return _load_or_compute(path, len(samples), lambda: encoder.encode_images(samples))


def cached_text_embeddings(encoder, texts: list[str], cache_dir: str | Path | None) -> np.ndarray:
    """``encoder.encode_texts(texts)`` [M, d], cached under the encoder fingerprint and a hash of the texts."""
    texts = list(texts)
    path = None if cache_dir is None else (
        Path(cache_dir) / "embeddings" / f"txt-{encoder.fingerprint}-{hash_strings(texts)}.npy")
    return _load_or_compute(path, len(texts), lambda: encoder.encode_texts(texts))
