"""Held-out trusted samples scored during training, and the weighting they calibrate.

Trusted samples that no model trains on show, at every step, what a clean sample's Mimic Score looks like
under the current weights. ``Holdout`` serves ``per_step`` of them per step (consecutive seeded permutations:
never the same sample twice in a step, every sample about equally often); ``GradMimic(holdout=...)`` scores
them before the step's update, with no gradient contribution, and records ``(id, step, epoch, mimic)``. The
calibrated Stage 2 (``keepset.selection.calibrated``) compares every training sample with them.

``lfdr_weights`` is Stage 1's calibrated weighting (docs/stage2-calibration.md): a sample's conformal p-value
against the step's held-out scores, ``p = (1 + #{hold <= s}) / (m + 1)``, and its weight ``min(1, pi0 / g(p))``
with ``g`` the density (20 bins) of the recent batches' p-values, made non-decreasing in ``p``, and ``pi0`` =
``min(1, #{p > 0.5} / (0.5 n))`` (Storey). Clean data give uniform p-values, so ``g`` is flat and the weights
uniform (plain SGD); mislabelled samples pile up at small p-values and lose weight.
"""

from __future__ import annotations

import numpy as np
import torch

from keepset._ids import check_ids

#: density bins of the recent p-values
LFDR_BINS = 20


class Holdout:
    """Held-out samples served ``per_step`` at a time.

    x : [H, ...] inputs (tensor or array; what the model takes); y : [H] labels; ids : [H] unique ids.
    per_step : samples scored per step (all of them when H is smaller); seed : the schedule's seed.
    """

    def __init__(self, x, y, ids, *, per_step: int = 32, seed: int = 0):
        self.x = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x, dtype=np.float32))
        self.y = y if torch.is_tensor(y) else torch.as_tensor(np.asarray(y))
        if self.y.dtype.is_floating_point or self.y.dim() != 1:
            raise ValueError("holdout labels must be 1-D integer class indices")
        self.y = self.y.long()
        self.ids = check_ids(ids, "holdout ids")
        n = len(self.ids)
        if len(self.x) != n or len(self.y) != n:
            raise ValueError(f"the holdout has {len(self.x)} inputs, {len(self.y)} labels and {n} ids; give one of "
                             "each per sample")
        if n < 3:
            raise ValueError(f"{n} held-out samples cannot show a clean score's spread; hold out at least 20 "
                             "trusted samples (better several hundred)")
        if int(per_step) != per_step or per_step < 3:
            raise ValueError(f"holdout_per_step must be an integer >= 3, got {per_step!r}")
        if self.x.is_floating_point() and not torch.isfinite(self.x).all():
            raise ValueError("the holdout inputs hold NaN or inf values")
        self.per_step = min(int(per_step), n)
        self.seed = int(seed)
        self._chunks = n // self.per_step  # chunks of one permutation used per step
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, step: int) -> np.ndarray:
        """The holdout positions scored at ``step`` [per_step]: a function of the step and the seed only."""
        r, c = divmod(int(step), self._chunks)
        if self._perm is None or self._perm[0] != r:
            self._perm = (r, np.random.default_rng([self.seed, 9173, r]).permutation(len(self.ids)))
        return self._perm[1][c * self.per_step:(c + 1) * self.per_step]

    def batch(self, step: int, device):
        """(x, y, ids) of the samples scored at ``step``, x and y on ``device``."""
        pos = self.positions(step)
        t = torch.from_numpy(pos)
        return self.x[t].to(device), self.y[t].to(device), self.ids[pos]


def holdout_pvalues(score: torch.Tensor, hold: torch.Tensor) -> torch.Tensor:
    """Conformal p-value of every score [B] against the held-out scores [m]: ``(1 + #{hold <= s}) / (m + 1)``."""
    hold_sorted = torch.sort(hold.detach().to(score)).values
    below = torch.searchsorted(hold_sorted, score.detach(), right=True)
    return (1.0 + below.double()) / (len(hold) + 1.0)


def lfdr_weights(score: torch.Tensor, hold: torch.Tensor, recent: list, window: int = 20) -> torch.Tensor:
    """Unnormalised calibrated weights [B] of a batch: ``min(1, pi0 / g(p))`` (module docstring).

    score : [B] the batch's scores; hold : [m] the held-out scores of the same step; recent : the p-values of
    the previous batches (a list of tensors, updated here: this batch appended, kept to ``window`` batches).
    """
    p = holdout_pvalues(score, hold)
    recent.append(p)
    del recent[:-int(window)]
    pool = torch.cat(recent)
    nb = LFDR_BINS
    g = torch.bincount((pool * nb).long().clamp(0, nb - 1), minlength=nb).double() * nb / len(pool)
    pi0 = min(1.0, float((pool > 0.5).double().mean() / 0.5))
    per_bin = torch.cummax(torch.clamp(pi0 / g.clamp_min(1e-12), max=1.0), 0).values
    return per_bin[(p * nb).long().clamp(0, nb - 1)].to(score.dtype)
