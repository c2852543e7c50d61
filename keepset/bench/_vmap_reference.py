"""The classes ``keepset bench overhead`` times (they import torch, so they live apart from the benchmark's flags)."""

from __future__ import annotations

import time

import torch

from keepset.training.online import OnlineMethod


class _StepTimer:
    """Observer recording the wall time between consecutive step ends (the first from its creation); on a GPU
    it waits for the device's queued work before reading the clock."""

    def __init__(self, device="cpu"):
        self.sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        self.times: list[float] = []
        self._last = time.perf_counter()

    def on_batch(self, batch, model, head_inputs):
        self.sync()
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


class VmapReference(OnlineMethod):
    """The published Grad-Mimic training step (github.com/zihengh1/Grad-Mimic, ``gradmimic/training.py`` and the
    ``grad-mimic`` branch of ``run.py``), scoring every trainable parameter, with the published default
    ``normed_proj`` weights. One step:

    1. per-sample gradients of every trainable parameter: ``vmap`` over the samples of ``grad`` of the
       one-sample loss (``functional_call`` on ``x_i.unsqueeze(0)``, mean cross-entropy), as
       ``get_per_sample_gradients`` (which differentiates every trainable parameter whatever the scored layer);
    2. the task vector from the two state dicts, reference minus current (``compute_task_vector``);
    3. the negated per-sample gradients: the published code negates the scored parameter's [B, ...] tensor;
       with every parameter scored that tensor is the flattened per-sample gradients concatenated, [B, P];
    4. each sample's score in a Python loop over samples: flattened gradient . unit task vector
       (``compute_similarity``), then the weights ``softmax(score / tau)``;
    5. every parameter's gradient as ``sum(w * g, dim=0)`` with ``w`` broadcast over the per-sample
       gradients (``gradient_calibration``).

    ``vectorised=True`` keeps step 1 and replaces steps 2-5 by what is cheapest once per-sample gradients
    are materialised: no concatenated copy, all scores from one product per parameter, and every gradient
    from one ``tensordot``. It shows how much of the reference's cost is ``vmap(grad)`` itself.
    """

    def __init__(self, reference: torch.nn.Module, temperature: float = 1.0, vectorised: bool = False):
        super().__init__()
        self.reference, self.temperature, self.vectorised = reference, temperature, vectorised

    def loss(self, model, x, y=None, ids=None, *, epoch=None):
        from torch.func import functional_call, grad, vmap

        from keepset.training.gradmimic import _AddGrads

        ids, y, logits, losses = self._forward(model, x, y, ids, epoch)
        self._remember(ids, y, logits, losses, x)
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach() for n, b in model.named_buffers()}

        def one_sample_loss(xi, yi, p):
            return torch.nn.functional.cross_entropy(functional_call(model, (p, buffers), (xi.unsqueeze(0),)),
                                                     yi.unsqueeze(0))

        grads = vmap(grad(one_sample_loss, argnums=2), in_dims=(0, 0, None))(x, y, params)
        names = list(params)
        b = len(y)
        if self.vectorised:
            ref = dict(self.reference.named_parameters())
            v = {n: ref[n].detach() - params[n] for n in names}
            v_norm = torch.sqrt(sum((t * t).sum() for t in v.values()))
            scores = -sum(grads[n].reshape(b, -1) @ v[n].reshape(-1) for n in names) / v_norm
            w = torch.softmax(scores / self.temperature, 0)
            step_grads = {n: torch.tensordot(w, grads[n], 1) for n in names}
        else:
            current, target = model.state_dict(), self.reference.state_dict()
            task_vector = torch.cat([(target[n] - current[n]).flatten() for n in names])
            neg_grads = -torch.cat([grads[n].flatten(1) for n in names], 1)
            unit = torch.nn.functional.normalize(task_vector, p=2, dim=0)
            scores = torch.empty(b, device=neg_grads.device)
            for i, g in enumerate(neg_grads):  # the published code's loop over samples
                scores[i] = torch.dot(g.flatten(), unit)
            w = torch.softmax(scores / self.temperature, 0)
            step_grads = {n: torch.sum(w.reshape((b,) + (1,) * (grads[n].dim() - 1)) * grads[n], dim=0)
                          for n in names}
        # the step's gradients are the ones just computed: the returned zero only carries them to the parameters
        live = dict(model.named_parameters())
        return _AddGrads.apply([step_grads[n] for n in names], *[live[n] for n in names])
