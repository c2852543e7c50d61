"""Per-sample gradient maths over any subset of a network's parameters, for a whole batch at once.

``alignment_terms`` returns, for every sample i of a batch, ``<-g_i, V>`` and ``||g_i||`` where
``g_i = dL_i / dtheta`` is the gradient of sample i's loss with respect to the parameters named in ``V``,
**with the whole batch present**: when the loss couples the batch (CLIP's contrastive loss,
``keepset.losses.couples_batch``), L_i depends on every sample and so does g_i.

Inputs: ``x`` is a tensor [B, ...] or a tuple of tensors (the model is called as ``model(*x)``);
``loss_fn(outputs, y)`` returns the per-sample losses [B]; ``y`` may be None.

Three exact paths (``path=``), none with a Python loop over samples:

- ``"auto"`` (default): ``nn.Linear`` / ``nn.Conv2d`` parameters from one forward and one backward
  of ``sum_i L_i`` through the layer identities (``keepset.models.layer_identities``), which hold
  because the samples are independent; any other parameter through ``"jvp"`` below.
  For a coupled loss, the numerators alone (no norms) come from ``"jvp"``, which is exact and cheapest;
  with norms, ``nn.Linear`` parameters take a coupled closed form: for a layer whose output is
  one of the loss's inputs (a projection feeding CLIP's loss) and a loss that declares its factored
  Jacobian (``clip_loss.pair_jacobians``), ``factored_linear_terms`` ([B, B] products only); for any
  other Linear, ``coupled_linear_terms`` (the Jacobian of the loss vector w.r.t. the layer's outputs,
  from a batched backward through the part of the graph after the layer); every other parameter ``"jvp"``.
- ``"jvp"``: the numerator of every sample at once as the directional derivative of the loss vector
  along V (forward-mode ``torch.func.jvp``, exact for coupled losses too); the norms, when needed,
  from ``vmap(grad)`` over single samples, or, for a coupled loss, from the rows of the Jacobian of
  the loss vector (``vmap`` over ``vjp`` with the batch present, in bounded chunks of rows).
- ``"vmap"``: materialised per-sample gradients (``per_sample_grads``): ``vmap(grad)`` (the style of
  the published Grad-Mimic code; memory B x #params), or the Jacobian's rows for a coupled loss.

An unmarked loss that couples the batch would be answered wrongly by the independent forms: every path
checks it (``keepset.losses.check_declared_coupling``) and refuses it.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from keepset.losses import (
    PairJacobian, check_declared_coupling, couples_batch, declared_coupling, pair_jacobians_of,
)
from keepset.models.layer_identities import (
    ActivationCapture, LayerGrads, batch_coupling_modules, check_batch_independent, covered_modules,
)

PATHS = ("auto", "jvp", "vmap")
#: elements of the largest Jacobian block (rows x parameters, or rows x batch x layer outputs) formed at once
CHUNK_ELEMENTS = 1 << 24


def as_args(x) -> tuple:
    """The model's positional inputs: ``x`` itself when a tuple/list of tensors, else ``(x,)``."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def batch_len(x) -> int:
    """Number of samples B of a batch ``x`` (a tensor or a tuple of tensors sharing their first dimension)."""
    args = as_args(x)
    if not args or not all(torch.is_tensor(a) and a.dim() > 0 for a in args):
        raise ValueError("x must be a tensor [B, ...] or a tuple of tensors [B, ...]")
    sizes = {a.shape[0] for a in args}
    if len(sizes) != 1:
        raise ValueError(f"the tensors of x must share their batch size, got {[a.shape[0] for a in args]}")
    return sizes.pop()


def _device(x) -> torch.device:
    return as_args(x)[0].device


def fused_step_applies(model: nn.Module, names: Sequence[str], loss_fn: Callable | None) -> bool:
    """Whether the fused one-backward Grad-Mimic step is exact for these scored parameters.

    It reads every sample's gradient off one backward of ``sum_i L_i`` (``LayerGrads``), which assumes
    independent samples. False when the loss couples the batch (``couples_batch``), when a module couples
    it (BatchNorm in training mode), or when a scored parameter is not an ``nn.Linear`` / ``nn.Conv2d``
    weight or bias. Otherwise use ``alignment_terms`` (exact on every path) and a weighted backward of
    ``sum_i w_i L_i``.
    """
    if couples_batch(loss_fn) or batch_coupling_modules(model):
        return False
    covered, rest = covered_modules(model, list(names))
    return bool(covered) and not rest


def _loss_of(model, params, buffers, args, y, loss_fn, with_outputs: bool = False):
    def losses(p):
        out = functional_call(model, ({**params, **p}, buffers), args)
        return (loss_fn(out, y), out) if with_outputs else loss_fn(out, y)
    return losses


def jacobian_rows(model: nn.Module, x, y, names: Sequence[str], loss_fn: Callable
                  ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Rows of the Jacobian of the loss vector, ``dL_i / dtheta`` for the parameters ``names``, in chunks.

    Yields (first row, {name: [c, *param.shape]}) over chunks of at most ``CHUNK_ELEMENTS`` elements.
    One forward of the whole batch, then ``vmap`` over ``vjp`` with one-hot cotangents: exact when the
    loss couples the batch (each row is a sample's gradient with the others present).
    """
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    primals = {n: params[n] for n in names}
    out, vjp_fn = vjp(_loss_of(model, params, buffers, as_args(x), y, loss_fn), primals)
    b = batch_len(x)
    if out.shape != (b,):
        raise ValueError(f"loss_fn must return one loss per sample, shape ({b},), got {tuple(out.shape)}")
    numel = sum(p.numel() for p in primals.values())
    step = max(1, CHUNK_ELEMENTS // max(1, numel))
    eye = torch.eye(b, dtype=out.dtype, device=out.device)
    for s in range(0, b, step):
        yield s, vmap(vjp_fn)(eye[s:s + step])[0]


def per_sample_grads(model: nn.Module, x, y, names, loss_fn: Callable) -> dict[str, torch.Tensor]:
    """Gradients of each sample's loss w.r.t. the parameters ``names``: {name: [B, *param.shape]}.

    Independent samples: ``vmap(grad)`` over single samples. A coupled loss (``couples_batch``): the rows
    of the Jacobian of the loss vector with the whole batch present (``jacobian_rows``).
    """
    if couples_batch(loss_fn):
        parts = list(jacobian_rows(model, x, y, names, loss_fn))
        return {n: torch.cat([g[n] for _, g in parts]) for n in names}
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    scored = {n: params[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in params.items() if n not in scored}

    def sample_loss(p, xi, yi):
        xi = tuple(t.unsqueeze(0) for t in xi)
        yi = None if yi is None else yi.unsqueeze(0)
        return loss_fn(functional_call(model, ({**fixed, **p}, buffers), xi), yi)[0]

    return vmap(grad(sample_loss), in_dims=(None, 0, None if y is None else 0))(scored, as_args(x), y)


def directional_derivatives(model: nn.Module, x, y, v: dict[str, torch.Tensor], loss_fn: Callable,
                            return_outputs: bool = False):
    """``<g_i, V>`` [B] for every sample: ``d/de L_i(theta + e V)`` at e = 0, one forward-mode pass.

    The derivative of the loss VECTOR, so exact when the loss couples the batch. With ``return_outputs``
    also returns (losses [B], the model's outputs), both detached.
    """
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    primals = {n: params[n] for n in v}
    tangents = {n: v[n].to(params[n]) for n in v}
    fn = _loss_of(model, params, buffers, as_args(x), y, loss_fn, with_outputs=True)
    losses, out, outputs = jvp(fn, (primals,), (tangents,), has_aux=True)
    b = batch_len(x)
    if losses.shape != (b,):
        raise ValueError(f"loss_fn must return one loss per sample, shape ({b},), got {tuple(losses.shape)}")
    return (out.float(), losses, outputs) if return_outputs else out.float()


def _vmap_terms(model, x, y, v, loss_fn, need_norms):
    b = batch_len(x)
    dots = torch.zeros(b, dtype=torch.float32, device=_device(x))
    sq = torch.zeros(b, dtype=torch.float32, device=_device(x))
    if couples_batch(loss_fn):
        chunks = jacobian_rows(model, x, y, list(v), loss_fn)
    else:
        _probe_coupling(model, x, y, loss_fn)
        chunks = [(0, per_sample_grads(model, x, y, list(v), loss_fn))]
    for s, grads in chunks:
        for n, g in grads.items():
            flat = g.reshape(g.shape[0], -1).float()
            dots[s:s + len(flat)] -= flat @ v[n].reshape(-1).float()
            if need_norms:
                sq[s:s + len(flat)] += (flat * flat).sum(1)
    return dots, sq


def _probe_coupling(model, x, y, loss_fn) -> None:
    """Refuse an unmarked loss that couples the batch (one forward without gradients)."""
    if declared_coupling(loss_fn) is not None:  # marked either way: nothing to probe
        return
    with torch.no_grad():
        check_declared_coupling(loss_fn, model(*as_args(x)), y)


def _generic_terms(model, x, y, v, loss_fn, need_norms):
    """jvp numerators; norms (only when needed) from vmap(grad), or the Jacobian's rows for a coupled loss."""
    d, losses, outputs = directional_derivatives(model, x, y, v, loss_fn, return_outputs=True)
    dots = -d
    coupled = couples_batch(loss_fn)
    check_declared_coupling(loss_fn, outputs, y, losses)
    sq = torch.zeros_like(dots)
    if need_norms:
        if coupled:
            for s, grads in jacobian_rows(model, x, y, list(v), loss_fn):
                for g in grads.values():
                    flat = g.reshape(g.shape[0], -1).float()
                    sq[s:s + len(flat)] += (flat * flat).sum(1)
        else:
            for g in per_sample_grads(model, x, y, list(v), loss_fn).values():
                sq = sq + (g.reshape(len(dots), -1).float() ** 2).sum(1)
    return dots, sq


def layer_terms(layers: dict[str, LayerGrads], covered: dict[str, dict[str, bool]], v: dict[str, torch.Tensor],
                need_norms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over captured layers of ``<-g_i, V>`` and ``||g_i||^2`` (each [B]). Independent samples only."""
    dots = sq = None
    for mod_name, lg in layers.items():
        parts = covered[mod_name]
        vw = v.get(f"{mod_name}.weight") if parts["weight"] else None
        vb = v.get(f"{mod_name}.bias") if parts["bias"] else None
        d = -lg.dots(vw, vb).float()
        dots = d if dots is None else dots + d
        if need_norms:
            s = lg.sq_norms(parts["weight"], parts["bias"]).float()
            sq = s if sq is None else sq + s
    return dots, sq


def _tangent(a: torch.Tensor, z: torch.Tensor, parts: dict[str, bool], v: dict[str, torch.Tensor], name: str
             ) -> torch.Tensor:
    """The change of a Linear's output along V: ``V_W a + V_b`` over the scored parts, z's shape (detached)."""
    c = F.linear(a.detach(), v[f"{name}.weight"].to(a)) if parts["weight"] else torch.zeros_like(z.detach())
    if parts["bias"]:
        c = c + v[f"{name}.bias"].to(c)
    return c.detach()


def _output_jacobians(loss_fn, outputs, y) -> list | None:
    """The loss's Jacobians w.r.t. the model's outputs when it declares them (``pair_jacobians``), else None."""
    jac_fn = pair_jacobians_of(loss_fn)
    if jac_fn is None or not isinstance(outputs, (tuple, list)):
        return None
    return jac_fn(outputs, y)


def _factored_layers(jacs, outputs, calls, covered) -> dict[str, PairJacobian]:
    """{module name: the loss's factored Jacobian w.r.t. its output} for the covered Linear layers whose output
    IS one of the loss's inputs (a projection feeding CLIP's loss), when the loss declares ``pair_jacobians``."""
    if jacs is None or not isinstance(outputs, (tuple, list)):
        return {}
    hits = {n: k for n in covered for k, o in enumerate(outputs)
            if calls[n][1] is o and torch.is_tensor(o) and o.dim() == 2}
    return {n: jacs[k] for n, k in hits.items() if k < len(jacs) and isinstance(jacs[k], PairJacobian)}


def _output_cotangents(outputs, jacobians) -> tuple[list[torch.Tensor], list] | None:
    """The model's outputs that carry gradients, each with the loss's Jacobian w.r.t. it, when the loss
    gave one for every such output (else None: the rows must come from a backward through the loss)."""
    if jacobians is None or not isinstance(outputs, (tuple, list)) or len(jacobians) != len(outputs):
        return None
    outs, jacs = [], []
    for o, j in zip(outputs, jacobians):
        if not (torch.is_tensor(o) and o.requires_grad):
            continue
        if j is None:
            return None
        outs.append(o)
        jacs.append(j)
    return (outs, jacs) if outs else None


def coupled_linear_terms(losses: torch.Tensor, layers: dict[str, tuple[torch.Tensor, torch.Tensor]],
                         covered: dict[str, dict[str, bool]], v: dict[str, torch.Tensor], need_norms: bool,
                         *, outputs=None, output_jacobians=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``<-g_i, V>`` [B] and ``||g_i||^2`` [B] (None unless ``need_norms``) of ``nn.Linear`` layers for a loss
    that may couple the batch: exact whatever the coupling.

    losses : the loss vector [B], with its autograd graph (kept: the graph can be used again afterwards).
    layers : {module name: (a, z)}: the layer's input ``a`` [B, ..., d_in] and output ``z = a W^T + b``
        [B, ..., d_out] (in the graph of ``losses``), the layer called once on the batch.
    covered : {module name: {"weight": scored?, "bias": scored?}}; v : directions by parameter name.

    With ``J_ij = dL_i / dz_j`` (sample i's loss w.r.t. sample j's layer output, every position t folded
    into j below), ``g_i = sum_j J_ij a_j^T`` (weight) and ``sum_j J_ij`` (bias), so

        <g_i, V> = sum_j J_ij . c_j          with c_j = V_W a_j + V_b, the change of z_j along V
        ||g_W,i||^2 = ||J_i^T A||_F^2 = sum_{j,k} (J_ij . J_ik)(a_j . a_k)

    The numerators alone need no Jacobian: ``sum_l <dL/dz_l, c_l>`` is the directional derivative of the
    loss vector, read off a double backward (two backward passes). The norms need the rows J_i: a batched
    backward (``is_grads_batched``) from the loss vector to the layers' outputs only, in chunks of rows of
    at most ``CHUNK_ELEMENTS`` elements. When the loss gives its Jacobian w.r.t. every output of the model
    (``output_jacobians``, from ``clip_loss.pair_jacobians`` for ``outputs``), the rows start from it instead
    and the batched backward runs from the outputs through the model only, never through the loss.
    Then per layer the cheaper of the Gram form (``K = A A^T`` once,
    ``sum(J_i * (K J_i))``: N^2 d_out per row, N = B x positions) and the product ``J_i^T A``
    (N d_out d_in per row), i.e. the Gram form when N < d_in.
    """
    b = losses.shape[0]
    names = list(layers)
    zs = [layers[n][1] for n in names]
    tangents = [_tangent(*layers[n], covered[n], v, n) for n in names]
    dev = losses.device
    if not need_norms:
        w = torch.ones(b, dtype=losses.dtype, device=dev, requires_grad=True)
        gz = torch.autograd.grad(losses, zs, grad_outputs=w, create_graph=True, allow_unused=True)
        terms = [(g * c).sum() for g, c in zip(gz, tangents) if g is not None and g.requires_grad]
        if not terms:
            return torch.zeros(b, dtype=torch.float32, device=dev), None
        total = torch.stack(terms).sum()
        d, = torch.autograd.grad(total, w, allow_unused=True, retain_graph=True)
        return (torch.zeros(b, dtype=torch.float32, device=dev) if d is None else -d.float()), None

    flat = []  # per layer: a [N, d_in], c [N, d_out], Gram K [N, N] or None, d_out, weight scored, bias scored
    per_row = 0
    extra = 0
    for n, (a, z), c in zip(names, [layers[n] for n in names], tangents):
        d_out = z.shape[-1]
        a2 = a.detach().reshape(-1, a.shape[-1]).float()
        nn_ = a2.shape[0]
        gram = None
        if covered[n]["weight"]:
            if nn_ < a2.shape[1]:
                gram = a2 @ a2.t()
                extra = max(extra, nn_ * d_out)
            else:
                extra = max(extra, d_out * a2.shape[1])
        flat.append((a2, c.reshape(nn_, d_out).float(), gram, d_out, covered[n]["weight"], covered[n]["bias"]))
        per_row += nn_ * d_out
    route = _output_cotangents(outputs, output_jacobians)
    if route is not None:
        per_row += sum(o.numel() for o in route[0])
    step = max(1, CHUNK_ELEMENTS // max(1, per_row + extra))
    dots = torch.zeros(b, dtype=torch.float32, device=dev)
    sq = torch.zeros(b, dtype=torch.float32, device=dev)
    eye = torch.eye(b, dtype=losses.dtype, device=dev)
    for s in range(0, b, step):
        e = eye[s:s + step]
        if route is None:
            js = torch.autograd.grad(losses, zs, grad_outputs=e, is_grads_batched=True, retain_graph=True,
                                     allow_unused=True)
        else:
            cots = [j.dense(slice(s, s + step)).to(o) if isinstance(j, PairJacobian) else
                    j[s:s + step].reshape((len(e),) + tuple(o.shape)).to(o) for o, j in zip(*route)]
            js = torch.autograd.grad(route[0], zs, grad_outputs=cots, is_grads_batched=True, retain_graph=True,
                                     allow_unused=True)
        for j, (a2, c2, gram, d_out, w_scored, b_scored) in zip(js, flat):
            if j is None:
                continue
            j = j.reshape(len(e), -1, d_out).float()  # [c, N, d_out]
            dots[s:s + len(e)] -= torch.einsum("cnd,nd->c", j, c2)
            if w_scored:
                if gram is not None:
                    sq[s:s + len(e)] += (j * torch.matmul(gram, j)).sum((1, 2))
                else:
                    m = torch.matmul(j.transpose(1, 2), a2)  # [c, d_out, d_in]: the rows' weight gradients
                    sq[s:s + len(e)] += (m * m).sum((1, 2))
            if b_scored:
                gb = j.sum(1)
                sq[s:s + len(e)] += (gb * gb).sum(1)
    return dots, sq


def factored_linear_terms(jac: PairJacobian, a: torch.Tensor, c: torch.Tensor, weight: bool, bias: bool,
                          need_norms: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``<-g_i, V>`` [B] and ``||g_i||^2`` [B] (None unless ``need_norms``) of an ``nn.Linear`` whose output z
    [B, d] is one of the loss's inputs, from the loss's factored Jacobian ``jac`` w.r.t. z (``PairJacobian``:
    ``J_ia = [a == i] q_i + beta_ai p_i - gamma_ai o_a``); exact for a coupled loss such as CLIP's.

    a : the layer's input [B, d_in]; c : the change of z along V, ``V_W a_j + V_b`` [B, d];
    weight / bias : which of the layer's parameters are scored. With ``K = A A^T`` and ``m_i = sum_a beta_ai a_a``:

        g_W,i = q_i a_i^T + p_i m_i^T - sum_a gamma_ai o_a a_a^T
        g_b,i = q_i + (sum_a beta_ai) p_i - sum_a gamma_ai o_a
        <g_i, V> = q_i.c_i + sum_a beta_ai (p_i.c_a) - sum_a gamma_ai (o_a.c_a)
        ||g_W,i||^2 = |q_i|^2 K_ii + |p_i|^2 (beta^T K beta)_ii + (gamma^T ((O O^T) * K) gamma)_ii
                      + 2 (q_i.p_i)(K beta)_ii - 2 sum_a gamma_ai (o_a.q_i) K_ai - 2 sum_a gamma_ai (o_a.p_i)(K beta)_ai

    [B, B] products only: O(B^2 (d + d_in) + B^3) time, O(B^2) memory, no [B, B, d] Jacobian.
    """
    q, beta, p, gamma, o = (t.float() for t in (jac.diag, jac.beta, jac.partner, jac.gamma, jac.own))
    a = a.detach().reshape(a.shape[0], -1).float()
    c = c.detach().float()
    dots = (q * c).sum(1) + (beta * (c @ p.t())).sum(0) - gamma.t() @ (o * c).sum(1)
    if not need_norms:
        return -dots, None
    sq = torch.zeros_like(dots)
    if weight:
        k = a @ a.t()
        kb = k @ beta
        op, oq = o @ p.t(), o @ q.t()
        h = (o @ o.t()) * k
        sq = sq + (q * q).sum(1) * k.diagonal() + (p * p).sum(1) * (beta * kb).sum(0) + (gamma * (h @ gamma)).sum(0)
        sq = sq + 2 * (q * p).sum(1) * kb.diagonal() - 2 * (gamma * oq * k).sum(0) - 2 * (gamma * op * kb).sum(0)
    if bias:
        gb = q + beta.sum(0)[:, None] * p - gamma.t() @ o
        sq = sq + (gb * gb).sum(1)
    return -dots, sq


def alignment_terms(model: nn.Module, x, y, v: dict[str, torch.Tensor],
                    loss_fn: Callable, need_norms: bool = True, *, path: str = "auto"
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``<-g_i, V>`` [B] and ``||g_i||`` [B] (None unless ``need_norms``) over the parameters in ``v``.

    x : [B, ...] or a tuple of tensors [B, ...] (``model(*x)``); y : [B] targets or None;
    v maps parameter names to directions of the parameters' shapes;
    loss_fn maps (model outputs, y) to per-sample losses [B], which may couple the batch when marked
    (``keepset.losses.coupled``); path is "auto", "jvp" or "vmap" (module docstring). Every path is exact
    for coupled losses (g_i with the whole batch present); an unmarked coupled loss is refused.
    """
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose one of {PATHS}")
    check_batch_independent(model)
    if path == "vmap":
        dots, sq = _vmap_terms(model, x, y, v, loss_fn, need_norms)
    elif path == "jvp":
        dots, sq = _generic_terms(model, x, y, v, loss_fn, need_norms)
    else:
        dots, sq = _auto_terms(model, x, y, v, loss_fn, need_norms)
    return dots, (sq.clamp_min(0).sqrt() if need_norms else None)


def coupled_split(model: nn.Module, names: Sequence[str]) -> tuple[dict[str, dict[str, bool]], list[str]]:
    """Split scored parameters for a coupled loss: ({nn.Linear module: {"weight": scored?, "bias": scored?}},
    [every other parameter name]); the first take the coupled closed forms (``coupled_layer_terms``), the others
    the exact jvp / Jacobian-row path."""
    covered, rest = covered_modules(model, list(names))
    modules = dict(model.named_modules())
    for mod_name in [n for n in covered if not isinstance(modules[n], nn.Linear)]:
        parts = covered.pop(mod_name)
        rest += [f"{mod_name}.{leaf}" for leaf, scored in parts.items() if scored]
    return covered, rest


def coupled_layer_terms(loss_fn: Callable, losses: torch.Tensor, outputs, y,
                        calls: dict[str, tuple[torch.Tensor, torch.Tensor]], covered: dict[str, dict[str, bool]],
                        v: dict[str, torch.Tensor], need_norms: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``<-g_i, V>`` [B] and ``||g_i||^2`` [B] (None unless ``need_norms``) of ``nn.Linear`` layers under a loss that
    couples the batch, from a forward already run (a training step's: no second forward).

    loss_fn : the coupled loss; losses : ``loss_fn(outputs, y)`` [B] with its graph (kept for a later backward);
    outputs : the model's outputs of that forward; calls : {module: (input a, output z)} of the covered layers
    (``ActivationCapture.single_calls``; every covered module must be there); covered, v : as in
    ``coupled_split`` / ``alignment_terms``. Projections whose output is one of the loss's inputs take
    ``factored_linear_terms`` when the loss declares its factored Jacobian, the other layers
    ``coupled_linear_terms``.
    """
    missing = [n for n in covered if n not in calls]
    if missing:
        raise ValueError(f"modules {missing} were not captured once on this batch; score them with alignment_terms")
    b = losses.shape[0]
    dots = torch.zeros(b, dtype=torch.float32, device=losses.device)
    sq = torch.zeros(b, dtype=torch.float32, device=losses.device) if need_norms else None
    jacs = _output_jacobians(loss_fn, outputs, y)
    factored = _factored_layers(jacs, outputs, calls, covered)
    for n, jac in factored.items():
        a, z = calls[n]
        d, s = factored_linear_terms(jac, a, _tangent(a, z, covered[n], v, n), covered[n]["weight"],
                                     covered[n]["bias"], need_norms)
        dots = dots + d
        if need_norms:
            sq = sq + s
    generic = [n for n in covered if n not in factored]
    if generic:
        d, s = coupled_linear_terms(losses, {n: calls[n] for n in generic}, {n: covered[n] for n in generic}, v,
                                    need_norms, outputs=outputs, output_jacobians=jacs)
        dots = dots + d
        if need_norms:
            sq = sq + s
    return dots, sq


def _auto_terms(model, x, y, v, loss_fn, need_norms):
    coupled = couples_batch(loss_fn)
    if coupled and not need_norms:  # the numerators alone: one forward-mode pass is the cheapest exact form
        return _generic_terms(model, x, y, v, loss_fn, need_norms)
    covered, rest = coupled_split(model, list(v)) if coupled else covered_modules(model, list(v))
    modules = dict(model.named_modules())
    b = batch_len(x)
    dots = torch.zeros(b, dtype=torch.float32, device=_device(x))
    sq = torch.zeros(b, dtype=torch.float32, device=_device(x))
    if covered:
        capture = ActivationCapture({n: modules[n] for n in covered})
        try:
            with torch.enable_grad():
                outputs = model(*as_args(x))
                losses = loss_fn(outputs, y)
            calls = capture.single_calls(b)
        finally:
            capture.remove()
        if losses.shape != (b,):
            raise ValueError(f"loss_fn must return one loss per sample, shape ({b},), got {tuple(losses.shape)}")
        check_declared_coupling(loss_fn, outputs, y, losses)
        for mod_name in [n for n in covered if n not in calls]:  # called twice, modified in place...
            parts = covered.pop(mod_name)
            rest += [f"{mod_name}.{leaf}" for leaf, scored in parts.items() if scored]
        if covered and coupled:
            d, s = coupled_layer_terms(loss_fn, losses, outputs, y, calls, covered, v, need_norms)
            dots = dots + d
            if need_norms:
                sq = sq + s
        elif covered:
            zs = [calls[n][1] for n in covered]
            deltas = torch.autograd.grad(losses.sum(), zs, allow_unused=True)
            layers = {n: LayerGrads(modules[n], calls[n][0], d if d is not None else torch.zeros_like(z))
                      for n, z, d in zip(covered, zs, deltas)}
            d, s = layer_terms(layers, covered, v, need_norms)
            dots = dots + d
            if need_norms:
                sq = sq + s
    if rest:
        d, s = _generic_terms(model, x, y, {n: v[n] for n in rest}, loss_fn, need_norms)
        dots = dots + d
        sq = sq + s
    return dots, sq
