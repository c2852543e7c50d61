"""Grad-Mimic Stage 2: aggregate per-step keep/drop decisions into one filter; estimate dataset quality."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from keepset.selection.binarize import BINARIZE_METHODS, binarize_records
from keepset.selection.topk import select_top

VOTES = ("majority", "weighted")


def _row_weights(n_rows: int, vote: str, weights) -> np.ndarray:
    if vote not in VOTES:
        raise ValueError(f"unknown vote {vote!r}; choose one of {VOTES}")
    if vote == "majority":
        return np.ones(n_rows)
    w = np.arange(1, n_rows + 1, dtype=np.float64) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (n_rows,) or (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"weights must be {n_rows} finite non-negative numbers, one per row")
    return w


def _decide(yes: np.ndarray, total: np.ndarray, unseen: str) -> np.ndarray:
    never = total == 0
    if never.any():
        if unseen == "error":
            raise ValueError(f"{int(never.sum())} samples were never scored; pass unseen='keep' or 'drop' "
                             "(--unseen on the CLI) to decide for them, or record more steps")
        if unseen not in ("keep", "drop"):
            raise ValueError(f"unseen must be 'error', 'keep' or 'drop', got {unseen!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = yes / total >= 0.5
    keep[never] = unseen == "keep"
    return keep


def aggregate_votes(decisions, *, vote: str = "majority", weights=None, unseen: str = "error") -> np.ndarray:
    """One keep mask from per-step decisions.

    decisions : int8 [E, N] (1 keep, 0 drop, -1 not seen), e.g. from ``binarize_steps``.
    vote : "majority" (keep when at least half of a sample's visits say keep) or "weighted"
        (the same with per-row ``weights`` [E]; default weights grow linearly, 1..E, so later,
        better-informed steps count more).
    unseen : what to do with samples never seen: "error" (default), "keep" or "drop".

    Returns bool [N].
    """
    d = np.asarray(decisions)
    if d.ndim != 2:
        raise ValueError(f"decisions must be [E, N], got shape {d.shape}")
    if d.dtype != np.bool_:
        if d.dtype.kind not in "iuf":
            raise ValueError(f"decisions must hold 1 (keep), 0 (drop) or -1 (not seen), got dtype {d.dtype}")
        bad = (d != 1) & (d != 0) & (d != -1)  # NaN is bad too
        if bad.any():
            shown = [v if v == v else "NaN" for v in d[bad][:3].tolist()]
            raise ValueError(f"decisions must hold only 1 (keep), 0 (drop) or -1 (not seen); found {int(bad.sum())} "
                             f"other values (e.g. {shown}), first at row, column {np.argwhere(bad)[0].tolist()}")
    w = _row_weights(d.shape[0], vote, weights)
    return _decide((w[:, None] * (d == 1)).sum(0), (w[:, None] * (d >= 0)).sum(0), unseen)


def estimate_quality(keep) -> float:
    """Estimated dataset quality: the fraction of samples the filter keeps."""
    keep = np.asarray(keep)
    if keep.dtype != np.bool_ or keep.ndim != 1 or keep.size == 0:
        raise ValueError("keep must be a non-empty 1-D boolean mask")
    return float(keep.mean())


def step_decisions(recorder, *, binarize: str = "threshold", field: str | None = None,
                   rows: int = 1 << 18) -> Iterator[dict[str, np.ndarray]]:
    """Stream the per-visit decisions of a recorded log, complete steps at a time.

    Yields {"id", "step", "epoch", "keep"} chunks (keep: bool, the step's binarisation of ``field``;
    default ``mimic_normed`` for ``threshold``, ``mimic`` otherwise). Records must be in step order, as a
    ``DynamicsRecorder`` writes them; memory is bounded by ``rows`` plus one step.
    """
    if binarize not in BINARIZE_METHODS:
        raise ValueError(f"unknown binarize method {binarize!r}; choose one of {BINARIZE_METHODS}")
    if field is None:
        field = "mimic_normed" if binarize == "threshold" else "mimic"
    if field not in recorder.fields:
        raise ValueError(f"the recorded dynamics have no field {field!r} (have {list(recorder.fields)})")
    for chunk in _complete_steps(recorder, ["id", "step", "epoch", field], rows):
        yield _decide_chunk(chunk, field, binarize)


def _decide_chunk(chunk: dict, field: str, binarize: str) -> dict[str, np.ndarray]:
    keep = binarize_records(chunk[field], chunk["step"], method=binarize)
    return {"id": chunk["id"], "step": chunk["step"], "epoch": chunk["epoch"], "keep": keep}


def stage2_votes(recorder, *, binarize: str = "threshold", vote: str = "majority", field: str | None = None,
                 ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep votes per sample, streamed: (ids [N], yes [N], total [N]) with ``yes`` / ``total`` the (weighted)
    number of visits voting keep / all visits; a sample never recorded has total 0.

    vote : "majority" (every visit counts 1) or "weighted" (a visit in epoch e counts e + 1, so later,
        better-informed steps count more). ids : the samples to report, in their order (any order; default
        the log's sorted unique ids); recorded ids missing from ``ids`` raise a ValueError naming how many.
    """
    from keepset.recorder import target_ids

    if vote not in VOTES:
        raise ValueError(f"unknown vote {vote!r}; choose one of {VOTES}")
    index, where = target_ids(recorder, ids)
    u = len(index)
    yes = np.zeros(u)
    total = np.zeros(u)
    for d in step_decisions(recorder, binarize=binarize, field=field):
        pos = index.positions(d["id"])
        w = np.ones(len(pos)) if vote == "majority" else np.maximum(d["epoch"], 0).astype(np.float64) + 1.0
        yes += np.bincount(pos, w * d["keep"], u)
        total += np.bincount(pos, w, u)
    if ids is None:
        return index.ids, yes, total
    from keepset._ids import check_ids

    out_ids = check_ids(ids, "ids")
    out_yes, out_total = np.zeros(len(out_ids)), np.zeros(len(out_ids))
    out_yes[where], out_total[where] = yes, total
    return out_ids, out_yes, out_total


def stage2_filter(recorder, *, binarize: str = "threshold", vote: str = "majority", field: str | None = None,
                  unseen: str = "error", ids=None) -> np.ndarray:
    """The Stage 2 keep mask from recorded dynamics (a ``DynamicsRecorder`` or its folder), out of core.

    Every step is binarised (``threshold``: the normed score against 1/B; ``kmeans`` / ``gmm``: the raw
    score, or ``field``), and a sample is kept when at least half of its (weighted) visits vote keep.
    ids : the samples to decide for, in the caller's order (e.g. a score table's id column); default the
        log's sorted unique ids (``keepset.recorder.unique_ids``).
    unseen : samples of ``ids`` never recorded: "error" (default, naming how many), "keep" or "drop".
    Returns bool [N], aligned with ``ids``.
    """
    if isinstance(recorder, (str, os.PathLike)):
        from keepset.recorder import DynamicsRecorder

        recorder = DynamicsRecorder.open(recorder)
    _, yes, total = stage2_votes(recorder, binarize=binarize, vote=vote, field=field, ids=ids)
    return _decide(yes, total, unseen)


def calibrated_stage2(recorder, holdout_recorder, *, ids=None, reference_quality: float | None = None,
                      method: str = "count", false_discard_rate: float = 0.01, draws: int = 8, seed: int = 0,
                      unseen: str = "error", rows: int = 1 << 18):
    """The calibrated Stage 2 (``keepset.selection.calibrated``) from a run's recorded dynamics, out of core.

    recorder : the training log (field ``mimic``); holdout_recorder : the held-out trusted samples' log (their
    ``mimic`` at every step, ``GradMimic(holdout=...)``). The held-out log (``per_step`` records a step) is read
    whole; the training log streams one chunk of complete steps at a time. ids : the samples to decide for, in
    the caller's order (default the log's unique ids); recorded ids missing from them raise ValueError.
    reference_quality : the reference's corrected agreement with the labels, averaged into the clean-fraction
    estimate (None: Storey's estimate alone).
    Returns a ``CalibratedResult`` whose arrays follow ``ids`` (``quality``: the estimated clean fraction).
    """
    from dataclasses import replace

    from keepset.recorder import IdIndex, target_ids
    from keepset.selection.calibrated import CalibratedStage2

    if isinstance(recorder, (str, os.PathLike)):
        from keepset.recorder import DynamicsRecorder

        recorder = DynamicsRecorder.open(recorder)
    index, where = target_ids(recorder, ids)
    hold = holdout_recorder.read(["id", "step", "epoch", "mimic"])
    if not len(hold["id"]):
        raise ValueError("the held-out samples were never scored: record them with GradMimic(holdout=...)")
    h_index = IdIndex.of_log(holdout_recorder)
    n = len(index)
    h_pos = h_index.positions(hold["id"]) + n  # dense integer ids, disjoint from the training ones
    order = np.argsort(hold["step"], kind="stable")
    h_step, h_epoch, h_score, h_pos = hold["step"][order], hold["epoch"][order], hold["mimic"][order], h_pos[order]
    acc = CalibratedStage2(np.arange(n), np.arange(n, n + len(h_index)), draws=draws, seed=seed)
    for chunk in _complete_steps(recorder, ["id", "step", "mimic"], rows):
        lo, hi = np.searchsorted(h_step, [chunk["step"][0], chunk["step"][-1] + 1])
        acc.add_steps(index.positions(chunk["id"]), chunk["step"], chunk["mimic"], h_pos[lo:hi],
                      np.maximum(h_epoch[lo:hi], 0), h_step[lo:hi], h_score[lo:hi])
    res = acc.result(method=method, false_discard_rate=false_discard_rate, reference_quality=reference_quality,
                     unseen=unseen)
    if ids is None:
        return replace(res, ids=index.ids)
    from keepset._ids import check_ids

    out_ids = check_ids(ids, "ids")
    keep = np.full(len(out_ids), unseen == "keep")
    pvalues = np.ones(len(out_ids))
    statistic = np.full(len(out_ids), np.nan)
    keep[where], pvalues[where], statistic[where] = res.keep, res.pvalues, res.statistic
    if unseen == "error" and len(out_ids) > n:
        raise ValueError(f"{len(out_ids) - n} samples were never scored; pass unseen='keep' or 'drop' "
                         "(--unseen on the CLI) to decide for them, or record more steps")
    return replace(res, ids=out_ids, keep=keep, pvalues=pvalues, statistic=statistic)


def _complete_steps(recorder, cols: list, rows: int):
    """The log's records in chunks of complete steps (a step never split across chunks), in step order."""
    carry = None
    last = -1
    for chunk in recorder.iter_chunks(cols, rows=rows):
        if not len(chunk["step"]):
            continue
        if chunk["step"][0] < last or (np.diff(chunk["step"]) < 0).any():
            raise ValueError("the recorded steps are out of order; Stage 2 reads logs written step by step")
        last = int(chunk["step"][-1])
        if carry is not None:
            chunk = {c: np.concatenate([carry[c], chunk[c]]) for c in cols}
        done = chunk["step"] != last
        carry = {c: chunk[c][~done] for c in cols}
        if done.any():
            yield {c: chunk[c][done] for c in cols}
    if carry is not None and len(carry["step"]):
        yield carry


def rank_by_dynamics(recorder, ratio: float, *, how: str = "mean", field: str = "mimic", ids=None) -> np.ndarray:
    """Keep the top ``ratio`` of samples ranked by their last or mean recorded ``field`` (aligned with ``ids``)."""
    from keepset.recorder import per_sample

    if how not in ("last", "mean"):
        raise ValueError(f"how must be 'last' or 'mean', got {how!r}")
    scores = per_sample(recorder, field, how, ids=ids)
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} samples have no recorded {field!r}; record more steps")
    return select_top(scores, ratio)
