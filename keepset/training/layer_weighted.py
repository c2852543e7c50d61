"""``LayerWeightedLoss``: the base of online methods whose per-sample weights come from per-sample gradients.

The published Grad-Mimic code (github.com/zihengh1/Grad-Mimic, ``run.py``) trains every gradient-weighting
method through ``gradient_calibration``: with ``calibrate_mimic_layer_only`` (its default) the mimic layer
(``heads.head.weight``) receives ``sum_i w_i g_i`` and every other parameter the batch-mean gradient. Here
that is ``apply_to="layers"`` (the scored parameters, ``layers``, default the final Linear's weight);
``apply_to="all"`` gives every parameter ``sum_i w_i g_i`` (``loss = sum_i w_i L_i``).

Subclasses implement ``batch_weights(model, x, y, ids, logits, losses) -> [B]`` and may use:

- ``sample_terms(model, x, y, logits, direction, need_norms)``: ``<g_i, D>`` [B] and ``||g_i||`` [B] over the
  scored parameters for a direction ``D`` (a dict name -> tensor): closed form over the final Linear under
  cross-entropy, ``keepset.models.sample_gradients.alignment_terms`` otherwise; no loop over samples;
- ``mean_gradient(model, x, y)``: the gradient of the mean loss of another batch (a clean or comparison
  batch) with respect to the scored parameters, from one forward and one backward that leave the model's
  buffers (BatchNorm statistics) untouched.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

from keepset.models.mimic import _closed_form_applies, last_linear_name, linear_closed_form_terms, resolve_layers
from keepset.training.online import WeightedLoss, model_outputs

APPLY_TO = ("layers", "all")


def check_apply_to(apply_to: str) -> str:
    if apply_to not in APPLY_TO:
        raise ValueError(f"apply_to must be 'layers' (weights on the scored parameters, the mean gradient "
                         f"elsewhere) or 'all', got {apply_to!r}")
    return apply_to


def layer_weighted_loss(model: nn.Module, losses: torch.Tensor, w: torch.Tensor, names: Sequence[str]
                        ) -> torch.Tensor:
    """A loss whose gradient is ``sum_i w_i g_i`` on the parameters ``names`` and the mean gradient elsewhere.

    losses : [B] per-sample losses (with their graph); w : [B] weights (detached; any sign). The correction
    ``sum_i (w_i - 1/B) g_i`` is computed now and added to those parameters' gradients when the returned
    loss is backpropagated (scaled by whatever multiplies the loss, e.g. a GradScaler's scale).
    """
    from keepset.training.gradmimic import _AddGrads

    params = dict(model.named_parameters())
    leaves = [n for n in names if params[n].requires_grad]
    mean = losses.mean()
    if not leaves:
        return mean
    b = losses.shape[0]
    corr = torch.autograd.grad(((w - 1.0 / b) * losses).sum(), [params[n] for n in leaves], retain_graph=True,
                               allow_unused=True)
    return mean + _AddGrads.apply(list(corr), *[params[n] for n in leaves])


class LayerWeightedLoss(WeightedLoss):
    """A ``WeightedLoss`` whose weights may apply to the scored parameters only and may be signed.

    Parameters
    ----------
    layers : the scored parameters (``keepset.models.mimic.resolve_layers``): None = the final Linear's weight
        (the published code's mimic layer), "all", parameter names or module prefixes.
    apply_to : "layers" (published ``calibrate_mimic_layer_only``) or "all".
    start_epoch : epochs before this one train on the plain mean loss.
    """

    signed = False  # whether the weights may be negative (the published raw / opt weightings)

    def __init__(self, *, layers: str | Sequence[str] | None = None, apply_to: str = "layers", start_epoch: int = 0,
                 loss_fn=None):
        super().__init__(loss_fn)
        self.layers, self.apply_to, self.start_epoch = layers, check_apply_to(apply_to), int(start_epoch)
        self.names: list[str] = []
        self._model = None
        self._head: dict = {}

    def _setup(self, model: nn.Module) -> None:
        if model is not self._model:
            self.names = resolve_layers(model, self.layers)
            self._model = model

    def loss(self, model, x, y=None, ids=None, *, epoch=None):
        if not torch.is_grad_enabled():
            raise ValueError(f"{type(self).__name__}.loss runs in a training step: call it with gradients enabled")
        self._setup(model)
        head = dict(model.named_modules()).get(_last_linear_or_none(model))
        self._head = {}
        handle = None if head is None else head.register_forward_hook(_keep_head(self._head))
        try:
            ids, y, logits, losses = self._forward(model, x, y, ids, epoch)
        finally:
            if handle is not None:
                handle.remove()
        self._remember(ids, y, logits, losses, x)
        if self.epoch < self.start_epoch:
            return losses.mean()
        w = self.batch_weights(model, x, y, ids, logits, losses)
        w = w.detach().to(device=losses.device, dtype=losses.dtype)
        if w.shape != losses.shape or not torch.isfinite(w).all() or (not self.signed and (w < 0).any()):
            raise ValueError(f"{type(self).__name__} produced invalid weights (need {len(losses)} finite"
                             f"{'' if self.signed else ', non-negative'} values)")
        self.last_weights = w
        if self.apply_to == "all":
            return (w * losses).sum()
        return layer_weighted_loss(model, losses, w, self.names)

    # ------------------------------------------------------------------ per-sample maths for subclasses
    def _closed_form(self, model, logits) -> str | None:
        last = _closed_form_applies(model, self.names, self.loss_fn)
        if last is None or self._head.get("out") is not logits or "h" not in self._head:
            return None
        return last

    def sample_terms(self, model: nn.Module, x, y: torch.Tensor, logits: torch.Tensor,
                     direction: dict[str, torch.Tensor], need_norms: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``<g_i, D>`` [B] and ``||g_i||`` [B] (None unless ``need_norms``) over the scored parameters, ``g_i`` the
        gradient of sample i's loss at the model's current weights; ``direction`` maps every scored parameter
        name to a tensor of its shape (zeros for norms only)."""
        last = self._closed_form(model, logits)
        if last is not None:
            dots, norms = linear_closed_form_terms(self._head["h"], logits, y, direction.get(f"{last}.weight"),
                                                   direction.get(f"{last}.bias"), need_norms)
            return -dots, norms
        from keepset.models.sample_gradients import alignment_terms

        if not torch.is_tensor(x):
            raise ValueError(f"{type(self).__name__} needs per-sample gradients through the model, which keepset "
                             "computes for tensor inputs only; score the final nn.Linear instead (layers=None)")
        dots, norms = alignment_terms(model, x, y, direction, self.loss_fn, need_norms)
        return -dots, norms

    def mean_gradient(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gradient of the mean loss over (x [C, ...], y [C]) w.r.t. the scored parameters (detached, float32),
        at the model's current weights; the model's buffers are not modified."""
        params = {n: p.detach() for n, p in model.named_parameters()}
        scored = {n: params[n].clone().requires_grad_(True) for n in self.names}
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        with torch.enable_grad():
            out = model_outputs(functional_call(model, ({**params, **scored}, buffers), (x,)))
            loss = self.loss_fn(out, y).mean()
            grads = torch.autograd.grad(loss, list(scored.values()), allow_unused=True)
        return {n: (torch.zeros_like(scored[n]) if g is None else g).detach().float() for n, g in zip(scored, grads)}

    def zero_direction(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return {n: torch.zeros_like(params[n], dtype=torch.float32) for n in self.names}


def direction_dot(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """``<a, b>`` over the parameters of two name -> tensor dicts (float64 scalar)."""
    return sum((a[n].double() * b[n].double()).sum() for n in a)


def _last_linear_or_none(model: nn.Module) -> str | None:
    try:
        return last_linear_name(model)
    except ValueError:
        return None


def _keep_head(store: dict):
    def hook(module, inp, out):
        if torch._C._functorch.peek_interpreter_stack() is None:
            store["h"], store["out"] = inp[0].detach(), out
    return hook


__all__ = ["LayerWeightedLoss", "layer_weighted_loss", "direction_dot", "check_apply_to", "APPLY_TO"]
