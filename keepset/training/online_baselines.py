"""Online batch-selection baselines beside Grad-Mimic, as online methods (``method.loss(model, x, y, ids)``).

- ``RhoLoss`` (Mindermann et al. 2022, RHO-loss): in every batch keep the ``ratio`` of samples with the
  largest reducible loss ``loss_i - irreducible_loss_i``; the kept samples get uniform weights ``1/k``, the
  others 0. The irreducible loss of each sample (looked up by id) comes from a model trained on the trusted
  split (``irreducible_losses``). ``mode="softmax"``: the published Grad-Mimic code's ``--mode rho``
  (github.com/zihengh1/Grad-Mimic, ``run.py`` ``main``): ``w = softmax(loss_i - ref_loss_i)`` over the batch,
  ``ref_loss_i`` the reference model's cross-entropy on the same (noisy) label, every parameter trained by
  ``(our_loss @ per_w).backward()`` with ``per_w`` not detached, so the gradient also flows through the weights:
  ``sum_j w_j (1 + (L_j - sum_i w_i L_i) / T) grad L_j``. keepset reproduces that gradient exactly.
- ``GrandWeight``: weights proportional to each sample's gradient norm (GraNd), last layer in closed form
  ``||p_i - e_{y_i}|| sqrt(||h_i||^2 + 1)``, optionally sharpened by ``power``. ``mode="softmax"``: the
  published code's ``--mode grad-norm``: ``w = softmax(||g_i||)`` (temperature 1), ``g_i`` the gradient of the
  mimic layer only (the final Linear's weight: ``||p_i - e_{y_i}|| ||h_i||``), applied to that layer only
  (``calibrate_mimic_layer_only``), the other parameters keeping the mean gradient.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from keepset._checks import check_ratio
from keepset._ids import check_ids
from keepset.models.mimic import last_linear_name
from keepset.training.layer_weighted import LayerWeightedLoss, check_apply_to
from keepset.training.loop import predict_logits
from keepset.training.online import WeightedLoss

RHO_MODES = ("topk", "softmax")
GRAND_MODES = ("power", "softmax")


def irreducible_losses(model: nn.Module, x, y, batch_size: int = 1024) -> np.ndarray:
    """Cross-entropy of a (trusted-split) model on every sample: x [N, ...], y [N] -> float32 [N]."""
    logits = predict_logits(model, x, batch_size)
    y = torch.as_tensor(np.asarray(y)).long()
    if len(y) != len(logits):
        raise ValueError(f"x has {len(logits)} samples but y has {len(y)}")
    return torch.nn.functional.cross_entropy(logits, y, reduction="none").numpy().astype(np.float32)


class RhoLoss(WeightedLoss):
    """RHO-loss batch selection: uniform weights over the top-``ratio`` reducible losses of each batch, or
    (``mode="softmax"``, the published Grad-Mimic code) the softmax of the reducible losses.

    Parameters
    ----------
    irreducible : float [N] irreducible loss of every training sample (``irreducible_losses``).
    ids : [N] the ids of those samples (default 0..N-1); batches are looked up by id.
    ratio : fraction of each batch to train on, in (0, 1] (``mode="topk"``).
    mode : "topk" (RHO-loss as Mindermann et al.) or "softmax" (``softmax((L_i - irreducible_i) / temperature)``,
        the published Grad-Mimic ``--mode rho``, temperature 1 there; as there, the loss ``sum_i w_i L_i`` keeps
        the weights in the graph, so its gradient is ``sum_j w_j (1 + (L_j - sum_i w_i L_i) / T) grad L_j``).
    temperature : softmax temperature (> 0) of ``mode="softmax"``.
    start_epoch : epochs before this one train on the full batch.
    """

    def __init__(self, irreducible, ids=None, *, ratio: float = 0.1, start_epoch: int = 0, loss_fn=None,
                 mode: str = "topk", temperature: float = 1.0):
        super().__init__(loss_fn)
        if mode not in RHO_MODES:
            raise ValueError(f"mode must be 'topk' (RHO-loss selection) or 'softmax' (the published Grad-Mimic "
                             f"code's weighting), got {mode!r}")
        self.mode, self.temperature = mode, _positive(temperature, "temperature")
        arr = np.asarray(irreducible, dtype=np.float32)
        if arr.ndim != 1 or not np.isfinite(arr).all():
            raise ValueError("irreducible losses must be a finite 1-D array, one per training sample")
        ids = check_ids(np.arange(len(arr)) if ids is None else ids, "ids")
        if len(ids) != len(arr):
            raise ValueError(f"{len(arr)} irreducible losses but {len(ids)} ids")
        order = np.argsort(ids, kind="stable")
        self._ids, self._irreducible = ids[order], torch.from_numpy(arr[order])
        self.ratio, self.start_epoch = check_ratio(ratio), int(start_epoch)

    def loss(self, model, x, y=None, ids=None, *, epoch=None):
        if self.mode == "topk":
            return super().loss(model, x, y, ids, epoch=epoch)
        ids, y, logits, losses = self._forward(model, x, y, ids, epoch)
        self._remember(ids, y, logits, losses, x)
        if self.epoch < self.start_epoch:
            return losses.mean()
        w = torch.softmax((losses - self._irreducible_of(ids, losses)) / self.temperature, dim=0)  # not detached
        self.last_weights = w.detach()
        return (w * losses).sum()

    def _irreducible_of(self, ids, losses) -> torch.Tensor:
        from keepset.recorder import index_of

        pos = index_of(self._ids, ids)
        if (pos < 0).any():
            raise ValueError(f"{int((pos < 0).sum())} batch ids have no irreducible loss (e.g. {ids[pos < 0][:3].tolist()})")
        return self._irreducible[torch.from_numpy(pos)].to(device=losses.device, dtype=losses.dtype)

    def batch_weights(self, model, x, y, ids, logits, losses) -> torch.Tensor:
        """[B] weights: 1/k on the k = max(1, round(ratio B)) largest reducible losses, 0 elsewhere."""
        reducible = losses.detach().float() - self._irreducible_of(ids, losses).float()
        b = len(reducible)
        k = min(b, max(1, int(round(self.ratio * b))))
        w = torch.zeros(b, dtype=torch.float32, device=reducible.device)
        w[torch.topk(reducible, k).indices] = 1.0 / k
        return w


class GrandWeight(LayerWeightedLoss):
    """Weight each batch by per-sample gradient norms.

    mode "power" (default): ``w_i = n_i^power / sum_j n_j^power``, ``n_i`` the final Linear's (weight and bias)
    gradient norm under cross-entropy, in closed form; every parameter is re-weighted.
    mode "softmax" (the published Grad-Mimic code's ``--mode grad-norm``, ``run.py`` ``main``):
    ``w = softmax(n_i / temperature)`` (temperature 1 there), ``n_i`` the norm of the gradient of the scored
    parameters (``layers``, default the final Linear's weight, the published mimic layer), the weights applied
    to those parameters only (``apply_to="layers"``, the published ``calibrate_mimic_layer_only``).
    apply_to : None = the mode's own ("all" for power, "layers" for softmax), or "layers" / "all".
    """

    def __init__(self, power: float = 1.0, start_epoch: int = 0, loss_fn=None, *, mode: str = "power",
                 temperature: float = 1.0, layers=None, apply_to: str | None = None):
        if mode not in GRAND_MODES:
            raise ValueError(f"mode must be 'power' or 'softmax' (the published Grad-Mimic code's weighting), "
                             f"got {mode!r}")
        apply_to = check_apply_to(apply_to if apply_to is not None else ("all" if mode == "power" else "layers"))
        super().__init__(layers=layers, apply_to=apply_to, start_epoch=start_epoch, loss_fn=loss_fn)
        if not np.isfinite(power) or power < 0:
            raise ValueError(f"power must be a finite number >= 0, got {power}")
        if mode == "power" and layers is not None:
            raise ValueError("mode='power' scores the final Linear's weight and bias in closed form; layers= "
                             "applies to mode='softmax'")
        self.power, self.mode, self.temperature = float(power), mode, _positive(temperature, "temperature")
        self._head_inputs = None

    def loss(self, model, x, y=None, ids=None, *, epoch=None):
        if self.mode == "softmax":
            return super().loss(model, x, y, ids, epoch=epoch)
        head = dict(model.named_modules())[last_linear_name(model)]
        handle = head.register_forward_hook(lambda m, i, o: setattr(self, "_head_inputs", i[0].detach()))
        try:
            return WeightedLoss.loss(self, model, x, y, ids, epoch=epoch)
        finally:
            handle.remove()
            self._head_inputs = None

    def batch_weights(self, model, x, y, ids, logits, losses) -> torch.Tensor:
        if self.mode == "softmax":
            _, norms = self.sample_terms(model, x, y, logits, self.zero_direction(model), need_norms=True)
            return torch.softmax(norms.float() / self.temperature, dim=0)
        if self._head_inputs is None:
            raise ValueError("GraNd weighting needs the inputs of the model's final nn.Linear")
        p = torch.softmax(logits.detach().float(), dim=1)
        p[torch.arange(len(y)), y] -= 1.0
        h = self._head_inputs.float().reshape(len(y), -1)
        norms = p.norm(dim=1) * torch.sqrt((h * h).sum(1) + 1.0)
        w = norms.pow(self.power)
        total = w.sum()
        return w / total if total > 0 else torch.full_like(w, 1.0 / len(w))


def _positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0, got {value!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return v
