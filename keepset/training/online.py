"""Online methods: objects that turn a batch into the loss a training loop backpropagates.

Every online method (plain mean loss, Grad-Mimic, RHO-loss, GraNd weighting ...) has one verb::

    loss = method.loss(model, x, y, ids, epoch=e)     # a scalar tensor; then loss.backward(), optimizer.step()

so it drops into any PyTorch loop, keepset's ``fit``, a Lightning module or a Hugging Face ``Trainer``. The
method runs the forward pass itself (it may need to watch it), keeps what it saw of the batch in
``method.last_batch`` (ids, labels, logits, per-sample losses: the input of observers such as the
dynamics recorder), and returns a loss whose gradient is the method's update direction. Per-sample
losses come from ``loss_fn(outputs, y) -> [B]`` (cross-entropy by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from keepset._ids import as_ids
from keepset.models.mimic import per_sample_cross_entropy


@dataclass
class BatchOutput:
    """What an online method saw of one batch (detached).

    ids : [B] sample ids (numpy int64 or str); y : [B] labels (or None); logits : [B, K] model outputs;
    losses : [B] per-sample losses; step / epoch : the method's counters for this batch; x : the batch's
    inputs (a reference, not a copy).
    """

    ids: Any
    y: torch.Tensor | None
    logits: torch.Tensor
    losses: torch.Tensor
    step: int
    epoch: int
    x: Any = None


def call_model(model: nn.Module, x):
    """``model(x)``, ``model(*x)`` for a tuple/list, ``model(**x)`` for a dict."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def model_outputs(out):
    """The logits of a model's output: a tensor, or a Hugging Face ``ModelOutput``'s ``.logits``."""
    if torch.is_tensor(out):
        return out
    logits = getattr(out, "logits", None)
    if torch.is_tensor(logits):
        return logits
    return out


def batch_size_of(x) -> int:
    if isinstance(x, dict):
        x = next(iter(x.values()))
    if isinstance(x, (tuple, list)):
        x = x[0]
    return int(x.shape[0])


def check_batch(x, y, ids):
    """Validate one batch: ``x`` its inputs (or its size as an int), ``y`` [B] labels or None, ``ids`` [B].

    Returns (ids as a numpy array, y as a long tensor or None); one-line ValueErrors otherwise.
    """
    b = x if isinstance(x, int) else batch_size_of(x)
    if b == 0:
        raise ValueError("empty batch: a batch needs at least one sample")
    if ids is None:
        raise ValueError("pass the batch's sample ids (ids=...): keepset records and joins every sample by id")
    ids = as_ids(ids, "batch ids")
    if len(ids) != b:
        raise ValueError(f"the batch has {b} inputs but {len(ids)} ids")
    if y is not None:
        if not torch.is_tensor(y):
            y = torch.as_tensor(np.asarray(y))
        if y.dim() != 1 or y.shape[0] != b:
            raise ValueError(f"labels must be a 1-D tensor of {b} class indices, got shape {tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
        y = y.long()
    if torch.is_tensor(x) and x.is_floating_point() and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x.reshape(b, -1))).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"the batch holds NaN or inf inputs (rows {bad}); clean them before training")
    return ids, y


def check_label_range(y: torch.Tensor | None, outputs, loss_fn) -> None:
    """Cross-entropy labels must index the model's outputs [B, K]: ValueError otherwise."""
    if y is None or loss_fn is not per_sample_cross_entropy or not torch.is_tensor(outputs) or outputs.dim() != 2:
        return
    k = outputs.shape[1]
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"labels hold values outside [0, {k}) (min {lo}, max {hi}); the model has {k} outputs: "
                         "map the labels to class indices")


def per_sample_losses(loss_fn, outputs, y, b: int) -> torch.Tensor:
    """``loss_fn(outputs, y)`` checked to be one loss per sample, [B]."""
    check_label_range(y, outputs, loss_fn)
    losses = loss_fn(outputs, y)
    if not torch.is_tensor(losses) or losses.shape != (b,):
        raise ValueError(f"loss_fn must return one loss per sample, shape ({b},), got "
                         f"{tuple(losses.shape) if torch.is_tensor(losses) else type(losses).__name__}")
    return losses


class OnlineMethod:
    """Base class: counters (``step``, ``epoch``), the forward pass and the per-sample losses.

    Subclasses implement ``loss``. ``epoch`` may be set by the caller (``method.epoch = e``) or passed to
    ``loss``; ``step`` counts the batches seen.
    """

    def __init__(self, loss_fn: Callable | None = None):
        self.loss_fn = loss_fn or per_sample_cross_entropy
        self.step = 0
        self.epoch = 0
        self.last_batch: BatchOutput | None = None

    def _forward(self, model: nn.Module, x, y, ids, epoch):
        """Forward pass and per-sample losses [B]; validates the batch. Returns (ids, y, logits, losses)."""
        if epoch is not None:
            self.epoch = int(epoch)
        ids, y = check_batch(x, y, ids)
        logits = model_outputs(call_model(model, x))
        return ids, y, logits, per_sample_losses(self.loss_fn, logits, y, len(ids))

    def _remember(self, ids, y, logits, losses, x=None) -> None:
        self.last_batch = BatchOutput(ids, None if y is None else y.detach(),
                                      logits.detach() if torch.is_tensor(logits) else logits,
                                      losses.detach(), self.step, self.epoch, x)
        self.step += 1

    def loss(self, model: nn.Module, x, y=None, ids=None, *, epoch: int | None = None) -> torch.Tensor:
        raise NotImplementedError


class MeanLoss(OnlineMethod):
    """Plain training: the mean of the per-sample losses."""

    def loss(self, model, x, y=None, ids=None, *, epoch=None):
        ids, y, logits, losses = self._forward(model, x, y, ids, epoch)
        self._remember(ids, y, logits, losses, x)
        return losses.mean()


class WeightedLoss(OnlineMethod):
    """Base of methods that weight the samples of a batch: ``loss = sum_i w_i L_i`` with
    ``w = batch_weights(...)`` (non-negative, summing to 1)."""

    start_epoch = 0
    last_weights: torch.Tensor | None = None

    def batch_weights(self, model, x, y, ids, logits, losses) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model, x, y=None, ids=None, *, epoch=None):
        ids, y, logits, losses = self._forward(model, x, y, ids, epoch)
        self._remember(ids, y, logits, losses, x)
        if self.epoch < self.start_epoch:
            return losses.mean()
        w = self.batch_weights(model, x, y, ids, logits, losses).detach().to(losses)
        if w.shape != losses.shape or not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"{type(self).__name__} produced invalid weights (need {len(losses)} finite, "
                             "non-negative values)")
        self.last_weights = w
        return (w * losses).sum()
