"""Grad-Mimic's weightings of the Mimic Score as the published code defines them (github.com/zihengh1/Grad-Mimic,
``run.py`` ``main`` branch ``--mode grad-mimic`` and ``gradmimic/training.py``).

In the published code the per-sample weights of a batch are, by ``--method``:

- ``normed_proj`` / ``normed_cos`` (``compute_similarity`` with the ``normed`` prefix): ``softmax(score / T)``
  over the batch, ``score`` the projection ``<-g_i, V / ||V||>`` or the cosine of ``-g_i`` and ``V``. keepset's
  ``weighting="softmax"`` (its default).
- ``proj`` / ``cos`` (``compute_similarity`` without the prefix): the raw scores themselves. They are neither
  clipped nor normalised: ``gradient_calibration`` sets the mimic layer's gradient to ``sum_i score_i g_i``, so
  samples with a negative score get a negative weight (their gradient is ascended) and the weights need not
  sum to 1. keepset's ``weighting="raw"``.
- ``opt`` (``solve_subset_selection`` -> ``_objective_fn_matrix``, the path taken for the default mimic layer
  ``heads.head.weight``, a matrix): ``w = argmin_w sum_i ||w_i a_i - V||_F + lambda R(w)`` with ``a_i = -g_i``
  (the negative per-sample gradient of the mimic layer), ``V = theta_ref - theta``, ``R = ||w||_2``
  (``--norm_way l2``, default) or ``||w||_1``, ``lambda = --lambda_value`` (default 0), and **no constraint on
  w** (``cp.Variable(B)``: weights may be negative and need not sum to 1). keepset's ``weighting="opt"``. The
  objective separates per sample up to the regulariser, so it depends on the batch only through
  ``alpha_i = ||a_i||^2``, ``beta_i = <a_i, V>`` and ``gamma = ||V||^2``; ``opt_weights`` solves it without
  MOSEK or cvxpy: in closed form for lambda = 0 (``w_i = beta_i / alpha_i``, the least-squares coefficient
  of V on a_i) and for the l1 regulariser, and by a nested bisection on the optimality conditions for l2.
  The published code's other branch (``_objective_fn_vector``, ``||sum_i w_i a_i - V||_2``, taken only when
  the mimic parameter is 1-D such as a bias) is not implemented.

The weights apply to the scored parameters only (``calibrate_mimic_layer_only``, default True), the other
parameters keep the batch-mean gradient: ``GradMimic``'s ``apply_to="layers"``.
"""

from __future__ import annotations

import math

import torch

WEIGHTINGS = ("softmax", "raw", "opt")
OPT_NORMS = ("l2", "l1")
_BISECTIONS = 80


def check_weighting(weighting: str, opt_lambda: float = 0.0, opt_norm: str = "l2") -> tuple[str, float, str]:
    """Validate a weighting and its ``opt`` parameters; returns them (lambda as a float)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS} (softmax of the score, the raw score, or the "
                         f"published 'opt' solution), got {weighting!r}")
    if opt_norm not in OPT_NORMS:
        raise ValueError(f"opt_norm must be 'l2' or 'l1' (the published --norm_way), got {opt_norm!r}")
    try:
        lam = float(opt_lambda)
    except (TypeError, ValueError):
        raise ValueError(f"opt_lambda must be a number >= 0, got {opt_lambda!r}") from None
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"opt_lambda must be a finite number >= 0 (the published --lambda_value), got {opt_lambda}")
    return weighting, lam, opt_norm


def mimic_weights(score: torch.Tensor, weighting: str = "softmax", temperature: float = 1.0, *,
                  dots: torch.Tensor | None = None, sq_norms: torch.Tensor | None = None,
                  v_norm: torch.Tensor | float | None = None, opt_lambda: float = 0.0, opt_norm: str = "l2"
                  ) -> torch.Tensor:
    """Per-sample weights [B] of one batch from its Mimic Scores, as the published code computes them.

    score : [B] raw Mimic Scores (``proj`` or ``cos``); weighting : "softmax" (``softmax(score / temperature)``),
    "raw" (the scores themselves, signed, unnormalised) or "opt" (``opt_weights``, which needs ``dots`` [B] =
    ``<-g_i, V>``, ``sq_norms`` [B] = ``||g_i||^2`` over the scored parameters and ``v_norm`` = ``||V||``).
    """
    if weighting == "softmax":
        return torch.softmax(score / temperature, dim=0)
    if weighting == "raw":
        return score.clone()
    if weighting == "opt":
        if dots is None or sq_norms is None or v_norm is None:
            raise ValueError("the 'opt' weighting needs <-g_i, V>, ||g_i||^2 and ||V||")
        v_norm = float(v_norm)
        return opt_weights(dots, sq_norms, v_norm * v_norm, lam=opt_lambda, norm=opt_norm).to(score.dtype)
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def opt_objective(w: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, gamma: float, lam: float = 0.0,
                  norm: str = "l2") -> torch.Tensor:
    """The published ``opt`` objective ``sum_i ||w_i a_i - V|| + lam R(w)`` written with ``alpha_i = ||a_i||^2``,
    ``beta_i = <a_i, V>``, ``gamma = ||V||^2`` (``||w_i a_i - V||^2 = alpha_i w_i^2 - 2 beta_i w_i + gamma``)."""
    w, alpha, beta = w.double(), alpha.double(), beta.double()
    data = (alpha * w * w - 2 * beta * w + gamma).clamp_min(0).sqrt().sum()
    reg = w.norm() if norm == "l2" else w.abs().sum()
    return data + lam * reg


def opt_weights(dots: torch.Tensor, sq_norms: torch.Tensor, v_sq_norm: float, *, lam: float = 0.0,
                norm: str = "l2") -> torch.Tensor:
    """Solve the published ``opt`` problem ``min_w sum_i ||w_i a_i - V|| + lam R(w)`` (unconstrained w) exactly.

    dots : [B] ``beta_i = <a_i, V>`` (``a_i = -g_i``); sq_norms : [B] ``alpha_i = ||a_i||^2``; v_sq_norm :
    ``gamma = ||V||^2``; lam >= 0; norm : "l2" or "l1". Returns float32 [B] (on the inputs' device).

    With ``t_i = w_i - w*_i``, ``w*_i = beta_i / alpha_i`` and ``r_i^2 = gamma - beta_i^2 / alpha_i`` (the part of V
    that a_i cannot explain), sample i's term is ``sqrt(alpha_i t_i^2 + r_i^2)``:
    - lam = 0: ``w_i = w*_i`` (0 for a zero gradient, whose term does not depend on w_i);
    - l1: each coordinate separately, ``w_i = sign(w*_i) max(|w*_i| - lam r_i / sqrt(alpha_i (alpha_i - lam^2)), 0)``,
      and 0 when ``lam >= sqrt(alpha_i)``;
    - l2: ``w = 0`` when ``||beta|| / sqrt(gamma) <= lam`` (0 is then in the subdifferential); otherwise every
      ``w_i`` solves ``alpha_i t_i / sqrt(alpha_i t_i^2 + r_i^2) + mu w_i = 0`` for ``mu = lam / ||w||``, found by a
      bisection on mu (``mu ||w(mu)||`` increases with mu) around a vectorised bisection on every w_i.
    """
    if norm not in OPT_NORMS:
        raise ValueError(f"norm must be 'l2' or 'l1', got {norm!r}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    beta = dots.detach().double()
    alpha = sq_norms.detach().double().clamp_min(0)
    gamma = float(v_sq_norm)
    live = alpha > 0
    safe = torch.where(live, alpha, torch.ones_like(alpha))
    wstar = torch.where(live, beta / safe, torch.zeros_like(beta))
    if lam == 0:
        return wstar.float()
    r = (gamma - beta * beta / safe).clamp_min(0).sqrt() * live
    if norm == "l1":
        room = alpha - lam * lam
        shrink = lam * r / (alpha * room.clamp_min(1e-300)).sqrt()
        w = torch.sign(wstar) * (wstar.abs() - shrink).clamp_min(0)
        return torch.where(live & (room > 0), w, torch.zeros_like(w)).float()
    if gamma <= 0 or float(beta.norm()) <= lam * math.sqrt(gamma):
        return torch.zeros_like(beta).float()

    def w_of(mu: float) -> torch.Tensor:
        lo = torch.minimum(wstar, torch.zeros_like(wstar))
        hi = torch.maximum(wstar, torch.zeros_like(wstar))
        for _ in range(_BISECTIONS):
            mid = (lo + hi) / 2
            t = mid - wstar
            s = (alpha * t * t + r * r).sqrt()
            psi = torch.where(s > 0, alpha * t / s.clamp_min(1e-300), torch.zeros_like(t)) + mu * mid
            up = psi > 0
            hi = torch.where(up, mid, hi)
            lo = torch.where(up, lo, mid)
        return torch.where(live, (lo + hi) / 2, torch.zeros_like(lo))

    def excess(mu: float) -> float:  # mu ||w(mu)|| - lam, increasing in mu
        return mu * float(w_of(mu).norm()) - lam

    lo_mu, hi_mu = 1.0, 1.0
    while excess(hi_mu) < 0 and hi_mu < 1e300:
        hi_mu *= 16.0
    while excess(lo_mu) > 0 and lo_mu > 1e-300:
        lo_mu /= 16.0
    for _ in range(_BISECTIONS):
        mid = math.sqrt(lo_mu * hi_mu)
        if excess(mid) > 0:
            hi_mu = mid
        else:
            lo_mu = mid
    return w_of(math.sqrt(lo_mu * hi_mu)).float()
