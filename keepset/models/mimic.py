"""The Mimic Score: alignment of each sample's negative gradient with the direction
``V = theta_ref - theta`` towards a reference model's weights.

    proj_i   = < -g_i , V > / ||V||
    cos_i    = < -g_i , V > / (||g_i|| ||V||)
    normed_* = softmax(score / temperature) over the batch

``g_i`` is the gradient of sample i's loss with respect to the scored parameters only, with the whole
batch present: for a loss that couples the batch (CLIP's, ``keepset.losses.clip_loss``), sample i's loss
depends on every sample and so does g_i.

Two vectorised paths, no Python loop over samples:
- the final ``nn.Linear`` (the default layer) in closed form: for cross-entropy,
  ``g_i = (p_i - e_{y_i}) h_i^T`` so ``<-g_i, V> = -(p_i - e_{y_i})^T V h_i`` and
  ``||g_i|| = ||p_i - e_{y_i}|| ||h_i||`` (one matrix product for the batch);
- any other parameters or loss through ``keepset.models.sample_gradients.alignment_terms``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from keepset.losses import per_sample_cross_entropy  # noqa: F401  (re-exported for compatibility)

MIMIC_METHODS = ("proj", "cos", "normed_proj", "normed_cos")
LossFn = Callable[..., torch.Tensor]


def last_linear_name(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` module in registration order (e.g. ``"head"``)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("the model has no nn.Linear layer; pass layers= explicitly")
    return names[-1]


def resolve_layers(model: nn.Module, layers: str | Sequence[str] | None = None) -> list[str]:
    """Parameter names to score.

    ``None``: the model's ``default_mimic_layers`` when it declares them (``TwoTowerProbe``: both
    projections' weights), else the weight of the last ``nn.Linear``. ``"all"``: every trainable parameter.
    A string or list of strings: exact parameter names, or module prefixes (``"features.3"``)
    standing for every trainable parameter below that module.
    """
    params = {n: p for n, p in model.named_parameters()}
    trainable = [n for n, p in params.items() if p.requires_grad]
    if layers is None:
        default = getattr(model, "default_mimic_layers", None)
        if default:
            return resolve_layers(model, list(default))
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


def check_same_space(model: nn.Module, reference: nn.Module, names: Sequence[str], strict: bool = False) -> None:
    """Raise ValueError unless ``reference`` has every scored parameter with the model's shape.

    ``theta_ref - theta`` only means something when both live in the same weight space.
    ``strict``: also require the same architecture everywhere, every parameter of either model present in
    the other with the same shape (a reference differing outside the scored layers does not share the
    model's backbone or initialisation); ``mimic_scores(..., allow_partial_reference=True)`` skips this.
    """
    ref = dict(reference.named_parameters())
    mine = dict(model.named_parameters())
    if strict:
        only_mine = [n for n in mine if n not in ref]
        only_ref = [n for n in ref if n not in mine]
        shapes = [n for n in mine if n in ref and mine[n].shape != ref[n].shape]
        if only_mine or only_ref or shapes:
            what = (f"parameters only in the model: {only_mine[:3]}" if only_mine else
                    f"parameters only in the reference: {only_ref[:3]}" if only_ref else
                    f"shapes differ at {shapes[:3]}")
            raise ValueError(f"the reference has another architecture than the model ({what}); a Mimic Score needs "
                             "a reference sharing the model's backbone or initialisation; pass "
                             "allow_partial_reference=True to score anyway on the shared layers")
    for n in names:
        if n not in ref:
            raise ValueError(f"the reference has no parameter {n!r}: model and reference must share the "
                             "architecture (linear probing of a shared backbone, or fine-tuning from the same init)")
        if ref[n].shape != mine[n].shape:
            raise ValueError(f"parameter {n!r} has shape {tuple(mine[n].shape)} in the model but "
                             f"{tuple(ref[n].shape)} in the reference; they must share the weight space")


def direction(model: nn.Module, reference: nn.Module, names: Sequence[str], strict: bool = False
              ) -> dict[str, torch.Tensor]:
    """``V = theta_ref - theta`` for each scored parameter (detached); ``strict`` as in ``check_same_space``."""
    check_same_space(model, reference, names, strict)
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


def _as_tensor(a, name: str, device: torch.device, float_dtype: torch.dtype) -> torch.Tensor:
    """A tensor on ``device`` (numpy arrays and sequences converted); floating values cast to ``float_dtype``."""
    if not torch.is_tensor(a):
        arr = np.asarray(a)
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise ValueError(f"{name} must be numeric (a tensor or a numpy array), got dtype {arr.dtype}")
        a = torch.from_numpy(np.ascontiguousarray(arr))
    if a.is_floating_point():
        return a.to(device=device, dtype=float_dtype)
    return a.to(device)


def _non_finite_rows(name: str, tensors: Sequence[torch.Tensor]) -> None:
    """Raise ValueError naming the rows (samples) of ``tensors`` holding NaN or inf."""
    bad = None
    for t in tensors:
        if t.is_floating_point() or t.is_complex():
            rows = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
            bad = rows if bad is None else bad | rows
    if bad is not None and bool(bad.any()):
        pos = torch.nonzero(bad).flatten()
        raise ValueError(f"{name} has {len(pos)} rows with NaN or inf values (first at positions "
                         f"{pos[:5].cpu().tolist()}); drop or impute those samples before scoring")


def check_batch(model: nn.Module, x, y, loss_fn: LossFn | None = None) -> tuple[tuple[torch.Tensor, ...], object]:
    """Validate and convert a batch for scoring, before any work; returns (inputs as a tuple, y).

    x : tensor / numpy array / nested list [B, ...], or a tuple of them (the model is called as ``model(*x)``).
    y : class labels [B] for the default cross-entropy (integers, or integral floats), else whatever
        ``loss_fn`` takes (None for image-text pairs). Floating inputs are cast to the model's dtype and
        everything moved to its device. Raises a one-line ValueError for an empty batch, mismatched sizes,
        NaN/inf inputs (naming the rows), and labels that are not 1-D integer class indices.
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    raw = x if isinstance(x, tuple) else (x,)  # a list is one array of samples, as in fit
    if not raw:
        raise ValueError("x is an empty tuple; pass the model's inputs")
    args = tuple(_as_tensor(a, "x", device, dtype) for a in raw)
    if any(a.dim() == 0 for a in args):
        raise ValueError("x must have a batch dimension [B, ...]; got a scalar")
    sizes = [a.shape[0] for a in args]
    if len(set(sizes)) != 1:
        raise ValueError(f"the tensors of x must share their batch size, got {sizes}")
    b = sizes[0]
    if b == 0:
        raise ValueError("the batch is empty (0 samples); pass at least one sample")
    ce = loss_fn is None or loss_fn is per_sample_cross_entropy
    if y is None:
        if ce:
            raise ValueError("cross-entropy needs class labels y [B]; pass y, or a loss_fn for unlabelled data "
                             "(keepset.losses.clip_loss for image-text pairs)")
    else:
        y = _as_tensor(y, "y", device, dtype)
        if ce:
            if y.dim() != 1:
                raise ValueError(f"y must be 1-D class indices [B], got shape {tuple(y.shape)}; "
                                 "pass y.reshape(-1) for a column of labels")
            if y.dtype == torch.bool or y.is_complex():
                raise ValueError(f"y must be integer class indices, got dtype {y.dtype}")
            if y.is_floating_point():
                if not (torch.isfinite(y).all() and (y == y.round()).all()):
                    raise ValueError(f"y must be integer class indices, got non-integral {y.dtype} values; "
                                     "they would be truncated")
            y = y.long()
        if y.dim() > 0 and y.shape[0] != b:
            raise ValueError(f"x has {b} samples but y has {y.shape[0]}")
        if y.is_floating_point() and y.dim() > 0:
            _non_finite_rows("y", [y])
    _non_finite_rows("x", args)
    return args, y


def _forward_checked(model: nn.Module, args: tuple[torch.Tensor, ...]):
    """``model(*args)`` without gradients; a shape the model cannot take becomes a one-line ValueError."""
    try:
        with torch.no_grad():
            return model(*args)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        shapes = ", ".join(str(tuple(a.shape[1:])) for a in args)
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"the model cannot take inputs of per-sample shape {shapes} ({first_line}); "
                         "pass inputs of the shape it was built for") from None


def _check_labels_against(outputs, y: torch.Tensor) -> None:
    """Cross-entropy: outputs must be logits [B, K] and every label in [0, K)."""
    if not torch.is_tensor(outputs) or outputs.dim() != 2:
        shape = tuple(outputs.shape) if torch.is_tensor(outputs) else type(outputs).__name__
        raise ValueError(f"cross-entropy needs class logits [B, K] but the model returns {shape}; pass "
                         "loss_fn= (keepset.losses.clip_loss for a two-tower model)")
    k = outputs.shape[1]
    bad = (y < 0) | (y >= k)
    if bool(bad.any()):
        raise ValueError(f"y has {int(bad.sum())} labels outside [0, {k}) (e.g. {y[bad][:5].cpu().tolist()}) but "
                         f"the model has {k} outputs; map them to known classes")


def mimic_scores(model: nn.Module, reference: nn.Module, x, y=None, *,
                 layers: str | Sequence[str] | None = None, method: str = "proj",
                 temperature: float = 1.0, loss_fn: LossFn | None = None,
                 allow_partial_reference: bool = False) -> torch.Tensor:
    """Mimic Score of every sample of a batch.

    Parameters
    ----------
    model, reference : nn.Module of the same architecture (same parameter names and shapes).
    x : Tensor / numpy array [B, ...] inputs, or a tuple of them (the model is called as ``model(*x)``,
        e.g. ``(image embeddings [B, d_img], text embeddings [B, d_txt])`` for a ``TwoTowerProbe``).
    y : int64 [B] class labels for the default cross-entropy; for another ``loss_fn``, its targets or None.
    layers : None (the model's default: the weight of the last nn.Linear, or both projections of a
        ``TwoTowerProbe``), "all", a parameter name, a module prefix, or a list.
    method : "proj", "cos", "normed_proj" or "normed_cos".
    temperature : softmax temperature of the normed methods (> 0).
    loss_fn : per-sample loss ``(outputs, y) -> [B]``; cross-entropy by default. A loss coupling the
        batch (``keepset.losses.clip_loss``, or one marked with ``keepset.losses.coupled``) is scored
        exactly: g_i is the gradient of sample i's loss with the whole batch present.
    allow_partial_reference : score even when the reference's architecture differs from the model's
        outside the scored layers (refused by default: such a reference rarely shares the weight space).

    Returns
    -------
    Tensor float32 [B]; for the normed methods it sums to 1 over the batch.
    """
    if method not in MIMIC_METHODS:
        raise ValueError(f"unknown mimic method {method!r}; choose one of {MIMIC_METHODS}")
    if method.startswith("normed") and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    args, y = check_batch(model, x, y, loss_fn)
    names = resolve_layers(model, layers)
    v = direction(model, reference, names, strict=not allow_partial_reference)
    v_norm = direction_norm(v)
    need_norms = method.endswith("cos")
    ce = loss_fn is None or loss_fn is per_sample_cross_entropy
    last = _closed_form_applies(model, names, loss_fn)
    captured = {}
    handle = None
    if last is not None:
        module = dict(model.named_modules())[last]
        handle = module.register_forward_hook(lambda m, inp, out: captured.update(h=inp[0], out=out))
    try:
        outputs = _forward_checked(model, args)
    finally:
        if handle is not None:
            handle.remove()
    if ce:
        _check_labels_against(outputs, y)
    if last is not None and captured.get("out") is outputs:  # the Linear really is the last operation
        dots, norms = linear_closed_form_terms(captured["h"], outputs, y, v.get(f"{last}.weight"),
                                               v.get(f"{last}.bias"), need_norms)
        return scores_from_terms(dots, norms, v_norm, method, temperature)
    from keepset.models.sample_gradients import alignment_terms

    x_in = args if isinstance(x, tuple) else args[0]
    dots, norms = alignment_terms(model, x_in, y, v, loss_fn or per_sample_cross_entropy, need_norms)
    return scores_from_terms(dots, norms, v_norm, method, temperature)
