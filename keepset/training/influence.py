"""Approximate influence with a few clean samples per class instead of a reference model: the published Grad-Mimic
code's ``--mode influence-function`` (github.com/zihengh1/Grad-Mimic, ``run.py`` ``main``; the clean set is
``gradmimic/datasets.py`` ``FewShotDataset``).

The clean ("golden") set: ``k`` samples of every class (``--few_shot``, default 10; all of a class when it has
fewer), drawn once without replacement (``np.random.choice`` per class there; seeded here). Every batch:

- ``G`` = the gradient of the mean loss of the golden set with respect to the scored parameters (the mimic
  layer, default the final Linear's weight), at the current model (the mean of its per-sample gradients);
- each sample's score ``compute_similarity(G, g_i, method)``: ``proj`` = ``<g_i, G> / ||G||``, ``cos`` =
  ``<g_i, G> / (||g_i|| ||G||)`` (note: ``+g_i``, not ``-g_i`` as for the Mimic Score: a sample whose descent step
  also descends the clean loss scores high);
- weights ``softmax(score / temperature)`` (the published default ``normed_proj``; ``weighting="softmax"``) or the
  raw scores (``weighting="raw"``, the published ``proj`` / ``cos``), applied to the scored parameters only
  (``calibrate_mimic_layer_only``), the other parameters keeping the mean gradient.

The approximation: first-order influence with the Hessian replaced by the identity. Up-weighting sample i by
``eps`` changes the clean loss by ``-eps lr <g_clean, g_i>`` after one gradient step (the TracIn-style dot product
at the current weights), instead of Koh and Liang's ``-<g_clean, H^{-1} g_i>``; no reference model is used.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from keepset._checks import check_temperature
from keepset.training.agra import as_pool
from keepset.training.layer_weighted import LayerWeightedLoss, direction_dot

INFLUENCE_METHODS = ("proj", "cos")
INFLUENCE_WEIGHTINGS = ("softmax", "raw")


def few_shot_positions(labels, k: int, seed: int = 0) -> np.ndarray:
    """Positions of ``k`` samples per class (all of a class with fewer), drawn without replacement with a
    seeded generator; classes in increasing order, positions in draw order within each: int64 [sum_c min(k, n_c)]."""
    labels = np.asarray(labels)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (clean samples per class), got {k!r}")
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        out.append(rng.choice(pos, size=min(int(k), len(pos)), replace=False))
    return np.concatenate(out).astype(np.int64)


class FewShotInfluence(LayerWeightedLoss):
    """Weights from the alignment of each sample's gradient with the mean gradient of ``k`` clean samples per class.

    Parameters
    ----------
    clean_x, clean_y, clean_ids : trusted samples (inputs [M, ...], clean labels [M], ids [M], default 0..M-1);
        ``k`` per class are drawn from them once (``few_shot_ids`` holds their ids).
    k : clean samples per class (published default 10).
    method : "proj" or "cos"; weighting : "softmax" or "raw"; temperature : softmax temperature (> 0).
    layers, apply_to : the scored parameters (None: the final Linear's weight) and where the weights apply
        ("layers", the published default, or "all").
    seed : seeds the draw of the clean samples.

    After each batch: ``last_scores`` [B] and ``last_weights`` [B].
    """

    def __init__(self, clean_x, clean_y, clean_ids=None, *, k: int = 10, method: str = "proj",
                 weighting: str = "softmax", temperature: float = 1.0, layers: str | Sequence[str] | None = None,
                 apply_to: str = "layers", seed: int = 0, start_epoch: int = 0, loss_fn=None):
        super().__init__(layers=layers, apply_to=apply_to, start_epoch=start_epoch, loss_fn=loss_fn)
        x, y, ids = as_pool(clean_x, clean_y, clean_ids, "clean set")
        if method not in INFLUENCE_METHODS:
            raise ValueError(f"method must be 'proj' or 'cos', got {method!r}")
        if weighting not in INFLUENCE_WEIGHTINGS:
            raise ValueError(f"weighting must be 'softmax' (published normed_*) or 'raw' (published proj / cos), "
                             f"got {weighting!r}")
        temperature = check_temperature(temperature)
        pos = few_shot_positions(y.numpy(), k, seed)
        self.clean_x, self.clean_y, self.few_shot_ids = x[torch.from_numpy(pos)], y[torch.from_numpy(pos)], ids[pos]
        self.k, self.method, self.weighting, self.temperature = int(k), method, weighting, temperature
        self.signed = weighting == "raw"
        self.last_scores: torch.Tensor | None = None

    def batch_weights(self, model, x, y, ids, logits, losses) -> torch.Tensor:
        dev = logits.device
        g = self.mean_gradient(model, self.clean_x.to(dev), self.clean_y.to(dev))
        g_norm = float(direction_dot(g, g).sqrt())
        dots, norms = self.sample_terms(model, x, y, logits, g, need_norms=self.method == "cos")
        if g_norm == 0:
            score = torch.zeros_like(dots)
        elif self.method == "cos":
            score = torch.where(norms > 0, dots / (norms.clamp_min(1e-30) * g_norm), torch.zeros_like(dots))
        else:
            score = dots / g_norm
        self.last_scores = score.detach()
        if self.weighting == "softmax":
            return torch.softmax(score / self.temperature, dim=0)
        return score
