"""Grad-Match as online methods.

``GradMatch`` follows CORDS (github.com/decile-team/cords, Killamsetty et al. 2021):

- per-sample gradients of the last layer in closed form
  (``cords/selectionstrategies/SL/dataselectionstrategy.py`` ``compute_gradients`` with ``linear_layer=True``):
  ``[p_i - e_{y_i}, (p_i - e_{y_i}) (x) h_i]`` (bias part, then the weight matrix row by row), ``h_i`` the final
  Linear's input, at the current model;
- selection (``cords/selectionstrategies/SL/gradmatchstrategy.py`` ``GradMatchStrategy.select``), per class c of
  the training labels: orthogonal matching pursuit (``cords/selectionstrategies/helpers/omp_solvers.py``
  ``OrthogonalMP_REG``, the CPU path of ``ompwrapper``: ``positive=True``) picks at most
  ``ceil(budget n_c / N)`` samples and non-negative weights whose weighted gradient matches the class's summed
  gradient (``valid=False``) or the summed gradient of clean validation samples of that class (``valid=True``:
  pass ``valid_x`` / ``valid_y``). ``selection="PerClassPerGradient"`` (the default of CORDS's GradMatch config)
  restricts the gradients to class c's row of the layer (its bias entry and weight row); ``"PerClass"`` uses the
  whole layer. Samples still missing from the budget (``budget = int(fraction N)``) are drawn at random from
  the rest with weight 1;
- schedule (``cords/utils/data/dataloader/SL/adaptive/adaptivedataloader.py`` ``__iter__``,
  ``dssdataloader.py`` ``_init_subset_indices``): the first subset is random (weights 1); a new selection runs at
  the start of every epoch e (0-based) with ``e % select_every == 0 and e > 1``;
- training (``train_sl.py``): ``loss = sum_i w_i L_i / sum_i w_i`` over the subset's samples in a batch, every
  parameter trained.

The difference from CORDS: CORDS iterates over the subset only (``fraction`` of the steps per epoch). Here the
training loop's batches come from the full data (as for every keepset online method): each batch trains on
its selected samples with their weights, normalised over the batch, and a batch without selected samples gives
a zero gradient (the optimizer still steps: momentum and weight decay act).

``BatchGradMatch`` is the published Grad-Mimic code's ``--mode grad-match`` (github.com/zihengh1/Grad-Mimic,
``run.py`` ``main``; ``gradmimic/training.py`` ``solve_subset_selection``): in every batch,
``w = argmin_w sum_i ||w_i g_i - mean_j g_j||_F + lambda R(w)`` over the mimic layer's per-sample gradients
(unconstrained, so weights may be negative), the weights applied to the mimic layer only. It is the ``opt``
problem of ``keepset.training.parity`` with the batch-mean gradient as the target, solved by ``opt_weights``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import lstsq
from torch import nn

from keepset.models.mimic import last_linear_name
from keepset.training.agra import as_pool
from keepset.training.layer_weighted import LayerWeightedLoss, direction_dot
from keepset.training.parity import check_weighting, opt_weights

SELECTIONS = ("PerClass", "PerClassPerGradient")


def orthogonal_mp(A: np.ndarray, b: np.ndarray, *, nnz: int | None = None, positive: bool = True, lam: float = 0.0,
                  tol: float = 1e-4) -> np.ndarray:
    """CORDS's ``OrthogonalMP_REG``: approximately ``min_x ||x||_0`` s.t. ``A x = b`` by orthogonal matching pursuit.

    A : float [d, n] (one column per candidate sample's gradient); b : float [d] the target gradient;
    nnz : at most this many non-zero coefficients (None: n); positive : pick the largest positive correlation
    and drop negative coefficients after each refit (repeatedly removing the most negative one); lam : ridge term
    of the refit ``(A_S A_S^T + lam I) x = A_S b`` (least squares, as ``scipy.linalg.lstsq``); tol : stop when
    ``||residual|| / ||b|| < tol``. Stops early when the best atom is already selected. Returns x float64 [n].

    The Gram matrix of the selected atoms is kept up to date rather than rebuilt at every step (same result).
    """
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d, n = A.shape
    nnz = n if nnz is None else int(nnz)
    x = np.zeros(n)
    normb = float(np.linalg.norm(b))
    if normb == 0 or n == 0 or nnz <= 0:
        return x
    resid = b.copy()
    indices: list[int] = []
    gram = np.zeros((0, 0))
    atb = np.zeros(0)
    coef = np.zeros(0)
    for _ in range(nnz):
        if np.linalg.norm(resid) / normb < tol:
            break
        projections = A.T @ resid
        index = int(np.argmax(projections) if positive else np.argmax(np.abs(projections)))
        if index in indices:
            break
        indices.append(index)
        col = A[:, index]
        if len(indices) == 1:
            coef = np.array([projections[index] / (col @ col)])
            gram, atb = np.array([[col @ col]]), np.array([col @ b])
        else:
            cross = A[:, indices[:-1]].T @ col
            gram = np.block([[gram, cross[:, None]], [cross[None, :], np.array([[col @ col]])]])
            atb = np.append(atb, col @ b)
            coef = lstsq(gram + lam * np.eye(len(indices)), atb)[0]
            if positive:
                while len(coef) and coef.min() < 0.0:
                    drop = int(np.argmin(coef))
                    keep = [j for j in range(len(indices)) if j != drop]
                    indices = [indices[j] for j in keep]
                    gram, atb = gram[np.ix_(keep, keep)], atb[keep]
                    coef = lstsq(gram + lam * np.eye(len(indices)), atb)[0] if indices else np.zeros(0)
        resid = b - A[:, indices] @ coef if indices else b.copy()
    for j, index in enumerate(indices):
        x[index] += coef[j]
    return x


def last_layer_parts(model: nn.Module, x, y: torch.Tensor, batch_size: int = 1024
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``r_i = softmax(z_i) - e_{y_i}`` [N, K] and the final Linear's inputs ``h_i`` [N, d] (float64, CPU), from
    which every last-layer gradient is ``[r_i, r_i (x) h_i]``. The model runs in eval mode under no_grad (its mode
    is restored)."""
    head = dict(model.named_modules())[last_linear_name(model)]
    store: dict = {}
    handle = head.register_forward_hook(lambda m, i, o: store.update(h=i[0].detach(), out=o.detach()))
    was_training = model.training
    device = next(model.parameters()).device
    out = []
    try:
        model.eval()
        with torch.no_grad():
            for s in range(0, len(y), batch_size):
                logits = model(x[s:s + batch_size].to(device))
                if store.get("out") is None or store["out"].shape != logits.shape:
                    raise ValueError("Grad-Match needs the model's output to be its final nn.Linear's output")
                r = torch.softmax(logits.double(), dim=1)
                yy = y[s:s + batch_size].to(device)
                r[torch.arange(len(yy), device=device), yy] -= 1.0
                out.append((r.cpu(), store["h"].double().reshape(len(yy), -1).cpu()))
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def gradients_from_parts(r: torch.Tensor, h: torch.Tensor, row: int | None = None) -> torch.Tensor:
    """Per-sample last-layer gradients from ``last_layer_parts``: ``[r_i, r_i (x) h_i]`` [N, K + K d] (CORDS's
    layout: bias, then the weight matrix row by row), or with ``row=c`` only class c's bias entry and weight row
    ``[r_ic, r_ic h_i]`` [N, 1 + d] (CORDS's ``PerClassPerGradient`` columns)."""
    if row is not None:
        rc = r[:, row:row + 1]
        return torch.cat([rc, rc * h], 1)
    return torch.cat([r, (r[:, :, None] * h[:, None, :]).reshape(len(r), -1)], 1)


def last_layer_gradients(model: nn.Module, x, y: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """CORDS's per-sample last-layer gradients ``[r_i, r_i (x) h_i]`` with ``r_i = softmax(z_i) - e_{y_i}``:
    float64 [N, K + K d] on the CPU (``compute_gradients`` with ``linear_layer=True``)."""
    return gradients_from_parts(*last_layer_parts(model, x, y, batch_size))


class GradMatch(LayerWeightedLoss):
    """CORDS's Grad-Match (module docstring) as an online method over a fixed training set.

    Parameters
    ----------
    x, y, ids : the training set the loop draws its batches from: inputs [N, ...], (noisy) labels [N], ids [N]
        (default 0..N-1); batches are matched to the current subset by id.
    fraction : the budget ``int(fraction N)`` (CORDS default 0.1), in (0, 1].
    select_every : epochs between selections (CORDS's rule: at epoch e when ``e % select_every == 0 and e > 1``).
    selection : "PerClassPerGradient" (default, CORDS's GradMatch config) or "PerClass".
    lam : OMP ridge term (CORDS's CPU path uses 0); tol : OMP relative residual to stop at (CORDS's 1e-4).
    valid_x, valid_y : clean samples whose summed gradient is the target (CORDS ``valid=True``); None: the
        training samples' own summed gradient (``valid=False``, CORDS's default).
    seed : seeds the random first subset and the random fill.

    After a selection: ``subset_ids`` (ids of the selected samples), ``subset_weights`` [S] and
    ``selections`` (how many selections ran). After each batch: ``last_weights`` [B].
    """

    def __init__(self, x, y, ids=None, *, fraction: float = 0.1, select_every: int = 1,
                 selection: str = "PerClassPerGradient", lam: float = 0.0, tol: float = 1e-4, valid_x=None,
                 valid_y=None, seed: int = 0, loss_fn=None):
        super().__init__(layers=None, apply_to="all", start_epoch=0, loss_fn=loss_fn)
        self.x, self.y, self.ids = as_pool(x, y, ids, "training set")
        if not (isinstance(fraction, (int, float)) and 0 < float(fraction) <= 1):
            raise ValueError(f"fraction must be in (0, 1] (the share of the training set selected), got {fraction!r}")
        self.budget = int(len(self.y) * float(fraction))
        if self.budget < 1:
            raise ValueError(f"fraction {fraction} of {len(self.y)} samples selects nothing; raise fraction")
        if not isinstance(select_every, (int, np.integer)) or select_every < 1:
            raise ValueError(f"select_every must be an integer >= 1 (epochs between selections), got {select_every!r}")
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if not (math.isfinite(float(lam)) and float(lam) >= 0) or not (math.isfinite(float(tol)) and float(tol) >= 0):
            raise ValueError(f"lam and tol must be finite numbers >= 0, got {lam} and {tol}")
        if (valid_x is None) != (valid_y is None):
            raise ValueError("pass both valid_x and valid_y (clean samples for the target gradient), or neither")
        self.valid = None if valid_x is None else as_pool(valid_x, valid_y, None, "validation set")[:2]
        self.fraction, self.select_every, self.selection = float(fraction), int(select_every), selection
        self.lam, self.tol, self.seed = float(lam), float(tol), int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._order = np.argsort(self.ids, kind="stable")
        self.selections = 0
        self._selected_epoch: int | None = None
        self._set_subset(self._rng.choice(len(self.y), size=self.budget, replace=False), np.ones(self.budget))

    def _set_subset(self, positions: np.ndarray, weights: np.ndarray) -> None:
        self.subset_positions = np.asarray(positions, dtype=np.int64)
        self.subset_ids = self.ids[self.subset_positions]
        self.subset_weights = np.asarray(weights, dtype=np.float64)
        self._weight_of = np.zeros(len(self.y))
        np.add.at(self._weight_of, self.subset_positions, self.subset_weights)
        self._in_subset = np.zeros(len(self.y), dtype=bool)
        self._in_subset[self.subset_positions] = True

    def select(self, model: nn.Module) -> None:
        """Run one CORDS selection at the model's current weights (module docstring)."""
        r, h = last_layer_parts(model, self.x, self.y)
        labels = self.y.numpy()
        num_classes = r.shape[1]
        if self.valid is not None:
            vr, vh = last_layer_parts(model, self.valid[0], self.valid[1])
            vlabels = self.valid[1].numpy()
        positions, weights = [], []
        n = len(labels)
        for c in range(num_classes):
            members = np.flatnonzero(labels == c)
            if len(members) == 0:
                continue
            row = c if self.selection == "PerClassPerGradient" else None
            m = torch.from_numpy(members)
            g = gradients_from_parts(r[m], h[m], row)
            if self.valid is not None:
                v = torch.from_numpy(np.flatnonzero(vlabels == c))
                target = gradients_from_parts(vr[v], vh[v], row).sum(0)
            else:
                target = g.sum(0)
            coef = orthogonal_mp(g.numpy().T, target.numpy(), nnz=math.ceil(self.budget * len(members) / n),
                                 positive=True, lam=self.lam, tol=self.tol)
            nz = np.flatnonzero(coef)
            positions.append(members[nz])
            weights.append(coef[nz])
        positions = np.concatenate(positions) if positions else np.zeros(0, np.int64)
        weights = np.concatenate(weights) if weights else np.zeros(0)
        missing = self.budget - len(positions)
        if missing > 0:
            rest = np.setdiff1d(np.arange(n), positions)
            extra = self._rng.choice(rest, size=min(missing, len(rest)), replace=False)
            positions = np.concatenate([positions, extra])
            weights = np.concatenate([weights, np.ones(len(extra))])
        self._set_subset(positions, weights)
        self.selections += 1

    def loss(self, model, x, y=None, ids=None, *, epoch=None):
        e = self.epoch if epoch is None else int(epoch)
        if e != self._selected_epoch:
            self._selected_epoch = e
            if e % self.select_every == 0 and e > 1:
                self.select(model)
        return super().loss(model, x, y, ids, epoch=epoch)

    def batch_weights(self, model, x, y, ids, logits, losses) -> torch.Tensor:
        from keepset.recorder import index_of

        pos = index_of(self.ids[self._order], ids)
        if (pos < 0).any():
            raise ValueError(f"{int((pos < 0).sum())} batch ids are not in Grad-Match's training set "
                             f"(e.g. {ids[pos < 0][:3].tolist()})")
        pos = self._order[pos]
        w = torch.as_tensor(self._weight_of[pos], dtype=torch.float32)
        total = float(w.sum())
        return w / total if total != 0 else w


class BatchGradMatch(LayerWeightedLoss):
    """The published Grad-Mimic code's ``grad-match`` baseline (module docstring): per batch,
    ``w = argmin_w sum_i ||w_i g_i - mean_j g_j|| + opt_lambda R(w)`` over the scored parameters' per-sample
    gradients, applied to those parameters (``apply_to="layers"``, published) with the other parameters on the
    mean gradient. Weights may be negative.

    layers : the scored parameters (None: the final Linear's weight); opt_lambda >= 0, opt_norm "l2" / "l1".
    """

    signed = True

    def __init__(self, *, opt_lambda: float = 0.0, opt_norm: str = "l2", layers=None, apply_to: str = "layers",
                 start_epoch: int = 0, loss_fn=None):
        super().__init__(layers=layers, apply_to=apply_to, start_epoch=start_epoch, loss_fn=loss_fn)
        _, self.opt_lambda, self.opt_norm = check_weighting("opt", opt_lambda, opt_norm)

    def batch_weights(self, model, x, y, ids, logits, losses) -> torch.Tensor:
        g = self.mean_gradient(model, x, y)
        dots, norms = self.sample_terms(model, x, y, logits, g, need_norms=True)
        return opt_weights(dots, norms * norms, float(direction_dot(g, g)), lam=self.opt_lambda, norm=self.opt_norm)
