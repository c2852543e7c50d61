"""Time of the Mimic Score terms under CLIP's coupled loss, three ways side by side in one run:

- ``closed form``: ``alignment_terms(path="auto")``: with norms (``cos``), projection layers from the loss's
  factored Jacobian ([B, B] products) and deeper Linear layers from Jacobian rows backpropagated from the
  loss's output Jacobians through the model only; the numerators alone (``proj``) by one forward-mode pass,
  the cheapest exact form (so ``proj`` times the same code as ``jvp``);
- ``jvp``: ``alignment_terms(path="jvp")``: forward-mode numerators, norms from the rows of the loss
  vector's Jacobian (``vmap`` over ``vjp`` with the batch present);
- ``per-pair loop``: one ``torch.autograd.grad(losses[i], params, retain_graph=True)`` per pair (it gives
  the numerators and the norms at once, so it is timed once per layer choice).

The model is a ``TwoTowerProbe`` (image projection; text MLP of ``--text-hidden`` then projection) on random
frozen embeddings, the reference a perturbed copy (a shared weight space). ``proj`` needs the numerators
only, ``cos`` the norms too. Every variant of a repeat runs in rotating order; reported: the median over
repeats, the ratio to the closed form, and the largest relative error against the loop.

    python -m keepset.bench.coupled --batch 256 --d-img 512 --d-txt 512 --dim 256
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

from keepset._argtypes import positive_int, seed
from keepset.bench._script import script_main

LAYER_CHOICES = ("image_proj.weight", "text_mlp.0.weight", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=positive_int, default=256, help="pairs per batch B")
    parser.add_argument("--d-img", type=positive_int, default=512, help="size of the frozen image embeddings")
    parser.add_argument("--d-txt", type=positive_int, default=512, help="size of the frozen text embeddings")
    parser.add_argument("--dim", type=positive_int, default=256, help="size of the shared space")
    parser.add_argument("--text-hidden", type=positive_int, default=512, help="width of the text MLP's layer")
    parser.add_argument("--layers", nargs="+", default=list(LAYER_CHOICES), choices=LAYER_CHOICES,
                        help="scored parameters, each measured separately")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed repeats; one untimed warm-up first")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the random towers and embeddings")
    parser.add_argument("--f64-check", action="store_true",
                        help="also run the per-pair loop once in float64 and report each float32 variant's error "
                             "against it (the float32 loop is itself off by about 2e-5 on deeper layers' norms)")


def _loop_terms(model, x, names, v):
    """Numerators and norms by autograd, one pair at a time with the batch present."""
    import torch

    from keepset.losses import clip_loss

    params = dict(model.named_parameters())
    losses = clip_loss(model(*x))
    dots, norms = [], []
    flat_v = torch.cat([v[n].reshape(-1) for n in names])
    for i in range(len(losses)):
        gs = torch.autograd.grad(losses[i], [params[n] for n in names], retain_graph=True)
        g = torch.cat([t.reshape(-1) for t in gs])
        dots.append(-(g @ flat_v))
        norms.append(g.norm())
    return torch.stack(dots), torch.stack(norms)


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _err(result, want_dots, want_norms) -> float:
    """Largest relative error of (dots, norms or None) against the wanted ones."""
    dots, norms = result
    return _rel(dots, want_dots) if norms is None else max(_rel(dots, want_dots), _rel(norms, want_norms))


def run(args) -> int:
    import torch

    from keepset.losses import clip_loss
    from keepset.models import TwoTowerProbe
    from keepset.models.mimic import resolve_layers
    from keepset.models.sample_gradients import alignment_terms

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = TwoTowerProbe(args.d_img, args.d_txt, args.dim, text_hidden=(args.text_hidden,))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=gen))
    x = (torch.randn(args.batch, args.d_img, generator=gen), torch.randn(args.batch, args.d_txt, generator=gen))
    rows, f64_rows = [], []
    for layers in args.layers:
        names = resolve_layers(model, layers)
        ref = dict(reference.named_parameters())
        v = {n: (ref[n] - p).detach() for n, p in model.named_parameters() if n in names}
        variants = {
            ("closed", "proj"): lambda: alignment_terms(model, x, None, v, clip_loss, False, path="auto"),
            ("closed", "cos"): lambda: alignment_terms(model, x, None, v, clip_loss, True, path="auto"),
            ("jvp", "proj"): lambda: alignment_terms(model, x, None, v, clip_loss, False, path="jvp"),
            ("jvp", "cos"): lambda: alignment_terms(model, x, None, v, clip_loss, True, path="jvp"),
            ("loop", "both"): lambda: _loop_terms(model, x, names, v),
        }
        keys = list(variants)
        times = {k: [] for k in keys}
        results = {}
        for rep in range(args.repeats + 1):
            order = keys[rep % len(keys):] + keys[:rep % len(keys)]
            for k in order:
                t0 = time.perf_counter()
                out = variants[k]()
                elapsed = time.perf_counter() - t0
                if rep:
                    times[k].append(elapsed)
                results[k] = out
        want_dots, want_norms = results[("loop", "both")]
        loop_ms = 1e3 * statistics.median(times[("loop", "both")])
        if args.f64_check:
            m64 = copy.deepcopy(model).double()
            d64, n64 = _loop_terms(m64, tuple(t.double() for t in x), names, {k: t.double() for k, t in v.items()})
            f64_rows.append((layers, {k: _err(results[k], d64, n64) for k in keys}))
        for method in ("proj", "cos"):
            ms = {p: 1e3 * statistics.median(times[(p, method)]) for p in ("closed", "jvp")}
            err = {p: _err(results[(p, method)], want_dots, want_norms) for p in ("closed", "jvp")}
            rows.append((layers, method, ms["closed"], ms["jvp"], loop_ms, err["closed"], err["jvp"]))
    print(f"Coupled (CLIP) loss, Mimic Score terms per batch: B = {args.batch}, d_img = {args.d_img}, "
          f"d_txt = {args.d_txt}, dim = {args.dim}, text MLP width {args.text_hidden}; torch {torch.__version__}, "
          f"{args.threads} thread(s); median of {args.repeats} repeats")
    print()
    print("| layers | method | closed form (ms) | jvp (ms) | per-pair loop (ms) | loop / closed | jvp / closed "
          "| max rel. err. closed, jvp (vs loop) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for layers, method, closed, jvp_ms, loop_ms, e_closed, e_jvp in rows:
        print(f"| {layers} | {method} | {closed:.1f} | {jvp_ms:.1f} | {loop_ms:.1f} | {loop_ms / closed:.1f}x | "
              f"{jvp_ms / closed:.1f}x | {e_closed:.1e}, {e_jvp:.1e} |")
    if f64_rows:
        print()
        print("Largest relative error against the per-pair loop in float64:")
        print()
        print("| layers | closed proj | closed cos | jvp proj | jvp cos | float32 loop |")
        print("|---|---:|---:|---:|---:|---:|")
        for layers, e in f64_rows:
            print(f"| {layers} | {e[('closed', 'proj')]:.1e} | {e[('closed', 'cos')]:.1e} | {e[('jvp', 'proj')]:.1e} "
                  f"| {e[('jvp', 'cos')]:.1e} | {e[('loop', 'both')]:.1e} |")
    return 0


def main(argv=None) -> int:
    return script_main(sys.modules[__name__], argv)


if __name__ == "__main__":
    sys.exit(main())
