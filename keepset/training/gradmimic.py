"""Grad-Mimic as training hooks: online re-weighting by ``softmax(mimic / tau)`` and the recording
of every sample's Mimic Score at every step (the input of the Stage 2 offline filter).

The fused step (default): when every scored parameter belongs to an ``nn.Linear`` / ``nn.Conv2d``
layer, the hook captures each scored layer's input ``a`` during the training forward, runs the
step's only backward pass on ``sum_i L_i`` (which gives the per-sample output gradients ``delta_i``
of those layers and the gradients of every other parameter), and then, per scored layer and without
any further pass through the network:

- ``<-g_i, V>`` and ``||g_i||`` for every sample from (a, delta) (``keepset.models.layer_identities``);
- the weights ``w = softmax(score / tau)``;
- the re-weighted gradient ``sum_i w_i g_i = sum_i w_i delta_i a_i^T`` (one weight-gradient product).

The other parameters keep the mean gradient. The gradients go to the loop through
``BatchState.param_grads``, so a Grad-Mimic step costs one forward, one backward and, per scored
layer, about one layer forward for the scores and one weight-gradient product.
Any other layer type falls back to ``keepset.models.sample_gradients.alignment_terms`` (jvp + vmap)
and the loop's weighted backward.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from keepset.models.layer_identities import ActivationCapture, LayerGrads, batch_coupling_modules, covered_modules
from keepset.models.mimic import (
    _closed_form_applies, direction, direction_norm, linear_closed_form_terms, per_sample_cross_entropy,
    resolve_layers, scores_from_terms,
)
from keepset.models.sample_gradients import layer_terms
from keepset.training.loop import BatchState
from keepset.training.recorder import DynamicsRecorder


class GradMimicHook:
    """Compute the Mimic Score of every batch and (optionally) re-weight the batch with it.

    Parameters
    ----------
    reference : nn.Module sharing the model's weight space.
    layers : scored parameters (see ``keepset.models.mimic.resolve_layers``); default the final Linear's weight.
    method : base score, "proj" or "cos"; the weights are ``softmax(score / temperature)``.
    temperature : softmax temperature tau (> 0).
    reweight : apply the weights (False: score and record only, i.e. plain SGD with recording).
    start_epoch : first epoch at which weights apply (recording happens from the start).
    apply_to : "layers" (weights apply to the scored layers, others keep the mean gradient) or "all".
    recorder : a ``DynamicsRecorder`` with fields "mimic" and "mimic_normed", or None.
    fused : use the fused step (module docstring) whenever the scored layers allow it.

    The fused step consumes the batch's autograd graph: a hook after it cannot backpropagate through
    ``state.losses``. To record Mimic Scores while another hook (RHO-loss, GraNd) weights the batch, put that
    hook first and use ``reweight=False``: the scores are then computed without touching its weights.
    """

    def __init__(self, reference: nn.Module, *, layers: str | Sequence[str] | None = None, method: str = "proj",
                 temperature: float = 1.0, reweight: bool = True, start_epoch: int = 0, apply_to: str = "layers",
                 recorder: DynamicsRecorder | None = None, loss_fn=None, fused: bool = True):
        if method not in ("proj", "cos"):
            raise ValueError(f"method must be 'proj' or 'cos' (the weights are its softmax), got {method!r}")
        if apply_to not in ("layers", "all"):
            raise ValueError(f"apply_to must be 'layers' or 'all', got {apply_to!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.reference, self.layers, self.method = reference, layers, method
        self.temperature, self.reweight, self.start_epoch = float(temperature), reweight, int(start_epoch)
        self.apply_to, self.recorder, self.loss_fn = apply_to, recorder, loss_fn
        self.fused = bool(fused)
        self.names: list[str] = []
        self._closed_form: str | None = None
        self._plan: tuple[dict, ActivationCapture, dict] | None = None
        self._trainable: list[str] = []

    def on_train_start(self, model: nn.Module, n_samples: int, steps_per_epoch: int, epochs: int) -> None:
        self.names = resolve_layers(model, self.layers)
        self.reference.to(next(model.parameters()).device)
        direction(model, self.reference, self.names)  # fail early on a mismatched reference
        self._closed_form = _closed_form_applies(model, self.names, self.loss_fn)
        self._trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self._release()
        self._plan = self._fused_plan(model) if self.fused else None

    @property
    def uses_fused_step(self) -> bool:
        """Whether the fused step is set up (after ``on_train_start``)."""
        return self._plan is not None

    def _fused_plan(self, model: nn.Module):
        if batch_coupling_modules(model):
            return None
        covered, rest = covered_modules(model, self.names)
        if rest or not covered:
            return None
        if self.apply_to == "all" and not set(self._trainable) <= set(self.names):
            return None
        modules = dict(model.named_modules())
        watched = {n: modules[n] for n in covered}
        return covered, ActivationCapture(watched), watched

    def _release(self) -> None:
        if self._plan is not None:
            self._plan[1].remove()
        self._plan = None

    def on_step_end(self, state: BatchState) -> None:
        if self._plan is not None:
            self._plan[1].reset()

    def on_train_end(self, model: nn.Module) -> None:
        self._release()

    def __del__(self):  # a run that raised never reached on_train_end: take the forward hooks off the model
        try:
            self._release()
        except Exception:
            pass

    def batch_scores(self, state: BatchState) -> torch.Tensor:
        """Raw Mimic Scores [B] of the batch at the current weights."""
        v = direction(state.model, self.reference, self.names)
        v_norm = direction_norm(v)
        need_norms = self.method == "cos"
        if self._closed_form is not None and state.head_inputs is not None:
            last = self._closed_form
            dots, norms = linear_closed_form_terms(state.head_inputs, state.logits, state.y,
                                                   v.get(f"{last}.weight"), v.get(f"{last}.bias"), need_norms)
        else:
            from keepset.models.sample_gradients import alignment_terms

            dots, norms = alignment_terms(state.model, state.x, state.y, v,
                                          self.loss_fn or per_sample_cross_entropy, need_norms)
        return scores_from_terms(dots, norms, v_norm, self.method)

    def on_batch(self, state: BatchState) -> None:
        # the fused step computes the step's gradients itself, with its own weights (uniform when not
        # re-weighting); when an earlier hook already weighted the batch it only scores, unfused
        earlier = state.sample_weights is not None or state.param_grads is not None
        if self._plan is not None and not earlier and self._fused_batch(state):
            return
        score = self.batch_scores(state)
        normed = torch.softmax(score / self.temperature, dim=0)
        if self.recorder is not None:
            self.recorder.record(state.epoch, state.step, state.indices, mimic=score, mimic_normed=normed)
        if self.reweight and state.epoch >= self.start_epoch:
            state.sample_weights = normed
            state.weighted_params = None if self.apply_to == "all" else self.names

    def _fused_batch(self, state: BatchState) -> bool:
        """Scores, weights and every trainable parameter's gradient from the step's single backward.

        Returns False (nothing done) when this forward did not call each scored layer exactly once.
        """
        covered, capture, modules = self._plan
        b = len(state.y)
        calls = capture.single_calls(b)
        capture.reset()
        if set(calls) != set(covered) or not state.losses.requires_grad:
            return False
        params = dict(state.model.named_parameters())
        trainable = set(self._trainable)
        own = [f"{m}.{leaf}" for m in covered for leaf in ("weight", "bias")
               if getattr(modules[m], leaf, None) is not None and f"{m}.{leaf}" in trainable]
        others = [n for n in self._trainable if n not in own]
        zs = [calls[m][1] for m in covered]
        grads = torch.autograd.grad(state.losses.sum(), zs + [params[n] for n in others], allow_unused=True)
        need_norms = self.method == "cos"
        layers = {m: LayerGrads(modules[m], calls[m][0], d if d is not None else torch.zeros_like(z))
                  for m, z, d in zip(covered, zs, grads[:len(zs)])}
        v = direction(state.model, self.reference, self.names)
        v_norm = direction_norm(v)
        dots, sq = layer_terms(layers, covered, v, need_norms)
        score = scores_from_terms(dots, sq.clamp_min(0).sqrt() if need_norms else None, v_norm, self.method)
        normed = torch.softmax(score / self.temperature, dim=0)
        if self.recorder is not None:
            self.recorder.record(state.epoch, state.step, state.indices, mimic=score, mimic_normed=normed)
        reweight = self.reweight and state.epoch >= self.start_epoch
        uniform = torch.full_like(normed, 1.0 / b)
        w = normed if reweight else uniform
        out = {n: (g / b if g is not None else torch.zeros_like(params[n]))
               for n, g in zip(others, grads[len(zs):])}
        for m, lg in layers.items():  # scored leaves get sum_i w_i g_i, unscored ones the mean gradient
            want = {leaf: (w if covered[m][leaf] else uniform) for leaf in ("weight", "bias") if f"{m}.{leaf}" in own}
            if len(want) == 2 and want["weight"] is want["bias"]:
                out[f"{m}.weight"], out[f"{m}.bias"] = lg.weighted(want["weight"], True, True)
                continue
            for leaf, ww in want.items():
                gw, gb = lg.weighted(ww, leaf == "weight", leaf == "bias")
                out[f"{m}.{leaf}"] = gw if leaf == "weight" else gb
        if reweight:
            state.sample_weights = normed
            state.weighted_params = None if self.apply_to == "all" else self.names
        state.param_grads = out
        return True
