"""Mislabel detection by every method: precision, recall, F1 and AUROC of the flagged samples against
the corrupted ones, and the dataset-quality estimate against the truth, for symmetric and asymmetric
noise at several rates; mean and standard deviation over seeds.

Setting (keepset.evaluation.proxy): train / trusted / test split (0.6 / 0.15 / 0.25); a network trained
on the trusted split's clean labels is the reference; a fresh linear head on its frozen backbone's
features of the noisy train split is trained twice from one initialisation: with Grad-Mimic's Stage 1
re-weighting, recording every step's Mimic Score (the published pipeline: Stage 2 filters on the scores
of the re-weighted run), and with plain SGD, recording the training dynamics of the baselines (and the
Mimic Scores of that run, for the ``_sgd`` rows). cleanlab: 5-fold logistic regression on the same features.

How each method flags (AUROC is threshold-free and uses the suspicion score in brackets):
  stage2      Grad-Mimic Stage 2 on the re-weighted run: per-step threshold 1/B on the normed score +
              majority vote [fraction of steps voting drop]
  mimic       2-means on the mean Mimic Score of the re-weighted run, low cluster flagged [-mean mimic]
  stage2_sgd, mimic_sgd   the same on the Mimic Scores recorded during the plain-SGD run
  reference   the reference network's prediction differs from the label [its cross-entropy on the label];
              quality estimate: its agreement rate corrected for its error rate, measured on the held-out
              part of the trusted split (never on the test split); the one baseline that, like Grad-Mimic,
              uses the trusted clean data
  loss, el2n, grand, forgetting   2-means on the score, high cluster flagged [score]
  aum         AUM < 0 [-AUM]
  margin      last-epoch margin (assigned logit - largest other) < 0 [-margin]
  cleanlab    cleanlab.filter.find_label_issues flags [-self-confidence]
Quality estimate of every other method: the fraction of samples it does not flag.

  keepset bench detection                       # digits, a few minutes
  keepset bench detection --data fashion-mnist  # the real benchmark (MLP; --model cnn for the CNN)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from keepset._argtypes import fraction_open, int_at_least, positive_float, positive_int
from keepset.bench._script import script_main
from keepset.cli._common import add_quiet

METHODS = ("stage2", "mimic", "stage2_sgd", "mimic_sgd", "reference", "loss", "el2n", "grand", "aum", "forgetting",
           "margin", "cleanlab")
METRICS = ("precision", "recall", "f1", "auroc", "quality_est", "quality_err")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="data spec (digits, fashion-mnist, ...)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="reference network")
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="number of seeds (0, 1, ...); rerunning with more seeds adds them to finished results")
    p.add_argument("--kinds", nargs="+", default=["symmetric", "asymmetric"], choices=("symmetric", "asymmetric"),
                   help="label-noise kinds")
    p.add_argument("--rates", nargs="+", type=fraction_open, default=[0.2, 0.4, 0.6],
                   help="label-noise rates, each in [0, 1)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"detection methods, among: {', '.join(METHODS)} (default: all)")
    p.add_argument("--ref-epochs", type=positive_int, default=30, help="epochs of the reference on the trusted split")
    p.add_argument("--head-epochs", type=positive_int, default=10, help="epochs of the recorded linear head")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size of every training run")
    p.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate of the reference")
    p.add_argument("--head-lr", type=positive_float, default=None,
                   help="SGD learning rate of the linear head (default: 10 / mean ||h||^2 of the train features)")
    p.add_argument("--early-epochs", type=positive_int, default=2, help="EL2N / GraNd: mean over the first epochs")
    p.add_argument("--folds", type=int_at_least(2), default=5,
                   help="cleanlab: folds of the out-of-sample probabilities")
    p.add_argument("--out", default=None, help="output folder, resumed when it holds results of the same "
                                               "configuration (default: out/bench/detection-DATA-MODEL)")
    p.add_argument("--restart", action="store_true", help="discard results of another configuration")
    p.add_argument("--no-plots", action="store_true", help="write the tables only, no PNG plots")
    add_quiet(p, "no progress bar")
    p.add_argument("--device", default="cpu", help="where the networks train: cpu, cuda, cuda:N or mps")


def output_folder(args) -> Path:
    """The benchmark's folder (resumable: an existing one is reused), checked before any work."""
    from keepset._checks import check_installed
    from keepset.cli._common import check_device
    from keepset.io import check_output_dir

    check_device(args.device)
    if not args.no_plots:
        check_installed("matplotlib", "the benchmark's plots (or pass --no-plots)", "plots")
    if "cleanlab" in args.methods:
        check_installed("cleanlab", "the cleanlab peer (or leave it out of --methods)", "peers")
    if args.early_epochs > args.head_epochs:
        raise ValueError(f"--early-epochs {args.early_epochs} exceeds --head-epochs {args.head_epochs}")
    out = Path(args.out or f"out/bench/detection-{args.data.replace(':', '_').replace('/', '_')}-{args.model}")
    return check_output_dir(out, overwrite=True)


def _config(args) -> dict:
    keys = ("data", "model", "kinds", "rates", "methods", "ref_epochs", "head_epochs", "batch_size", "lr",
            "head_lr", "early_epochs", "folds")
    return {k: getattr(args, k) for k in keys}


def detect(run, methods, *, early_epochs: int, folds: int, reference, seed: int) -> dict[str, dict]:
    """Flags and suspicion scores of every method on one proxy run (``reference``: the
    ``keepset.evaluation.proxy.Reference`` it was recorded against); returns {method: metrics}."""
    from keepset.evaluation.flagging import two_means_flags
    from keepset.evaluation.metrics import auroc, detection_metrics
    from keepset.scoring.dynamics import dynamics_scores, last_value

    corrupted = run.corrupted
    values = run.dynamics_values()
    dyn = dynamics_scores(values, early_epochs)
    out: dict[str, dict] = {}
    for m in methods:
        t0 = time.perf_counter()
        own_quality = None  # a method's own quality estimate, when it has one other than the unflagged fraction
        rec = run.gradmimic if m in ("stage2", "mimic") else run.mimic
        if m in ("stage2", "stage2_sgd"):
            from keepset.selection.stage2 import stage2_votes

            _, yes, total = stage2_votes(rec, binarize="threshold", vote="majority", ids=run.ids)
            suspicion = 1.0 - yes / np.maximum(total, 1)
            flags = ~(yes / total >= 0.5)
        elif m in ("mimic", "mimic_sgd"):
            suspicion = -run.mean_mimic(rec)
            flags = two_means_flags(suspicion)
        elif m == "reference":
            from keepset.scoring.reference_agreement import (quality_from_agreement, reference_disagrees,
                                                             reference_label_loss)

            logits = reference.train_logits()
            suspicion = reference_label_loss(logits, run.labels)
            flags = reference_disagrees(logits, run.labels)
            own_quality = quality_from_agreement(1.0 - float(flags.mean()), reference.holdout_accuracy,
                                                 logits.shape[1])
        elif m in ("loss", "el2n", "grand", "forgetting"):
            suspicion = dyn[m]
            flags = two_means_flags(suspicion)
        elif m == "aum":
            suspicion = -dyn["aum"]
            flags = dyn["aum"] < 0
        elif m == "margin":
            last = last_value(values["margin"])
            suspicion, flags = -last, last < 0
        elif m == "cleanlab":
            from keepset.scoring.peers import cleanlab_label_issues, out_of_sample_probs

            probs = out_of_sample_probs(reference.train_features, run.labels, n_folds=folds, seed=seed)
            flags, quality = cleanlab_label_issues(run.labels, probs)
            suspicion = -quality
        else:
            raise ValueError(f"unknown detection method {m!r}; choose from {METHODS}")
        res = detection_metrics(corrupted, np.asarray(flags, dtype=bool))
        res["auroc"] = auroc(corrupted, suspicion)
        res["quality_est"] = 1.0 - float(np.mean(flags)) if own_quality is None else own_quality
        res["quality_err"] = abs(res["quality_est"] - (1.0 - float(corrupted.mean())))
        res["seconds"] = time.perf_counter() - t0
        out[m] = res
    return out


def run(args) -> int:
    from keepset._progress import progress_bar
    from keepset.data import load_spec
    from keepset.evaluation.proxy import make_split, noisy_labels, proxy_run, train_reference
    from keepset.evaluation.store import ResultStore, cell_key

    out = output_folder(args)
    samples = load_spec(args.data)
    store = ResultStore(out / "results.json", _config(args), restart=args.restart)
    cells = [(s, k, r) for s in range(args.seeds) for k in args.kinds for r in args.rates]
    todo = [c for c in cells if not store.done(cell_key(seed=c[0], kind=c[1], rate=c[2]))]
    print(f"detection on {args.data} ({len(samples)} samples, {args.model}): {len(cells)} cells, "
          f"{len(cells) - len(todo)} already done -> {out}", file=sys.stderr)
    refs: dict = {}
    bar = progress_bar(total=len(cells), initial=len(cells) - len(todo), desc="detection cells",
                       enabled=not args.quiet)
    for seed, kind, rate in todo:
        split = make_split(samples.labels, seed)
        if seed not in refs:
            refs.clear()
            refs[seed] = train_reference(samples, split, args.model, epochs=args.ref_epochs,
                                         batch_size=args.batch_size, lr=args.lr, seed=seed,
                                         device=args.device)
        ref = refs[seed]
        labels, corrupted = noisy_labels(samples, split, kind, rate, seed)
        t0 = time.perf_counter()
        prun = proxy_run(ref, labels, corrupted, samples.labels[split.test], samples.num_classes,
                         epochs=args.head_epochs, batch_size=args.batch_size, lr=args.head_lr, seed=seed,
                         gradmimic=bool({"stage2", "mimic"} & set(args.methods)), device=args.device)
        proxy_s = time.perf_counter() - t0
        methods = detect(prun, args.methods, early_epochs=args.early_epochs, folds=args.folds,
                         reference=ref, seed=seed)
        store.put(cell_key(seed=seed, kind=kind, rate=rate),
                  {"seed": seed, "kind": kind, "rate": rate, "true_quality": 1.0 - float(corrupted.mean()),
                   "reference_accuracy": ref.test_accuracy, "reference_holdout_accuracy": ref.holdout_accuracy,
                   "head_accuracy": prun.head_test_accuracy,
                   "head_lr": prun.head_lr, "gradmimic_head_accuracy": prun.gradmimic_test_accuracy,
                   "proxy_seconds": proxy_s, "methods": methods})
        bar.update(1)
    bar.close()
    write_reports(store, out, plots=not args.no_plots)
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0


def records(store) -> list[dict]:
    """Flat records {seed, kind, rate, method, metrics...} from the stored cells."""
    rows = []
    for cell in store.cells.values():
        for m, res in cell["methods"].items():
            rows.append({"seed": cell["seed"], "kind": cell["kind"], "rate": cell["rate"], "method": m,
                         "true_quality": cell["true_quality"], **res})
    return rows


def write_reports(store, out: Path, plots: bool = True) -> None:
    from keepset.evaluation.report import fmt, group, markdown_table
    from keepset.io.atomic import write_text_atomic

    cfg = store.config
    recs = records(store)
    agg = group(recs, ("kind", "rate", "method"), METRICS + ("true_quality",))
    seeds = sorted({c["seed"] for c in store.cells.values()})
    ref_acc = [c["reference_accuracy"] for c in store.cells.values()]
    head_acc = [c["head_accuracy"] for c in store.cells.values()]
    gm_acc = [c.get("gradmimic_head_accuracy") for c in store.cells.values()]
    lrs = [c["head_lr"] for c in store.cells.values() if "head_lr" in c]
    if cfg.get("head_lr") is not None:
        step = f"head SGD step {cfg['head_lr']:g}"
    else:
        step = "head SGD step 10 / mean ||h||^2" + (f" ({min(lrs):.3g}-{max(lrs):.3g})" if lrs else "")
    from keepset.evaluation.report import mean_std

    text = [f"# Mislabel detection: {cfg['data']}, reference {cfg['model']}\n",
            f"Seeds: {seeds}; reference epochs {cfg['ref_epochs']}, linear head epochs {cfg['head_epochs']}, "
            f"batch {cfg['batch_size']}, {step}. Reference test accuracy (trusted split only): {fmt(mean_std(ref_acc))}; "
            f"head test accuracy, plain SGD: {fmt(mean_std(head_acc))}, Grad-Mimic: {fmt(mean_std(gm_acc))}. "
            "Values: mean ± std over seeds.\n",
            "## AUROC (threshold-free)\n"]
    settings = sorted({(k[0], k[1]) for k in agg}, key=lambda s: (s[0] != "symmetric", s[1]))
    methods = [m for m in METHODS if any(k[2] == m for k in agg)]
    header = ["method"] + [f"{k[:4]} {r:g}" for k, r in settings]
    text.append(markdown_table(header, [[m] + [fmt(agg[(k, r, m)]["auroc"]) if (k, r, m) in agg else "–"
                                               for k, r in settings] for m in methods]))
    text.append("\n## F1 of the flags\n")
    text.append(markdown_table(header, [[m] + [fmt(agg[(k, r, m)]["f1"]) if (k, r, m) in agg else "–"
                                               for k, r in settings] for m in methods]))
    text.append("\n## All metrics\n")
    rows = []
    for k, r in settings:
        for m in methods:
            a = agg.get((k, r, m))
            if a is None:
                continue
            rows.append([k, f"{r:g}", m, fmt(a["precision"]), fmt(a["recall"]), fmt(a["f1"]), fmt(a["auroc"]),
                         fmt(a["quality_est"]), fmt(a["true_quality"]), fmt(a["quality_err"])])
    text.append(markdown_table(["noise", "rate", "method", "precision", "recall", "F1", "AUROC",
                                "quality est.", "true quality", "quality error"], rows))
    write_text_atomic(out / "results.md", "\n".join(text), overwrite=True)
    if plots and recs:
        _plots(agg, settings, methods, out)


def _plots(agg, settings, methods, out: Path) -> None:
    """auroc_vs_rate.png: one dot per measured (rate, method), methods side by side within a rate, no line
    between rates (only the listed rates were measured); precision_recall.png: one panel per setting with
    iso-F1 curves. Every method keeps its colour and marker (by its place in METHODS) in every panel; the
    legends sit outside the axes."""
    from keepset.evaluation.plots import (dodge, handles_for, iso_f1, iso_f1_handle, legend_outside, method_styles,
                                          pyplot)
    from keepset.evaluation.report import save_figure

    plt = pyplot()
    styles = method_styles(METHODS)
    kinds = sorted({k for k, _ in settings}, key=lambda k: k != "symmetric")
    offsets = dict(zip(methods, dodge(len(methods), 0.75)))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.8 * len(kinds) + 1.6, 4.2), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, kind in zip(axes[0], kinds):
        rates = sorted(r for k, r in settings if k == kind)
        for i, r in enumerate(rates):
            for m in methods:
                a = agg.get((kind, r, m))
                if a is None or a["auroc"][2] == 0:
                    continue
                ax.errorbar(i + offsets[m], a["auroc"][0], yerr=a["auroc"][1], linestyle="none", capsize=2,
                            markersize=7, markeredgecolor="white", markeredgewidth=0.4, **styles[m])
        for i in range(1, len(rates)):
            ax.axvline(i - 0.5, color="0.85", lw=0.8)
        ax.axhline(0.5, color="0.4", lw=0.8, ls="--")
        ax.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
        ax.set_xlim(-0.5, len(rates) - 0.5)
        ax.set(title=f"{kind} noise", xlabel="noise rate (measured rates only)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("AUROC (dashed: chance)")
    legend_outside(fig, *handles_for(styles, methods), title="method")
    save_figure(fig, out / "auroc_vs_rate.png")

    ncols = max(len([r for k, r in settings if k == kind]) for kind in kinds)
    fig, axes = plt.subplots(len(kinds), ncols, figsize=(3.3 * ncols + 1.6, 3.3 * len(kinds)), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    for i, kind in enumerate(kinds):
        rates = sorted(r for k, r in settings if k == kind)
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(rates):
                ax.set_visible(False)
                continue
            iso_f1(ax)
            for m in methods:
                a = agg.get((kind, rates[j], m))
                if a is not None and a["recall"][2] and a["precision"][2]:
                    ax.errorbar(a["recall"][0], a["precision"][0], xerr=a["recall"][1], yerr=a["precision"][1],
                                linestyle="none", capsize=2, markersize=7, markeredgecolor="white",
                                markeredgewidth=0.5, **styles[m])
            ax.set(title=f"{kind} noise {rates[j]:g}", xlim=(0, 1.02), ylim=(0, 1.02))
            ax.set_aspect("equal")
            ax.grid(alpha=0.25)
            if i == len(kinds) - 1:
                ax.set_xlabel("recall")
            if j == 0:
                ax.set_ylabel("precision")
    handles, labels = handles_for(styles, methods)
    h, lab = iso_f1_handle()
    legend_outside(fig, handles + [h], labels + [lab], title="method")
    save_figure(fig, out / "precision_recall.png")


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
