"""Per-sample gradient maths over any subset of a network's parameters, for a whole batch at once.

``alignment_terms`` returns, for every sample i of a batch, ``<-g_i, V>`` and ``||g_i||`` where
``g_i`` is the gradient of sample i's loss with respect to the parameters named in ``V``.

Three exact paths (``path=``), none with a Python loop over samples:

- ``"auto"`` (default): ``nn.Linear`` / ``nn.Conv2d`` parameters from one forward and one backward
  of ``sum_i L_i`` through the layer identities (``keepset.models.layer_identities``); any other
  parameter through ``"jvp"`` below. Per-sample gradients are never materialised for Linear layers;
  for Conv2d norms they are formed in bounded chunks only when cheaper than the Gram form.
- ``"jvp"``: the numerator of every sample at once as the directional derivative of the per-sample
  losses along V (forward-mode ``torch.func.jvp``, no per-sample gradient); the norms, when needed,
  from ``vmap(grad)``.
- ``"vmap"``: materialised per-sample gradients from ``vmap(grad)`` (the style of the published
  Grad-Mimic code; memory B x #params). Kept as a reference.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from keepset.models.layer_identities import (
    ActivationCapture, LayerGrads, check_batch_independent, covered_modules,
)

PATHS = ("auto", "jvp", "vmap")


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names, loss_fn: Callable
                     ) -> dict[str, torch.Tensor]:
    """Gradients of each sample's loss w.r.t. the parameters ``names``: {name: [B, *param.shape]}."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    scored = {n: params[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in params.items() if n not in scored}

    def sample_loss(p, xi, yi):
        logits = functional_call(model, ({**fixed, **p}, buffers), (xi.unsqueeze(0),))
        return loss_fn(logits, yi.unsqueeze(0))[0]

    return vmap(grad(sample_loss), in_dims=(None, 0, 0))(scored, x, y)


def directional_derivatives(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: dict[str, torch.Tensor],
                            loss_fn: Callable) -> torch.Tensor:
    """``<g_i, V>`` [B] for every sample: ``d/de L_i(theta + e V)`` at e = 0, one forward-mode pass."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    primals = {n: params[n] for n in v}
    tangents = {n: v[n].to(params[n]) for n in v}

    def losses(p):
        return loss_fn(functional_call(model, ({**params, **p}, buffers), (x,)), y)

    _, out = jvp(losses, (primals,), (tangents,))
    return out.float()


def _vmap_terms(model, x, y, v, loss_fn, need_norms):
    grads = per_sample_grads(model, x, y, list(v), loss_fn)
    b = x.shape[0]
    dots = torch.zeros(b, dtype=torch.float32, device=x.device)
    sq = torch.zeros(b, dtype=torch.float32, device=x.device)
    for n, g in grads.items():
        flat = g.reshape(b, -1).float()
        dots = dots - flat @ v[n].reshape(-1).float()
        if need_norms:
            sq = sq + (flat * flat).sum(1)
    return dots, sq


def _generic_terms(model, x, y, v, loss_fn, need_norms):
    """jvp numerators, vmap norms (only when needed)."""
    dots = -directional_derivatives(model, x, y, v, loss_fn)
    sq = torch.zeros_like(dots)
    if need_norms:
        for n, g in per_sample_grads(model, x, y, list(v), loss_fn).items():
            sq = sq + (g.reshape(len(x), -1).float() ** 2).sum(1)
    return dots, sq


def layer_terms(layers: dict[str, LayerGrads], covered: dict[str, dict[str, bool]], v: dict[str, torch.Tensor],
                need_norms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over captured layers of ``<-g_i, V>`` and ``||g_i||^2`` (each [B])."""
    dots = sq = None
    for mod_name, lg in layers.items():
        parts = covered[mod_name]
        vw = v.get(f"{mod_name}.weight") if parts["weight"] else None
        vb = v.get(f"{mod_name}.bias") if parts["bias"] else None
        d = -lg.dots(vw, vb).float()
        dots = d if dots is None else dots + d
        if need_norms:
            s = lg.sq_norms(parts["weight"], parts["bias"]).float()
            sq = s if sq is None else sq + s
    return dots, sq


def alignment_terms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: dict[str, torch.Tensor],
                    loss_fn: Callable, need_norms: bool = True, *, path: str = "auto"
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``<-g_i, V>`` [B] and ``||g_i||`` [B] (None unless ``need_norms``) over the parameters in ``v``.

    x [B, ...], y [B]; v maps parameter names to directions of the parameters' shapes;
    loss_fn maps (logits, y) to per-sample losses [B]; path is "auto", "jvp" or "vmap" (module docstring).
    """
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose one of {PATHS}")
    check_batch_independent(model)
    if path == "vmap":
        dots, sq = _vmap_terms(model, x, y, v, loss_fn, need_norms)
    elif path == "jvp":
        dots, sq = _generic_terms(model, x, y, v, loss_fn, need_norms)
    else:
        dots, sq = _auto_terms(model, x, y, v, loss_fn, need_norms)
    return dots, (sq.clamp_min(0).sqrt() if need_norms else None)


def _auto_terms(model, x, y, v, loss_fn, need_norms):
    covered, rest = covered_modules(model, list(v))
    b = x.shape[0]
    dots = torch.zeros(b, dtype=torch.float32, device=x.device)
    sq = torch.zeros(b, dtype=torch.float32, device=x.device)
    if covered:
        modules = dict(model.named_modules())
        capture = ActivationCapture({n: modules[n] for n in covered})
        try:
            with torch.enable_grad():
                logits = model(x)
                losses = loss_fn(logits, y)
            calls = capture.single_calls(b)
        finally:
            capture.remove()
        if losses.shape != (b,):
            raise ValueError(f"loss_fn must return one loss per sample, shape ({b},), got {tuple(losses.shape)}")
        for mod_name in [n for n in covered if n not in calls]:  # called twice, modified in place...
            parts = covered.pop(mod_name)
            rest += [f"{mod_name}.{leaf}" for leaf, scored in parts.items() if scored]
        if covered:
            zs = [calls[n][1] for n in covered]
            deltas = torch.autograd.grad(losses.sum(), zs, allow_unused=True)
            layers = {n: LayerGrads(modules[n], calls[n][0], d if d is not None else torch.zeros_like(z))
                      for n, z, d in zip(covered, zs, deltas)}
            d, s = layer_terms(layers, covered, v, need_norms)
            dots = dots + d
            if need_norms:
                sq = sq + s
    if rest:
        d, s = _generic_terms(model, x, y, {n: v[n] for n in rest}, loss_fn, need_norms)
        dots = dots + d
        sq = sq + s
    return dots, sq
