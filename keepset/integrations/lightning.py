"""Grad-Mimic in PyTorch Lightning: ``GradMimicCallback``.

    gm = keepset.GradMimic(reference, record_to="runs/gm")
    trainer = L.Trainer(callbacks=[GradMimicCallback(gm)], ...)
    trainer.fit(module, loader)            # batches are (x, y, ids); training_step returns the batch's mean loss

The callback arms Grad-Mimic's fused step before each training batch (``on_train_batch_start``: the batch's
ids and labels) and hands it the loss Lightning backpropagates (``on_before_backward``: Lightning has divided
the ``training_step`` loss by ``accumulate_grad_batches`` by then). The LightningModule computes its loss as
usual, as the mean over the batch of per-sample losses (``F.cross_entropy(logits, y)``), with one forward
pass through the scored layers, which must be ``nn.Linear`` / ``nn.Conv2d`` layers (the fused step); the
scored parameters' names are those of the LightningModule (``head.weight`` ...), and the reference has the
same names. Mixed precision (``precision="16-mixed"``), gradient accumulation and DDP work as with a plain
loop: the correction flows through autograd into the parameters' gradients.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise ImportError("GradMimicCallback needs PyTorch Lightning: pip install 'keepset[lightning]'") from None

from keepset.training.gradmimic import GradMimic


def default_unpack(batch):
    """(x, y, ids) from a batch that is a tuple/list ``(x, y, ids)`` or a dict with x/y/ids keys."""
    if isinstance(batch, dict):
        missing = {"x", "y", "ids"} - set(batch)
        if missing:
            raise ValueError(f"a dict batch needs the keys x, y and ids (missing {sorted(missing)}); pass "
                             "unpack=... to GradMimicCallback for another layout")
        return batch["x"], batch["y"], batch["ids"]
    if isinstance(batch, (tuple, list)) and len(batch) == 3:
        return tuple(batch)
    raise ValueError("GradMimicCallback expects batches (x, y, ids); pass unpack=lambda batch: (x, y, ids) "
                     "for another layout")


class GradMimicCallback(pl.Callback):
    """Grad-Mimic Stage 1 and recording for a LightningModule's training loop.

    Parameters
    ----------
    gradmimic : the ``keepset.GradMimic`` doing the work (its reference, layers, temperature, recorder).
    unpack : ``batch -> (x, y, ids)`` (default: ``(x, y, ids)`` tuples or dicts with those keys).
    """

    def __init__(self, gradmimic: GradMimic, unpack: Callable | None = None):
        super().__init__()
        if not isinstance(gradmimic, GradMimic):
            raise ValueError(f"GradMimicCallback needs a keepset.GradMimic, got {type(gradmimic).__name__}")
        self.gradmimic = gradmimic
        self.unpack = unpack or default_unpack
        self._batch_size: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y, ids = self.unpack(batch)
        ids = ids.detach().cpu().numpy() if hasattr(ids, "detach") else np.asarray(ids)
        self._batch_size = len(ids)
        self.gradmimic.begin(pl_module, ids, y, epoch=trainer.current_epoch)

    def on_before_backward(self, trainer, pl_module, loss):
        if self._batch_size is None:
            return
        accumulate = max(int(getattr(trainer, "accumulate_grad_batches", 1) or 1), 1)
        self.gradmimic.end(loss, per_sample=1.0 / (self._batch_size * accumulate))
        self._batch_size = None

    def on_train_end(self, trainer, pl_module):
        self.gradmimic.close()

    def on_exception(self, trainer, pl_module, exception):
        self.gradmimic.close()
