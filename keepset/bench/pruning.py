"""Train-on-subset accuracy: train a fresh network from scratch on the samples each method keeps, at
several keep ratios, with clean and with noisy (symmetric) training labels; test accuracy on the
clean test split, mean and standard deviation over seeds.

Budget: every run takes the same number of SGD steps, ``--epochs`` epochs over the FULL train split
(so a 10% subset is seen ~10x as often); the same seeded initial weights for every method.

Scores come from the shared proxy runs (keepset.evaluation.proxy: reference on the trusted split,
linear head on its frozen features of the train split) on the labels of the cell (clean or noisy): the
baselines' dynamics from a plain-SGD run, Grad-Mimic's scores from a run with Stage 1 re-weighting (the
published pipeline). Methods and what they keep:
  random      uniform random
  mimic       highest mean Mimic Score (Grad-Mimic run)
  mimic_balanced  highest mean Mimic Score inside every (given) class, class quotas kept
  stage2      Grad-Mimic Stage 2 filter at its OWN ratio (reported once per noise level, ratio "auto")
  stage2_sgd  the same filter on the Mimic Scores recorded during the plain-SGD run
  reference   lowest cross-entropy of the reference network on the given label (the labels it trusts most;
              the one baseline that, like Grad-Mimic, uses the trusted clean data)
  el2n        highest EL2N (hardest; Paul et al.)
  forgetting  most forgetting events (Toneva et al.)
  aum         highest AUM (cleanest by AUM)
  ccs         CCS on AUM (hardest = lowest AUM), hard cutoff --ccs-cutoff, 50 strata
  moderate    Moderate-DS on the reference backbone's features
  kcenter     k-center greedy on the reference backbone's features
  full        all training samples (ratio 1, reported once per noise level)

  keepset bench pruning                        # digits, a few minutes
  keepset bench pruning --data fashion-mnist   # the real benchmark (MLP; --model cnn for the CNN)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from keepset._argtypes import fraction_open, int_at_least, positive_float, positive_int, ratio
from keepset.bench._script import script_main
from keepset.cli._common import add_quiet

METHODS = ("random", "mimic", "mimic_balanced", "stage2", "stage2_sgd", "reference", "el2n", "forgetting", "aum", "ccs",
           "moderate", "kcenter")
#: methods that choose their own keep ratio (one run per noise level, ratio "auto")
OWN_RATIO = ("stage2", "stage2_sgd")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="data spec (digits, fashion-mnist, ...)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="network trained on each subset")
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="number of seeds (0, 1, ...); rerunning with more seeds adds them to finished results")
    p.add_argument("--ratios", nargs="+", type=ratio, default=[0.1, 0.3, 0.5, 0.7, 0.9],
                   help="fractions of the train split kept, each in (0, 1]")
    p.add_argument("--noise", nargs="+", type=fraction_open, default=[0.0, 0.4],
                   help="symmetric label-noise rates, each in [0, 1)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                   help=f"selection methods, among: {', '.join(METHODS)} (default: all)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="budget of every run, in epochs over the full train split (same step count for all) "
                        "(default: 20 on digits, 10 otherwise)")
    p.add_argument("--ref-epochs", type=positive_int, default=30, help="epochs of the reference on the trusted split")
    p.add_argument("--head-epochs", type=positive_int, default=10, help="epochs of the recorded proxy linear head")
    p.add_argument("--batch-size", type=positive_int, default=None, help="(default: 64 on digits, 128 otherwise)")
    p.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--head-lr", type=positive_float, default=None,
                   help="SGD learning rate of the linear head (default: 10 / mean ||h||^2 of the train features)")
    p.add_argument("--early-epochs", type=positive_int, default=2, help="EL2N: mean over the first proxy epochs")
    p.add_argument("--max-samples", type=int_at_least(2), default=None,
                   help="use a stratified subset of this many samples (seed 0) before splitting (default: all)")
    p.add_argument("--ccs-cutoff", type=fraction_open, default=0.1, help="CCS: fraction of hardest samples dropped")
    p.add_argument("--out", default=None, help="output folder, resumed when it holds results of the same "
                                               "configuration (default: out/bench/pruning-DATA-MODEL)")
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
    if args.early_epochs > args.head_epochs:
        raise ValueError(f"--early-epochs {args.early_epochs} exceeds --head-epochs {args.head_epochs}")
    out = Path(args.out or f"out/bench/pruning-{args.data.replace(':', '_').replace('/', '_')}-{args.model}")
    return check_output_dir(out, overwrite=True)


def _resolve_defaults(args) -> None:
    small = args.data == "digits"
    if args.epochs is None:
        args.epochs = 20 if small else 10
    if args.batch_size is None:
        args.batch_size = 64 if small else 128


def _config(args) -> dict:
    keys = ("data", "model", "ratios", "noise", "methods", "epochs", "ref_epochs", "head_epochs", "batch_size",
            "lr", "head_lr", "early_epochs", "ccs_cutoff", "max_samples")
    return {k: getattr(args, k) for k in keys}


def selection_seed(seed: int) -> int:
    """Seed of the randomised selectors, decorrelated from the label-noise seed: with the same seed,
    ``rng.choice`` in the noise and in random selection would draw the same samples (random
    selection would then keep exactly the corrupted ones)."""
    return int(np.random.SeedSequence([int(seed), 0x5E1EC7]).generate_state(1)[0])


def subsample(samples, max_samples: int | None):
    """A stratified subset of ``max_samples`` samples (seed 0), or ``samples`` itself."""
    if max_samples is None or max_samples >= len(samples):
        return samples
    from keepset.data import split_indices

    frac = max_samples / len(samples)
    if not 0 < frac < 1:
        raise ValueError(f"--max-samples must be a positive count, got {max_samples}")
    return samples.subset(split_indices(samples.labels, (frac, 1 - frac), seed=0)[0])


def select(method: str, ratio: float, ctx: dict, *, seed: int, ccs_cutoff: float) -> np.ndarray:
    """Keep mask [N_train] of ``method`` at ``ratio`` from the proxy context ``ctx``."""
    from keepset.selection.baselines import select_random
    from keepset.selection.ccs import ccs_select
    from keepset.selection.moderate import moderate_ds
    from keepset.selection.topk import n_to_keep, select_top

    n = len(ctx["labels"])
    if method == "random":
        return select_random(n, ratio, seed)
    if method == "mimic":
        return select_top(ctx["mimic"], ratio)
    if method == "mimic_balanced":
        from keepset.selection.baselines import select_class_balanced

        return select_class_balanced(ctx["mimic"], ctx["labels"], ratio)
    if method in ("el2n", "forgetting", "aum"):
        return select_top(ctx["scores"][method], ratio)
    if method == "reference":
        return select_top(-ctx["reference_loss"], ratio)
    if method == "ccs":
        return ccs_select(ctx["scores"]["aum"], ratio, hard_cutoff=ccs_cutoff, hardest="low", seed=seed)
    if method == "moderate":
        return moderate_ds(ctx["features"], ctx["labels"], ratio)
    if method == "kcenter":
        mask = np.zeros(n, dtype=bool)
        mask[ctx["kcenter_order"][:n_to_keep(n, ratio)]] = True
        return mask
    raise ValueError(f"unknown pruning method {method!r}; choose from {METHODS}")


def train_subset(samples, split, labels, mask, args, seed: int) -> dict:
    """Train a fresh seeded network on the kept samples with the fixed step budget; test accuracy."""
    import torch

    from keepset.models import model_for_inputs
    from keepset.training import accuracy, fit

    n_full = len(split.train)
    steps_full = args.epochs * -(-n_full // args.batch_size)
    pos = split.train[mask]
    m = len(pos)
    per_epoch = -(-m // args.batch_size)
    epochs = max(1, int(round(steps_full / per_epoch)))
    x = samples.get_inputs(pos)
    torch.manual_seed(seed)
    net = model_for_inputs(args.model, tuple(x.shape[1:]), samples.num_classes)
    t0 = time.perf_counter()
    res = fit(net, x, labels[mask], epochs=epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
              seed=seed, progress=False, device=getattr(args, "device", "cpu"))
    acc = accuracy(net, samples.get_inputs(split.test), samples.labels[split.test])
    return {"accuracy": acc, "kept": m, "kept_fraction": m / n_full,
            "kept_corrupted_fraction": None, "steps": res.steps, "epochs": epochs,
            "seconds": time.perf_counter() - t0}


def run(args) -> int:
    from keepset._progress import progress_bar

    from keepset.data import load_spec
    from keepset.evaluation.proxy import make_split, noisy_labels, proxy_run, train_reference
    from keepset.evaluation.store import ResultStore, cell_key
    from keepset.scoring.dynamics import dynamics_scores
    from keepset.scoring.reference_agreement import reference_label_loss
    from keepset.selection.kcenter import k_center_order
    from keepset.selection.topk import n_to_keep

    _resolve_defaults(args)
    out = output_folder(args)
    samples = subsample(load_spec(args.data), args.max_samples)
    store = ResultStore(out / "results.json", _config(args), restart=args.restart)
    cells = []
    for s in range(args.seeds):
        for noise in args.noise:
            cells.append((s, noise, "full", 1.0))
            for m in args.methods:
                if m in OWN_RATIO:
                    cells.append((s, noise, m, "auto"))
                else:
                    cells += [(s, noise, m, r) for r in args.ratios]
    key = lambda c: cell_key(seed=c[0], noise=c[1], method=c[2], ratio=c[3])  # noqa: E731
    todo = [c for c in cells if not store.done(key(c))]
    print(f"pruning on {args.data} ({len(samples)} samples, {args.model}, budget {args.epochs} full-data epochs): "
          f"{len(cells)} runs, {len(cells) - len(todo)} already done -> {out}", file=sys.stderr)
    bar = progress_bar(total=len(cells), initial=len(cells) - len(todo), desc="pruning runs",
                       enabled=not args.quiet)
    ctx_seed: dict = {}
    ctx_noise: dict = {}
    for cell in todo:
        seed, noise, method, ratio = cell
        split = make_split(samples.labels, seed)
        if ctx_seed.get("seed") != seed:
            ctx_seed = {"seed": seed, "split": split}
            ctx_noise = {}
        labels, corrupted = noisy_labels(samples, split, "symmetric", noise, seed)
        needs_proxy = method not in ("full", "random")
        if needs_proxy and "ref" not in ctx_seed:
            ctx_seed["ref"] = train_reference(samples, split, args.model, epochs=args.ref_epochs,
                                              batch_size=args.batch_size, lr=args.lr, seed=seed,
                                         device=args.device)
        if needs_proxy and noise not in ctx_noise:
            ref = ctx_seed["ref"]
            prun = proxy_run(ref, labels, corrupted, samples.labels[split.test], samples.num_classes,
                             epochs=args.head_epochs, batch_size=args.batch_size, lr=args.head_lr, seed=seed,
                             gradmimic=True, device=args.device)
            ctx_noise[noise] = {"labels": labels, "features": ref.train_features, "run": prun,
                                "mimic": prun.mean_mimic(prun.gradmimic),
                                "scores": dynamics_scores(prun.dynamics_values(), args.early_epochs),
                                "reference_loss": reference_label_loss(ref.train_logits(), labels)}
        if method == "kcenter" and "kcenter_order" not in ctx_seed:
            top = n_to_keep(len(labels), max(args.ratios))
            ctx_seed["kcenter_order"] = k_center_order(ctx_seed["ref"].train_features, top,
                                                       seed=selection_seed(seed))
        if method == "full":
            mask = np.ones(len(labels), dtype=bool)
        elif method in OWN_RATIO:
            from keepset.selection.stage2 import stage2_filter

            prun = ctx_noise[noise]["run"]
            mask = stage2_filter(prun.gradmimic if method == "stage2" else prun.mimic, binarize="threshold",
                                 vote="majority", ids=prun.ids)
        else:
            ctx = dict(ctx_noise.get(noise, {"labels": labels}))
            ctx["kcenter_order"] = ctx_seed.get("kcenter_order")
            if method == "moderate":
                ctx["features"] = ctx_seed["ref"].train_features
            mask = select(method, ratio, ctx, seed=selection_seed(seed), ccs_cutoff=args.ccs_cutoff)
        res = train_subset(samples, split, labels, mask, args, seed)
        res["kept_corrupted_fraction"] = float(corrupted[mask].mean()) if mask.any() else 0.0
        store.put(key(cell), {"seed": seed, "noise": noise, "method": method, "ratio": ratio, **res})
        bar.update(1)
    bar.close()
    write_reports(store, out, plots=not args.no_plots)
    print((out / "results.md").read_text(encoding="utf-8"))
    return 0


def write_reports(store, out: Path, plots: bool = True) -> None:
    from keepset.evaluation.report import fmt, group, markdown_table
    from keepset.io.atomic import write_text_atomic

    cfg = store.config
    recs = list(store.cells.values())
    agg = group(recs, ("noise", "method", "ratio"), ("accuracy", "kept_fraction", "kept_corrupted_fraction", "steps"))
    seeds = sorted({r["seed"] for r in recs})
    noises = sorted({r["noise"] for r in recs})
    ratios = sorted({r["ratio"] for r in recs if isinstance(r["ratio"], float) and r["ratio"] < 1})
    methods = [m for m in METHODS if any(r["method"] == m for r in recs)]
    steps = sorted({r["steps"] for r in recs})
    sub = f" (stratified subset of {cfg['max_samples']} samples)" if cfg.get("max_samples") else ""
    text = [f"# Train-on-subset accuracy: {cfg['data']}{sub}, {cfg['model']}\n",
            f"Seeds: {seeds}. Every run: {cfg['epochs']} epochs' worth of SGD steps over the full train split "
            f"(steps per run: {steps[0]}–{steps[-1]}), batch {cfg['batch_size']}, lr {cfg['lr']}, momentum 0.9. "
            "Test accuracy on the clean test split, mean ± std over seeds. Symmetric label noise.\n"]
    for noise in noises:
        text.append(f"\n## Noise {noise:g}\n")
        full = agg.get((noise, "full", 1.0))
        rows = []
        for m in methods:
            if m in OWN_RATIO:
                continue
            rows.append([m] + [fmt(agg[(noise, m, r)]["accuracy"]) if (noise, m, r) in agg else "–" for r in ratios])
        text.append(markdown_table(["method"] + [f"keep {r:g}" for r in ratios], rows))
        if full:
            text.append(f"\nAll data (ratio 1): {fmt(full['accuracy'])}.\n")
        for m, what in (("stage2", "Grad-Mimic Stage 2 filter"), ("stage2_sgd", "Stage 2 on the plain-SGD scores")):
            st = agg.get((noise, m, "auto"))
            if st:
                text.append(f"{what} at its own ratio {fmt(st['kept_fraction'])}: accuracy {fmt(st['accuracy'])} "
                            f"(corrupted among kept: {fmt(st['kept_corrupted_fraction'])}).\n")
        if noise > 0:
            text.append("\nFraction of corrupted labels among the kept samples:\n\n")
            rows = [[m] + [fmt(agg[(noise, m, r)]["kept_corrupted_fraction"]) if (noise, m, r) in agg else "–"
                           for r in ratios] for m in methods if m not in OWN_RATIO]
            text.append(markdown_table(["method"] + [f"keep {r:g}" for r in ratios], rows))
    write_text_atomic(out / "results.md", "\n".join(text), overwrite=True)
    if plots and recs:
        _plot(agg, noises, ratios, methods, out)


def _plot(agg, noises, ratios, methods, out: Path) -> None:
    """accuracy_vs_ratio.png: test accuracy against the fraction kept, one panel per noise level.

    Lines join a method's consecutive measured ratios only (a missing ratio leaves a gap); the Stage 2
    filters, which choose their own ratio, are single large markers. Every method keeps its colour and
    marker (by its place in METHODS). When some methods collapse (accuracy below half of the all-data
    run's), the panel gets a broken y axis: the main part spans the useful range, a short strip below it
    holds the collapsed points, so they neither vanish nor squash the others. The legend sits outside.
    """
    from keepset.evaluation.plots import broken_axes, collapse_floor, handles_for, legend_outside, method_styles, pyplot
    from keepset.evaluation.report import save_figure

    plt = pyplot()
    styles = method_styles(METHODS)
    fig = plt.figure(figsize=(5.0 * len(noises) + 2.2, 5.2), layout="constrained")
    grid = fig.add_gridspec(1, len(noises))
    shown: list[str] = []
    for col, noise in enumerate(noises):
        cells = {m: [(r, agg[(noise, m, r)]["accuracy"]) for r in ratios if (noise, m, r) in agg]
                 for m in methods if m not in OWN_RATIO}
        own = {m: agg[(noise, m, "auto")] for m in methods if m in OWN_RATIO and (noise, m, "auto") in agg}
        full = agg.get((noise, "full", 1.0))
        means = [a[0] for pts in cells.values() for _, a in pts] + [st["accuracy"][0] for st in own.values()]
        highs = [a[0] + a[1] for pts in cells.values() for _, a in pts] + [st["accuracy"][0] + st["accuracy"][1]
                                                                          for st in own.values()]
        if full:
            means.append(full["accuracy"][0])
            highs.append(full["accuracy"][0])
        if not means:
            continue
        top = max(h for h in highs if np.isfinite(h))
        floor = collapse_floor(means, full["accuracy"][0] if full else max(means))
        if floor is None:
            axes = [fig.add_subplot(grid[col])]
        else:
            main, low = broken_axes(fig, grid[col], floor, top + 0.02 * (top - floor) + 0.005, bottom=0.0)
            axes = [main, low]
        for ax in axes:
            for m, pts in cells.items():
                for xs, _ in [(seg, None) for seg in _runs(pts, ratios)]:
                    ax.errorbar([p[0] for p in xs], [p[1][0] for p in xs], yerr=[p[1][1] for p in xs], capsize=2,
                                lw=1.3, markersize=6, markeredgecolor="white", markeredgewidth=0.4, **styles[m])
            for m, st in own.items():
                ax.errorbar([st["kept_fraction"][0]], [st["accuracy"][0]], xerr=[st["kept_fraction"][1]],
                            yerr=[st["accuracy"][1]], linestyle="none", markersize=13, markeredgecolor="black",
                            markeredgewidth=0.7, capsize=2, **styles[m])
            if full:
                ax.axhline(full["accuracy"][0], color="0.35", linestyle="--", lw=1)
            ax.grid(alpha=0.3)
            ax.set_xlim(0, 1.0)
        axes[0].set_title(f"label noise {noise:g}")
        axes[-1].set_xlabel("fraction kept")
        if col == 0:
            axes[0].set_ylabel("test accuracy")
        if floor is not None:
            axes[1].text(0.99, 0.5, f"collapsed\n(< {0.5 * (full['accuracy'][0] if full else max(means)):.2f})",
                         transform=axes[1].transAxes, ha="right", va="center", fontsize=7, color="0.35")
        shown += [m for m in list(cells) + list(own) if m not in shown]
    from matplotlib.lines import Line2D

    order = [m for m in METHODS if m in shown]
    handles, labels = handles_for(styles, order, line=True,
                                  labels={m: f"{m} (own ratio)" for m in OWN_RATIO})
    for i, m in enumerate(order):
        if m in OWN_RATIO:
            handles[i].set_linestyle("none")
            handles[i].set_markeredgecolor("black")
            handles[i].set_markersize(10)
    handles.append(Line2D([], [], color="0.35", linestyle="--", lw=1))
    labels.append("all data")
    legend_outside(fig, handles, labels, title="method")
    save_figure(fig, out / "accuracy_vs_ratio.png")


def _runs(points, ratios):
    """Split [(ratio, (mean, std, n))] into runs of consecutive measured ratios (no line across a gap)."""
    from keepset.evaluation.plots import segments

    by_ratio = dict(points)
    return [[(r, by_ratio[r]) for r in xs] for xs, _ in segments([p[0] for p in points],
                                                                 [p[1][0] for p in points], ratios)]


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
