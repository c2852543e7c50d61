"""Stage 2 calibration study (issue 13): a Stage 2 that is right at every noise level, 0 included, and a
Stage 1 that does not hurt clean data.

Setting: the benchmarks' linear probing (keepset.evaluation.proxy), except that the trusted split is split
again: ``1 - holdout`` of it trains the reference, ``holdout`` (default 0.2) is the calibration part that
neither the reference nor any head trains on. Features are cached per (data, model, seed) under
/tmp/keepset-calibration (keepset.bench._calib_features). A fresh linear head is trained on the noisy train
split's features with each Stage 1 weighting (keepset.bench._calib_head), recording every train sample's
Mimic Score at every step and the scores of 128 scheduled calibration samples per step (all of them when
fewer); the records are saved, and Stage 2 rules are applied to them afterwards.

Phases (each resumable; the test split is read only for the final metrics, never by a rule):

  python -m keepset.bench.calibration heads  --data digits --seeds 3          # train + record heads
  python -m keepset.bench.calibration stage2 --data digits --seeds 3          # every Stage 2 rule
  python -m keepset.bench.calibration report                                  # markdown tables
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from keepset.bench._script import script_main

ROOT = Path("/tmp/keepset-calibration")
KINDS = ("symmetric", "asymmetric")


def variants():
    from keepset.bench._calib_head import Weighting

    return {
        "sgd": Weighting("uniform"),
        "tau1": Weighting(),  # today's Grad-Mimic
        "tau3": Weighting(tau=3),
        "tau10": Weighting(tau=10),
        "mix0.5": Weighting(mix=0.5),
        "one1": Weighting("onesided", 1),
        "warm1": Weighting(start_epoch=1),
        "rel1": Weighting("relative", 1.0),  # scale-free: tau = std of the batch's scores
        "rel2": Weighting("relative", 2.0),
        "cos0.1": Weighting(tau=0.1, score="cos"),
        "gate": Weighting("gate", 0.5, q=0.1),
        "fdr": Weighting("fdr", window=20),
        "lfdr": Weighting("lfdr", window=20),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("phase", choices=("heads", "stage2", "report"))
    p.add_argument("--data", default="digits")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--setting", choices=("bench", "demo"), default="bench",
                   help="reference training: the benchmarks' (SGD, 30 epochs) or the demo's (AdamW)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.2, 0.4, 0.6])
    p.add_argument("--variants", nargs="+", default=["sgd", "tau1", "lfdr"],
                   help=f"Stage 1 weightings (heads phase); known: {', '.join(variants())}")
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of the trusted split held out")
    p.add_argument("--epochs", type=int, default=None, help="head epochs (default: bench 10, demo 20)")
    p.add_argument("--holdout-per-step", type=int, default=128,
                   help="holdout samples scored per step (all of them when fewer)")
    p.add_argument("--no-save", action="store_true", help="heads: keep only the accuracy, not the records")
    p.add_argument("--root", default=str(ROOT))


def _cells(args):
    for seed in [int(s) for s in args.seeds.split(",")]:
        for rate in args.rates:
            for kind in (args.kinds if rate > 0 else ["none"]):
                yield seed, kind, rate


def _tag(args, seed, kind, rate, variant) -> str:
    m = "" if args.holdout_per_step == 128 else f"-m{args.holdout_per_step}"
    return (f"{args.data.replace(':', '_')}-{args.model}-{args.setting}-h{args.holdout:g}{m}-s{seed}-{kind}-{rate:g}-"
            f"{variant}")


def noisy(y, kind, rate, k, seed):
    from keepset.data import add_label_noise

    if rate == 0:
        return y.copy(), np.zeros(len(y), dtype=bool)
    return add_label_noise(y, rate, kind, k, seed)


def run_heads(args) -> int:
    from keepset.bench._calib_features import load_features
    from keepset.bench._calib_head import train_head
    from keepset.training.step_size import probe_learning_rate

    root = Path(args.root)
    (root / "runs").mkdir(parents=True, exist_ok=True)
    summary = root / "heads.jsonl"
    done = set()
    if summary.exists():
        done = {json.loads(line)["tag"] for line in summary.read_text().splitlines() if line.strip()}
    epochs = args.epochs or (10 if args.setting == "bench" else 20)
    table = variants()
    unknown = [v for v in args.variants if v not in table]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(table)}")
    for seed, kind, rate in _cells(args):
        f = None
        for v in args.variants:
            tag = _tag(args, seed, kind, rate, v)
            if tag in done:
                continue
            if f is None:
                f = load_features(args.data, args.model, seed, holdout=args.holdout, setting=args.setting)
                labels, corrupted = noisy(f.y_train, kind, rate, f.num_classes, seed)
                lr = probe_learning_rate(f.f_train)
            t0 = time.perf_counter()
            run = train_head(f.f_train, labels, f.f_cal, f.y_cal, f.f_test, f.y_test, f.ref_weight, f.ref_bias,
                             weighting=table[v], epochs=epochs, lr=lr, seed=seed,
                             holdout_per_step=args.holdout_per_step)
            secs = time.perf_counter() - t0
            if not args.no_save:
                sched, cs = run.cal_scores
                np.savez(root / "runs" / f"{tag}.npz", step=run.step.astype(np.int32), pos=run.pos.astype(np.int32),
                         epoch=run.epoch.astype(np.int16), mimic=run.mimic.astype(np.float32),
                         normed1=run.normed1.astype(np.float32), weight=run.weight.astype(np.float32),
                         cal_pos=sched.astype(np.int32), cal_score=cs, labels=labels, corrupted=corrupted,
                         batch_sizes=run.batch_sizes)
            rec = {"tag": tag, "holdout_per_step": args.holdout_per_step, "data": args.data, "model": args.model, "setting": args.setting,
                   "holdout": args.holdout, "seed": seed, "kind": kind, "rate": rate, "variant": v,
                   "epochs": epochs, "accuracy": run.test_accuracy, "epoch_accuracy": run.epoch_accuracy,
                   "ess": run.ess, "true_quality": float(1 - corrupted.mean()), "seconds": secs,
                   "ref_acc_cal": f.ref_acc_cal, "ref_acc_test": f.ref_acc_test}
            with open(summary, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            print(f"{tag}: accuracy {run.test_accuracy:.4f} ess {run.ess:.1f} ({secs:.0f} s)", file=sys.stderr,
                  flush=True)
    return 0


def run(args) -> int:
    if args.phase == "heads":
        return run_heads(args)
    if args.phase == "stage2":
        from keepset.bench._calib_stage2 import run_stage2

        return run_stage2(args)
    from keepset.bench._calib_report import run_report

    return run_report(args)


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
