"""Per-sample gradients of ``nn.Linear`` and ``nn.Conv2d`` layers, held implicitly as the layer's
input activations ``a`` and the per-sample output gradients ``delta = dL_i / dz_i``.

A layer ``z = W a + b`` applied at T positions of sample i (``a_i`` [T, d_in], ``delta_i`` [T, d_out];
T = 1 for a Linear on [B, d], T = H'W' output positions for a Conv2d with ``a_it`` the unfolded patch):

    g_W,i = sum_t delta_it a_it^T               g_b,i = sum_t delta_it
    <g_W,i, V_W> = sum_t delta_it . (V_W a_it)  (one pass of the layer with weights V_W: conv(a_i, V_W))
    ||g_W,i||^2 = ||delta_i||^2 ||a_i||^2        (T = 1)
                = sum_{t,s} (a_it . a_is)(delta_it . delta_is)   (Gram form, T > 1)
                  or ||delta_i^T A_i||^2 formed in bounded chunks of samples, whichever costs less
    sum_i w_i g_W,i = sum_{i,t} w_i delta_it a_it^T   (the re-weighted gradient: one weight-gradient pass)

Linear layers never form per-sample gradients. A Conv2d layer whose per-sample weight gradients fit in
``MATERIALISE_ELEMENTS`` (B x weight size; 4.7 M floats for the small CNN's largest conv at batch 256)
forms them in one pass -- about the cost of the batch's weight gradient: a batched product with the
unfolded patches for small patches, else a convolution-backward in which every sample is its own
group -- and reads the dots, the norms and the weighted sum off them; larger conv layers use
the implicit forms above (a convolution with V_W, unfolded patches, a weighted weight-gradient pass).

Because the samples of a batch are independent (no batch-coupling layer such as BatchNorm in training
mode), the output gradients of ``sum_i L_i`` at z are exactly the per-sample ``delta_i``: one ordinary
backward pass gives every sample's gradient of every Linear/Conv2d layer, in implicit form.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d)
#: elements of the largest temporary formed at once when per-sample gradients are built in chunks
CHUNK_ELEMENTS = 1 << 24
#: largest number of elements of a conv layer's per-sample gradients kept for a batch (B x weight size)
MATERIALISE_ELEMENTS = 1 << 25  # 128 MiB of float32
#: conv layers with at most this many inputs per output (C/g kh kw) form per-sample gradients by a batched product
SMALL_PATCH = 64


def supports(module: nn.Module) -> bool:
    """Whether ``module``'s per-sample gradients follow from (a, delta) here."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False


def batch_coupling_modules(model: nn.Module) -> list[str]:
    """Names of modules that mix the samples of a batch (BatchNorm using batch statistics)."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)]


def check_batch_independent(model: nn.Module) -> None:
    """Raise ValueError when the model couples the samples of a batch: per-sample gradients are then undefined."""
    bad = batch_coupling_modules(model)
    if bad:
        raise ValueError(f"modules {bad} (BatchNorm in training mode) mix the samples of a batch, so a sample's own "
                         "gradient is undefined; call model.eval() for scoring, or use GroupNorm/LayerNorm instead")


def unfold_patches(a: torch.Tensor, module: nn.Conv2d) -> torch.Tensor:
    """The conv's input patches [B, C*kh*kw, P] (the layout of ``F.unfold``), built from kh*kw strided slices.

    ``F.unfold`` loops over samples with one parallel region each, which stalls when a multi-threaded run
    shares its cores; kh*kw whole-batch copies do not.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = module.kernel_size, module.stride, module.padding, module.dilation
    ap = F.pad(a, (pw, pw, ph, ph)) if (ph or pw) else a
    hp, wp = ap.shape[2], ap.shape[3]
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    slices = [ap[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
              for i in range(kh) for j in range(kw)]
    return torch.stack(slices, 2).reshape(a.shape[0], -1, ho * wo)


def _sq_norm_of_sum_outer(u: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``||d_n^T u_n||_F^2`` for each n: u [N, T, p], d [N, T, q] -> [N], exact, without forming [N, q, p]
    at once (Gram form when T^2 (p + q) < T p q, else the product in chunks of n)."""
    n, t, p = u.shape
    q = d.shape[2]
    out = torch.empty(n, dtype=u.dtype, device=u.device)
    if t == 1:
        return (u[:, 0] ** 2).sum(1) * (d[:, 0] ** 2).sum(1)
    if t * t * (p + q) < t * p * q:
        step = max(1, CHUNK_ELEMENTS // (2 * t * t))
        for s in range(0, n, step):
            gu = torch.bmm(u[s:s + step], u[s:s + step].transpose(1, 2))
            gd = torch.bmm(d[s:s + step], d[s:s + step].transpose(1, 2))
            out[s:s + step] = (gu * gd).sum((1, 2))
    else:
        step = max(1, CHUNK_ELEMENTS // (p * q))
        for s in range(0, n, step):
            g = torch.bmm(d[s:s + step].transpose(1, 2), u[s:s + step])
            out[s:s + step] = (g * g).sum((1, 2))
    return out


class LayerGrads:
    """The per-sample gradients of one Linear/Conv2d layer over a batch, held as (a, delta).

    module : the nn.Linear or nn.Conv2d
    a : its input [B, ..., d_in] (Linear) or [B, C, H, W] (Conv2d)
    delta : gradient of ``sum_i L_i`` at its output, same shape as the output
    """

    def __init__(self, module: nn.Module, a: torch.Tensor, delta: torch.Tensor):
        if not supports(module):
            raise TypeError(f"{type(module).__name__} is not handled by the layer identities")
        self.module = module
        self.a = a.detach()
        self.delta = delta.detach()
        self.b = a.shape[0]
        self.is_conv = isinstance(module, nn.Conv2d)
        self._g: torch.Tensor | None = None
        self._gb: torch.Tensor | None = None
        self.materialise = self.is_conv and self._materialise_conv()

    def _materialise_conv(self) -> bool:
        """Whether to form this conv layer's per-sample weight gradients [B, O, C/g, kh, kw] (one pass, see
        ``per_sample_weight_grads``) and read the dots, norms and weighted sum off them: when they fit in
        ``MATERIALISE_ELEMENTS``. That one pass costs about what the batch's weight gradient costs, whereas
        the implicit forms need a convolution with V for the dots, a weight-gradient pass for the weighted sum
        and, for the norms, unfolded patches. Beyond the bound the implicit forms are used."""
        return self.b * self.module.weight.numel() <= MATERIALISE_ELEMENTS

    def per_sample_weight_grads(self) -> torch.Tensor:
        """Conv2d: every sample's weight gradient [B, O, C/g, kh, kw] (cached). Small patches (C/g kh kw <=
        ``SMALL_PATCH``): one batched product of the output gradients with the unfolded patches; larger ones:
        one convolution-backward pass in which each sample is its own group."""
        if self._g is None:
            m = self.module
            b, groups = self.b, m.groups
            if m.weight[0].numel() <= SMALL_PATCH:
                u = unfold_patches(self.a, m)  # [B, C kh kw, P]
                p = u.shape[-1]
                u = u.reshape(b * groups, -1, p)
                d = self.delta.reshape(b * groups, -1, p)
                g = torch.bmm(d, u.transpose(1, 2))
            else:
                a = self.a.reshape(1, b * self.a.shape[1], *self.a.shape[2:])
                d = self.delta.reshape(1, b * self.delta.shape[1], *self.delta.shape[2:])
                # the weight only gives the shape here: the weight gradient does not read its values
                w = torch.empty((b * m.out_channels,) + tuple(m.weight.shape[1:]), dtype=a.dtype, device=a.device)
                g = torch.ops.aten.convolution_backward(d, a, w, None, list(m.stride), list(m.padding),
                                                        list(m.dilation), False, [0, 0], b * groups,
                                                        [False, True, False])[1]
            self._g = g.reshape((b,) + tuple(m.weight.shape))
        return self._g

    # -- helpers ---------------------------------------------------------------------------------
    def _rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear: a as [B, T, d_in] and delta as [B, T, d_out]."""
        return self.a.reshape(self.b, -1, self.a.shape[-1]), self.delta.reshape(self.b, -1, self.delta.shape[-1])

    def _patches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv2d: unfolded inputs [B*groups, P, C/g*kh*kw] and deltas [B*groups, P, O/g]."""
        m = self.module
        g = m.groups
        u = unfold_patches(self.a, m)
        p = u.shape[-1]
        u = u.reshape(self.b, g, -1, p).transpose(2, 3).reshape(self.b * g, p, -1)
        d = self.delta.reshape(self.b, g, -1, p).transpose(2, 3).reshape(self.b * g, p, -1)
        return u, d

    def _bias_grads(self) -> torch.Tensor:
        """Per-sample bias gradients [B, d_out] (cached)."""
        if self._gb is None:
            if self.is_conv:
                self._gb = self.delta.sum((2, 3))
            else:
                self._gb = self.delta.reshape(self.b, -1, self.delta.shape[-1]).sum(1)
        return self._gb

    # -- per-sample quantities -------------------------------------------------------------------
    def dots(self, v_weight: torch.Tensor | None, v_bias: torch.Tensor | None) -> torch.Tensor:
        """``<g_i, V>`` [B] over this layer's weight (v_weight) and/or bias (v_bias); None skips a part."""
        out = torch.zeros(self.b, dtype=self.delta.dtype, device=self.delta.device)
        if v_weight is not None and self.materialise:
            out = out + self.per_sample_weight_grads().reshape(self.b, -1) @ v_weight.to(self.a).reshape(-1)
        elif v_weight is not None:
            v_weight = v_weight.to(self.a)
            if self.is_conv:
                m = self.module
                zv = F.conv2d(self.a, v_weight, None, m.stride, m.padding, m.dilation, m.groups)
            else:
                zv = F.linear(self.a, v_weight)
            out = out + (zv * self.delta).reshape(self.b, -1).sum(1)
        if v_bias is not None:
            out = out + self._bias_grads() @ v_bias.to(self.delta)
        return out

    def sq_norms(self, weight: bool = True, bias: bool = False) -> torch.Tensor:
        """``||g_i||^2`` [B] over the weight and/or the bias of this layer."""
        out = torch.zeros(self.b, dtype=self.delta.dtype, device=self.delta.device)
        if weight:
            if self.materialise:
                out = out + (self.per_sample_weight_grads().reshape(self.b, -1) ** 2).sum(1)
            elif self.is_conv:
                u, d = self._patches()
                out = out + _sq_norm_of_sum_outer(u, d).reshape(self.b, -1).sum(1)
            else:
                u, d = self._rows()
                out = out + _sq_norm_of_sum_outer(u, d)
        if bias:
            out = out + (self._bias_grads() ** 2).sum(1)
        return out

    def weighted(self, w: torch.Tensor, weight: bool = True, bias: bool = True
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``sum_i w_i g_i`` for the weight and the bias (w [B]); None where not asked or absent."""
        m = self.module
        has_bias = bias and m.bias is not None
        if not (weight or has_bias):
            return None, None
        w = w.to(self.delta)
        if self.materialise:
            gw = torch.tensordot(w, self.per_sample_weight_grads(), 1) if weight else None
            gb = w @ self._bias_grads() if has_bias else None
            return gw, gb
        dw = self.delta * w.reshape((self.b,) + (1,) * (self.delta.dim() - 1))
        if self.is_conv:
            _, gw, gb = torch.ops.aten.convolution_backward(
                dw, self.a, m.weight.detach(), [m.out_channels] if has_bias else None, list(m.stride),
                list(m.padding), list(m.dilation), False, [0, 0], m.groups, [False, weight, has_bias])
            return (gw if weight else None), (gb if has_bias else None)
        d2 = dw.reshape(-1, dw.shape[-1])
        gw = d2.t() @ self.a.reshape(-1, self.a.shape[-1]) if weight else None
        gb = d2.sum(0) if has_bias else None
        return gw, gb


class ActivationCapture:
    """Forward hooks keeping the input and output of each watched module at every grad-enabled call.

    ``records[name]`` holds (input, output, their version counters) of the first call since the last
    ``reset``, and a placeholder for a second call.
    An output that does not require grad (a frozen part of the network) is replaced by a leaf that
    does, so that its output gradient exists.
    """

    def __init__(self, modules: dict[str, nn.Module]):
        self.records: dict[str, list] = {n: [] for n in modules}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if (not torch.is_grad_enabled() or not torch.is_tensor(output)
                    or torch._C._functorch.peek_interpreter_stack() is not None):  # inside vmap / jvp / grad
                return None
            replaced = None
            if not output.requires_grad:
                replaced = output = output.detach().requires_grad_()
            rec = self.records[name]
            # a second call already rules the module out: keep a placeholder, not its tensors
            if len(rec) < 2:
                a = inputs[0].detach()
                rec.append((a, output, a._version, output._version) if not rec else None)
            return replaced
        return hook

    def reset(self) -> None:
        for r in self.records.values():
            r.clear()

    def single_calls(self, batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{name: (a, z)} for every module called exactly once on a batch of ``batch_size`` and whose input and
        output were not modified in place since; other modules are left out (they need the generic path)."""
        out = {}
        for name, rec in self.records.items():
            if len(rec) == 1:
                a, z, a_version, z_version = rec[0]
                if (z.shape[0] == batch_size and a.shape[0] == batch_size and a._version == a_version
                        and z._version == z_version):
                    out[name] = (a, z)
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.reset()


def covered_modules(model: nn.Module, names: Iterable[str]) -> tuple[dict[str, dict[str, bool]], list[str]]:
    """Split parameter names into those of supported layers and the rest.

    Returns ({module name: {"weight": scored?, "bias": scored?}}, [other parameter names]).
    A parameter shared between modules is never covered.
    """
    modules = dict(model.named_modules())
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    params = dict(model.named_parameters())
    covered: dict[str, dict[str, bool]] = {}
    rest: list[str] = []
    for n in names:
        mod_name, _, leaf = n.rpartition(".")
        mod = modules.get(mod_name)
        if (mod is not None and supports(mod) and leaf in ("weight", "bias") and counts.get(id(params[n]), 0) == 1):
            covered.setdefault(mod_name, {"weight": False, "bias": False})[leaf] = True
        else:
            rest.append(n)
    return covered, rest
