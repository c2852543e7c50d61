"""Time of a Grad-Mimic training step against a plain SGD step, measured side by side in one run.

The small CNN (``SmallCNN``) on 28x28 single-channel inputs, one batch size, one SGD step per batch
through ``keepset.training.fit``. Variants, run in rotating order inside every repeat:

- ``plain``: mean loss, no hook;
- ``last_layer``: ``GradMimicHook`` scoring the final Linear's weight (``proj``);
- ``all_proj`` / ``all_cos``: ``GradMimicHook`` scoring every trainable parameter;
- ``vmap_reference``: the style of the published Grad-Mimic code: per-sample gradients of every
  parameter from ``vmap(grad)``, each sample's projection in a Python loop, and the step's gradients
  read off the per-sample gradients (weighted sum).

A step's time is the wall time between two consecutive ``on_step_end`` calls (the forward, the
hooks, the backward and the optimiser step), the first step of each run left out as warm-up.
Reported: the median over all timed steps, and each variant's ratio to the plain step: the median
over repeats of the ratio to the plain step timed in the same repeat.
Inputs are random (the cost does not depend on the pixel values).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from keepset.bench._script import script_main

VARIANTS = ("plain", "last_layer", "all_proj", "all_cos", "vmap_reference")
LABELS = {
    "plain": "plain SGD step",
    "last_layer": "Grad-Mimic, last layer (proj)",
    "all_proj": "Grad-Mimic, all layers (proj)",
    "all_cos": "Grad-Mimic, all layers (cos)",
    "vmap_reference": "vmap(grad) reference, all layers (proj)",
}


class _StepTimer:
    """Hook recording the wall time between consecutive ``on_step_end`` calls."""

    def __init__(self):
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_start(self, model, n_samples, steps_per_epoch, epochs):
        self._last = time.perf_counter()

    def on_step_end(self, state):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


class VmapReferenceHook:
    """Grad-Mimic in the style of the published code: per-sample gradients of every trainable parameter from
    ``vmap(grad)``, the score of each sample in a Python loop (flattened gradient . unit task vector), weights
    ``softmax(score / tau)``, and the step's gradients read off the per-sample gradients (weighted sum on the
    scored layers, mean elsewhere). Scores every trainable parameter, as ``layers="all"``."""

    def __init__(self, reference: torch.nn.Module, temperature: float = 1.0):
        self.reference, self.temperature = reference, temperature

    def on_batch(self, state):
        from keepset.models.mimic import direction, per_sample_cross_entropy, resolve_layers
        from keepset.models.sample_gradients import per_sample_grads

        names = resolve_layers(state.model, "all")
        grads = per_sample_grads(state.model, state.x, state.y, names, per_sample_cross_entropy)
        v = direction(state.model, self.reference, names)
        unit = torch.nn.functional.normalize(torch.cat([v[n].flatten() for n in names]), dim=0)
        scores = torch.empty(len(state.y))
        for i in range(len(state.y)):  # the published code's loop over samples
            scores[i] = -torch.dot(torch.cat([grads[n][i].flatten() for n in names]), unit)
        w = torch.softmax(scores / self.temperature, 0)
        state.sample_weights, state.weighted_params = w, names
        state.param_grads = {n: torch.tensordot(w, g, 1) for n, g in grads.items()}


def _hooks(variant: str, reference: torch.nn.Module) -> list:
    from keepset.training import GradMimicHook

    if variant == "plain":
        return []
    if variant == "last_layer":
        return [GradMimicHook(reference, layers=None, method="proj")]
    if variant == "all_proj":
        return [GradMimicHook(reference, layers="all", method="proj")]
    if variant == "all_cos":
        return [GradMimicHook(reference, layers="all", method="cos")]
    if variant == "vmap_reference":
        return [VmapReferenceHook(reference)]
    raise ValueError(f"unknown variant {variant!r}")


def measure(batch_size: int = 256, repeats: int = 5, steps: int = 4, image_size: int = 28, seed: int = 0,
            variants=VARIANTS, progress: bool = True) -> dict[str, list[list[float]]]:
    """Per-step times (seconds) of every variant: {variant: [[times of the timed steps] for each repeat]}.

    Each repeat runs every variant once (rotating the order), each run ``steps`` steps of which the
    first is warm-up and left out.
    """
    from keepset.models import SmallCNN
    from keepset.training import fit

    if batch_size < 1 or repeats < 1 or steps < 2:
        raise ValueError(f"need batch_size >= 1, repeats >= 1 and steps >= 2; got {batch_size}, {repeats}, {steps}")
    torch.manual_seed(seed)
    model0 = SmallCNN(1, image_size, 10)
    reference = SmallCNN(1, image_size, 10)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size * steps, 1, image_size, image_size, generator=gen)
    y = torch.randint(0, 10, (batch_size * steps,), generator=gen)
    times: dict[str, list[list[float]]] = {v: [] for v in variants}
    order = list(variants)
    from tqdm.auto import tqdm

    with tqdm(total=repeats * len(order), desc="bench overhead", disable=not progress, leave=False) as bar:
        for r in range(repeats):
            rot = order[r % len(order):] + order[:r % len(order)]
            for variant in rot:
                model = copy.deepcopy(model0)
                timer = _StepTimer()
                fit(model, x, y, epochs=1, batch_size=batch_size, lr=0.01, momentum=0.9, seed=r,
                    hooks=_hooks(variant, reference) + [timer], progress=False)
                times[variant].append(timer.times[1:])
                bar.update(1)
    return times


def _median(values) -> float:
    return float(torch.tensor(values, dtype=torch.float64).median())


def summarize(times: dict[str, list[list[float]]]) -> dict[str, float]:
    """{"plain_step_s", "<variant>_s", "<variant>_ratio"}: ``_s`` the median over every timed step;
    ``_ratio`` the median over repeats of (the variant's median step / the plain step's median step in the
    same repeat), so that slow drifts of a shared machine's load cancel between neighbours in time."""
    plain = times["plain"]
    out = {"plain_step_s": _median([t for rep in plain for t in rep])}
    for v, reps in times.items():
        if v != "plain":
            out[f"{v}_s"] = _median([t for rep in reps for t in rep])
            out[f"{v}_ratio"] = _median([_median(r) / _median(p) for r, p in zip(reps, plain)])
    return out


def format_table(summary: dict[str, float], batch_size: int, threads: int) -> str:
    lines = [f"SmallCNN, 28x28 inputs, batch {batch_size}, {threads} thread(s); median step time; "
             "ratio = median over repeats of the ratio to the plain step of the same repeat",
             f"{'step':<42}{'seconds':>10}{'x plain':>10}"]
    lines.append(f"{LABELS['plain']:<42}{summary['plain_step_s']:>10.4f}{1.0:>10.2f}")
    for v in VARIANTS[1:]:
        if f"{v}_s" in summary:
            lines.append(f"{LABELS[v]:<42}{summary[f'{v}_s']:>10.4f}{summary[f'{v}_ratio']:>10.2f}")
    if "vmap_reference_s" in summary:
        for v in ("all_proj", "all_cos"):
            if f"{v}_s" in summary:
                lines.append(f"speed-up of {LABELS[v]} over the vmap reference: "
                             f"{summary['vmap_reference_ratio'] / summary[f'{v}_ratio']:.1f}x")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=256, help="samples per step (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every variant (default 5)")
    parser.add_argument("--steps", type=int, default=4, help="steps per run, the first one is warm-up (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-reference", action="store_true", help="leave out the slow vmap reference")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from keepset.io import write_text_atomic

    if args.json is not None and args.json.exists() and not args.overwrite:
        raise FileExistsError(f"{args.json} exists; pass --overwrite to replace it")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    previous = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        threads = torch.get_num_threads()
        variants = VARIANTS[:-1] if args.skip_reference else VARIANTS
        times = measure(args.batch_size, args.repeats, args.steps, variants=variants, progress=not args.quiet)
    finally:
        torch.set_num_threads(previous)
    summary = summarize(times)
    print(format_table(summary, args.batch_size, threads))
    if args.json is not None:
        record = {k: summary[k] for k in ("plain_step_s", "last_layer_ratio", "all_proj_ratio", "all_cos_ratio",
                                          "vmap_reference_ratio") if k in summary}
        record.update({k: v for k, v in summary.items() if k not in record})
        record.update(batch_size=args.batch_size, threads=threads, repeats=args.repeats,
                      timed_steps_per_variant=sum(len(r) for r in times["plain"]),
                      ratio="median over repeats of (variant median step / plain median step, same repeat)")
        write_text_atomic(args.json, json.dumps(record, indent=2) + "\n", overwrite=args.overwrite)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return script_main(sys.modules[__name__], argv)
    except (ValueError, FileExistsError) as exc:
        print(f"keepset bench overhead: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
