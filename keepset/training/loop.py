"""One training loop with hooks. Re-weighting (Grad-Mimic, GraNd, RHO-loss) and the recording of
per-step dynamics are hooks, never forks of this loop.

A hook may implement any of::

    on_train_start(model, n_samples, steps_per_epoch, epochs)
    on_batch(state)        # after the forward pass, before backward; may set state.sample_weights
                           # (at most one hook per batch may set weights or param_grads)
    on_step_end(state)     # after the optimiser step
    on_epoch_end(epoch, model)
    on_train_end(model)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from keepset.models.mimic import last_linear_name, per_sample_cross_entropy

OPTIMIZERS = ("sgd", "adamw")


@dataclass
class BatchState:
    """What a hook sees of one training step.

    indices : int64 [B] positions of the batch's samples in the training set
    x, y : the batch; logits : [B, K] (with grad); losses : per-sample losses [B] (with grad)
    head_inputs : [B, d] inputs of the final nn.Linear (detached)
    sample_weights : set by a re-weighting hook: [B] non-negative weights summing to 1
    weighted_params : parameter names the weights apply to (None: all trainable parameters)
    param_grads : set by a hook that computed the step's gradients itself (e.g. the fused Grad-Mimic step):
        {name: gradient} for every trainable parameter; the loop then skips its own backward pass
    """

    epoch: int
    step: int
    indices: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    losses: torch.Tensor
    head_inputs: torch.Tensor | None
    model: nn.Module
    sample_weights: torch.Tensor | None = None
    weighted_params: Sequence[str] | None = None
    param_grads: dict | None = None
    extras: dict = field(default_factory=dict)


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]
    steps: int


def make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def _call(hooks, name: str, *args) -> None:
    for h in hooks:
        fn = getattr(h, name, None)
        if fn is not None:
            fn(*args)


def _on_batch(hooks, state: BatchState) -> None:
    """Call every hook's ``on_batch``; at most one of them may set the batch's weights or gradients.

    Two re-weighting hooks would silently override each other (the last, or the one that computed the
    gradients, would win), so that raises ValueError naming both.
    """
    setter = None
    for h in hooks:
        fn = getattr(h, "on_batch", None)
        if fn is None:
            continue
        before = (state.sample_weights, state.param_grads)
        fn(state)
        if state.sample_weights is not before[0] or state.param_grads is not before[1]:
            if setter is not None:
                raise ValueError(
                    f"hooks {type(setter).__name__} and {type(h).__name__} both set the batch's weights or "
                    "gradients, so one would silently override the other. Keep one re-weighting hook; to record "
                    "Mimic Scores under another method's weights, put that method's hook before "
                    "GradMimicHook(reweight=False)")
            setter = h


def fit(model: nn.Module, x, y, *, epochs: int = 10, batch_size: int = 128, optimizer: str = "sgd",
        lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0,
        hooks: Sequence[Any] = (), loss_fn: Callable | None = None, progress: bool = True,
        desc: str = "train", device: str | torch.device | None = None) -> FitResult:
    """Train ``model`` in place on (x [N, ...], y [N]) with mini-batches and hooks.

    The batch order is drawn from ``seed``, so the same seed and initial weights give the same run.
    Returns the model, a per-epoch history (mean loss, accuracy) and the number of steps taken.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32).to(device)
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y).long().to(device)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if not torch.isfinite(x).all():
        raise ValueError("training inputs hold NaN or inf values; clean them before training")
    loss_fn = loss_fn or per_sample_cross_entropy
    model.to(device)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameter")
    opt = make_optimizer(list(params.values()), optimizer, lr, momentum, weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    n = len(x)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    head = dict(model.named_modules())[last_linear_name(model)]
    captured: dict = {}
    handle = head.register_forward_hook(lambda m, inp, out: captured.__setitem__("h", inp[0]))
    _call(hooks, "on_train_start", model, n, steps_per_epoch, epochs)
    history, step = [], 0
    bar = _progress(epochs * steps_per_epoch, desc, progress)
    try:
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(n, generator=gen).to(device)
            tot_loss, tot_correct = 0.0, 0
            for b in range(steps_per_epoch):
                idx = order[b * batch_size:(b + 1) * batch_size]
                xb, yb = x[idx], y[idx]
                logits = model(xb)
                losses = loss_fn(logits, yb)
                state = BatchState(epoch, step, idx, xb, yb, logits, losses,
                                   captured.get("h").detach() if "h" in captured else None, model)
                _on_batch(hooks, state)
                opt.zero_grad(set_to_none=True)
                _backward(state, params)
                opt.step()
                _call(hooks, "on_step_end", state)
                tot_loss += float(losses.detach().sum())
                tot_correct += int((logits.detach().argmax(1) == yb).sum())
                step += 1
                bar.update(1)
            history.append({"epoch": epoch, "loss": tot_loss / n, "accuracy": tot_correct / n})
            bar.set_postfix(loss=f"{tot_loss / n:.3f}", acc=f"{tot_correct / n:.3f}")
            _call(hooks, "on_epoch_end", epoch, model)
    finally:
        handle.remove()
        bar.close()
    _call(hooks, "on_train_end", model)
    model.eval()
    return FitResult(model, history, step)


def _backward(state: BatchState, params: dict[str, torch.Tensor]) -> None:
    """Mean gradient for every parameter, except ``sum_i w_i g_i`` on the re-weighted ones."""
    if state.param_grads is not None:
        missing = [n for n in params if n not in state.param_grads]
        if missing:
            raise ValueError(f"a hook set param_grads without gradients for {missing}")
        for nme, p in params.items():
            p.grad = state.param_grads[nme].to(p)
        return
    w = state.sample_weights
    if w is None:
        state.losses.mean().backward()
        return
    w = w.detach().to(state.losses)
    if w.shape != state.losses.shape or (w < 0).any() or not torch.isfinite(w).all():
        raise ValueError(f"sample weights must be finite, non-negative and of shape {tuple(state.losses.shape)}")
    weighted_loss = (w * state.losses).sum()
    names = list(params) if state.weighted_params is None else list(state.weighted_params)
    if set(names) >= set(params):
        weighted_loss.backward()
        return
    wgrads = torch.autograd.grad(weighted_loss, [params[n] for n in names], retain_graph=True)
    state.losses.mean().backward()
    for nme, g in zip(names, wgrads):
        params[nme].grad = g


def _progress(total: int, desc: str, enabled: bool):
    from keepset._progress import progress_bar

    return progress_bar(total=total, desc=desc, enabled=enabled)


@torch.no_grad()
def predict_logits(model: nn.Module, x, batch_size: int = 1024) -> torch.Tensor:
    """Logits [N, K] of ``model`` on x [N, ...] in eval mode, batched."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)
    outs = [model(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)


def accuracy(model: nn.Module, x, y, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on (x, y)."""
    logits = predict_logits(model, x, batch_size)
    return float((logits.argmax(1).numpy() == np.asarray(y)).mean())


@torch.no_grad()
def embed(model: nn.Module, x, batch_size: int = 1024) -> np.ndarray:
    """Backbone features ``model.features(x)`` as float32 [N, d] (a network's penultimate layer)."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)
    outs = [model.features(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs).reshape(len(x), -1).numpy().astype(np.float32)
