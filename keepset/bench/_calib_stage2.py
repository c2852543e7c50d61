"""Stage 2 rules applied to the saved head records of ``python -m keepset.bench.calibration heads``.

Every rule sees only the training records (ids, steps, scores, batch sizes) and the holdout records; the
corrupted mask and the true quality are read afterwards, for the metrics. The ``reference`` row (the
reference's disagreement with the labels, quality corrected with its accuracy on the holdout part) reads
the cached features and the holdout accuracy, never the test split.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from keepset.bench.calibration import _cells, _tag


def _records(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        r = {k: z[k] for k in z.files}
    s, m = r["cal_pos"].shape
    epochs = int(r["epoch"].max()) + 1
    return {
        "step": r["step"].astype(np.int64), "pos": r["pos"].astype(np.int64), "mimic": r["mimic"].astype(np.float64),
        "normed1": r["normed1"].astype(np.float64), "batch_sizes": r["batch_sizes"], "n": len(r["labels"]),
        "h_step": np.repeat(np.arange(s), m), "h_pos": r["cal_pos"].ravel().astype(np.int64),
        "h_epoch": np.repeat(np.arange(s), m) // (s // epochs), "h_score": r["cal_score"].ravel().astype(np.float64),
        "labels": r["labels"], "corrupted": r["corrupted"],
    }


def _flat_to_matrix(pos, step, values, n, steps_per_epoch):
    """[E, N] recorder-style arrays (NaN where not seen) for the paper's binarisers."""
    epoch = step // steps_per_epoch
    e = int(epoch.max()) + 1
    v = np.full((e, n), np.nan)
    st = np.full((e, n), -1, dtype=np.int64)
    v[epoch, pos] = values
    st[epoch, pos] = step
    return v, st


def rules(r: dict, *, q_ref: float | None = None,
          holdout_offset: int = 10 ** 9) -> dict[str, tuple[np.ndarray, float, np.ndarray]]:
    """{rule: (flags bool [N], quality estimate, suspicion float [N])} from one run's records (no labels read)."""
    from keepset.selection.binarize import binarize_steps
    from keepset.selection.calibrated import CalibratedStage2, clean_fraction, conformal_pvalues, decide
    from keepset.selection.stage2 import aggregate_votes

    n = r["n"]
    out = {}
    spe = int(np.ceil(len(r["batch_sizes"]) / (r["h_epoch"].max() + 1)))
    # the paper's binarisers, per step, majority vote (suspicion: fraction of visits voting drop)
    for name, field, method in (("paper_threshold", "normed1", "threshold"), ("paper_kmeans", "mimic", "kmeans"),
                                ("paper_gmm", "mimic", "gmm")):
        v, st = _flat_to_matrix(r["pos"], r["step"], r[field], n, spe)
        d = binarize_steps(v, st, method=method, batch_sizes=r["batch_sizes"])
        keep = aggregate_votes(d)
        susp = (d == 0).sum(0) / np.maximum((d >= 0).sum(0), 1)
        out[name] = (~keep, float(keep.mean()), susp)
    stats = {}
    for norm in ("step", "none"):
        acc = CalibratedStage2(np.arange(n), np.unique(r["h_pos"]) + holdout_offset, draws=8, seed=0)
        hold = (r["h_pos"] + holdout_offset, r["h_epoch"], r["h_step"], r["h_score"])
        if norm == "step":
            acc.add_steps(r["pos"], r["step"], r["mimic"], *hold)
        else:
            acc.add_train(r["pos"], r["mimic"])
            acc.add_holdout(*hold)
        _, mean, null = acc.statistics()
        stats[norm] = (mean, conformal_pvalues(mean, null))
    mean, p = stats["step"]
    susp = -mean
    for lam in (0.05, 0.1, 0.2, 0.5):
        for cap in (0.2, 1.0):
            keep, pi0 = decide(p, method="count", lam=lam, max_drop_pvalue=cap, tiebreak=mean)
            out[f"count_l{lam:g}" + ("" if cap == 0.2 else "_nocap")] = (~keep, pi0, susp)
    for a in (0.01, 0.02, 0.05):
        keep, _ = decide(p, method="alpha", false_discard_rate=a)
        out[f"alpha{a:g}"] = (~keep, float(keep.mean()), susp)
        out[f"alpha{a:g}_storey"] = (~keep, clean_fraction(p, lam=0.1), susp)
    for q in (0.05, 0.1, 0.2):
        keep, pi0 = decide(p, method="bh", false_discard_rate=q, tiebreak=mean)
        out[f"bh{q:g}"] = (~keep, float(keep.mean()), susp)
        out[f"bh{q:g}_storey"] = (~keep, pi0, susp)
    raw_mean, raw_p = stats["none"]
    keep, pi0 = decide(raw_p, method="count", lam=0.1, tiebreak=raw_mean)
    out["count_l0.1_raw"] = (~keep, pi0, -raw_mean)
    if q_ref is not None:  # drop the count the reference's corrected agreement implies (or the mean of both)
        order = np.lexsort((mean, p))
        keep = np.ones(n, dtype=bool)
        keep[order[:int(round(n * (1 - q_ref)))]] = False
        out["count_ref"] = (~keep, q_ref, susp)
        for lam in (0.1, 0.2):
            keep, pi0 = decide(p, method="count", lam=lam, reference_quality=q_ref, tiebreak=mean)
            out["count_avg" + ("" if lam == 0.1 else f"_l{lam:g}")] = (~keep, pi0, susp)
        keep, pi0 = decide(raw_p, method="count", lam=0.1, reference_quality=q_ref, tiebreak=raw_mean)
        out["count_avg_raw"] = (~keep, pi0, -raw_mean)
    out["_pvalues"] = p
    return out


def reference_row(feat, labels) -> tuple[np.ndarray, float, np.ndarray]:
    from keepset.scoring.reference_agreement import quality_from_agreement, reference_disagrees, reference_label_loss

    logits = feat.f_train.astype(np.float64) @ feat.ref_weight.T.astype(np.float64) + feat.ref_bias
    flags = reference_disagrees(logits, labels)
    q = quality_from_agreement(1.0 - float(flags.mean()), float(feat.ref_acc_cal), feat.num_classes)
    return flags, q, reference_label_loss(logits, labels)


def run_stage2(args) -> int:
    from keepset.bench._calib_features import load_features
    from keepset.evaluation.metrics import auroc, detection_metrics

    root = Path(args.root)
    out = root / "stage2.jsonl"
    done = set()
    if out.exists():
        done = {json.loads(line)["tag"] for line in out.read_text().splitlines() if line.strip()}
    heads = {}
    if (root / "heads.jsonl").exists():
        for line in (root / "heads.jsonl").read_text().splitlines():
            rec = json.loads(line)
            heads[rec["tag"]] = rec
    for seed, kind, rate in _cells(args):
        feat = None
        for v in args.variants:
            tag = _tag(args, seed, kind, rate, v)
            path = root / "runs" / f"{tag}.npz"
            if tag in done or not path.exists():
                continue
            t0 = time.perf_counter()
            r = _records(path)
            if feat is None:
                feat = load_features(args.data, args.model, seed, holdout=args.holdout, setting=args.setting)
            ref = reference_row(feat, r["labels"])
            res = rules(r, q_ref=ref[1])
            p = res.pop("_pvalues")
            res["reference"] = ref
            corrupted = r["corrupted"]  # read only now, for the metrics
            true_q = float(1.0 - corrupted.mean())
            metrics = {}
            for name, (flags, q, susp) in res.items():
                m = detection_metrics(np.asarray(flags, bool), corrupted)
                m["auroc"] = auroc(susp, corrupted) if corrupted.any() else float("nan")
                m.update(quality_est=q, quality_err=abs(q - true_q), kept=float(1.0 - np.mean(flags)))
                metrics[name] = m
            clean_p = p[~corrupted]
            rec = {"tag": tag, "data": args.data, "model": args.model, "setting": args.setting, "seed": seed,
                   "kind": kind, "rate": rate, "variant": v, "true_quality": true_q,
                   "accuracy": heads.get(tag, {}).get("accuracy"),
                   "clean_p_below": {str(a): float(np.mean(clean_p <= a)) for a in (0.01, 0.02, 0.05, 0.1)},
                   "metrics": metrics, "seconds": time.perf_counter() - t0}
            with open(out, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(f"{tag}: count_l0.1 F1 {metrics['count_l0.1']['f1']:.3f} q {metrics['count_l0.1']['quality_est']:.3f}"
                  f" (true {true_q:.3f}); paper F1 {metrics['paper_threshold']['f1']:.3f}", file=sys.stderr, flush=True)
    return 0
