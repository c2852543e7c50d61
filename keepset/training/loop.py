"""``fit``: a thin mini-batch loop over an online method (``keepset.training.online``).

Each step: draw a batch (inputs, labels and ids) on the CPU, move it to the device, ``loss =
method.loss(model, x, y, ids, epoch=e)``, ``loss.backward()``, ``optimizer.step()``; then observers (the
dynamics recorder of the baselines) see what the method saw of the batch. The same method object runs in
any other loop, so ``fit`` holds no logic a user's own loop would lack.

An observer may implement ``on_batch(batch: BatchOutput, model, head_inputs)`` (``head_inputs``: the
inputs [B, d] of the model's final ``nn.Linear``, detached), ``on_epoch_end(epoch, model)`` and
``on_train_end(model)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from keepset._ids import check_ids
from keepset.models.mimic import last_linear_name
from keepset.training.online import MeanLoss, OnlineMethod

OPTIMIZERS = ("sgd", "adamw")


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]
    steps: int


def make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float):
    for label, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{label} must be a finite number >= 0, got {value}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


class _Data:
    """Inputs, labels and ids of a training set, batched on the CPU (lazy sources load per batch)."""

    def __init__(self, x, y, ids):
        from keepset.data import SampleSet

        if isinstance(x, SampleSet):
            self.samples, self.x = x, None
            y = x.labels if y is None else y
            ids = x.ids if ids is None else ids
            n = len(x)
        else:
            self.samples = None
            self.x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x), dtype=torch.float32)
            if self.x.is_floating_point():
                self.x = self.x.float()
            n = len(self.x)
            if self.x.is_floating_point() and not torch.isfinite(self.x).all():
                raise ValueError("training inputs hold NaN or inf values; clean them before training")
        if y is None:
            raise ValueError("fit needs labels y (one per sample)")
        self.y = torch.as_tensor(np.asarray(y.cpu() if torch.is_tensor(y) else y))
        if self.y.dtype.is_floating_point or self.y.dim() != 1:
            raise ValueError(f"labels must be 1-D integer class indices, got dtype {self.y.dtype} shape "
                             f"{tuple(self.y.shape)}")
        self.y = self.y.long()
        if len(self.y) != n:
            raise ValueError(f"x has {n} samples but y has {len(self.y)}")
        self.ids = check_ids(np.arange(n, dtype=np.int64) if ids is None else ids, "ids")
        if len(self.ids) != n:
            raise ValueError(f"x has {n} samples but ids has {len(self.ids)}")
        self.n = n

    def batch(self, positions: torch.Tensor, device):
        pos = positions.numpy()
        if self.samples is not None:
            xb = torch.from_numpy(self.samples.get_inputs(pos))
        else:
            xb = self.x[positions]
        return xb.to(device), self.y[positions].to(device), self.ids[pos]


def fit(model: nn.Module, x, y=None, *, ids=None, method: OnlineMethod | None = None, observers: Sequence[Any] = (),
        epochs: int = 10, batch_size: int = 128, optimizer: str = "sgd", lr: float = 0.1, momentum: float = 0.9,
        weight_decay: float = 0.0, seed: int = 0, progress: bool = True, desc: str = "train",
        device: str | torch.device | None = None) -> FitResult:
    """Train ``model`` in place on (x [N, ...], y [N]) with mini-batches through ``method``.

    x : array / tensor [N, ...] or a ``SampleSet`` (then y and ids default to its labels and ids, and lazily
        loaded inputs are read batch by batch); ids : [N] sample ids (default 0..N-1).
    method : an online method (``GradMimic``, ``RhoLoss``, ``GrandWeight`` ...); None = the mean loss.
    device : where the model and each batch go (default: the model's device); the data stay on the CPU.
    The batch order is drawn from ``seed``, so the same seed and initial weights give the same run.
    Returns the model, a per-epoch history (mean loss, accuracy) and the number of steps taken.
    """
    if int(epochs) < 1 or int(batch_size) < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    data = _Data(x, y, ids)
    if data.n == 0:
        raise ValueError("the training set is empty")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    method = method if method is not None else MeanLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter")
    opt = make_optimizer(params, optimizer, lr, momentum, weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    n, batch_size = data.n, int(batch_size)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    captured: dict = {}
    handle = None
    if observers:
        head = dict(model.named_modules())[last_linear_name(model)]
        handle = head.register_forward_hook(_capture_into(captured))
    history, step = [], 0
    bar = _progress(int(epochs) * steps_per_epoch, desc, progress)
    try:
        for epoch in range(int(epochs)):
            model.train()
            order = torch.randperm(n, generator=gen)
            tot_loss, tot_correct = 0.0, 0
            for b in range(steps_per_epoch):
                xb, yb, idb = data.batch(order[b * batch_size:(b + 1) * batch_size], device)
                loss = method.loss(model, xb, yb, idb, epoch=epoch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen = method.last_batch
                for obs in observers:
                    fn = getattr(obs, "on_batch", None)
                    if fn is not None:
                        h = captured.get("h")
                        fn(seen, model, None if h is None else h.detach())
                tot_loss += float(seen.losses.sum())
                if seen.logits.dim() == 2:
                    tot_correct += int((seen.logits.argmax(1) == yb).sum())
                step += 1
                bar.update(1)
            history.append({"epoch": epoch, "loss": tot_loss / n, "accuracy": tot_correct / n})
            bar.set_postfix(loss=f"{tot_loss / n:.3f}", acc=f"{tot_correct / n:.3f}")
            _call(observers, "on_epoch_end", epoch, model)
    finally:
        if handle is not None:
            handle.remove()
        bar.close()
        close = getattr(method, "close", None)
        if close is not None:
            close()
    _call(observers, "on_train_end", model)
    model.eval()
    return FitResult(model, history, step)


def _capture_into(captured: dict):
    """A forward hook keeping a module's input under ``captured["h"]`` (calls inside torch.func transforms,
    which see per-sample slices, are ignored)."""
    def hook(module, inp, out):
        if torch._C._functorch.peek_interpreter_stack() is None:
            captured["h"] = inp[0]
    return hook


def _call(objs, name: str, *args) -> None:
    for o in objs:
        fn = getattr(o, name, None)
        if fn is not None:
            fn(*args)


def _progress(total: int, desc: str, enabled: bool):
    from keepset._progress import progress_bar

    return progress_bar(total=total, desc=desc, enabled=enabled)


def _as_input(x) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x), dtype=torch.float32)


@torch.no_grad()
def predict_logits(model: nn.Module, x, batch_size: int = 1024) -> torch.Tensor:
    """Logits [N, K] of ``model`` on x [N, ...] in eval mode, batched, returned on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    x = _as_input(x)
    outs = [model(x[i:i + batch_size].to(device).float()).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)


def accuracy(model: nn.Module, x, y, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on (x, y)."""
    logits = predict_logits(model, x, batch_size)
    y = y.cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
    return float((logits.argmax(1).numpy() == y).mean())


@torch.no_grad()
def embed(model: nn.Module, x, batch_size: int = 1024) -> np.ndarray:
    """Backbone features ``model.features(x)`` as float32 [N, d] (a network's penultimate layer), on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    x = _as_input(x)
    outs = [model.features(x[i:i + batch_size].to(device).float()).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs).reshape(len(x), -1).numpy().astype(np.float32)
