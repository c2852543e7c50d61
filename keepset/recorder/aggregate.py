"""Per-sample aggregates of a ``DynamicsRecorder`` log, streamed chunk by chunk (bounded memory).

Ids are mapped to dense positions through the sorted unique keys of the log's ids, then every aggregate
is a ``np.bincount`` over positions. Integer ids are their own keys; 32-hex-digit uids (DataComp's) are
keyed by their low 64 bits when those are unique among the log's uids (checked), which keeps the mapping
as fast as for integers; other strings are keyed by themselves (slower).
"""

from __future__ import annotations

import numpy as np

from keepset._ids import align, as_ids, check_ids


_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_SHIFTS = (np.arange(15, -1, -1, dtype=np.uint64) * np.uint64(4))


#: ids held unmerged at most beyond twice the unique ids known (``IdIndex.of_log``)
MERGE_MIN = 1 << 21


def hex_halves(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(high, low) 64-bit halves of 32-hex-digit uids [M] as int64, or None if any id is not 32 hex digits."""
    if ids.dtype.kind != "U" or ids.dtype.itemsize != 32 * 4 or not len(ids):
        return None
    codes = ids.view(np.uint32).reshape(len(ids), 32)
    if codes.max() > 127:
        return None
    nib = _HEX[codes.astype(np.uint8)]
    if nib.max() == 255:
        return None
    packed = (nib[:, 0::2] << 4) | nib[:, 1::2]  # [M, 16] bytes, most significant first
    halves = packed.view(">u8").astype(np.uint64).view(np.int64)  # [M, 2]
    return halves[:, 0], halves[:, 1]


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", np.uint8).astype(np.uint32)


def uids_from_halves(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """32-hex-digit lower-case uids [M] from their (high, low) int64 halves (the inverse of ``hex_halves``)."""
    out = np.empty(len(hi), "<U32")
    codes = out.view(np.uint32).reshape(len(hi), 32)
    for s in range(0, len(hi), 1 << 16):  # in blocks: the nibbles take 8 bytes each
        for half, cols in ((hi, slice(0, 16)), (lo, slice(16, 32))):
            nib = (half[s:s + (1 << 16)].view(np.uint64)[:, None] >> _SHIFTS) & np.uint64(15)
            codes[s:s + (1 << 16), cols] = _HEX_DIGITS[nib.astype(np.intp)]
    return out


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    a = np.sort(a, kind="stable")
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


class IdIndex:
    """Dense positions 0..U-1 of the unique ids of a log. ``ids`` [U]: the ids in position order.

    Integer ids and other strings are sorted; 32-hex-digit uids are kept as (high, low) int64 halves sorted
    by the low half (when no two uids share it), so neither building the index nor looking ids up ever
    compares strings.
    """

    def __init__(self, ids: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None):
        self.ids, self._lo, self._hi = ids, lo, hi

    @classmethod
    def of_log(cls, recorder) -> "IdIndex":
        """One pass over the log's id column. Memory: O(unique ids + one chunk): the per-chunk unique ids are
        merged whenever they add up to more than twice the ids known so far (a log of 10^7 records of 10^6
        samples never holds 10^7 ids)."""
        ints, his, los, strings = [], [], [], []
        held, merged = 0, 0  # ids held in the lists; how many of them the last merge left

        def merge():
            nonlocal held, merged
            if ints:
                ints[:] = [_sorted_unique(np.concatenate(ints))]
                held = len(ints[0])
            if strings:
                strings[:] = [_sorted_unique(np.concatenate(strings))]
                held = len(strings[0])
            if los:
                hi, lo = _unique_pairs(np.concatenate(his), np.concatenate(los))
                his[:], los[:] = [hi], [lo]
                held = len(lo) + sum(len(x) for x in strings)
            merged = held

        for chunk in recorder.iter_chunks(["id"]):
            v = chunk["id"]
            if v.dtype.kind != "U":
                ints.append(_sorted_unique(v))
                held += len(ints[-1])
            else:
                halves = hex_halves(v) if not strings else None
                if halves is None:
                    strings.append(_sorted_unique(v))
                    held += len(strings[-1])
                else:
                    hi, lo = _unique_pairs(*halves)
                    his.append(hi)
                    los.append(lo)
                    held += len(lo)
            if held > 2 * merged + MERGE_MIN:
                merge()
        if ints:
            return cls(_sorted_unique(np.concatenate(ints)))
        if los and strings:  # some ids are not uids: key every id by its string
            strings += [uids_from_halves(h, lo) for h, lo in zip(his, los)]
        if strings:
            return cls(_sorted_unique(np.concatenate(strings)))
        if los:
            hi, lo = _unique_pairs(np.concatenate(his), np.concatenate(los))
            ids = uids_from_halves(hi, lo)
            if (lo[1:] != lo[:-1]).all():  # the low halves alone tell the uids apart
                return cls(ids, lo, hi)
            return cls(_sorted_unique(ids))
        return cls(np.zeros(0, dtype="<U1" if recorder.id_kind == "str" else np.int64))

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` [M]: int64 [M], -1 where absent."""
        if len(self.ids) == 0:
            return np.full(len(ids), -1, np.int64)
        if self._lo is not None:
            halves = hex_halves(ids)
            if halves is None:
                return self._slow(ids)  # some queries are not uids (they match nothing, the others may)
            pos = _lookup(self._lo, halves[1])
            ok = pos >= 0
            ok[ok] = self._hi[pos[ok]] == halves[0][ok]  # the low half matched: confirm the high half
            return np.where(ok, pos, -1)
        return _lookup(self.ids, ids)

    def _slow(self, ids: np.ndarray) -> np.ndarray:
        """Positions by comparing strings (``ids`` here are in low-half order, not sorted)."""
        order = np.argsort(self.ids)
        pos = _lookup(self.ids[order], ids)
        return np.where(pos >= 0, order[np.maximum(pos, 0)], -1)


def _unique_pairs(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique (hi, lo) pairs, sorted by lo then hi."""
    order = np.lexsort((hi, lo))
    hi, lo = hi[order], lo[order]
    first = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])] if len(lo) else np.zeros(0, bool)
    return hi[first], lo[first]


def _lookup(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Positions of ``queries`` in the sorted unique array ``sorted_keys`` (-1 where absent); the queries are
    sorted first, which makes the binary searches cache-friendly."""
    if (sorted_keys.dtype.kind == "U") != (queries.dtype.kind == "U"):
        return np.full(len(queries), -1, np.int64)
    order = np.argsort(queries, kind="stable")
    q = queries[order]
    pos = np.searchsorted(sorted_keys, q)
    pos_c = np.minimum(pos, len(sorted_keys) - 1)
    hit = sorted_keys[pos_c] == q
    out = np.empty(len(queries), np.int64)
    out[order] = np.where(hit, pos_c, -1)
    return out


def unique_ids(recorder) -> np.ndarray:
    """The unique ids of every record [U] (int64 or str), in the order of ``IdIndex.of_log``."""
    return IdIndex.of_log(recorder).ids


def index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` [M] in the sorted unique array ``sorted_ids`` [U]: int64 [M], -1 where absent."""
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, np.int64)
    return _lookup(sorted_ids, ids)


def target_ids(recorder, ids=None) -> tuple[IdIndex, np.ndarray]:
    """(the index of the log's unique ids, the position in ``ids`` of each of them).

    With ``ids`` (the samples a caller wants results for, e.g. a score table's id column, any order),
    every recorded id must be among them: the log and the table must describe the same samples; a
    ValueError names how many recorded ids the table lacks. Without ``ids``: the log's own ids (``index.ids``).
    """
    index = IdIndex.of_log(recorder)
    logged = index.ids
    if ids is None:
        return index, np.arange(len(logged))
    ids = check_ids(ids, "ids")
    if len(logged) and ((logged.dtype.kind == "U") != (ids.dtype.kind == "U")):
        raise ValueError(f"the dynamics record {'string' if logged.dtype.kind == 'U' else 'integer'} ids but the "
                         f"samples have {'string' if ids.dtype.kind == 'U' else 'integer'} ids; they cannot be the same run")
    pos = align(logged, ids, what="recorded ids", source="the given samples", allow_missing=True)
    missing = int((pos < 0).sum())
    if missing:
        raise ValueError(f"the dynamics record {missing} ids that the samples lack (e.g. {logged[pos < 0][:3].tolist()}); "
                         "they come from another run or data set: pass the matching dynamics and table")
    return index, pos


def per_sample(recorder, field: str, how: str = "mean", ids=None) -> np.ndarray:
    """One value per sample from the records of ``field``: float64 [N], NaN for samples never recorded.

    how : "mean", "last" (the record with the highest step), "sum", "count", "min" or "max".
    ids : the samples to report, in their order (default: the log's sorted unique ids, ``unique_ids``).
    """
    hows = ("mean", "last", "sum", "count", "min", "max")
    if how not in hows:
        raise ValueError(f"how must be one of {hows}, got {how!r}")
    if field not in recorder.fields:
        raise ValueError(f"no recorded field {field!r}; recorded: {list(recorder.fields)}")
    index, where = target_ids(recorder, ids)
    u = len(index)
    total = np.zeros(u)
    count = np.zeros(u)
    best = np.full(u, np.nan)
    best_step = np.full(u, -1, np.int64)
    for chunk in recorder.iter_chunks(["id", "step", field]):
        pos = index.positions(chunk["id"])
        v = chunk[field].astype(np.float64)
        ok = ~np.isnan(v)
        pos, v, step = pos[ok], v[ok], chunk["step"][ok]
        total += np.bincount(pos, v, u)
        count += np.bincount(pos, minlength=u)
        if how == "last":
            order = np.lexsort((step, pos))  # per position, the highest step last
            p_s, v_s, s_s = pos[order], v[order], step[order]
            last = np.r_[p_s[1:] != p_s[:-1], True] if len(p_s) else np.zeros(0, bool)
            p_l, v_l, s_l = p_s[last], v_s[last], s_s[last]
            newer = s_l >= best_step[p_l]
            best[p_l[newer]] = v_l[newer]
            best_step[p_l[newer]] = s_l[newer]
        elif how in ("min", "max"):
            fn = np.fmin if how == "min" else np.fmax
            red = np.full(u, np.inf if how == "min" else -np.inf)
            (np.minimum if how == "min" else np.maximum).at(red, pos, v)
            best = fn(best, np.where(np.isinf(red), np.nan, red))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"mean": total / count, "sum": np.where(count > 0, total, np.nan), "count": count,
               "last": best, "min": best, "max": best}[how]
    if ids is None:
        return out
    result = np.full(len(as_ids(ids)), 0.0 if how == "count" else np.nan)
    result[where] = out
    return result


def dense_by_epoch(recorder, fields, ids) -> dict[str, np.ndarray]:
    """{field: float32 [E, N]}: each sample's last record of each epoch (NaN where not seen), for the
    per-epoch dynamics scores (forgetting, AUM ...). ``ids`` [N] gives the columns' order. Dense: for
    data that fits in memory as E x N floats."""
    ids = check_ids(ids, "ids")
    fields = list(fields)
    unknown = set(fields) - set(recorder.fields)
    if unknown:
        raise ValueError(f"no recorded fields {sorted(unknown)}; recorded: {list(recorder.fields)}")
    index, where = target_ids(recorder, ids)
    epochs = -1
    for chunk in recorder.iter_chunks(["epoch"]):
        if len(chunk["epoch"]):
            epochs = max(epochs, int(chunk["epoch"].max()))
    e = epochs + 1
    out = {f: np.full((e, len(ids)), np.nan, np.float32) for f in fields}
    step_seen = np.full((e, len(ids)), -1, np.int64)
    for chunk in recorder.iter_chunks(["id", "step", "epoch", *fields]):
        col = where[index.positions(chunk["id"])]
        ep = chunk["epoch"].astype(np.int64)
        if (ep < 0).any():
            raise ValueError("some records carry no epoch (-1); per-epoch dynamics need the epoch of every record")
        order = np.lexsort((chunk["step"], col, ep))  # within (epoch, sample): last step last
        ep_s, col_s, st_s = ep[order], col[order], chunk["step"][order]
        last = np.r_[(ep_s[1:] != ep_s[:-1]) | (col_s[1:] != col_s[:-1]), True] if len(order) else np.zeros(0, bool)
        ep_l, col_l, st_l, idx = ep_s[last], col_s[last], st_s[last], order[last]
        newer = st_l >= step_seen[ep_l, col_l]
        step_seen[ep_l[newer], col_l[newer]] = st_l[newer]
        for f in fields:
            out[f][ep_l[newer], col_l[newer]] = chunk[f][idx[newer]]
    return out
