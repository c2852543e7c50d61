"""Online batch re-weighting compared side by side: plain SGD, Grad-Mimic Stage 1 in every published variant,
and every online baseline of the published Grad-Mimic code and of CORDS, on the shared proxy setting (a linear
head on the trusted reference's frozen features of the noisy train split; the same initial head, seed, batch
order and epochs for every method). Test accuracy on the clean test split, mean ± std over seeds.

Methods (the definitions and their sources are in the docstrings of keepset.training.parity, online_baselines,
agra, gradmatch, influence and references):
  sgd                   plain mean loss
  gradmimic-lfdr        keepset's default: lfdr weights calibrated by held-out trusted samples (the 20% of the
                        trusted split the reference never saw; --holdout-per-step of them scored at every step)
  gradmimic             softmax(proj / T) on the head weight (published normed_proj, the paper's default)
  gradmimic-cos         softmax(cos / T) (normed_cos)
  gradmimic-raw-proj    the raw projections as weights (published proj: signed, unnormalised)
  gradmimic-raw-cos     the raw cosines as weights (published cos)
  gradmimic-opt         published opt: argmin_w sum_i ||w_i (-g_i) - V|| (lambda 0: w_i = <-g_i, V> / ||g_i||^2)
  gradmimic-sigma       gradmimic with the reference's head weight + N(0, sigma^2) (published --sigma)
  gradmimic-refsplit    gradmimic with a reference head trained on half of the trusted samples
  rho                   RHO-loss: uniform weights on the top --rho-ratio reducible losses of each batch
  rho-softmax           softmax of the reducible loss (published --mode rho)
  grand                 weights proportional to the head's gradient norm (keepset's GraNd weighting)
  grand-softmax         softmax of the head weight's gradient norms on the head weight (published --mode grad-norm)
  agra                  AGRA, comparison batches from the noisy train split (the authors' and the published code's)
  agra-trusted          AGRA, comparison batches from the trusted (clean) samples
  gradmatch             CORDS Grad-Match: OMP per class every epoch from epoch 2, --gm-fraction of the data,
                        matching each class's summed (noisy) training gradient (CORDS valid=False, its default)
  gradmatch-trusted     the same matching the trusted samples' summed gradient per class (CORDS valid=True)
  gradmatch-batch       the published code's --mode grad-match (opt towards the batch-mean gradient)
  influence             published --mode influence-function: --few-shot clean samples per class, softmax(proj)

The clean data of agra-trusted, influence (k per class drawn from it) and gradmimic-refsplit (its first half,
stratified) is the reference's part of the trusted split, the samples the reference network was trained on;
RHO-loss's irreducible loss is the reference head's loss on each (noisy) training label. Runs are resumable:
one cell per (seed, setting, method) in OUT/results.json, written as each finishes; the reference's features
are cached per seed in OUT/reference-seedS.npz.

  python -m keepset.bench.online                              # digits, 3 seeds
  keepset bench online --data fashion-mnist                   # the benchmark of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from keepset.bench._script import script_main
from keepset.cli._common import add_quiet, positive_float, positive_int, ratio

METHODS = ("sgd", "gradmimic-lfdr", "gradmimic", "gradmimic-cos", "gradmimic-raw-proj", "gradmimic-raw-cos", "gradmimic-opt",
           "gradmimic-sigma", "gradmimic-refsplit", "rho", "rho-softmax", "grand", "grand-softmax", "agra",
           "agra-trusted", "gradmatch", "gradmatch-trusted", "gradmatch-batch", "influence")
SETTINGS = ("symmetric:0", "symmetric:0.2", "symmetric:0.4", "asymmetric:0.4")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="data spec (digits, fashion-mnist, ...)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="reference network trained on the trusted split (its features feed the linear heads)")
    p.add_argument("--seeds", type=positive_int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS),
                   help="noise settings KIND:RATE (KIND symmetric or asymmetric)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="the methods to run")
    p.add_argument("--ref-epochs", type=positive_int, default=30, help="epochs of the reference on the trusted split")
    p.add_argument("--epochs", type=positive_int, default=10, help="epochs of every online run")
    p.add_argument("--batch-size", type=positive_int, default=64, help="batch size of every training run")
    p.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate of the reference")
    p.add_argument("--head-lr", type=positive_float, default=None,
                   help="SGD learning rate of the linear head (default: 10 / mean ||h||^2 of the train features)")
    p.add_argument("--rho-ratio", type=ratio, default=0.3, help="RHO-loss: fraction of each batch trained on")
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="softmax temperature (published default 1)")
    p.add_argument("--sigma", type=positive_float, default=0.1,
                   help="gradmimic-sigma: standard deviation of the noise added to the reference head's weight")
    p.add_argument("--few-shot", type=positive_int, default=10, help="influence: clean samples per class (published 10)")
    p.add_argument("--holdout-per-step", type=positive_int, default=32,
                   help="gradmimic-lfdr: held-out trusted samples scored at every step")
    p.add_argument("--gm-fraction", type=ratio, default=0.1, help="gradmatch: fraction selected (CORDS 0.1)")
    p.add_argument("--gm-select-every", type=positive_int, default=1, help="gradmatch: epochs between selections")
    p.add_argument("--out", default=None, help="output folder (default out/bench/online-DATA-MODEL)")
    p.add_argument("--restart", action="store_true", help="discard results of another configuration")
    add_quiet(p, "no progress bar")
    p.add_argument("--device", default="cpu", help="where the networks train: cpu, cuda, cuda:N or mps")


def parse_setting(text: str) -> tuple[str, float]:
    kind, _, rate = text.partition(":")
    if kind not in ("symmetric", "asymmetric") or not rate:
        raise ValueError(f"a setting is KIND:RATE with KIND symmetric or asymmetric, got {text!r}")
    try:
        value = float(rate)
    except ValueError:
        raise ValueError(f"the rate of setting {text!r} is not a number") from None
    if not 0 <= value < 1:
        raise ValueError(f"the rate of setting {text!r} must be in [0, 1)")
    return kind, value


def _config(args) -> dict:
    keys = ("data", "model", "settings", "methods", "ref_epochs", "epochs", "batch_size", "lr", "head_lr",
            "rho_ratio", "temperature", "sigma", "few_shot", "gm_fraction", "gm_select_every", "holdout_per_step")
    return {k: getattr(args, k) for k in keys}


def reference_features(samples, seed: int, args, out: Path) -> dict:
    """The trusted reference of ``seed`` (keepset.evaluation.proxy) as arrays, cached in OUT/reference-seedS.npz."""
    from keepset.evaluation.proxy import make_split, train_reference
    from keepset.io.atomic import atomic_path
    from keepset.training import embed

    key = json.dumps({"data": args.data, "model": args.model, "ref_epochs": args.ref_epochs,
                      "batch_size": args.batch_size, "lr": args.lr, "seed": seed, "format": 2}, sort_keys=True)
    path = out / f"reference-seed{seed}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return {k: z[k] for k in z.files}
    split = make_split(samples.labels, seed)
    t0 = time.perf_counter()
    ref = train_reference(samples, split, args.model, epochs=args.ref_epochs, batch_size=args.batch_size,
                          lr=args.lr, seed=seed, device=args.device)
    arrays = {
        "key": np.array(key), "train": split.train, "test": split.test, "trusted": split.trusted,
        "train_features": ref.train_features, "test_features": ref.test_features,
        "trusted_features": embed(ref.net, samples.get_inputs(split.trusted)), "holdout": split.holdout,
        "holdout_features": embed(ref.net, samples.get_inputs(split.holdout)),
        "head_weight": ref.net.head.weight.detach().numpy(), "head_bias": ref.net.head.bias.detach().numpy(),
        "test_accuracy": np.array(ref.test_accuracy), "holdout_accuracy": np.array(ref.holdout_accuracy),
        "seconds": np.array(time.perf_counter() - t0),
    }
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return arrays


def make_method(name: str, *, reference, ref: dict, labels, ids, trusted_labels, head0, head_lr: float, seed: int,
                args, holdout_labels=None, holdout_ids=None):
    """The online method ``name`` of the module docstring (None for plain SGD)."""
    import torch

    from keepset.training import (
        AGRA, BatchGradMatch, FewShotInfluence, GradMatch, GradMimic, GrandWeight, RhoLoss, irreducible_losses,
        perturbed_reference, reference_on_split,
    )

    t = args.temperature
    if name == "sgd":
        return None
    if name == "gradmimic-lfdr":
        return GradMimic(reference, weighting="lfdr", holdout_per_step=args.holdout_per_step,
                         holdout=(ref["holdout_features"], holdout_labels, holdout_ids))
    if name == "gradmimic":
        return GradMimic(reference, temperature=t)
    if name == "gradmimic-cos":
        return GradMimic(reference, method="cos", temperature=t)
    if name == "gradmimic-raw-proj":
        return GradMimic(reference, weighting="raw")
    if name == "gradmimic-raw-cos":
        return GradMimic(reference, method="cos", weighting="raw")
    if name == "gradmimic-opt":
        return GradMimic(reference, weighting="opt")
    if name == "gradmimic-sigma":
        return GradMimic(perturbed_reference(reference, args.sigma, seed), temperature=t)
    if name == "gradmimic-refsplit":
        half = reference_on_split(head0, torch.as_tensor(ref["trusted_features"]), trusted_labels, part=0, seed=seed,
                                  epochs=args.epochs, batch_size=args.batch_size, lr=head_lr, momentum=0.9,
                                  device=args.device)
        return GradMimic(half, temperature=t)
    if name in ("rho", "rho-softmax"):
        irr = irreducible_losses(reference, ref["train_features"], labels)
        if name == "rho":
            return RhoLoss(irr, ids, ratio=args.rho_ratio)
        return RhoLoss(irr, ids, mode="softmax", temperature=t)
    if name == "grand":
        return GrandWeight()
    if name == "grand-softmax":
        return GrandWeight(mode="softmax", temperature=t)
    if name == "agra":
        return AGRA(ref["train_features"], labels, ids, seed=seed)
    if name == "agra-trusted":
        return AGRA(ref["trusted_features"], trusted_labels, seed=seed)
    if name == "gradmatch":
        return GradMatch(ref["train_features"], labels, ids, fraction=args.gm_fraction,
                         select_every=args.gm_select_every, seed=seed)
    if name == "gradmatch-trusted":
        return GradMatch(ref["train_features"], labels, ids, fraction=args.gm_fraction,
                         select_every=args.gm_select_every, valid_x=ref["trusted_features"], valid_y=trusted_labels,
                         seed=seed)
    if name == "gradmatch-batch":
        return BatchGradMatch()
    if name == "influence":
        return FewShotInfluence(ref["trusted_features"], trusted_labels, k=args.few_shot, temperature=t, seed=seed)
    raise ValueError(f"unknown method {name!r}; choose from {METHODS}")


def run_cell(samples, ref: dict, kind: str, rate: float, name: str, seed: int, args) -> dict:
    import copy

    import torch

    from keepset.data import add_label_noise
    from keepset.models import LinearProbe
    from keepset.training import accuracy, fit
    from keepset.training.step_size import probe_learning_rate

    y_train = samples.labels[ref["train"]]
    labels = y_train.copy() if rate == 0 else add_label_noise(y_train, rate, kind, samples.num_classes, seed)[0]
    feats = ref["train_features"]
    ids = np.asarray(samples.ids)[ref["train"]]
    d, k = feats.shape[1], samples.num_classes
    reference = LinearProbe(d, k)
    with torch.no_grad():
        reference.head.weight.copy_(torch.as_tensor(ref["head_weight"]))
        reference.head.bias.copy_(torch.as_tensor(ref["head_bias"]))
    head_lr = args.head_lr if args.head_lr is not None else probe_learning_rate(feats)
    torch.manual_seed(seed + 1)
    head0 = LinearProbe(d, k)
    head = copy.deepcopy(head0)
    t0 = time.perf_counter()
    method = make_method(name, reference=reference, ref=ref, labels=labels, ids=ids,
                         trusted_labels=samples.labels[ref["trusted"]], head0=head0, head_lr=head_lr, seed=seed,
                         args=args, holdout_labels=samples.labels[ref["holdout"]],
                         holdout_ids=np.asarray(samples.ids)[ref["holdout"]])
    result = {"seed": seed, "kind": kind, "rate": rate, "method": name, "head_lr": head_lr,
              "reference_accuracy": float(ref["test_accuracy"])}
    try:
        fit(head, feats, labels, ids=ids, method=method, epochs=args.epochs, batch_size=args.batch_size, lr=head_lr,
            momentum=0.9, seed=seed, progress=False, device=args.device)
    except ValueError as exc:  # a method whose weights became invalid (NaN / inf): recorded, not hidden
        result.update(accuracy=None, error=str(exc), seconds=time.perf_counter() - t0)
        return result
    head.cpu()
    finite = all(bool(torch.isfinite(p).all()) for p in head.parameters())
    result.update(accuracy=accuracy(head, ref["test_features"], samples.labels[ref["test"]]) if finite else None,
                  diverged=not finite, seconds=time.perf_counter() - t0)
    if hasattr(method, "selections"):
        result["selections"] = int(method.selections)
    return result


def run(args) -> int:
    from keepset._progress import progress_bar
    from keepset.cli._common import check_device
    from keepset.data import load_spec
    from keepset.evaluation.store import ResultStore, cell_key

    check_device(args.device)

    settings = [parse_setting(s) for s in args.settings]
    out = Path(args.out or f"out/bench/online-{args.data.replace(':', '_').replace('/', '_')}-{args.model}")
    samples = load_spec(args.data)
    store = ResultStore(out / "results.json", _config(args), restart=args.restart)
    cells = [(s, kind, rate, m) for s in range(args.seeds) for kind, rate in settings for m in args.methods]
    todo = [c for c in cells if not store.done(cell_key(seed=c[0], kind=c[1], rate=c[2], method=c[3]))]
    print(f"online re-weighting on {args.data} ({len(samples)} samples, {args.model} reference): {len(cells)} cells, "
          f"{len(cells) - len(todo)} already done -> {out}", file=sys.stderr)
    bar = progress_bar(total=len(cells), initial=len(cells) - len(todo), desc="online cells",
                       enabled=not args.quiet)
    refs: dict = {}
    for seed, kind, rate, m in todo:
        if seed not in refs:
            refs.clear()
            refs[seed] = reference_features(samples, seed, args, out)
        res = run_cell(samples, refs[seed], kind, rate, m, seed, args)
        store.put(cell_key(seed=seed, kind=kind, rate=rate, method=m), res)
        if res.get("error") or res.get("diverged"):
            print(f"seed {seed} {kind}:{rate:g} {m}: " + (res.get("error") or "diverged (non-finite weights)"),
                  file=sys.stderr)
        bar.update(1)
    bar.close()
    text = report(store, args)
    from keepset.io.atomic import write_text_atomic

    write_text_atomic(out / "results.md", text, overwrite=True)
    print(text)
    return 0


def report(store, args) -> str:
    """The markdown table: one row per method, one column per setting, test accuracy mean ± std over seeds."""
    from keepset.evaluation.report import fmt, markdown_table, mean_std

    cells = list(store.cells.values())
    settings = [parse_setting(s) for s in args.settings]
    seeds = sorted({c["seed"] for c in cells})
    header = ["method"] + [f"{'clean' if r == 0 else f'{k[:3]} {r:g}'}" for k, r in settings] + ["s / run"]
    rows = []
    for m in args.methods:
        row = [m]
        secs = []
        for kind, rate in settings:
            mine = [c for c in cells if c["method"] == m and c["kind"] == kind and c["rate"] == rate]
            bad = sum(1 for c in mine if c.get("accuracy") is None)
            cell = fmt(mean_std(c["accuracy"] for c in mine if c.get("accuracy") is not None))
            if bad:
                cell += f" ({bad} of {len(mine)} diverged)"
            row.append(cell)
            secs += [c["seconds"] for c in mine]
        row.append(f"{np.mean(secs):.1f}" if secs else "–")
        rows.append(row)
    ref_acc = sorted({round(c["reference_accuracy"], 4) for c in cells})
    lr = sorted({round(c["head_lr"], 4) for c in cells})
    intro = (f"{args.data}, {len(seeds)} seeds, {args.epochs} epochs, batch {args.batch_size}, linear head "
             f"(SGD lr {', '.join(map(str, lr))}, momentum 0.9) on the trusted {args.model}'s frozen features; "
             f"reference network test accuracy {', '.join(map(str, ref_acc))}. Test accuracy, mean ± std over "
             "seeds (population); s / run: mean wall seconds of one head run, shared 2-core CPU.\n\n")
    return intro + markdown_table(header, rows)


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
