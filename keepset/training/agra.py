"""AGRA: Adaptive GRAdient-based outlier removal (Sedova, Zellinger and Roth, ECML PKDD 2023), as an online method.

Follows the authors' code (github.com/anasedova/AGRA, ``src/AGRA/logreg_model_with_AGRA.py`` ``fit`` and
``src/AGRA/labels_recalculation_logreg.py`` ``calculate_label``, single-label case without an "other" class):

1. for every training batch, draw a comparison batch of ``comparison_size`` samples (default: the batch's size,
   their ``comp_batch_size = batch_size``) uniformly without replacement from a pool (their
   ``WeightedRandomSampler`` over all-ones weights);
2. its gradient ``G``: the gradient of the mean cross-entropy of the comparison batch with respect to the
   weight matrix (their "only take gradient with respect to weight matrix"; here the scored parameters,
   default the final Linear's weight), at the current model;
3. each training sample's score ``<g_i, G> / (||g_i|| ||G|| + 1e-6)``, ``g_i`` its own gradient of the same
   parameters for its (noisy) label;
4. a sample is kept when its score is strictly above ``threshold`` (their ``agra_threshold``, default 0: the
   ``argmax`` over ``[threshold, score]`` picks "ignore" on a tie); the update is the mean loss of the kept
   samples, over every parameter (their ``CrossEntropyLoss(ignore_index)`` on the model), i.e. weights
   ``1 / #kept``; when none is kept the step has no gradient (they skip ``optimizer.step()``;
   ``on_empty="skip"``).

The authors' pool is the (noisy) training set itself; the published Grad-Mimic code's ``--mode agra``
(``run.py`` ``main``) also draws the comparison batch from the training loader, keeps ``cos > 0``, weights the kept
samples ``1 / #kept`` on the mimic layer only and falls back to uniform weights when none is kept: that is
``apply_to="layers", on_empty="uniform"``. Passing trusted (clean) samples as the pool gives AGRA a clean
comparison batch, the variant keepset's benchmarks also run.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from keepset._ids import check_ids
from keepset.training.layer_weighted import LayerWeightedLoss, direction_dot

EMPTY = ("skip", "uniform")
EPS = 1e-6  # the authors' denominator guard


def as_pool(x, y, ids, name: str):
    """(inputs as a float tensor, labels as int64 tensor, ids) of a sample pool; one-line errors otherwise."""
    x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))
    if x.is_floating_point():
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError(f"the {name} inputs hold NaN or inf values; clean them first")
    y = torch.as_tensor(np.asarray(y.cpu() if torch.is_tensor(y) else y))
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"the {name} labels must be 1-D integer class indices, got dtype {y.dtype} shape "
                         f"{tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"the {name} has {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise ValueError(f"the {name} is empty")
    ids = check_ids(np.arange(len(y), dtype=np.int64) if ids is None else ids, f"{name} ids")
    if len(ids) != len(y):
        raise ValueError(f"the {name} has {len(y)} samples but {len(ids)} ids")
    return x, y.long(), ids


class AGRA(LayerWeightedLoss):
    """AGRA (module docstring): drop the samples of each batch whose gradient disagrees with a comparison batch's.

    Parameters
    ----------
    pool_x, pool_y, pool_ids : the samples comparison batches are drawn from: inputs [M, ...], labels [M], ids
        [M] (default 0..M-1). The authors use the training set itself; trusted samples give a clean comparison.
    comparison_size : samples per comparison batch (None: the training batch's size), at most M.
    threshold : keep samples whose cosine is strictly above it (the authors' default 0), in [-1, 1).
    layers : the parameters compared (None: the final Linear's weight, as the authors).
    apply_to : "all" (the authors: the kept samples' mean loss trains every parameter) or "layers".
    on_empty : "skip" (no gradient when nothing is kept, the authors) or "uniform" (mean loss, the Grad-Mimic code).
    seed : seeds the comparison draws (same seed, same draws).

    After each batch: ``last_weights`` [B] and ``last_comparison_ids`` (ids of the comparison batch).
    """

    def __init__(self, pool_x, pool_y, pool_ids=None, *, comparison_size: int | None = None, threshold: float = 0.0,
                 layers: str | Sequence[str] | None = None, apply_to: str = "all", on_empty: str = "skip",
                 seed: int = 0, start_epoch: int = 0, loss_fn=None):
        super().__init__(layers=layers, apply_to=apply_to, start_epoch=start_epoch, loss_fn=loss_fn)
        self.pool_x, self.pool_y, self.pool_ids = as_pool(pool_x, pool_y, pool_ids, "comparison pool")
        if comparison_size is not None:
            if not isinstance(comparison_size, (int, np.integer)) or not 1 <= comparison_size <= len(self.pool_y):
                raise ValueError(f"comparison_size must be an integer in [1, {len(self.pool_y)}] (the pool's size), "
                                 f"got {comparison_size!r}")
        if not (isinstance(threshold, (int, float)) and -1.0 <= float(threshold) < 1.0):
            raise ValueError(f"threshold must be a cosine in [-1, 1), got {threshold!r}")
        if on_empty not in EMPTY:
            raise ValueError(f"on_empty must be 'skip' or 'uniform', got {on_empty!r}")
        self.comparison_size, self.threshold, self.on_empty = comparison_size, float(threshold), on_empty
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        self.last_scores: torch.Tensor | None = None
        self.last_comparison_ids = None

    def comparison_batch(self, b: int) -> np.ndarray:
        """Positions in the pool of the next comparison batch (uniform, without replacement)."""
        c = self.comparison_size if self.comparison_size is not None else min(b, len(self.pool_y))
        return torch.randperm(len(self.pool_y), generator=self._gen)[:c].numpy()

    def batch_weights(self, model, x, y, ids, logits, losses) -> torch.Tensor:
        pos = self.comparison_batch(len(losses))
        self.last_comparison_ids = self.pool_ids[pos]
        dev = logits.device
        sel = torch.from_numpy(pos)
        g = self.mean_gradient(model, self.pool_x[sel].to(dev), self.pool_y[sel].to(dev))
        g_norm = float(direction_dot(g, g).sqrt())
        dots, norms = self.sample_terms(model, x, y, logits, g, need_norms=True)
        score = dots / (norms * g_norm + EPS)
        self.last_scores = score.detach()
        keep = score > self.threshold
        n = int(keep.sum())
        if n == 0:
            fill = 0.0 if self.on_empty == "skip" else 1.0 / len(score)
            return torch.full_like(score, fill)
        return keep.float() / n
