"""Grad-Mimic as training hooks: online re-weighting by ``softmax(mimic / tau)`` and the recording
of every sample's Mimic Score at every step (the input of the Stage 2 offline filter)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from keepset.models.mimic import (
    _closed_form_applies, direction, direction_norm, linear_closed_form_terms, per_sample_cross_entropy,
    resolve_layers, scores_from_terms,
)
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
    """

    def __init__(self, reference: nn.Module, *, layers: str | Sequence[str] | None = None, method: str = "proj",
                 temperature: float = 1.0, reweight: bool = True, start_epoch: int = 0, apply_to: str = "layers",
                 recorder: DynamicsRecorder | None = None, loss_fn=None):
        if method not in ("proj", "cos"):
            raise ValueError(f"method must be 'proj' or 'cos' (the weights are its softmax), got {method!r}")
        if apply_to not in ("layers", "all"):
            raise ValueError(f"apply_to must be 'layers' or 'all', got {apply_to!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.reference, self.layers, self.method = reference, layers, method
        self.temperature, self.reweight, self.start_epoch = float(temperature), reweight, int(start_epoch)
        self.apply_to, self.recorder, self.loss_fn = apply_to, recorder, loss_fn
        self.names: list[str] = []
        self._closed_form: str | None = None

    def on_train_start(self, model: nn.Module, n_samples: int, steps_per_epoch: int, epochs: int) -> None:
        self.names = resolve_layers(model, self.layers)
        self.reference.to(next(model.parameters()).device)
        direction(model, self.reference, self.names)  # fail early on a mismatched reference
        self._closed_form = _closed_form_applies(model, self.names, self.loss_fn)

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
        score = self.batch_scores(state)
        normed = torch.softmax(score / self.temperature, dim=0)
        if self.recorder is not None:
            self.recorder.record(state.epoch, state.step, state.indices, mimic=score, mimic_normed=normed)
        if self.reweight and state.epoch >= self.start_epoch:
            state.sample_weights = normed
            state.weighted_params = None if self.apply_to == "all" else self.names
