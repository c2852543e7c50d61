"""Per-sample aggregates of a ``DynamicsRecorder`` log, streamed chunk by chunk (bounded memory).

Ids are mapped to dense positions through a sorted array of the log's unique ids (hash lookups for
string ids, binary search for integers), then every aggregate is a ``np.bincount`` over positions.
"""

from __future__ import annotations

import numpy as np

from keepset._ids import align, as_ids, check_ids


def unique_ids(recorder) -> np.ndarray:
    """Sorted unique ids of every record: [U] int64 or str."""
    parts = []
    for chunk in recorder.iter_chunks(["id"]):
        parts.append(_unique(chunk["id"]))
    if not parts:
        return np.zeros(0, dtype="<U1" if recorder.id_kind == "str" else np.int64)
    return np.unique(np.concatenate(parts))


def _unique(ids: np.ndarray) -> np.ndarray:
    if ids.dtype.kind == "U":  # hashing beats sorting long strings
        import pyarrow as pa
        import pyarrow.compute as pc

        return np.asarray(pc.unique(pa.array(ids)).to_numpy(zero_copy_only=False)).astype(str)
    return np.unique(ids)


def index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` [M] in the sorted unique array ``sorted_ids`` [U]: int64 [M], -1 where absent."""
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, np.int64)
    if ids.dtype.kind == "U":
        import pyarrow as pa
        import pyarrow.compute as pc

        pos = pc.index_in(pa.array(ids), value_set=pa.array(sorted_ids))
        return np.asarray(pos.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    pos = np.searchsorted(sorted_ids, ids)
    pos_c = np.minimum(pos, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos_c] == ids, pos_c, -1).astype(np.int64)


def target_ids(recorder, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids of the log, positions in ``ids`` of each of them).

    With ``ids`` (the samples a caller wants results for, e.g. a score table's id column, any order),
    every recorded id must be among them: the log and the table must describe the same samples; a
    ValueError names how many recorded ids the table lacks. Without ``ids``: the log's own ids, in sorted order.
    """
    logged = unique_ids(recorder)
    if ids is None:
        return logged, np.arange(len(logged))
    ids = check_ids(ids, "ids")
    if len(logged) and ((logged.dtype.kind == "U") != (ids.dtype.kind == "U")):
        raise ValueError(f"the dynamics record {'string' if logged.dtype.kind == 'U' else 'integer'} ids but the "
                         f"samples have {'string' if ids.dtype.kind == 'U' else 'integer'} ids; they cannot be the same run")
    pos = align(logged, ids, what="recorded ids", source="the given samples", allow_missing=True)
    missing = int((pos < 0).sum())
    if missing:
        raise ValueError(f"the dynamics record {missing} ids that the samples lack (e.g. {logged[pos < 0][:3].tolist()}); "
                         "they come from another run or data set: pass the matching dynamics and table")
    return logged, pos


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
    logged, where = target_ids(recorder, ids)
    u = len(logged)
    total = np.zeros(u)
    count = np.zeros(u)
    best = np.full(u, np.nan)
    best_step = np.full(u, -1, np.int64)
    for chunk in recorder.iter_chunks(["id", "step", field]):
        pos = index_of(logged, chunk["id"])
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
    logged, where = target_ids(recorder, ids)
    epochs = -1
    for chunk in recorder.iter_chunks(["epoch"]):
        if len(chunk["epoch"]):
            epochs = max(epochs, int(chunk["epoch"].max()))
    e = epochs + 1
    out = {f: np.full((e, len(ids)), np.nan, np.float32) for f in fields}
    step_seen = np.full((e, len(ids)), -1, np.int64)
    for chunk in recorder.iter_chunks(["id", "step", "epoch", *fields]):
        col = where[index_of(logged, chunk["id"])]
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
