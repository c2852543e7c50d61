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
import time
from pathlib import Path

import torch

from keepset.bench._script import script_main
from keepset.training.online import OnlineMethod

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


class _StepTimer:
    """Observer recording the wall time between consecutive step ends (the first from its creation); on a GPU
    it waits for the device's queued work before reading the clock."""

    def __init__(self, device="cpu"):
        self.sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        self.times: list[float] = []
        self._last = time.perf_counter()

    def on_batch(self, batch, model, head_inputs):
        self.sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


class VmapReference(OnlineMethod):
    """The published Grad-Mimic training step (github.com/zihengh1/Grad-Mimic, ``gradmimic/training.py`` and the
    ``grad-mimic`` branch of ``run.py``), scoring every trainable parameter, with the published default
    ``normed_proj`` weights. One step:

    1. per-sample gradients of every trainable parameter: ``vmap`` over the samples of ``grad`` of the
       one-sample loss (``functional_call`` on ``x_i.unsqueeze(0)``, mean cross-entropy), as
       ``get_per_sample_gradients`` (which differentiates every trainable parameter whatever the scored layer);
    2. the task vector from the two state dicts, reference minus current (``compute_task_vector``);
    3. the negated per-sample gradients: the published code negates the scored parameter's [B, ...] tensor;
       with every parameter scored that tensor is the flattened per-sample gradients concatenated, [B, P];
    4. each sample's score in a Python loop over samples: flattened gradient . unit task vector
       (``compute_similarity``), then the weights ``softmax(score / tau)``;
    5. every parameter's gradient as ``sum(w * g, dim=0)`` with ``w`` broadcast over the per-sample
       gradients (``gradient_calibration``).

    ``vectorised=True`` keeps step 1 and replaces steps 2-5 by what is cheapest once per-sample gradients
    are materialised: no concatenated copy, all scores from one product per parameter, and every gradient
    from one ``tensordot``. It shows how much of the reference's cost is ``vmap(grad)`` itself.
    """

    def __init__(self, reference: torch.nn.Module, temperature: float = 1.0, vectorised: bool = False):
        super().__init__()
        self.reference, self.temperature, self.vectorised = reference, temperature, vectorised

    def loss(self, model, x, y=None, ids=None, *, epoch=None):
        from torch.func import functional_call, grad, vmap

        from keepset.training.gradmimic import _AddGrads

        ids, y, logits, losses = self._forward(model, x, y, ids, epoch)
        self._remember(ids, y, logits, losses, x)
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach() for n, b in model.named_buffers()}

        def one_sample_loss(xi, yi, p):
            return torch.nn.functional.cross_entropy(functional_call(model, (p, buffers), (xi.unsqueeze(0),)),
                                                     yi.unsqueeze(0))

        grads = vmap(grad(one_sample_loss, argnums=2), in_dims=(0, 0, None))(x, y, params)
        names = list(params)
        b = len(y)
        if self.vectorised:
            ref = dict(self.reference.named_parameters())
            v = {n: ref[n].detach() - params[n] for n in names}
            v_norm = torch.sqrt(sum((t * t).sum() for t in v.values()))
            scores = -sum(grads[n].reshape(b, -1) @ v[n].reshape(-1) for n in names) / v_norm
            w = torch.softmax(scores / self.temperature, 0)
            step_grads = {n: torch.tensordot(w, grads[n], 1) for n in names}
        else:
            current, target = model.state_dict(), self.reference.state_dict()
            task_vector = torch.cat([(target[n] - current[n]).flatten() for n in names])
            neg_grads = -torch.cat([grads[n].flatten(1) for n in names], 1)
            unit = torch.nn.functional.normalize(task_vector, p=2, dim=0)
            scores = torch.empty(b, device=neg_grads.device)
            for i, g in enumerate(neg_grads):  # the published code's loop over samples
                scores[i] = torch.dot(g.flatten(), unit)
            w = torch.softmax(scores / self.temperature, 0)
            step_grads = {n: torch.sum(w.reshape((b,) + (1,) * (grads[n].dim() - 1)) * grads[n], dim=0)
                          for n in names}
        # the step's gradients are the ones just computed: the returned zero only carries them to the parameters
        live = dict(model.named_parameters())
        return _AddGrads.apply([step_grads[n] for n in names], *[live[n] for n in names])


def _method(variant: str, reference: torch.nn.Module) -> OnlineMethod | None:
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
    parser.add_argument("--batch-size", type=int, default=256, help="samples per step (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of every variant (default 5)")
    parser.add_argument("--steps", type=int, default=4, help="steps per run, the first one is warm-up (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-reference", action="store_true",
                        help="leave out the two slow vmap(grad) variants")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--device", default="cpu", help="where the steps run: cpu (default), cuda, cuda:N or mps")


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
    try:
        return script_main(sys.modules[__name__], argv)
    except (ValueError, FileExistsError) as exc:
        print(f"keepset bench overhead: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
