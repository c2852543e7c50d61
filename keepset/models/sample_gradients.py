"""Per-sample gradient maths over any subset of a network's parameters, vectorised with torch.func.

``alignment_terms`` returns, for every sample i of a batch, ``<-g_i, V>`` and ``||g_i||`` where
``g_i`` is the gradient of sample i's loss with respect to the parameters named in ``V``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names, loss_fn: Callable
                     ) -> dict[str, torch.Tensor]:
    """Gradients of each sample's loss w.r.t. the parameters ``names``: {name: [B, *param.shape]}."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    scored = {n: params[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in params.items() if n not in scored}

    def sample_loss(p, xi, yi):
        logits = functional_call(model, ({**fixed, **p}, buffers), (xi.unsqueeze(0),))
        return loss_fn(logits, yi.unsqueeze(0))[0]

    return vmap(grad(sample_loss), in_dims=(None, 0, 0))(scored, x, y)


def alignment_terms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: dict[str, torch.Tensor],
                    loss_fn: Callable, need_norms: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``<-g_i, V>`` [B] and ``||g_i||`` [B] (None unless ``need_norms``) over the parameters in ``v``."""
    grads = per_sample_grads(model, x, y, list(v), loss_fn)
    b = x.shape[0]
    dots = torch.zeros(b, dtype=torch.float32, device=x.device)
    sq = torch.zeros(b, dtype=torch.float32, device=x.device)
    for n, g in grads.items():
        flat = g.reshape(b, -1).float()
        dots = dots - flat @ v[n].reshape(-1).float()
        if need_norms:
            sq = sq + (flat * flat).sum(1)
    return dots, (sq.sqrt() if need_norms else None)
