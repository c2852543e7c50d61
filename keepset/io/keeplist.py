"""Keep lists: ``.npy`` arrays of the kept ids (no pickle), and DataComp's uid format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keepset.io.atomic import atomic_path


def write_keep_list(path: str | Path, ids, overwrite: bool = False) -> Path:
    """Save kept ids [M] (int or str) as ``.npy`` atomically."""
    arr = np.asarray(ids)
    if arr.dtype == object:
        arr = arr.astype(str)
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
    return Path(path)


def read_keep_list(path: str | Path) -> np.ndarray:
    """Load a keep list saved by ``write_keep_list`` (never unpickles)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"keep list not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a keep list (.npy of ids): {exc}") from None


#: DataComp's subset format: a structured array of (high, low) 64-bit halves of each 128-bit uid
DATACOMP_DTYPE = np.dtype("u8,u8")
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def uids_to_datacomp(uids) -> np.ndarray:
    """128-bit hex uids [M] -> DataComp's subset array: ``np.dtype("u8,u8")`` [M], lexicographically sorted.

    Vectorised (no Python loop over uids). Upper- and lower-case hex are the same uid. ValueError naming how
    many (and a few) when a uid is not 32 hex digits, or when a uid occurs twice (DataComp's resharder
    expects each uid once).
    """
    from keepset.data.pairs.datacomp import uid_to_u64

    arr = np.asarray(uids)
    if arr.dtype == object:
        if any(not isinstance(u, str) for u in arr.tolist()):
            raise ValueError("uids must be strings of 32 hex digits")
        arr = arr.astype(str) if arr.size else np.zeros(0, dtype="<U32")
    if arr.ndim != 1:
        raise ValueError(f"uids must be 1-D (one per kept pair), got shape {arr.shape}")
    high, low = uid_to_u64(arr)
    pairs = np.empty(len(arr), dtype=DATACOMP_DTYPE)
    pairs["f0"], pairs["f1"] = high, low
    pairs = np.sort(pairs, order=["f0", "f1"])
    dup = (pairs["f0"][1:] == pairs["f0"][:-1]) & (pairs["f1"][1:] == pairs["f1"][:-1])
    if dup.any():
        shown = datacomp_to_uids(pairs[1:][dup][:3])
        raise ValueError(f"{int(dup.sum())} uids occur more than once (e.g. {shown}); a DataComp subset lists "
                         "each uid once")
    return pairs


def check_datacomp_subset(pairs) -> np.ndarray:
    """``pairs`` if it is a valid DataComp subset (dtype ``u8,u8``, 1-D, strictly increasing: sorted and
    unique), else ValueError saying what is wrong."""
    arr = np.asarray(pairs)
    if arr.dtype != DATACOMP_DTYPE:
        raise ValueError(f"a DataComp subset has dtype {DATACOMP_DTYPE}, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"a DataComp subset is 1-D, got shape {arr.shape}")
    hi, lo = arr["f0"], arr["f1"]
    increasing = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))
    if not increasing.all():
        raise ValueError(f"a DataComp subset is sorted with each uid once; {int((~increasing).sum())} neighbours "
                         "are out of order or equal")
    return arr


def datacomp_to_uids(pairs: np.ndarray) -> np.ndarray:
    """DataComp ``u8,u8`` pairs [M] -> 32-digit lower-case hex uids, a numpy ``<U32`` array [M] (vectorised)."""
    arr = np.asarray(pairs)
    if arr.dtype != DATACOMP_DTYPE:
        raise ValueError(f"DataComp uid pairs have dtype {DATACOMP_DTYPE}, got {arr.dtype}")
    arr = arr.reshape(-1)
    halves = np.stack([arr["f0"], arr["f1"]], axis=1).astype(">u8")      # [M, 2] big-endian
    nbytes = halves.view(np.uint8).reshape(len(arr), 16)                    # most significant byte first
    digits = np.stack([nbytes >> 4, nbytes & 15], axis=2).reshape(len(arr), 32)
    return _HEX_DIGITS[digits].view("S32").reshape(len(arr)).astype("<U32")
