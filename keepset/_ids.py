"""Sample ids: validation and joins by id. Every stage identifies samples by id, never by row position.

An id array is 1-D and either integer (stored as int64) or string (stored as a fixed-width numpy unicode
array, e.g. DataComp's 32-hex-digit uids). Floats, booleans, objects mixing types, empty strings and
duplicates are refused.
"""

from __future__ import annotations

import numpy as np


def as_ids(ids, name: str = "ids") -> np.ndarray:
    """``ids`` as int64 [N] or a numpy unicode array [N]; ValueError naming the problem otherwise.

    Duplicates are not checked here (see ``check_ids``).
    """
    if hasattr(ids, "detach"):  # a torch tensor (possibly on a device)
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one id per sample), got shape {arr.shape}")
    if arr.dtype == np.bool_:
        raise ValueError(f"{name} are booleans; ids must be integers or strings")
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} hold integers above 2^63 - 1; pass them as strings instead")
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
            raise ValueError(f"{name} hold non-integer floats (e.g. {arr[~np.isfinite(arr) | (arr != np.round(arr))][:3].tolist()}); "
                             "ids must be integers or strings")
        return arr.astype(np.int64)
    if arr.dtype.kind == "S":
        arr = arr.astype(str)
    if arr.dtype.kind == "O":
        kinds = {type(v) for v in arr.tolist()}
        if kinds <= {str}:
            arr = arr.astype(str) if arr.size else np.zeros(0, dtype="<U1")
        elif kinds <= {int, np.int64, np.int32}:
            return arr.astype(np.int64)
        else:
            raise ValueError(f"{name} mix types {sorted(k.__name__ for k in kinds)}; ids must be all integers "
                             "or all strings")
    if arr.dtype.kind != "U":
        raise ValueError(f"{name} have dtype {arr.dtype}; ids must be integers or strings")
    if arr.size and (np.char.str_len(arr) == 0).any():
        raise ValueError(f"{name} hold {int((np.char.str_len(arr) == 0).sum())} empty strings; every sample needs an id")
    return arr


def duplicates(ids: np.ndarray) -> np.ndarray:
    """The ids that occur more than once (sorted, each once)."""
    uniq, counts = np.unique(ids, return_counts=True)
    return uniq[counts > 1]


def check_ids(ids, name: str = "ids") -> np.ndarray:
    """``as_ids`` plus uniqueness: ValueError naming how many ids repeat and a few of them."""
    arr = as_ids(ids, name)
    dup = duplicates(arr)
    if len(dup):
        raise ValueError(f"{name} hold {len(dup)} duplicate ids (e.g. {dup[:3].tolist()}); every sample needs "
                         "its own id")
    return arr


def same_kind(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two id arrays can be compared (both integer or both string)."""
    return (a.dtype.kind == "U") == (b.dtype.kind == "U")


def align(ids: np.ndarray, source_ids: np.ndarray, *, what: str = "ids", source: str = "the source",
          allow_missing: bool = False) -> np.ndarray:
    """Positions in ``source_ids`` of every id of ``ids``: int64 [len(ids)] (-1 where missing and allowed).

    Both arrays must be unique (``check_ids``). Raises ValueError naming how many ids of ``ids`` are not
    in ``source_ids`` (unless ``allow_missing``). Rows in another order give the same mapping.
    """
    if not same_kind(ids, source_ids):
        raise ValueError(f"{what} are {'strings' if ids.dtype.kind == 'U' else 'integers'} but {source} holds "
                         f"{'strings' if source_ids.dtype.kind == 'U' else 'integers'}; they cannot name the same "
                         "samples")
    order = np.argsort(source_ids, kind="stable")
    sorted_src = source_ids[order]
    pos = np.searchsorted(sorted_src, ids)
    pos_c = np.minimum(pos, max(len(sorted_src) - 1, 0))
    found = (len(sorted_src) > 0) & (sorted_src[pos_c] == ids) if len(sorted_src) else np.zeros(len(ids), bool)
    out = np.where(found, order[pos_c] if len(order) else -1, -1).astype(np.int64)
    if not allow_missing and not found.all():
        missing = ids[~found]
        raise ValueError(f"{len(missing)} of {len(ids)} {what} are not in {source} (e.g. {missing[:3].tolist()}); "
                         "the two do not describe the same samples")
    return out


def check_same_ids(a: np.ndarray, b: np.ndarray, *, a_name: str, b_name: str) -> np.ndarray:
    """Positions in ``b`` of every id of ``a``, requiring both to hold exactly the same id set.

    Raises ValueError naming how many ids differ in each direction.
    """
    pos = align(a, b, what=f"ids of {a_name}", source=b_name, allow_missing=True)
    only_a = int((pos < 0).sum())
    only_b = len(b) - (len(a) - only_a)
    if only_a or only_b:
        example = a[pos < 0][:3].tolist() if only_a else b[~np.isin(b, a)][:3].tolist()
        raise ValueError(f"{a_name} and {b_name} hold different samples: {only_a} ids only in {a_name}, "
                         f"{only_b} only in {b_name} (e.g. {example}); pass files from the same run or data")
    return pos
