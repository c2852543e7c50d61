"""``GradMimic``: Grad-Mimic Stage 1 for any PyTorch training loop.

    gm = keepset.GradMimic(reference, temperature=1.0, record_to="runs/gm")
    for x, y, ids in loader:
        loss = gm.loss(model, x, y, ids)          # forward + Mimic Scores + weights, recorded by id
        loss.backward(); optimizer.step(); optimizer.zero_grad()
    gm.close()

Every batch, each sample's Mimic Score ``<-g_i, V> / ||V||`` (``proj``) or its cosine (``cos``) with
``V = theta_ref - theta`` over the scored parameters gives the weights ``w = softmax(score / tau)`` (or, with
``weighting=``, the published code's raw scores or its ``opt`` solution: ``keepset.training.parity``); the
scored parameters receive ``sum_i w_i g_i`` and every other parameter the mean gradient (``apply_to="all"``:
every parameter is re-weighted). ``reweight=False`` scores and records without changing training.

The fused step (default, whenever every scored parameter belongs to an ``nn.Linear`` / ``nn.Conv2d`` layer
called once per forward and the loss does not couple the samples): ``loss`` returns the ordinary mean loss,
with two kinds of graph nodes inserted by forward hooks. A node on each scored layer's output keeps that
layer's output gradient ``delta`` when the caller's ``backward`` reaches it; one node feeding all of them runs
after the last one, reads every sample's ``<-g_i, V>`` and ``||g_i||`` off the layers' inputs and deltas
(``keepset.models.layer_identities``), computes and records the scores and weights, and adds to the scored
parameters' gradients ``sum_i (w_i - 1/B) g_i`` (one weight-gradient product per layer). So a step costs one
forward, the caller's one backward, and per scored layer about one layer forward and one weight-gradient
product. The correction flows through autograd into each parameter's gradient accumulator, so
``torch.amp.GradScaler`` (the loss multiplier is read off the loss's own gradient), gradient accumulation
(each backward adds its batch's re-weighted gradient) and DDP's gradient all-reduce (which hooks the
accumulators) all see the re-weighted gradient.

Any other case (other layer types, a layer called twice, batch-coupling modules, ``apply_to="all"`` over
unscored parameters, a coupled loss) scores the batch before returning the loss (closed form for the final
Linear, else ``keepset.models.sample_gradients.alignment_terms``) and returns a loss whose gradient is
the same re-weighted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from keepset._checks import check_temperature
from keepset.losses import check_declared_coupling
from keepset.models.layer_identities import LayerGrads, covered_modules
from keepset.models.mimic import (
    _closed_form_applies, check_same_space, direction_norm, last_linear_name, linear_closed_form_terms,
    resolve_layers, scores_from_terms,
)
from keepset.models.sample_gradients import fused_step_applies, layer_terms
from keepset.recorder import DynamicsRecorder
from keepset.training.holdout import Holdout, lfdr_weights
from keepset.training.normalise import BatchNormaliser
from keepset.training.online import OnlineMethod, call_model, check_batch, model_outputs, per_sample_losses
from keepset.training.parity import check_weighting, mimic_weights

#: fields of every record GradMimic writes: the raw score, its softmax over the batch, the weight applied
RECORD_FIELDS = ("mimic", "mimic_normed", "weight")
#: fields of the held-out samples' records
HOLDOUT_FIELDS = ("mimic",)
APPLY_TO = ("layers", "all")
#: how a batch's scores become its weights: "softmax" (softmax(score / tau), the paper's), "lfdr" (calibrated by
#: held-out trusted samples: keepset.training.holdout), "auto" (lfdr with a holdout, softmax without), and the
#: published code's "raw" and "opt" (keepset.training.parity)
WEIGHTINGS = ("auto", "softmax", "lfdr", "raw", "opt")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (the model itself otherwise)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


class _Pending:
    """One batch's state between its forward and the end of its backward."""

    __slots__ = ("ids", "y", "step", "epoch", "calls", "twice", "deltas", "multiplier", "disabled", "b", "anchor",
                 "leaves", "swap", "swapped", "hold")

    def __init__(self, ids, y, step: int, epoch: int):
        self.ids, self.y, self.step, self.epoch = ids, y, step, epoch
        self.calls: dict[str, tuple] = {}
        self.twice: set[str] = set()
        self.deltas: dict[str, torch.Tensor] = {}
        self.multiplier: float | None = None  # d(total backward) / d(mean of the per-sample losses)
        self.disabled = False
        self.b = len(ids)
        self.anchor: torch.Tensor | None = None
        self.leaves: list[str] = []
        self.swap = False  # the scored parameters enter the forward detached; _Finish returns their whole gradient
        self.swapped: dict[str, list] = {}
        self.hold: torch.Tensor | None = None  # the held-out samples' scores at this step


class _Capture(torch.autograd.Function):
    """Identity on a scored layer's output; its backward keeps the output gradient for ``_Finish``.

    It returns a copy, not a view: a later in-place operation (``nn.ReLU(inplace=True)``) may then modify
    it, and the gradient this node sees is still the one at the layer's own output."""

    @staticmethod
    def forward(ctx, z, anchor, pending, name):
        ctx.pending, ctx.name = pending, name
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.pending.deltas[ctx.name] = grad.detach()
        return grad, None, None, None


class _Finish(torch.autograd.Function):
    """Zero in the forward; its backward runs after every ``_Capture`` of the batch (each takes its output
    as an input) and returns the re-weighting corrections of the scored parameters."""

    @staticmethod
    def forward(ctx, gm, pending, *params):
        ctx.gm, ctx.pending, ctx.n = gm, pending, len(params)
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        corrections = ctx.gm._finish_fused(ctx.pending)
        return (None, None, *corrections)


class _AddGrads(torch.autograd.Function):
    """Zero in the forward; adds ``scale * grads[k]`` to ``params[k]``'s gradient, ``scale`` being the
    gradient that reaches it (the caller's loss multiplier)."""

    @staticmethod
    def forward(ctx, grads, *params):
        ctx.grads = grads
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx, scale):
        return (None, *[None if g is None else (g * scale).to(g.dtype) for g in ctx.grads])


class GradMimic(OnlineMethod):
    """Grad-Mimic Stage 1 (online re-weighting by the Mimic Score) and the recording of every sample's
    score at every step, for any training loop.

    Parameters
    ----------
    reference : nn.Module sharing the model's weight space (same parameter names and shapes for the scored
        layers: linear probing of a shared frozen backbone, or fine-tuning from the same initialisation).
    layers : scored parameters (``keepset.models.mimic.resolve_layers``): None = the final Linear's weight,
        "all", a parameter name, a module prefix or a list.
    method : "proj" or "cos" (the score).
    weighting : how the scores of a batch become its weights, as in the published code
        (``keepset.training.parity``): "softmax" (``softmax(score / temperature)``, the published ``normed_*``),
        "raw" (the scores themselves, signed and unnormalised: the published ``proj`` / ``cos``) or "opt"
        (``argmin_w sum_i ||w_i (-g_i) - V|| + opt_lambda R(w)``, R the ``opt_norm`` norm: the published ``opt``).
    temperature : softmax temperature tau (> 0).
    holdout : held-out trusted samples ``(x, y, ids)`` (or a ``keepset.training.holdout.Holdout``) that the model
        never trains on: ``holdout_per_step`` of them are scored at every step, before its update, and recorded
        (``holdout_record_to``, default ``record_to/holdout``); they calibrate the weights and the Stage 2 filter.
    holdout_per_step : held-out samples scored per step (default 32).
    weighting : "auto" (default: "lfdr" with a holdout, "softmax" without), "softmax" (``softmax(score / tau)``, the
        paper's ``normed_*``), "lfdr" (``keepset.training.holdout.lfdr_weights``: calibrated by the holdout, uniform
        on clean data, i.e. plain SGD), or the published code's "raw" (the signed scores) and "opt"
        (``keepset.training.parity``).
    opt_lambda, opt_norm : the ``opt`` regulariser's weight (>= 0, published default 0) and norm ("l2" / "l1").
    reweight : apply the weights (False: score and record only; training is plain mean-loss training).
    start_epoch : first epoch at which the weights apply (scores are recorded from the start).
    apply_to : "layers" (the weights apply to the scored parameters, the others keep the mean gradient) or "all".
    record_to : a folder (a new ``DynamicsRecorder`` there, fields ``RECORD_FIELDS``), a ``DynamicsRecorder``,
        or None (nothing recorded; ``last_scores`` / ``last_weights`` still hold the last batch's).
    resume : with ``record_to`` a folder that already holds a log: append to it, the step count continuing.
    loss_fn : per-sample loss ``(outputs, y) -> [B]``; cross-entropy by default.
    fused : use the fused step (module docstring) whenever it applies.
    allow_partial_reference : accept a reference whose architecture differs from the model's outside the scored
        layers (by default every parameter must match: a reference of another architecture is refused).

    Verbs: ``loss(model, x, y, ids, epoch=None)`` in a training loop; ``begin`` / ``end`` for frameworks
    that run the forward and the backward themselves (Lightning); ``close()`` when done (flushes the log
    and removes the forward hooks).
    """

    def __init__(self, reference: nn.Module, *, layers: str | Sequence[str] | None = None, method: str = "proj",
                 temperature: float = 1.0, reweight: bool = True, start_epoch: int = 0, apply_to: str = "layers",
                 record_to: str | Path | DynamicsRecorder | None = None, resume: bool = False,
                 loss_fn: Callable | None = None, fused: bool = True, allow_partial_reference: bool = False,
                 holdout=None, holdout_per_step: int = 32, holdout_record_to=None, weighting: str = "auto",
                 opt_lambda: float = 0.0, opt_norm: str = "l2"):
        super().__init__(loss_fn)
        if not isinstance(reference, nn.Module):
            raise ValueError(f"reference must be an nn.Module (the reference model), got {type(reference).__name__}")
        if method not in ("proj", "cos"):
            raise ValueError(f"method must be 'proj' or 'cos' (the score; weighting= sets the weights), got {method!r}")
        if apply_to not in APPLY_TO:
            raise ValueError(f"apply_to must be 'layers' or 'all', got {apply_to!r}")
        temperature = check_temperature(temperature)
        self.reference, self.layers, self.method = reference, layers, method
        self.temperature, self.reweight, self.start_epoch = temperature, bool(reweight), int(start_epoch)
        self.apply_to, self.fused = apply_to, bool(fused)
        self.allow_partial_reference = bool(allow_partial_reference)
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        _, self.opt_lambda, self.opt_norm = check_weighting("opt", opt_lambda, opt_norm)
        if holdout is not None and not isinstance(holdout, Holdout):
            if not isinstance(holdout, (tuple, list)) or len(holdout) != 3:
                raise ValueError("holdout must be (x, y, ids) of the held-out trusted samples, or a Holdout")
            holdout = Holdout(*holdout, per_step=holdout_per_step)
        if weighting == "lfdr" and holdout is None:
            raise ValueError("weighting='lfdr' is calibrated by held-out trusted samples: pass holdout=(x, y, ids), "
                             "or weighting='softmax'")
        self.holdout = holdout
        self.weighting = ("lfdr" if holdout is not None else "softmax") if weighting == "auto" else weighting
        self._recent: list = []  # the p-values of the last batches (lfdr)
        self.recorder = self._make_recorder(_rank_folder(record_to), resume)
        self.holdout_recorder = None
        if holdout is not None:
            target = holdout_record_to
            if target is None and self.recorder is not None and self.recorder.directory is not None:
                target = self.recorder.directory / "holdout"
            if isinstance(target, DynamicsRecorder):
                self.holdout_recorder = target
            elif target is not None and _is_first_rank():
                self.holdout_recorder = DynamicsRecorder(target, HOLDOUT_FIELDS, resume=resume)
        if self.recorder is not None:
            self.step = self.recorder.next_step
        self.names: list[str] = []
        self.last_scores: torch.Tensor | None = None
        self.last_weights: torch.Tensor | None = None
        self._model: nn.Module | None = None
        self._ref: dict[str, torch.Tensor] = {}
        self._covered: dict[str, dict[str, bool]] | None = None
        self._modules: dict[str, nn.Module] = {}
        self._handles: list = []
        self._armed: _Pending | None = None
        self._trainable: list[str] = []
        self._norm = BatchNormaliser()
        self._coupling_checked = False

    @staticmethod
    def _make_recorder(record_to, resume: bool):
        if record_to is None or isinstance(record_to, DynamicsRecorder):
            if isinstance(record_to, DynamicsRecorder) and set(RECORD_FIELDS) - set(record_to.fields):
                raise ValueError(f"the recorder must have the fields {RECORD_FIELDS}; it has {record_to.fields}")
            return record_to
        return DynamicsRecorder(record_to, RECORD_FIELDS, resume=resume)

    # ------------------------------------------------------------------ set-up
    @property
    def uses_fused_step(self) -> bool:
        """Whether the fused step is set up for the current model (after the first batch)."""
        return self._covered is not None

    def _setup(self, model: nn.Module) -> nn.Module:
        inner = unwrap(model)
        if inner is self._model:
            return inner
        self._remove_hooks()
        names = resolve_layers(inner, self.layers)
        check_same_space(inner, self.reference, names, strict=not self.allow_partial_reference)
        params = dict(inner.named_parameters())
        ref = dict(self.reference.named_parameters())
        self._ref = {n: ref[n].detach().to(device=params[n].device, dtype=params[n].dtype) for n in names}
        self.names = names
        self._trainable = [n for n, p in params.items() if p.requires_grad]
        self._model = inner
        from torch.nn.parallel import DistributedDataParallel

        self._norm = BatchNormaliser(model if isinstance(model, DistributedDataParallel) else None)
        self._covered = self._fused_plan(inner) if self.fused else None
        self._swap_ok = False
        if self._covered is not None:
            mods = dict(inner.named_modules())
            self._modules = {m: mods[m] for m in self._covered}
            self._handles = [mods[m].register_forward_hook(self._hook(m)) for m in self._covered]
            self._handles += [mods[m].register_forward_pre_hook(self._pre_hook(m)) for m in self._covered]
        return inner

    def _fused_plan(self, model: nn.Module):
        if not fused_step_applies(model, self.names, self.loss_fn):
            return None
        if self.apply_to == "all" and not set(self._trainable) <= set(self.names):
            return None
        return covered_modules(model, self.names)[0]

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def close(self) -> None:
        """Flush the recorded dynamics and take the forward hooks off the model."""
        self._remove_hooks()
        self._model = None
        for rec in (self.recorder, self.holdout_recorder):
            if rec is not None:
                rec.flush()

    def __del__(self):
        try:
            self._remove_hooks()
        except Exception:
            pass

    def _pre_hook(self, name: str):
        """In swap mode, the layer's scored parameters enter this forward as detached tensors (no copy), so the
        caller's backward does not compute their mean gradient, which the fused step would only replace."""
        def hook(module, inputs):
            pending = self._armed
            if (pending is None or not pending.swap or not torch.is_grad_enabled()
                    or torch._C._functorch.peek_interpreter_stack() is not None):
                return None
            if name in pending.calls:
                _restore(pending)
                raise ValueError(f"layer {name!r} ran twice in one forward, after one call per forward in earlier "
                                 "batches; Grad-Mimic's fused step needs a fixed call structure: pass fused=False")
            swapped = []
            for leaf in ("weight", "bias"):
                param = module._parameters.get(leaf)
                if param is not None and f"{name}.{leaf}" in pending.leaves:
                    module._parameters[leaf] = param.detach()
                    swapped.append((module, leaf, param))
            pending.swapped[name] = swapped
            return None
        return hook

    def _hook(self, name: str):
        def hook(module, inputs, output):
            pending = self._armed
            if pending is not None:
                for mod, leaf, param in pending.swapped.pop(name, ()):  # the parameters are back at once
                    mod._parameters[leaf] = param
            if (pending is None or pending.disabled or not torch.is_grad_enabled() or not torch.is_tensor(output)
                    or torch._C._functorch.peek_interpreter_stack() is not None):
                return None
            if name in pending.calls:  # called twice in one forward: the identities do not apply
                pending.twice.add(name)
                return None
            a = inputs[0].detach()
            pending.calls[name] = (a, a._version, output.shape)
            if not output.requires_grad and not pending.swap:
                return None  # a frozen layer: no gradient to capture (in swap mode the anchor carries it)
            return _Capture.apply(output, pending.anchor, pending, name)
        return hook

    # ------------------------------------------------------------------ the verbs
    def direction(self) -> dict[str, torch.Tensor]:
        """``V = theta_ref - theta`` over the scored parameters at the model's current weights."""
        params = dict(self._model.named_parameters())
        return {n: self._ref[n] - params[n].detach() for n in self.names}

    def begin(self, model: nn.Module, ids, y=None, *, epoch: int | None = None) -> None:
        """Arm the fused step for the next forward of ``model`` (framework integrations; ``loss`` does this
        itself). The batch's ``ids`` [B] and labels ``y`` [B] are those of that forward."""
        inner = self._setup(model)
        if self._covered is None:
            raise ValueError("the fused Grad-Mimic step does not apply to this model or layer choice (scored "
                             "layers must be nn.Linear / nn.Conv2d called once per forward, no BatchNorm in training "
                             "mode); call gm.loss(model, x, y, ids) inside the training step instead")
        if epoch is not None:
            self.epoch = int(epoch)
        if ids is None:
            raise ValueError("pass the batch's sample ids: keepset records and joins every sample by id")
        ids, y = check_batch(len(ids), y, ids)
        hold = self._score_holdout(inner)
        self._arm(inner, ids, y).hold = hold

    def _arm(self, inner: nn.Module, ids, y) -> _Pending:
        pending = _Pending(ids, y, self.step, self.epoch)
        pending.swap = self._swap_ok
        params = dict(inner.named_parameters())
        pending.leaves = self._correction_leaves(params)
        pending.anchor = _Finish.apply(self, pending, *[params[n] for n in pending.leaves])
        self._armed = pending
        return pending

    def end(self, loss: torch.Tensor, *, per_sample: float) -> None:
        """Close the armed batch: ``loss`` is the tensor that will be backpropagated and ``per_sample`` the
        derivative of ``loss`` with respect to each sample's loss (``1 / B`` for a batch mean, ``1 / (B k)``
        when a framework divides the mean by k accumulation steps)."""
        pending = self._armed
        self._armed = None
        if pending is None:
            raise ValueError("end() without begin(): arm the batch first")
        self._check_calls(pending)
        if pending.disabled:
            raise ValueError(f"the scored layers were not each called once in the forward ({self._call_problem(pending)}); "
                             "the fused step cannot score this model: use gm.loss(model, x, y, ids) instead")
        factor = float(per_sample) * pending.b
        loss.register_hook(lambda g: _set_multiplier(pending, g, factor))
        self.step += 1

    def loss(self, model: nn.Module, x, y=None, ids=None, *, epoch: int | None = None) -> torch.Tensor:
        """The loss to backpropagate for one batch; scores (and records) every sample by id.

        x : [B, ...] inputs (a tuple: ``model(*x)``, a dict: ``model(**x)``); y : [B] labels (or the loss's
        targets); ids : [B] sample ids (int or str); epoch : the current epoch (default ``self.epoch``).
        """
        if not torch.is_grad_enabled():
            raise ValueError("GradMimic.loss runs in a training step: call it with gradients enabled "
                             "(not under torch.no_grad())")
        inner = self._setup(model)
        if epoch is not None:
            self.epoch = int(epoch)
        ids, y = check_batch(x, y, ids)
        hold = self._score_holdout(inner)
        pending = self._arm(inner, ids, y) if self._covered is not None else None
        if pending is not None:
            pending.hold = hold
        head_capture: dict = {}
        handle = None
        if pending is None and _closed_form_applies(inner, self.names, self.loss_fn):
            head = dict(inner.named_modules())[last_linear_name(inner)]
            handle = head.register_forward_hook(lambda m, i, o: head_capture.update(h=i[0], out=o))
        try:
            outputs = model_outputs(call_model(model, x))
        finally:
            self._armed = None
            if pending is not None:
                _restore(pending)
            if handle is not None:
                handle.remove()
        losses = per_sample_losses(self.loss_fn, outputs, y, len(ids))
        if not self._coupling_checked:  # an unmarked loss that couples the batch would make the scores wrong
            check_declared_coupling(self.loss_fn, outputs, y, losses)
            self._coupling_checked = True
        self._remember(ids, y, outputs, losses, x)
        if pending is not None:
            self._check_calls(pending)
            if not pending.disabled:
                mean = losses.mean()
                mean.register_hook(lambda g: _set_multiplier(pending, g, 1.0))
                return mean
        return self._unfused_loss(inner, x, y, ids, outputs, losses, head_capture, hold)

    # ------------------------------------------------------------------ internals
    def _check_calls(self, pending: _Pending) -> None:
        """Disable the fused step for this batch unless every scored layer ran exactly once, unmodified.
        In swap mode the scored parameters took no part in the batch's graph, so a disabled batch is an error."""
        ok = set(pending.calls) == set(self._covered) and not pending.twice
        ok = ok and all(a._version == v and a.shape[0] == pending.b and shape[0] == pending.b
                        for a, v, shape in pending.calls.values())
        if not ok:
            pending.disabled = True
            if pending.swap:
                raise ValueError(f"the scored layers did not each run once, unmodified, in this forward "
                                 f"({self._call_problem(pending) or 'an input modified in place'}), as they did in "
                                 "earlier batches; Grad-Mimic's fused step needs a fixed call structure: pass "
                                 "fused=False")

    def _call_problem(self, pending: _Pending) -> str:
        missing = sorted(set(self._covered) - set(pending.calls))
        return (f"not called: {missing}" if missing else "") + (f" called twice: {sorted(pending.twice)}"
                                                                 if pending.twice else "")

    def _correction_leaves(self, params: dict) -> list[str]:
        """Parameters that may receive a correction (scored, trainable, of a watched layer)."""
        return [n for n in self.names if params[n].requires_grad]

    def _active(self) -> bool:
        return self.reweight and self.epoch >= self.start_epoch

    def _needs_norms(self) -> bool:
        return self.method == "cos" or self.weighting == "opt"

    def _weights(self, score: torch.Tensor, b: int, hold: torch.Tensor | None = None, dots=None, sq=None,
                 v_norm=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(softmax over the (global) batch, the weights applied, the per-sample factors ``u`` of the correction
        ``sum_i u_i g_i`` to add to this process's mean gradient). Under DDP, which averages the R ranks'
        gradients, ``u_i = R w_i - 1/B_rank`` makes the average the global ``sum_i w_i g_i``."""
        normed, b_global = self._norm.softmax(score, self.temperature)
        if not self._active():
            w = torch.full_like(normed, 1.0 / b_global)
        elif self.weighting == "lfdr":
            w, _ = self._norm.normalise(lfdr_weights(score, hold, self._recent))
        elif self.weighting == "softmax":
            w = normed
        else:  # the published raw scores or opt solution: per sample, not normalised over the batch
            w = mimic_weights(score, self.weighting, self.temperature, dots=dots, sq_norms=sq, v_norm=v_norm,
                              opt_lambda=self.opt_lambda, opt_norm=self.opt_norm)
        return normed, w, self._norm.world * w - 1.0 / b

    def _score_holdout(self, inner: nn.Module) -> torch.Tensor | None:
        """Score this step's held-out samples at the current weights (no gradient reaches the model) and record
        them; returns their scores [m] (None without a holdout)."""
        if self.holdout is None:
            return None
        device = next(inner.parameters()).device
        x, y, ids = self.holdout.batch(self.step, device)
        dots, norms = self._terms(inner, x, y)
        score = scores_from_terms(dots, norms if self.method == "cos" else None, direction_norm(self.direction()),
                                  self.method).detach()
        if self.holdout_recorder is not None:
            self.holdout_recorder.record(ids, self.step, self.epoch, mimic=score)
        return score

    def _terms(self, inner: nn.Module, x, y, outputs=None, head_capture=None):
        """``<-g_i, V>`` [B] and ``||g_i||`` (or None) of a batch at the current weights: the final Linear in
        closed form from a forward (the training one when given), else ``alignment_terms`` (its own passes)."""
        need_norms = self._needs_norms()
        v = self.direction()
        if head_capture is None and _closed_form_applies(inner, self.names, self.loss_fn):
            head_capture = {}
            head = dict(inner.named_modules())[last_linear_name(inner)]
            handle = head.register_forward_hook(lambda m, i, o: head_capture.update(h=i[0], out=o))
            try:
                with torch.no_grad():
                    outputs = model_outputs(call_model(inner, x))
            finally:
                handle.remove()
        if head_capture and head_capture.get("out") is outputs and "h" in head_capture:
            last = last_linear_name(inner)
            return linear_closed_form_terms(head_capture["h"], outputs, y, v.get(f"{last}.weight"),
                                            v.get(f"{last}.bias"), need_norms)
        from keepset.models.sample_gradients import alignment_terms

        if isinstance(x, dict):
            raise ValueError("scoring these layers needs per-sample gradients through the model, which keepset "
                             "computes for tensor or tuple inputs; score nn.Linear / nn.Conv2d layers instead")
        return alignment_terms(inner, x, y, v, self.loss_fn, need_norms)

    def _record(self, ids, step: int, epoch: int, score, normed, w) -> None:
        self.last_scores, self.last_weights = score.detach(), w.detach()
        if self.recorder is not None:
            self.recorder.record(ids, step, epoch, mimic=score, mimic_normed=normed, weight=w)

    def _finish_fused(self, pending: _Pending) -> list:
        """Called inside the backward once every scored layer's output gradient is known."""
        none = [None] * len(pending.leaves)
        if pending.disabled:
            return none
        if pending.multiplier is None:
            if pending.swap:
                raise ValueError("GradMimic could not read the loss multiplier: backpropagate the loss that "
                                 "gm.loss returned (scaled or divided as you like)")
            return none
        if pending.multiplier == 0:
            return none
        scale = pending.multiplier / pending.b  # delta_seen = scale * delta_i
        layers = {}
        for m, (a, _, _) in pending.calls.items():
            d = pending.deltas.get(m)
            if d is None:
                d = torch.zeros(pending.calls[m][2], dtype=a.dtype, device=a.device)
            layers[m] = LayerGrads(self._modules[m], a.float(), d.float() / scale)
        if not all(torch.isfinite(lg.delta).all() for lg in layers.values()):
            # an overflowing scaled step: nothing to score; the GradScaler skips it on seeing inf gradients
            if not pending.swap:
                return none
            return self._layer_grads(pending, layers, torch.full((pending.b,), pending.multiplier / pending.b,
                                                                 device=next(iter(layers.values())).delta.device))
        v = self.direction()
        v_norm = direction_norm(v)
        dots, sq = layer_terms(layers, self._covered, v, self._needs_norms())
        score = scores_from_terms(dots, sq.clamp_min(0).sqrt() if self.method == "cos" else None, v_norm, self.method)
        normed, w, u = self._weights(score, pending.b, pending.hold, dots, sq, v_norm)
        self._record(pending.ids, pending.step, pending.epoch, score, normed, w)
        self._swap_ok = True  # the call structure is known: from the next batch on, skip the mean gradient
        if pending.swap:  # autograd computed nothing for the scored parameters: return their whole gradient
            whole = (u + 1.0 / pending.b) if self._active() else torch.full_like(u, 1.0 / pending.b)
            return self._layer_grads(pending, layers, whole * pending.multiplier)
        if not self._active():
            return none
        # sum_i u_i g_i = multiplier * sum_i (w_i - 1/B) g_i on one process: the correction of the mean gradient
        return self._layer_grads(pending, layers, u * pending.multiplier)

    def _layer_grads(self, pending: _Pending, layers: dict, u: torch.Tensor) -> list:
        """``sum_i u_i g_i`` for every correctable leaf (in ``pending.leaves`` order)."""
        params = dict(self._model.named_parameters())
        out = {}
        for m, parts in self._covered.items():
            want_w = parts["weight"] and f"{m}.weight" in pending.leaves
            want_b = parts["bias"] and f"{m}.bias" in pending.leaves
            gw, gb = layers[m].weighted(u, want_w, want_b)
            if want_w:
                out[f"{m}.weight"] = gw.to(params[f"{m}.weight"].dtype)
            if want_b and gb is not None:
                out[f"{m}.bias"] = gb.to(params[f"{m}.bias"].dtype)
        return [out.get(n) for n in pending.leaves]

    def _unfused_loss(self, inner, x, y, ids, outputs, losses, head_capture, hold=None) -> torch.Tensor:
        """Scores before the backward; a loss whose gradient is the re-weighted one."""
        b = len(ids)
        dots, norms = self._terms(inner, x, y, outputs, head_capture)
        v_norm = direction_norm(self.direction())
        score = scores_from_terms(dots, norms if self.method == "cos" else None, v_norm, self.method)
        normed, w, u = self._weights(score, b, hold, dots, None if norms is None else norms * norms, v_norm)
        self._record(ids, self.step - 1, self.epoch, score, normed, w)
        if not self._active():
            return losses.mean()
        u = u.detach().to(losses)
        if self.apply_to == "all":
            return losses.mean() + (u * losses).sum()
        params = dict(inner.named_parameters())
        leaves = self._correction_leaves(params)
        corr = torch.autograd.grad((u * losses).sum(), [params[n] for n in leaves], retain_graph=True,
                                   allow_unused=True)
        return losses.mean() + _AddGrads.apply(list(corr), *[params[n] for n in leaves])


def _restore(pending: _Pending) -> None:
    """Put back every parameter a pre-hook swapped for a detached view (a forward that failed half-way)."""
    for swapped in pending.swapped.values():
        for mod, leaf, param in swapped:
            mod._parameters[leaf] = param
    pending.swapped.clear()


def _is_first_rank() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _rank_folder(record_to):
    """Under torch.distributed with several processes, each rank records into ``record_to/rank-NNNNN``
    (``DynamicsRecorder.open(record_to)`` reads them back merged in step order)."""
    if record_to is None or isinstance(record_to, DynamicsRecorder):
        return record_to
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Path(record_to) / f"rank-{dist.get_rank():05d}"
    return record_to


def _set_multiplier(pending: _Pending, grad: torch.Tensor, factor: float) -> None:
    pending.multiplier = float(grad) * factor
