"""Online batch-selection baselines beside Grad-Mimic, as hooks that set ``state.sample_weights``.

- ``RhoLossHook`` (Mindermann et al. 2022, RHO-loss): in every batch keep the ``ratio`` of samples
  with the largest reducible loss ``loss_i - irreducible_loss_i``; the kept samples get uniform
  weights ``1/k``, the others 0. The irreducible loss comes from a model trained on the trusted
  split (``irreducible_losses``).
- ``GrandWeightHook``: weights proportional to each sample's gradient norm (GraNd), last layer in
  closed form ``||p_i - e_{y_i}|| sqrt(||h_i||^2 + 1)``, optionally sharpened by ``power``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from keepset._checks import check_ratio
from keepset.training.loop import BatchState, predict_logits


def irreducible_losses(model: nn.Module, x, y, batch_size: int = 1024) -> np.ndarray:
    """Cross-entropy of a (trusted-split) model on every sample: x [N, ...], y [N] -> float32 [N]."""
    logits = predict_logits(model, x, batch_size)
    y = torch.as_tensor(np.asarray(y)).long()
    if len(y) != len(logits):
        raise ValueError(f"x has {len(logits)} samples but y has {len(y)}")
    return torch.nn.functional.cross_entropy(logits, y, reduction="none").numpy().astype(np.float32)


class RhoLossHook:
    """RHO-loss batch selection: uniform weights over the top-``ratio`` reducible losses of each batch.

    Parameters
    ----------
    irreducible : float [N] irreducible loss of every training sample (``irreducible_losses``).
    ratio : fraction of each batch to train on, in (0, 1].
    start_epoch : epochs before this one train on the full batch.
    """

    def __init__(self, irreducible, ratio: float = 0.1, start_epoch: int = 0):
        arr = np.asarray(irreducible, dtype=np.float32)
        if arr.ndim != 1 or not np.isfinite(arr).all():
            raise ValueError("irreducible losses must be a finite 1-D array, one per training sample")
        self.irreducible = torch.from_numpy(arr)
        self.ratio, self.start_epoch = check_ratio(ratio), int(start_epoch)

    def on_train_start(self, model, n_samples: int, steps_per_epoch: int, epochs: int) -> None:
        if len(self.irreducible) != n_samples:
            raise ValueError(f"{len(self.irreducible)} irreducible losses for {n_samples} training samples")

    def batch_weights(self, state: BatchState) -> torch.Tensor:
        """[B] weights: 1/k on the k = max(1, round(ratio B)) largest reducible losses, 0 elsewhere."""
        irr = self.irreducible.to(state.losses.device)[state.indices]
        reducible = state.losses.detach().float() - irr
        b = len(reducible)
        k = min(b, max(1, int(round(self.ratio * b))))
        w = torch.zeros(b, dtype=torch.float32, device=reducible.device)
        w[torch.topk(reducible, k).indices] = 1.0 / k
        return w

    def on_batch(self, state: BatchState) -> None:
        if state.epoch >= self.start_epoch:
            state.sample_weights = self.batch_weights(state)
            state.weighted_params = None


class GrandWeightHook:
    """Weight each batch by per-sample gradient norms: ``w_i = n_i^power / sum_j n_j^power``.

    Needs the final Linear's inputs (``state.head_inputs``), which the training loop provides.
    """

    def __init__(self, power: float = 1.0, start_epoch: int = 0):
        if not np.isfinite(power) or power < 0:
            raise ValueError(f"power must be a finite number >= 0, got {power}")
        self.power, self.start_epoch = float(power), int(start_epoch)

    def batch_weights(self, state: BatchState) -> torch.Tensor:
        if state.head_inputs is None:
            raise ValueError("GraNd weighting needs the inputs of the model's final nn.Linear")
        p = torch.softmax(state.logits.detach().float(), dim=1)
        p[torch.arange(len(state.y)), state.y] -= 1.0
        h = state.head_inputs.detach().float().reshape(len(state.y), -1)
        norms = p.norm(dim=1) * torch.sqrt((h * h).sum(1) + 1.0)
        w = norms.pow(self.power)
        total = w.sum()
        return w / total if total > 0 else torch.full_like(w, 1.0 / len(w))

    def on_batch(self, state: BatchState) -> None:
        if state.epoch >= self.start_epoch:
            state.sample_weights = self.batch_weights(state)
            state.weighted_params = None
