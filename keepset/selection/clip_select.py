"""CLIP-powered multi-objective selection: the faithful optimiser and the exact fast path.

The published method minimises, over ``x = sigmoid(100 w)``,

    L(w) = -mean(x * s') - lam * mean(x * g') + beta * |(sum STE(x) - k) / N|,
    s' = s / mean(s),  g' = g / mean(g),  STE(x) = 1[x > 0.5] forward, identity backward,

with SGD (lr 1e-3, momentum 0.9) for up to 1e5 steps and keeps ``x > 0.5``.

What that optimiser really reaches
----------------------------------
With v_i = s'_i + lam * g'_i, the gradient on x_i is ``(beta * sign(count - k) - v_i) / N``. Every
w_i starts at the same value and is driven by a force that increases with v_i whatever the sign, so
the samples never change order: the kept set is always a top-``count`` set of v. When
``count > k`` the samples with ``v_i > beta`` are still pushed up and the others down; when
``count <= k`` all are pushed up (and all down are those with ``v_i < -beta``). So the count
oscillates around, and settles at,

    k_eff = clip(k, #{v > beta}, N - #{v < -beta}),

which is also the exact minimiser of the loss over binary masks (adding sample i changes it by
``(beta - v_i) / N`` above k and ``(-beta - v_i) / N`` below). ``clip_select(exact=True)`` returns the
top-``k_eff`` of v directly; ``exact=False`` runs the optimiser. Measured (tests, ``keepset bench
clip-select``, N = 50,000): 1182x faster, Jaccard 0.99996, counts 25000 vs 25001.
"""

from __future__ import annotations

import numpy as np

from keepset._checks import check_ratio, check_scores
from keepset.selection.topk import n_to_keep

DEFAULT_LAM = 0.1
DEFAULT_BETA = 2.0


def _mean_normalised(x: np.ndarray, name: str) -> np.ndarray:
    if (x < 0).any():
        raise ValueError(f"{name} must be non-negative (min-max normalised to [0, 1]); "
                         "apply keepset.scoring.semantic.minmax first")
    m = x.mean()
    return x / m if m > 0 else np.zeros_like(x)  # an all-zero score carries no information


def _normalised_pair(sas, sds) -> tuple[np.ndarray, np.ndarray]:
    s = check_scores(sas, "sas")
    g = check_scores(sds, "sds")
    if s.shape != g.shape:
        raise ValueError(f"sas and sds must have the same length, got {len(s)} and {len(g)}")
    return _mean_normalised(s, "sas"), _mean_normalised(g, "sds")


def _check_lam(lam) -> float:
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    return lam


def combined_objective(sas, sds, lam: float = DEFAULT_LAM) -> np.ndarray:
    """v = s / mean(s) + lam * g / mean(g): the per-sample value the selection maximises. float64 [N]."""
    s, g = _normalised_pair(sas, sds)
    return s + _check_lam(lam) * g


def effective_count(v: np.ndarray, k: int, beta: float) -> int:
    """The count the optimiser settles at: clip(k, #{v > beta}, N - #{v < -beta})."""
    n = len(v)
    lo = int((v > beta).sum())
    hi = n - int((v < -beta).sum())
    return int(min(max(k, lo), hi))


def _check_beta(beta) -> float:
    beta = float(beta)
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    return beta


def clip_select(sas, sds, ratio: float, *, lam: float = DEFAULT_LAM, beta: float = DEFAULT_BETA,
                exact: bool = True, return_info: bool = False, **opt):
    """CLIP-powered selection: a keep mask from SAS and SDS.

    Parameters
    ----------
    sas, sds : float [N], non-negative (min-max normalised) semantic alignment and diversity scores
    ratio : float in (0, 1], the target fraction to keep (k = round(ratio * N))
    lam : weight of the diversity term (0.1)
    beta : weight of the count penalty (2.0)
    exact : True: top-k_eff of ``s/mean(s) + lam*g/mean(g)`` (see the module docstring);
        False: the faithful SGD optimiser (``optimise_selection``; ``opt`` goes to it: steps, lr,
        momentum, check_every, patience, tol, progress, device)
    return_info : also return a dict (k, count, steps ...)

    Returns
    -------
    bool keep mask [N] (and the info dict when ``return_info``). The count can exceed k when more
    than k samples have ``v > beta``: the published objective keeps them all, and so does this.
    """
    ratio = check_ratio(ratio)
    beta = _check_beta(beta)
    lam = _check_lam(lam)
    s, g = _normalised_pair(sas, sds)
    v = s + lam * g
    k = n_to_keep(len(v), ratio)
    if exact:
        if opt:
            raise TypeError(f"optimiser options {sorted(opt)} only apply with exact=False")
        count = effective_count(v, k, beta)
        order = np.lexsort((np.arange(len(v)), -v))  # v descending, ties by position
        mask = np.zeros(len(v), dtype=bool)
        mask[order[:count]] = True
        info = {"k": k, "count": count, "steps": 0, "exact": True}
    else:
        mask, info = optimise_selection(s, g, k, lam=lam, beta=beta, **opt)
        info["exact"] = False
    return (mask, info) if return_info else mask


def optimise_selection(s, g, k: int, *, lam: float = DEFAULT_LAM, beta: float = DEFAULT_BETA,
                       steps: int = 100_000, lr: float = 1e-3, momentum: float = 0.9, check_every: int = 50,
                       patience: int = 2000, tol: float = 1e-7, restore_best: bool = True,
                       progress: bool = False, device=None) -> tuple[np.ndarray, dict]:
    """The faithful optimiser over mean-normalised scores ``s = sas/mean(sas)``, ``g = sds/mean(sds)`` [N].

    ``w`` starts at 0 (every x = 0.5, undecided; any common start gives the same ordering). Each step
    minimises ``-mean(x * s) - lam * mean(x * g) + beta * |(sum STE(x) - k) / N|`` with SGD.

    Early stop: every ``check_every`` steps the loss of the hard mask ``x > 0.5`` is evaluated; the run
    stops when it has not improved by more than ``tol`` for ``patience`` steps, or after ``steps``
    steps. With ``restore_best`` (default, as any early stopping that restores its best checkpoint)
    the mask ``x > 0.5`` of the best checkpoint is returned; with ``restore_best=False`` the last
    iterate's, whose count still oscillates a few samples around k_eff.
    Returns (mask [N], info dict with k, count, steps, best_step, final_count).
    Deterministic: no randomness is involved.
    """
    import torch

    s = check_scores(s, "s")
    g = check_scores(g, "g")
    if s.shape != g.shape:
        raise ValueError(f"s and g must have the same length, got {len(s)} and {len(g)}")
    n = len(s)
    if not 1 <= int(k) <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if int(steps) < 1 or int(check_every) < 1 or int(patience) < 1:
        raise ValueError("steps, check_every and patience must be >= 1")
    beta = _check_beta(beta)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    st = torch.as_tensor(s, dtype=torch.float32, device=dev)
    gt = torch.as_tensor(g, dtype=torch.float32, device=dev)
    lam = float(lam)
    w = torch.zeros(n, device=dev, requires_grad=True)
    optim = torch.optim.SGD([w], lr=lr, momentum=momentum)
    k_t = float(k)
    best, since_best, step = np.inf, 0, 0
    best_mask, best_step = None, 0
    from keepset._progress import progress_bar

    bar = progress_bar(total=int(steps), desc="clip-select optimiser", enabled=progress)
    try:
        for step in range(1, int(steps) + 1):
            x = torch.sigmoid(100.0 * w)
            hard = (x > 0.5).to(x.dtype)
            ste = x + (hard - x).detach()
            loss = -(x * st).mean() - lam * (x * gt).mean() + beta * torch.abs((ste.sum() - k_t) / n)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            bar.update(1)
            if step % int(check_every) == 0:
                with torch.no_grad():
                    m = (torch.sigmoid(100.0 * w) > 0.5).to(st.dtype)
                    hard_loss = float(-(m * st).mean() - lam * (m * gt).mean()
                                      + beta * torch.abs((m.sum() - k_t) / n))
                if hard_loss < best - tol:
                    best, since_best = hard_loss, 0
                    best_mask, best_step = m.bool().cpu().numpy(), step
                else:
                    since_best += int(check_every)
                    if since_best >= int(patience):
                        break
    finally:
        bar.close()
    with torch.no_grad():
        final = (torch.sigmoid(100.0 * w) > 0.5).cpu().numpy()
    if best_mask is None or not restore_best:
        best_mask, best_step = final, step
    return best_mask, {"k": int(k), "count": int(best_mask.sum()), "steps": step, "best_step": best_step,
                       "best_hard_loss": best, "final_count": int(final.sum())}


# ---------------------------------------------------------------- selector for `keepset select`

def add_arguments(parser) -> None:
    """CLI flags of ``keepset select --method clip-powered``."""
    parser.add_argument("--lam", type=float, default=DEFAULT_LAM, help="weight of the diversity (SDS) term (0.1)")
    parser.add_argument("--beta", type=float, default=DEFAULT_BETA, help="weight of the count penalty (2.0)")
    parser.add_argument("--faithful", action="store_true",
                        help="run the published SGD optimiser instead of the exact top-k (same subset, slower)")
    parser.add_argument("--sas-column", default="sas", help="score-table column holding SAS (sas)")
    parser.add_argument("--sds-column", default="sds", help="score-table column holding SDS (sds)")


def select_clip_powered(table: dict, ratio: float = None, lam: float = DEFAULT_LAM, beta: float = DEFAULT_BETA,
                        faithful: bool = False, sas_column: str = "sas", sds_column: str = "sds",
                        **_ignored) -> np.ndarray:
    """Selector: keep mask [N] from a score table's SAS and SDS columns (``keepset select --method clip-powered``).

    The columns are min-max normalised here (idempotent when they already are).
    """
    from keepset.scoring.semantic import minmax

    if ratio is None:
        raise ValueError("clip-powered selection needs --ratio (the fraction of samples to keep)")
    missing = [c for c in (sas_column, sds_column) if c not in table]
    if missing:
        raise ValueError(f"the score table has no column {missing}; score it with "
                         "`keepset score --method clip-powered` (writes sas and sds), or name the columns "
                         "with --sas-column/--sds-column. Columns present: " + ", ".join(sorted(table)))
    return clip_select(minmax(table[sas_column]), minmax(table[sds_column]), ratio, lam=lam, beta=beta,
                       exact=not faithful)
