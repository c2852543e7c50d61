"""Time of a Grad-Mimic training step against a plain SGD step, measured side by side in one run.

The small CNN (``SmallCNN``) on 28x28 single-channel inputs, one batch size, one SGD step per batch
through ``keepset.training.fit``. Variants, run in rotating order inside every repeat:

- ``plain``: mean loss (``MeanLoss``);
- ``last_layer``: ``GradMimic`` scoring the final Linear's weight (``proj``);
- ``all_proj`` / ``all_cos``: ``GradMimic`` scoring every trainable parameter;
- ``vmap_reference``: the published Grad-Mimic code's step scoring every parameter
  (``VmapReference``): per-sample gradients of every parameter from ``vmap(grad)``, each sample's
  projection in a Python loop, and the step's gradients read off the per-sample gradients
  (broadcast weighted sum);
- ``vmap_vectorised``: the same per-sample gradients with the loop and the copies replaced by
  products (how much of the reference is ``vmap(grad)`` itself).

A step's time is the wall time between two consecutive ends of a step (the forward, the scoring, the
backward and the optimiser step), the first step of each run left out as warm-up.
Reported: the median over all timed steps, and each variant's ratio to the plain step: the median
over repeats of the ratio to the plain step timed in the same repeat.
Inputs are random (the cost does not depend on the pixel values).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from keepset._argtypes import int_at_least, positive_int
from keepset.bench._script import script_main
from keepset.cli._common import add_quiet

VARIANTS = ("plain", "last_layer", "all_proj", "all_cos", "vmap_reference", "vmap_vectorised")
LABELS = {
    "plain": "plain SGD step",
    "last_layer": "Grad-Mimic, last layer (proj)",
    "all_proj": "Grad-Mimic, all layers (proj)",
    "all_cos": "Grad-Mimic, all layers (cos)",
    "vmap_reference": "published step (vmap(grad)), all layers",
    "vmap_vectorised": "vmap(grad), vectorised scores and sums",
}

#: the reference variants and how the speed-up lines name them
REFERENCES = {"vmap_reference": "the published step", "vmap_vectorised": "vectorised vmap(grad)"}


def __getattr__(name: str):
    # the timed classes import torch: loaded on first use, so that `keepset --help` stays fast
    if name in ("VmapReference", "_StepTimer"):
        from keepset.bench import _vmap_reference

        return getattr(_vmap_reference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _method(variant: str, reference):
    """The online method of a variant (None: the plain mean loss)."""
    from keepset.bench._vmap_reference import VmapReference
    from keepset.training import GradMimic

    if variant == "plain":
        return None
    if variant == "last_layer":
        return GradMimic(reference, layers=None, method="proj")
    if variant == "all_proj":
        return GradMimic(reference, layers="all", method="proj")
    if variant == "all_cos":
        return GradMimic(reference, layers="all", method="cos")
    if variant == "vmap_reference":
        return VmapReference(reference)
    if variant == "vmap_vectorised":
        return VmapReference(reference, vectorised=True)
    raise ValueError(f"unknown variant {variant!r}")


def measure(batch_size: int = 256, repeats: int = 5, steps: int = 4, image_size: int = 28, seed: int = 0,
            variants=VARIANTS, progress: bool = True, device="cpu") -> dict[str, list[list[float]]]:
    """Per-step times (seconds) of every variant: {variant: [[times of the timed steps] for each repeat]}.

    Each repeat runs every variant once (rotating the order), each run ``steps`` steps of which the
    first is warm-up and left out.
    """
    import torch

    from keepset.bench._vmap_reference import _StepTimer
    from keepset.models import SmallCNN
    from keepset.training import fit

    if batch_size < 1 or repeats < 1 or steps < 2:
        raise ValueError(f"need batch_size >= 1, repeats >= 1 and steps >= 2; got {batch_size}, {repeats}, {steps}")
    torch.manual_seed(seed)
    model0 = SmallCNN(1, image_size, 10).to(device)
    reference = SmallCNN(1, image_size, 10).to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size * steps, 1, image_size, image_size, generator=gen)
    y = torch.randint(0, 10, (batch_size * steps,), generator=gen)
    times: dict[str, list[list[float]]] = {v: [] for v in variants}
    order = list(variants)
    from keepset._progress import progress_bar

    with progress_bar(total=repeats * len(order), desc="bench overhead", enabled=progress) as bar:
        for r in range(repeats):
            rot = order[r % len(order):] + order[:r % len(order)]
            for variant in rot:
                model = copy.deepcopy(model0)
                timer = _StepTimer(device)
                fit(model, x, y, method=_method(variant, reference), observers=[timer], epochs=1,
                    batch_size=batch_size, lr=0.01, momentum=0.9, seed=r, progress=False, device=device)
                times[variant].append(timer.times[1:])
                bar.update(1)
    return times


def _median(values) -> float:
    import torch

    return float(torch.tensor(values, dtype=torch.float64).median())


def summarize(times: dict[str, list[list[float]]]) -> dict[str, float]:
    """{"plain_step_s", "<variant>_s", "<variant>_ratio"}: ``_s`` the median over every timed step;
    ``_ratio`` the median over repeats of (the variant's median step / the plain step's median step in the
    same repeat), so that slow drifts of a shared machine's load cancel between neighbours in time;
    ``"<all_proj|all_cos>_speedup_over_<reference>"`` likewise the median over repeats of the reference's
    median step over the variant's."""
    plain = times["plain"]
    out = {"plain_step_s": _median([t for rep in plain for t in rep])}
    for v, reps in times.items():
        if v != "plain":
            out[f"{v}_s"] = _median([t for rep in reps for t in rep])
            out[f"{v}_ratio"] = _median([_median(r) / _median(p) for r, p in zip(reps, plain)])
    for ref in REFERENCES:
        for v in ("all_proj", "all_cos"):
            if ref in times and v in times:
                out[f"{v}_speedup_over_{ref}"] = _median([_median(r) / _median(q)
                                                          for r, q in zip(times[ref], times[v])])
    return out


def format_table(summary: dict[str, float], batch_size: int, threads: int) -> str:
    lines = [f"SmallCNN, 28x28 inputs, batch {batch_size}, {threads} thread(s); median step time; "
             "ratio = median over repeats of the ratio to the plain step of the same repeat",
             f"{'step':<42}{'seconds':>10}{'x plain':>10}"]
    lines.append(f"{LABELS['plain']:<42}{summary['plain_step_s']:>10.4f}{1.0:>10.2f}")
    for v in VARIANTS[1:]:
        if f"{v}_s" in summary:
            lines.append(f"{LABELS[v]:<42}{summary[f'{v}_s']:>10.4f}{summary[f'{v}_ratio']:>10.2f}")
    for ref, name in REFERENCES.items():
        for v in ("all_proj", "all_cos"):
            if f"{v}_speedup_over_{ref}" in summary:
                lines.append(f"speed-up of {LABELS[v]} over {name}: {summary[f'{v}_speedup_over_{ref}']:.1f}x")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=256, help="samples per step")
    parser.add_argument("--repeats", type=positive_int, default=5, help="interleaved repeats of every variant")
    parser.add_argument("--steps", type=int_at_least(2), default=4, help="steps per run, the first one is warm-up")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-reference", action="store_true",
                        help="leave out the two slow vmap(grad) variants")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the figures as JSON (default: not written)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_quiet(parser, "no progress bar")
    parser.add_argument("--device", default="cpu", help="where the steps run: cpu, cuda, cuda:N or mps")


def run(args: argparse.Namespace) -> int:
    import torch

    from keepset.cli._common import check_device
    from keepset.io import check_output_file, write_text_atomic

    if args.json is not None:
        check_output_file(args.json, args.overwrite)
    check_device(args.device)
    previous = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        threads = torch.get_num_threads()
        variants = VARIANTS[:4] if args.skip_reference else VARIANTS
        times = measure(args.batch_size, args.repeats, args.steps, variants=variants, progress=not args.quiet,
                        device=args.device)
    finally:
        torch.set_num_threads(previous)
    summary = summarize(times)
    print(format_table(summary, args.batch_size, threads))
    if args.json is not None:
        record = {k: summary[k] for k in ("plain_step_s", "last_layer_ratio", "all_proj_ratio", "all_cos_ratio",
                                          "vmap_reference_ratio") if k in summary}
        record.update({k: v for k, v in summary.items() if k not in record})
        record.update(batch_size=args.batch_size, threads=threads, repeats=args.repeats, device=args.device,
                      timed_steps_per_variant=sum(len(r) for r in times["plain"]),
                      ratio="median over repeats of (variant median step / plain median step, same repeat)")
        write_text_atomic(args.json, json.dumps(record, indent=2) + "\n", overwrite=args.overwrite)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
