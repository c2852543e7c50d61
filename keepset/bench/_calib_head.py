"""A linear head trained on cached reference features, the way ``fit`` + ``GradMimicHook`` train it
(same initial weights, batch order, closed-form Mimic Score of ``head.weight``, weights applied to
``head.weight`` only, mean gradient for the bias, torch SGD with momentum), with Stage 1 weighting
variants and the scores of held-out calibration samples recorded at every step.

Calibration (holdout) samples are scored at the current weights before each step's update, with no
gradient contribution: ``holdout_per_step`` of them per step, from consecutive seeded permutations.

Stage 1 weighting (``Weighting``):
    kind "uniform"   plain SGD (scores recorded only)
    kind "softmax"   w = softmax(score / tau)                       (today's Grad-Mimic, tau = 1)
    kind "relative"  w = softmax(score / (tau * std_batch(score)))  (scale-free temperature)
    kind "onesided"  w = exp(min(score, 0) / tau), normalised        (only negative scores lose weight)
    kind "fdr"       w = min(1, pi0 p / G(p)), normalised: p the conformal p-value of the score against the
                     held-out scores at this step, G the empirical CDF of the p-values of the last ``window``
                     batches, pi0 = min(1, 2 * fraction of those p-values above 0.5) (Storey) or 1
    kind "lfdr"      w = min(1, pi0 / g(p)), normalised: g the density of those recent p-values (20 bins), the
                     bin weights made non-decreasing in p (an estimate of the local false discovery rate)
    kind "gate"      w = exp(min(score - c, 0) / (tau * sd)), normalised, c the q-quantile and sd the standard
                     deviation of the held-out samples' scores at this step (scored online, before the update)
    mix m            w = (1 - m) / B + m * w                        (a floor of uniform weight)
    start_epoch      uniform weights before this epoch
    score "proj" | "cos" the score the weights are computed from (the recorded ``mimic`` is always proj)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Weighting:
    kind: str = "softmax"
    tau: float = 1.0
    mix: float = 0.0
    start_epoch: int = 0
    score: str = "proj"
    q: float = 0.1
    window: int = 20
    storey: bool = True

    @property
    def name(self) -> str:
        if self.kind == "uniform":
            return "sgd"
        s = f"{ {'softmax': 'tau', 'relative': 'rel', 'onesided': 'one', 'gate': 'gate', 'fdr': '', 'lfdr': ''}[self.kind]}{self.tau:g}"
        if self.kind == "gate":
            s += f"q{self.q:g}"
        if self.kind in ("fdr", "lfdr"):
            s = f"{self.kind}-w{self.window}" + ("" if self.storey else "-pi1")
        if self.score != "proj":
            s = f"{self.score}-{s}"
        if self.mix:
            s += f"-mix{self.mix:g}"
        if self.start_epoch:
            s += f"-warm{self.start_epoch}"
        return s


@dataclass
class HeadRun:
    """Flat records of one head training run (positions index the training set, then the calibration set).

    step, epoch, pos, mimic, weight : [M] one record per (train sample, visit)
    cal_scores : (schedule int64 [S, m], scores float32 [S, m]): the proj scores of ``m`` scheduled
        calibration samples at every step (``holdout_schedule``)
    test_accuracy, ess : final test accuracy; mean effective batch size 1 / sum w^2 over steps
    epoch_accuracy : test accuracy after every epoch (the final one is ``test_accuracy``)
    """

    step: np.ndarray
    epoch: np.ndarray
    pos: np.ndarray
    mimic: np.ndarray
    weight: np.ndarray
    normed1: np.ndarray
    cal_scores: tuple | None
    test_accuracy: float
    ess: float
    steps_per_epoch: int
    batch_sizes: np.ndarray
    epoch_accuracy: list


def _weights(proj: torch.Tensor, cos: torch.Tensor, wt: Weighting, epoch: int, hold=None, recent=None) -> torch.Tensor:
    b = len(proj)
    uniform = torch.full_like(proj, 1.0 / b)
    if wt.kind == "uniform" or epoch < wt.start_epoch:
        return uniform
    s = proj if wt.score == "proj" else cos
    if wt.kind == "softmax":
        w = torch.softmax(s / wt.tau, 0)
    elif wt.kind == "onesided":  # only scores below 0 lose weight: exp(min(s, 0) / tau), normalised
        w = torch.exp(torch.clamp(s, max=0.0) / wt.tau)
        w = w / w.sum()
    elif wt.kind == "gate":  # calibrated: exp(min(s - c, 0) / (tau * sd)), c and sd from the held-out scores
        c = torch.quantile(hold, wt.q)
        w = torch.exp(torch.clamp(s - c, max=0.0) / (wt.tau * hold.std().clamp_min(1e-12)))
        w = w / w.sum()
    elif wt.kind == "fdr":  # w = min(1, pi0 * p / G(p)): p the conformal p-value against this step's
        # held-out scores, G the empirical CDF of the recent train p-values (``recent``, this batch included)
        p = (1.0 + (hold[None, :] <= s[:, None]).sum(1)) / (len(hold) + 1.0)
        srt = torch.sort(recent).values
        g = torch.searchsorted(srt, p, right=True).double() / len(srt)
        pi0 = min(1.0, float((recent > 0.5).double().mean() / 0.5)) if wt.storey else 1.0
        w = torch.clamp(pi0 * p.double() / g.clamp_min(1e-12), max=1.0).float()
        w = w / w.sum()
    elif wt.kind == "lfdr":  # w = min(1, pi0 / g(p)), g the density of recent train p-values (20 bins),
        # made non-decreasing in p (a higher p-value never gets less weight)
        p = (1.0 + (hold[None, :] <= s[:, None]).sum(1)) / (len(hold) + 1.0)
        nb = 20
        g = torch.bincount((recent * nb).long().clamp(0, nb - 1), minlength=nb).double() * nb / len(recent)
        pi0 = min(1.0, float((recent > 0.5).double().mean() / 0.5)) if wt.storey else 1.0
        wb = torch.cummax(torch.clamp(pi0 / g.clamp_min(1e-12), max=1.0), 0).values
        w = wb[(p * nb).long().clamp(0, nb - 1)].float()
        w = w / w.sum()
    elif wt.kind == "relative":
        sd = s.std() if b > 1 else torch.ones(())
        w = torch.softmax(s / (wt.tau * sd.clamp_min(1e-12)), 0)
    else:
        raise ValueError(f"unknown weighting {wt.kind!r}")
    return (1.0 - wt.mix) * uniform + wt.mix * w if wt.mix else w


def holdout_schedule(n_holdout: int, steps_per_epoch: int, epochs: int, per_step: int, seed: int) -> np.ndarray:
    """Which held-out samples are scored at each step: int64 [S, per_step].

    Every epoch is filled with consecutive seeded permutations of the held-out positions, so each sample is
    scored about ``steps_per_epoch * per_step / n_holdout`` times per epoch, spread over the epoch.
    """
    rng = np.random.default_rng([seed, 7])
    need = steps_per_epoch * per_step
    rows = []
    for _ in range(epochs):
        cycles = -(-need // n_holdout)
        seq = np.concatenate([rng.permutation(n_holdout) for _ in range(cycles)])[:need]
        rows.append(seq.reshape(steps_per_epoch, per_step))
    return np.concatenate(rows).astype(np.int64)


def _holdout_scores(Fc, Yc, Wref, Ws, bs, vns, sched: np.ndarray, chunk: int = 512) -> np.ndarray:
    """proj scores [S, m] of the scheduled held-out samples at the weights of every step (batched).

    ``<-g, V> = -(p - e_y)^T V h`` with ``V h = Wref h - W h``.
    """
    out = np.empty(sched.shape, np.float32)
    k = Wref.shape[0]
    for s0 in range(0, len(Ws), chunk):
        W, b, vn = Ws[s0:s0 + chunk], bs[s0:s0 + chunk], vns[s0:s0 + chunk]
        pos = torch.as_tensor(sched[s0:s0 + chunk])
        h, y = Fc[pos], Yc[pos]  # [s, m, d], [s, m]
        wh = torch.bmm(h, W.transpose(1, 2))  # [s, m, K]
        r = torch.softmax(wh + b[:, None, :], 2) - torch.nn.functional.one_hot(y, k).float()
        out[s0:s0 + chunk] = (-(r * (h @ Wref.T - wh)).sum(2) / vn[:, None]).numpy()
    return out


def train_head(f_train, labels, f_cal, y_cal, f_test, y_test, ref_weight, ref_bias, *, weighting: Weighting,
               epochs: int = 10, batch_size: int = 64, lr: float, seed: int,
               holdout_per_step: int = 128) -> HeadRun:
    """Train a fresh linear head (init ``torch.manual_seed(seed + 1)``, batch order from ``seed``)."""
    from keepset.models import LinearProbe

    grad_was = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        F = torch.as_tensor(np.asarray(f_train, np.float32))
        Y = torch.as_tensor(np.asarray(labels, np.int64))
        Fc = torch.as_tensor(np.asarray(f_cal, np.float32))
        Yc = torch.as_tensor(np.asarray(y_cal, np.int64))
        n, d = F.shape
        k = ref_weight.shape[0]
        torch.manual_seed(seed + 1)
        head = LinearProbe(d, k).head
        W = head.weight.detach().clone()
        bias = head.bias.detach().clone()
        Wref = torch.as_tensor(np.asarray(ref_weight, np.float32))
        W.requires_grad_(False)
        opt = torch.optim.SGD([W, bias], lr=lr, momentum=0.9)
        gen = torch.Generator().manual_seed(int(seed))
        spe = (n + batch_size - 1) // batch_size
        total = spe * epochs
        rec = {k_: [] for k_ in ("step", "epoch", "pos", "mimic", "weight", "normed1")}
        # weights before every step; the calibration scores are computed from them after training, in chunks
        hist = (torch.empty(total, k, d), torch.empty(total, k), torch.empty(total))
        ess = []
        Ft, yt = torch.as_tensor(np.asarray(f_test, np.float32)), np.asarray(y_test)
        epoch_acc = []
        step = 0
        ring = []
        sched = holdout_schedule(len(Fc), spe, epochs, min(len(Fc), holdout_per_step), seed)
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen)
            for b in range(spe):
                idx = order[b * batch_size:(b + 1) * batch_size]
                h, y = F[idx], Y[idx]
                z = h @ W.T + bias
                r = torch.softmax(z, 1)
                r[torch.arange(len(y)), y] -= 1.0
                V = Wref - W
                vn = torch.sqrt((V.double() ** 2).sum()).float()
                dots = -((r @ V) * h).sum(1)
                proj = dots / vn
                cos = dots / ((r.norm(dim=1) * h.norm(dim=1)).clamp_min(1e-30) * vn)
                hold = recent = None
                if weighting.kind in ("gate", "fdr", "lfdr"):
                    hp = torch.as_tensor(sched[step])
                    hh, hy = Fc[hp], Yc[hp]
                    rh = torch.softmax(hh @ W.T + bias, 1)
                    rh[torch.arange(len(hy)), hy] -= 1.0
                    hold = -((rh @ V) * hh).sum(1) / vn
                if weighting.kind in ("fdr", "lfdr"):
                    pb = (1.0 + (hold[None, :] <= proj[:, None]).sum(1)) / (len(hold) + 1.0)
                    ring.append(pb)
                    del ring[:-weighting.window]
                    recent = torch.cat(ring)
                w = _weights(proj, cos, weighting, epoch, hold, recent)
                if hist is not None:
                    hist[0][step], hist[1][step], hist[2][step] = W, bias, vn
                W.grad = (r * w[:, None]).T @ h
                bias.grad = r.sum(0) / len(y)
                opt.step()
                rec["step"].append(np.full(len(idx), step, np.int64))
                rec["epoch"].append(np.full(len(idx), epoch, np.int64))
                rec["pos"].append(idx.numpy())
                rec["mimic"].append(proj.numpy())
                rec["weight"].append(w.numpy())
                rec["normed1"].append(torch.softmax(proj, 0).numpy())
                ess.append(float(1.0 / (w * w).sum()))
                step += 1
            epoch_acc.append(float(((Ft @ W.T + bias).argmax(1).numpy() == yt).mean()))
        cal = None
        if hist is not None:
            cal = (sched, _holdout_scores(Fc, Yc, Wref, *hist, sched))
        acc = epoch_acc[-1]
    finally:
        torch.set_grad_enabled(grad_was)
    out = {k_: np.concatenate(v) for k_, v in rec.items()}
    sizes = np.bincount(out["step"], minlength=total)
    return HeadRun(out["step"], out["epoch"], out["pos"].astype(np.int64), out["mimic"].astype(np.float64),
                   out["weight"].astype(np.float64), out["normed1"].astype(np.float64), cal, acc,
                   float(np.mean(ess)), spe, sizes, epoch_acc)
