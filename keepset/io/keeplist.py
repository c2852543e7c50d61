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


def uids_to_datacomp(uids) -> np.ndarray:
    """128-bit hex uids [M] -> DataComp's sorted structured array of ``u8,u8`` pairs."""
    uids = [str(u) for u in uids]
    bad = [u for u in uids if len(u) != 32 or any(c not in "0123456789abcdefABCDEF" for c in u)]
    if bad:
        raise ValueError(f"{len(bad)} uids are not 32 hex digits (e.g. {bad[:3]})")
    pairs = np.array([(int(u[:16], 16), int(u[16:], 16)) for u in uids], dtype=np.dtype("u8,u8"))
    return np.sort(pairs)


def datacomp_to_uids(pairs: np.ndarray) -> list[str]:
    """DataComp ``u8,u8`` pairs -> 32-digit hex uids."""
    return [f"{int(a):016x}{int(b):016x}" for a, b in pairs.tolist()]
