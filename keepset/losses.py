"""Per-sample losses ``loss_fn(outputs, y) -> [B]`` and the marker for losses that couple a batch.

A loss *couples the batch* when sample i's loss depends on the other samples of the batch, as CLIP's
contrastive loss does: sample i's gradient ``g_i = dL_i / dtheta`` is then defined with the whole batch
present, and the shortcuts that assume independent samples (one backward of ``sum_i L_i`` read as every
sample's own gradient, ``vmap(grad)`` over single samples) give wrong answers. keepset's per-sample
gradient maths asks ``couples_batch(loss_fn)`` and takes an exact path for coupled losses.

Unknown user losses are treated as NOT coupled unless marked: decorate your own coupled loss with
``@keepset.losses.coupled``. ``check_declared_coupling`` catches most unmarked coupled losses at run
time (sample 0's loss alone differs from its loss with the batch present) and refuses them; a loss
marked ``couples_batch = False`` is declared independent and never probed.

This module sits with the models stage (it imports torch only).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

#: CLIP's initial temperature: logits are cosine similarities times 1 / 0.07
DEFAULT_LOGIT_SCALE = 1.0 / 0.07


def coupled(fn: Callable) -> Callable:
    """Mark ``fn`` (a per-sample loss ``(outputs, y) -> [B]``) as coupling the samples of a batch; returns ``fn``."""
    fn.couples_batch = True
    return fn


def declared_coupling(loss_fn: Callable | None) -> bool | None:
    """``loss_fn``'s ``couples_batch`` marker: True (coupled), False (declared independent, as
    ``per_sample_cross_entropy``) or None (unmarked); ``functools.partial`` is looked through."""
    while True:
        mark = getattr(loss_fn, "couples_batch", None)
        if mark is not None or not isinstance(loss_fn, functools.partial):
            return None if mark is None else bool(mark)
        loss_fn = loss_fn.func


def couples_batch(loss_fn: Callable | None) -> bool:
    """Whether ``loss_fn`` is marked as coupling the batch (``@coupled``).

    None (the default cross-entropy) and unmarked losses are not coupled.
    """
    return bool(declared_coupling(loss_fn))


def per_sample_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample: logits [B, K], y int64 [B] -> [B]. Samples are independent."""
    return F.cross_entropy(logits, y, reduction="none")


per_sample_cross_entropy.couples_batch = False  # declared independent: never probed


@coupled
def clip_loss(outputs, y: Any = None, *, logit_scale: float | torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric contrastive loss, one value per pair: [B].

    outputs : ``(img [B, d], txt [B, d])`` projected embeddings (L2-normalised here, as CLIP does), or
        ``(img, txt, scale)`` where ``scale`` is the multiplier of the cosine similarities (a positive
        scalar tensor, e.g. a model's ``log_scale.exp()``, as ``open_clip``'s models return it).
    y : unused (pairs carry no label); accepted so the loss has the ``loss_fn(outputs, y)`` signature.
    logit_scale : a fixed multiplier; default ``1 / 0.07``. Passing it while ``outputs`` carries a scale
        is an error.

    With ``S = scale * norm(img) norm(txt)^T`` [B, B], pair i's loss is the mean of its row's and its
    column's cross-entropy with target i:
    ``L_i = (logsumexp_k S_ik + logsumexp_k S_ki) / 2 - S_ii``, so ``mean_i L_i`` is CLIP's
    ``(CE(S, arange B) + CE(S^T, arange B)) / 2``. Each L_i depends on every pair of the batch
    (``clip_loss.couples_batch`` is True).
    """
    if not isinstance(outputs, (tuple, list)) or len(outputs) not in (2, 3):
        raise ValueError("clip_loss needs outputs = (image embeddings [B, d], text embeddings [B, d]) or "
                         "(image, text, logit scale); the model must return its two towers' embeddings")
    img, txt = outputs[0], outputs[1]
    if img.dim() != 2 or img.shape != txt.shape:
        raise ValueError(f"clip_loss needs image and text embeddings of the same shape [B, d], got "
                         f"{tuple(img.shape)} and {tuple(txt.shape)}")
    if len(outputs) == 3:
        if logit_scale is not None:
            raise ValueError("the model's outputs carry a logit scale and logit_scale= was passed too; pass one")
        scale = outputs[2]
    else:
        scale = DEFAULT_LOGIT_SCALE if logit_scale is None else logit_scale
    if not torch.is_tensor(scale) and not (math.isfinite(float(scale)) and float(scale) > 0):
        raise ValueError(f"the logit scale must be a positive finite number, got {scale!r}")
    sim = scale * (F.normalize(img, dim=1) @ F.normalize(txt, dim=1).t())
    return 0.5 * (torch.logsumexp(sim, 1) + torch.logsumexp(sim, 0)) - sim.diagonal()


@dataclass
class PairJacobian:
    """The Jacobian of a loss vector L [B] w.r.t. one tower's embeddings z [B, d], in factored form:

        dL_i / dz_a = [a == i] diag_i + beta[a, i] partner_i - gamma[a, i] own_a

    diag, partner, own : [B, d]; beta, gamma : [B, B] (indexed [a, i]). For CLIP's loss on the image tower,
    ``own`` is the normalised image embeddings and ``partner`` the normalised text embeddings (and the other
    way round for the text tower). B^2 (d + 2) numbers instead of the dense B^2 d.
    """

    diag: torch.Tensor
    beta: torch.Tensor
    partner: torch.Tensor
    gamma: torch.Tensor
    own: torch.Tensor

    def dense(self, rows: slice | None = None) -> torch.Tensor:
        """Rows i of the Jacobian as a dense [len(rows) (i), B (a), d] tensor (all rows by default)."""
        b = self.diag.shape[0]
        idx = torch.arange(b, device=self.diag.device)[rows if rows is not None else slice(None)]
        out = (self.beta[:, idx].t()[:, :, None] * self.partner[idx][:, None, :]
               - self.gamma[:, idx].t()[:, :, None] * self.own[None, :, :])
        out[torch.arange(len(idx), device=idx.device), idx] += self.diag[idx]
        return out


def _clip_scale(outputs, logit_scale):
    if len(outputs) == 3:
        return float(outputs[2].detach()) if torch.is_tensor(outputs[2]) else float(outputs[2])
    return DEFAULT_LOGIT_SCALE if logit_scale is None else float(logit_scale)


def clip_pair_jacobians(outputs, y: Any = None, *, logit_scale=None) -> list[PairJacobian | torch.Tensor] | None:
    """``clip_loss``'s Jacobian w.r.t. each of its inputs: [image side, text side] in factored form, and for
    a third (scale) output ``dL_i / ds`` [B]; None when an embedding is too close to zero for the
    normalisation's Jacobian to be its smooth form.

    With ``S = s zhat that^T``, row softmax ``Pr`` and column softmax ``Pc`` (over the images of each text),
    image side (own = zhat, partner = that, rho = ||z||):
    ``diag_i = (u_i - zhat_i (zhat_i . u_i)) / rho_i`` with ``u_i = s (Pr that / 2 - that)_i``,
    ``beta[a, i] = s Pc[a, i] / (2 rho_a)``, ``gamma[a, i] = beta[a, i] S[a, i] / s``;
    the text side is the same with the towers and ``Pr^T`` / ``Pc^T`` swapped.
    """
    with torch.no_grad():
        img, txt = outputs[0].detach(), outputs[1].detach()
        s = _clip_scale(outputs, logit_scale)
        rho_i, rho_t = img.norm(dim=1), txt.norm(dim=1)
        if bool((rho_i <= 1e-12).any()) or bool((rho_t <= 1e-12).any()):
            return None
        zi, zt = img / rho_i[:, None], txt / rho_t[:, None]
        sim = s * (zi @ zt.t())
        pr, pc = torch.softmax(sim, 1), torch.softmax(sim, 0)

        def side(own, partner, rho, u, alpha, cos):
            diag = (u - own * (own * u).sum(1, keepdim=True)) / rho[:, None]
            beta = alpha / rho[:, None]
            return PairJacobian(diag, beta, partner, beta * cos, own)

        cos = sim / s
        image = side(zi, zt, rho_i, s * (0.5 * (pr @ zt) - zt), 0.5 * s * pc, cos)
        text = side(zt, zi, rho_t, s * (0.5 * (pc.t() @ zi) - zi), 0.5 * s * pr.t(), cos.t())
        if len(outputs) == 2:
            return [image, text]
        # dL_i/ds = sum_ak dL_i/dS_ak cos_ak = (sum_k Pr_ik cos_ik + sum_a Pc_ai cos_ai) / 2 - cos_ii
        return [image, text, 0.5 * ((pr * cos).sum(1) + (pc * cos).sum(0)) - cos.diagonal()]


clip_loss.pair_jacobians = clip_pair_jacobians


def pair_jacobians_of(loss_fn: Callable | None) -> Callable | None:
    """``loss_fn``'s factored Jacobian function ``(outputs, y) -> [PairJacobian | None per output] | None`` when
    it declares one (``loss_fn.pair_jacobians``, as ``clip_loss`` does), with a ``functools.partial``'s
    keywords passed on; None otherwise."""
    keywords: dict = {}
    while isinstance(loss_fn, functools.partial) and getattr(loss_fn, "pair_jacobians", None) is None:
        if loss_fn.args:
            return None
        keywords = {**loss_fn.keywords, **keywords}
        loss_fn = loss_fn.func
    fn = getattr(loss_fn, "pair_jacobians", None)
    if fn is None:
        return None
    return functools.partial(fn, **keywords) if keywords else fn


def _first_rows(tree, b: int, k: int):
    """Every tensor of ``tree`` with a leading batch dimension ``b`` cut to its first ``k`` rows."""
    if torch.is_tensor(tree):
        return tree[:k] if tree.dim() > 0 and tree.shape[0] == b else tree
    if isinstance(tree, (tuple, list)):
        return type(tree)(_first_rows(t, b, k) for t in tree)
    if isinstance(tree, dict):
        return {key: _first_rows(t, b, k) for key, t in tree.items()}
    return tree


def check_declared_coupling(loss_fn: Callable, outputs, y, losses: torch.Tensor | None = None) -> None:
    """Raise ValueError when an unmarked ``loss_fn`` couples the batch.

    outputs : the model's outputs for the batch (tensors or a tuple/dict of tensors with a leading
    dimension B); y : the targets or None; losses : ``loss_fn(outputs, y)`` [B] if already computed.
    The test: sample 0's loss with the whole batch present against its loss on a batch of sample 0 alone
    (a cut of every tensor with leading dimension B). An independent loss gives the same value; a
    coupled one, like CLIP's, almost always does not. Marked losses and batches of one pass untested.
    """
    if declared_coupling(loss_fn) is not None:
        return
    with torch.no_grad():
        outputs = _detach(outputs)
        if losses is None:
            losses = loss_fn(outputs, y)
        b = losses.shape[0] if losses.dim() else 1
        if b < 2:
            return
        try:
            alone = loss_fn(_first_rows(outputs, b, 1), _first_rows(y, b, 1))
        except Exception as exc:
            raise ValueError(f"loss_fn fails on a batch of one sample ({type(exc).__name__}); if it couples the "
                             "samples of a batch, mark it with @keepset.losses.coupled") from None
        first, alone = losses.reshape(-1)[0].double(), alone.reshape(-1)[0].double()
    if not torch.isclose(first, alone, rtol=1e-4, atol=1e-5).item():
        raise ValueError(f"loss_fn couples the samples of a batch (sample 0's loss is {first.item():.6g} with the "
                         f"batch and {alone.item():.6g} alone) but is not marked; decorate it with "
                         "@keepset.losses.coupled so that scores take the exact coupled path")


def _detach(tree):
    if torch.is_tensor(tree):
        return tree.detach()
    if isinstance(tree, (tuple, list)):
        return type(tree)(_detach(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _detach(t) for k, t in tree.items()}
    return tree
