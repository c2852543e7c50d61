"""Record the raw training dynamics of every sample at every visit (no second training loop).

``DynamicsObserver`` reads each batch's logits (from the forward of the step, before the optimiser step,
as Toneva et al. do for forgetting events) and records, by sample id, the fields of ``DYNAMICS_FIELDS`` in
a ``DynamicsRecorder``. The scores themselves (forgetting, AUM, EL2N, GraNd, ...) are plain functions in
``keepset.scoring.dynamics`` over per-epoch arrays (``keepset.recorder.dense_by_epoch``).

Gradient norms (GraNd):
- ``grad_norms="last"`` (default): the final ``nn.Linear``'s weight and bias in closed form,
  ``||g_i|| = ||p_i - e_{y_i}|| * sqrt(||h_i||^2 + 1)`` (one batched expression);
- ``grad_norms="all"``: every trainable parameter through vmapped per-sample gradients
  (``keepset.models.sample_gradients``), much slower;
- ``None``: not recorded.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from keepset.recorder import DynamicsRecorder
from keepset.training.online import BatchOutput

DYNAMICS_FIELDS = ("loss", "correct", "margin", "el2n", "grand", "entropy", "confidence", "prob_margin")
GRAD_NORM_MODES = ("last", "all", None)


def batch_dynamics(logits: torch.Tensor, y: torch.Tensor, losses: torch.Tensor | None = None,
                   head_inputs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-sample raw quantities of one batch: logits [B, K], y [B] -> {field: float32 [B]}.

    ``grand`` (last-layer weight + bias gradient norm under cross-entropy) is included when
    ``head_inputs`` [B, d] (the inputs of the final Linear) are given.
    """
    z = logits.detach().float()
    y = y.long()
    rows = torch.arange(len(y), device=z.device)
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    out = {"loss": -logp[rows, y] if losses is None else losses.detach().float()}
    out["correct"] = (z.argmax(1) == y).float()
    other = z.clone()
    other[rows, y] = -torch.inf
    out["margin"] = z[rows, y] - other.max(1).values
    r = p.clone()
    r[rows, y] -= 1.0
    r_norm = r.norm(dim=1)
    out["el2n"] = r_norm
    out["entropy"] = -(p * logp).nan_to_num(0.0).sum(1)
    top2 = p.topk(2, dim=1).values
    out["confidence"] = top2[:, 0]
    out["prob_margin"] = top2[:, 0] - top2[:, 1]
    if head_inputs is not None:
        h = head_inputs.detach().float().reshape(len(y), -1)
        out["grand"] = r_norm * torch.sqrt((h * h).sum(1) + 1.0)
    return out


class DynamicsObserver:
    """Observer of ``fit`` (or any loop: call ``on_batch(method.last_batch, model, head_inputs)``) that records
    per-sample dynamics by id into a ``DynamicsRecorder``.

    Parameters
    ----------
    recorder : a DynamicsRecorder whose fields include the recorded ones; None creates an in-memory one
        with exactly those fields (``observer.recorder``).
    fields : which fields to record (default all of ``DYNAMICS_FIELDS``).
    grad_norms : "last", "all" or None (see the module docstring).
    """

    def __init__(self, recorder: DynamicsRecorder | None = None, *, fields: Sequence[str] = DYNAMICS_FIELDS,
                 grad_norms: str | None = "last", loss_fn=None):
        unknown = set(fields) - set(DYNAMICS_FIELDS)
        if unknown:
            raise ValueError(f"unknown dynamics fields {sorted(unknown)}; choose from {DYNAMICS_FIELDS}")
        if grad_norms not in GRAD_NORM_MODES:
            raise ValueError(f"grad_norms must be one of {GRAD_NORM_MODES}, got {grad_norms!r}")
        self.fields = tuple(f for f in fields if f != "grand" or grad_norms is not None)
        if recorder is None:
            recorder = DynamicsRecorder(None, self.fields)
        if tuple(recorder.fields) != self.fields:
            raise ValueError(f"the recorder stores fields {list(recorder.fields)}; this observer records "
                             f"{list(self.fields)}: create it with fields={self.fields}")
        self.recorder, self.grad_norms, self.loss_fn = recorder, grad_norms, loss_fn

    def on_batch(self, batch: BatchOutput, model: nn.Module, head_inputs: torch.Tensor | None = None) -> None:
        head = head_inputs if self.grad_norms == "last" else None
        vals = batch_dynamics(batch.logits, batch.y, batch.losses, head)
        if "grand" in self.fields and (self.grad_norms == "all" or head is None):
            vals["grand"] = self._all_layer_norms(batch, model)
        self.recorder.record(batch.ids, batch.step, batch.epoch, **{f: vals[f] for f in self.fields})

    def on_train_end(self, model: nn.Module) -> None:
        self.recorder.flush()

    def _all_layer_norms(self, batch: BatchOutput, model: nn.Module) -> torch.Tensor:
        from keepset.models.mimic import per_sample_cross_entropy
        from keepset.models.sample_gradients import alignment_terms

        if not torch.is_tensor(batch.x):
            raise ValueError("whole-network gradient norms need tensor inputs")
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        zero = {n: torch.zeros_like(params[n]) for n in names}
        _, norms = alignment_terms(model, batch.x, batch.y, zero, self.loss_fn or per_sample_cross_entropy,
                                   need_norms=True)
        return norms
