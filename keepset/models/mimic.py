"""The Mimic Score: alignment of each sample's negative gradient with the direction
``V = theta_ref - theta`` towards a reference model's weights.

    proj_i   = < -g_i , V > / ||V||
    cos_i    = < -g_i , V > / (||g_i|| ||V||)
    normed_* = softmax(score / temperature) over the batch

``g_i`` is the gradient of sample i's loss with respect to the scored parameters only.

Two vectorised paths, no Python loop over samples:
- the final ``nn.Linear`` (the default layer) in closed form: for cross-entropy,
  ``g_i = (p_i - e_{y_i}) h_i^T`` so ``<-g_i, V> = -(p_i - e_{y_i})^T V h_i`` and
  ``||g_i|| = ||p_i - e_{y_i}|| ||h_i||`` (one matrix product for the batch);
- any other parameters through ``torch.func`` (see ``keepset.models.sample_gradients``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

MIMIC_METHODS = ("proj", "cos", "normed_proj", "normed_cos")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_sample_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample: logits [B, K], y [B] -> [B]."""
    return F.cross_entropy(logits, y, reduction="none")


def loss_couples_batch(loss_fn) -> bool:
    """Whether a per-sample loss couples the samples of a batch (sample i's loss depends on the others, as
    CLIP's contrastive loss does): declared by the loss with ``loss_fn.couples_batch = True``."""
    return bool(getattr(loss_fn, "couples_batch", False))


def last_linear_name(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` module in registration order (e.g. ``"head"``)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("the model has no nn.Linear layer; pass layers= explicitly")
    return names[-1]


def resolve_layers(model: nn.Module, layers: str | Sequence[str] | None = None) -> list[str]:
    """Parameter names to score.

    ``None``: the weight of the last ``nn.Linear``. ``"all"``: every trainable parameter.
    A string or list of strings: exact parameter names, or module prefixes (``"features.3"``)
    standing for every trainable parameter below that module.
    """
    params = {n: p for n, p in model.named_parameters()}
    trainable = [n for n, p in params.items() if p.requires_grad]
    if layers is None:
        return [f"{last_linear_name(model)}.weight"]
    if isinstance(layers, str):
        if layers == "all":
            if not trainable:
                raise ValueError("layers='all' but the model has no trainable parameter")
            return trainable
        layers = [layers]
    out: list[str] = []
    for item in layers:
        if item in params:
            hits = [item]
        else:
            hits = [n for n in trainable if n.startswith(item + ".")]
        if not hits:
            raise ValueError(f"layer {item!r} names no parameter or module of the model; "
                             f"parameters are: {', '.join(params)}")
        out += [h for h in hits if h not in out]
    return out


def check_same_space(model: nn.Module, reference: nn.Module, names: Sequence[str]) -> None:
    """Raise ValueError unless ``reference`` has every scored parameter with the model's shape.

    ``theta_ref - theta`` only means something when both live in the same weight space.
    """
    ref = dict(reference.named_parameters())
    mine = dict(model.named_parameters())
    for n in names:
        if n not in ref:
            raise ValueError(f"the reference has no parameter {n!r}: model and reference must share the "
                             "architecture (linear probing of a shared backbone, or fine-tuning from the same init)")
        if ref[n].shape != mine[n].shape:
            raise ValueError(f"parameter {n!r} has shape {tuple(mine[n].shape)} in the model but "
                             f"{tuple(ref[n].shape)} in the reference; they must share the weight space")


def direction(model: nn.Module, reference: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """``V = theta_ref - theta`` for each scored parameter (detached)."""
    check_same_space(model, reference, names)
    ref = dict(reference.named_parameters())
    mine = dict(model.named_parameters())
    return {n: (ref[n].detach().to(mine[n]) - mine[n].detach()) for n in names}


def direction_norm(v: dict[str, torch.Tensor]) -> torch.Tensor:
    """``||V||`` over all scored parameters; raises when it is zero (the direction is undefined)."""
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v.values())).float()
    if not torch.isfinite(norm):
        raise ValueError("theta_ref - theta holds NaN or inf; check the model and reference weights")
    if norm == 0:
        raise ValueError("the model equals the reference on the scored layers, so theta_ref - theta is zero "
                         "and the Mimic Score is undefined; score a model that differs from its reference")
    return norm


def scores_from_terms(dots: torch.Tensor, grad_norms: torch.Tensor | None, v_norm: torch.Tensor,
                      method: str = "proj", temperature: float = 1.0) -> torch.Tensor:
    """Turn ``dots_i = <-g_i, V>`` [B], ``||g_i||`` [B] and ``||V||`` into Mimic Scores [B]."""
    if method not in MIMIC_METHODS:
        raise ValueError(f"unknown mimic method {method!r}; choose one of {MIMIC_METHODS}")
    if method.endswith("cos"):
        if grad_norms is None:
            raise ValueError("cosine methods need the per-sample gradient norms")
        # a zero gradient has no direction: its cosine is defined as 0
        score = torch.where(grad_norms > 0, dots / (grad_norms.clamp_min(1e-30) * v_norm), torch.zeros_like(dots))
    else:
        score = dots / v_norm
    if method.startswith("normed"):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        score = torch.softmax(score / temperature, dim=0)
    return score


def linear_closed_form_terms(h: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                             v_weight: torch.Tensor | None, v_bias: torch.Tensor | None,
                             need_norms: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``<-g_i, V>`` and ``||g_i||`` for the final Linear under cross-entropy.

    h [B, d] inputs of the layer, logits [B, K] its outputs, y [B];
    v_weight [K, d] and v_bias [K] the direction (either may be None when not scored).
    Returns dots [B] and norms [B] (None unless ``need_norms``).
    """
    r = torch.softmax(logits.detach().float(), dim=1)
    r[torch.arange(len(y)), y] -= 1.0  # r_i = p_i - e_{y_i}
    h = h.detach().float().reshape(len(y), -1)
    dots = torch.zeros(len(y), dtype=torch.float32, device=r.device)
    if v_weight is not None:
        dots = dots - ((r @ v_weight.float()) * h).sum(1)
    if v_bias is not None:
        dots = dots - r @ v_bias.float()
    norms = None
    if need_norms:
        r2 = (r * r).sum(1)
        sq = torch.zeros_like(r2)
        if v_weight is not None:
            sq = sq + r2 * (h * h).sum(1)
        if v_bias is not None:
            sq = sq + r2
        norms = sq.sqrt()
    return dots, norms


def _closed_form_applies(model: nn.Module, names: Sequence[str], loss_fn) -> str | None:
    """The final Linear's module name when only its weight/bias are scored under cross-entropy."""
    if loss_fn is not None and loss_fn is not per_sample_cross_entropy:
        return None
    last = last_linear_name(model)
    allowed = {f"{last}.weight", f"{last}.bias"}
    return last if set(names) <= allowed else None


def mimic_scores(model: nn.Module, reference: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 layers: str | Sequence[str] | None = None, method: str = "proj",
                 temperature: float = 1.0, loss_fn: LossFn | None = None) -> torch.Tensor:
    """Mimic Score of every sample of a batch.

    Parameters
    ----------
    model, reference : nn.Module of the same architecture (same parameter names and shapes).
    x : Tensor [B, ...] inputs; y : Tensor int64 [B] labels.
    layers : None (weight of the last nn.Linear), "all", a parameter name, a module prefix, or a list.
    method : "proj", "cos", "normed_proj" or "normed_cos".
    temperature : softmax temperature of the normed methods (> 0).
    loss_fn : per-sample loss ``(logits [B, K], y [B]) -> [B]``; cross-entropy by default.

    Returns
    -------
    Tensor float32 [B]; for the normed methods it sums to 1 over the batch.
    """
    if method not in MIMIC_METHODS:
        raise ValueError(f"unknown mimic method {method!r}; choose one of {MIMIC_METHODS}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    names = resolve_layers(model, layers)
    v = direction(model, reference, names)
    v_norm = direction_norm(v)
    need_norms = method.endswith("cos")
    y = y.long()
    last = _closed_form_applies(model, names, loss_fn)
    if last is not None:
        captured = {}
        module = dict(model.named_modules())[last]
        handle = module.register_forward_hook(lambda m, inp, out: captured.update(h=inp[0], out=out))
        try:
            with torch.no_grad():
                logits = model(x)
        finally:
            handle.remove()
        if captured.get("out") is logits:  # the Linear really is the last operation
            dots, norms = linear_closed_form_terms(captured["h"], logits, y, v.get(f"{last}.weight"),
                                                   v.get(f"{last}.bias"), need_norms)
            return scores_from_terms(dots, norms, v_norm, method, temperature)
    from keepset.models.sample_gradients import alignment_terms

    dots, norms = alignment_terms(model, x, y, v, loss_fn or per_sample_cross_entropy, need_norms)
    return scores_from_terms(dots, norms, v_norm, method, temperature)
