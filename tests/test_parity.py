"""Parity with the published Grad-Mimic code (raw / opt weightings, GraNd and RHO-loss softmax, AGRA, batch
Grad-Match, few-shot influence, perturbed and split references) and CORDS's Grad-Match, each against a hand
computation from an explicit loop over samples with autograd (or a brute-force optimiser)."""

import copy

import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F

from keepset.data import split_indices
from keepset.models import MLP, LinearProbe
from keepset.training import (
    AGRA, BatchGradMatch, FewShotInfluence, GradMatch, GradMimic, GrandWeight, RhoLoss, fit, opt_weights,
    orthogonal_mp, perturbed_reference, reference_on_split,
)
from keepset.training.gradmatch import last_layer_gradients
from keepset.training.influence import few_shot_positions
from keepset.training.parity import opt_objective


# ---------------------------------------------------------------------------------------------- hand computations
def per_sample(model, x, y):
    """{name: [B, *shape]} per-sample gradients from an explicit loop."""
    params = dict(model.named_parameters())
    out = {n: [] for n in params}
    for i in range(len(y)):
        g = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), list(params.values()))
        for n, gi in zip(params, g):
            out[n].append(gi)
    return {n: torch.stack(v) for n, v in out.items()}


def flat(grads, names):
    b = next(iter(grads.values())).shape[0]
    return torch.cat([grads[n].reshape(b, -1) for n in names], 1)


def mean_grad(model, x, y, names):
    params = dict(model.named_parameters())
    g = torch.autograd.grad(F.cross_entropy(model(x), y), [params[n] for n in names])
    return torch.cat([t.reshape(-1) for t in g])


def combine(grads, w, names, apply_to="layers"):
    """Expected parameter gradients: sum_i w_i g_i on ``names`` (or all), the mean elsewhere."""
    out = {}
    for n, g in grads.items():
        ww = w if (apply_to == "all" or n in names) else torch.full_like(w, 1.0 / len(w))
        out[n] = torch.tensordot(ww.to(g), g, 1)
    return out


def check_grads(model, expected):
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-6, msg=n)


def _setup(kind="mlp", b=10, seed=3):
    torch.manual_seed(seed)
    if kind == "mlp":
        model, ref = MLP(6, 4, hidden=(5,)), MLP(6, 4, hidden=(5,))
    else:
        model, ref = LinearProbe(6, 4), LinearProbe(6, 4)
    x, y = torch.randn(b, 6), torch.randint(0, 4, (b,))
    return model, ref, x, y


# ---------------------------------------------------------------------------------------------- GradMimic weightings
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("layers", [None, "all"])
@pytest.mark.parametrize("method", ["proj", "cos"])
@pytest.mark.parametrize("weighting", ["raw", "opt"])
def test_gradmimic_published_weightings_match_a_per_sample_loop(fused, layers, method, weighting):
    model, ref, x, y = _setup()
    gm = GradMimic(ref, layers=layers, method=method, weighting=weighting, fused=fused)
    loss = gm.loss(model, x, y, np.arange(10))
    assert gm.uses_fused_step == fused
    loss.backward()
    m0 = copy.deepcopy(model)
    names = gm.names
    grads = per_sample(m0, x, y)
    a = -flat(grads, names)  # a_i = -g_i
    params, refp = dict(m0.named_parameters()), dict(ref.named_parameters())
    v = torch.cat([(refp[n] - params[n]).detach().reshape(-1) for n in names])
    proj = a @ v / v.norm()
    score = proj if method == "proj" else proj / a.norm(dim=1)
    torch.testing.assert_close(gm.last_scores, score, rtol=1e-4, atol=1e-6)
    # published: raw weights are the scores themselves (signed, unnormalised); opt with lambda 0 solves
    # min_w sum_i ||w_i a_i - V|| sample by sample: w_i = <a_i, V> / ||a_i||^2
    w = score if weighting == "raw" else (a @ v) / (a * a).sum(1)
    torch.testing.assert_close(gm.last_weights, w, rtol=1e-4, atol=1e-6)
    assert (w < 0).any()  # the published raw / opt weights ascend some samples
    check_grads(model, combine(grads, w, names))


def test_gradmimic_raw_weights_with_apply_to_all_and_the_recording():
    from keepset.recorder import DynamicsRecorder

    model, ref, x, y = _setup()
    rec = DynamicsRecorder(None, ("mimic", "mimic_normed", "weight"))
    gm = GradMimic(ref, layers="all", weighting="raw", apply_to="all", record_to=rec, temperature=0.5)
    gm.loss(model, x, y, np.arange(10)).backward()
    grads = per_sample(copy.deepcopy(model), x, y)
    check_grads(model, combine(grads, gm.last_weights, gm.names, "all"))
    got = rec.read()
    np.testing.assert_allclose(got["weight"], got["mimic"], rtol=1e-6)  # raw: weight = score
    np.testing.assert_allclose(got["mimic_normed"], torch.softmax(torch.as_tensor(got["mimic"]) / 0.5, 0).numpy(),
                               rtol=1e-5)


def test_gradmimic_opt_with_a_regulariser_is_the_brute_force_optimum():
    model, ref, x, y = _setup("linear", b=4)
    for norm in ("l2", "l1"):
        gm = GradMimic(ref, weighting="opt", opt_lambda=0.05, opt_norm=norm)
        m = copy.deepcopy(model)
        gm.loss(m, x, y, np.arange(4)).backward()
        grads = per_sample(copy.deepcopy(model), x, y)
        a = -flat(grads, gm.names).double()
        v = (dict(ref.named_parameters())["head.weight"] - dict(model.named_parameters())["head.weight"]).detach()
        v = v.reshape(-1).double()

        def objective(w):  # the published _objective_fn_matrix, Frobenius norms of w_i a_i - V
            w = torch.as_tensor(w, dtype=torch.float64)
            reg = w.norm() if norm == "l2" else w.abs().sum()
            return float(sum((w[i] * a[i] - v).norm() for i in range(len(w))) + 0.05 * reg)

        best = min((scipy.optimize.minimize(objective, s, method="Nelder-Mead",
                                            options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 40000})
                    for s in (np.zeros(4), np.ones(4), -np.ones(4))), key=lambda r: r.fun)
        ours = gm.last_weights.double().numpy()
        assert objective(ours) <= best.fun + 1e-6
        np.testing.assert_allclose(ours, best.x, atol=2e-3)
        check_grads(m, combine(grads, gm.last_weights, gm.names))


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 50.0])
def test_opt_weights_against_brute_force(norm, lam):
    rng = np.random.default_rng(7)
    for _ in range(3):
        a = torch.as_tensor(rng.normal(size=(3, 5)))
        a[2] = 0.0  # a zero gradient: its term does not depend on its weight, which is 0
        v = torch.as_tensor(rng.normal(size=5))
        w = opt_weights(a @ v, (a * a).sum(1), float(v @ v), lam=lam, norm=norm).double()

        def f(z):
            z = torch.as_tensor(z, dtype=torch.float64)
            reg = z.norm() if norm == "l2" else z.abs().sum()
            return float(sum((z[i] * a[i] - v).norm() for i in range(3)) + lam * reg)

        grid = np.linspace(-3, 3, 31)
        coarse = min(((f([p, q, 0.0]), p, q) for p in grid for q in grid))
        best = scipy.optimize.minimize(f, [coarse[1], coarse[2], 0.0], method="Nelder-Mead",
                                       options={"xatol": 1e-11, "fatol": 1e-14, "maxiter": 40000})
        assert f(w.numpy()) <= best.fun + 1e-7
        assert float(w[2]) == 0.0
        np.testing.assert_allclose(w[:2].numpy(), best.x[:2], atol=1e-3)
        torch.testing.assert_close(opt_objective(w, (a * a).sum(1), a @ v, float(v @ v), lam, norm),
                                   torch.tensor(f(w.numpy()), dtype=torch.float64))
    if lam == 50.0:
        assert (w == 0).all()  # a large regulariser: 0 is optimal (published solver would say the same)


# ---------------------------------------------------------------------------------------------- GraNd / RHO softmax
def test_grand_softmax_is_softmax_of_the_head_weight_gradient_norms_on_the_head_weight():
    model, _, x, y = _setup()
    gw = GrandWeight(mode="softmax")
    gw.loss(model, x, y, np.arange(10)).backward()
    grads = per_sample(copy.deepcopy(model), x, y)
    w = torch.softmax(grads["head.weight"].reshape(10, -1).norm(dim=1), 0)
    torch.testing.assert_close(gw.last_weights, w, rtol=1e-5, atol=1e-7)
    check_grads(model, combine(grads, w, ["head.weight"]))  # bias and hidden layer: mean gradient


def test_grand_default_unchanged_and_softmax_generic_layers():
    model, _, x, y = _setup()
    m = copy.deepcopy(model)
    GrandWeight().loss(m, x, y, np.arange(10)).backward()  # today's: weight+bias norm, every parameter
    grads = per_sample(copy.deepcopy(model), x, y)
    n = flat(grads, ["head.weight", "head.bias"]).norm(dim=1)
    check_grads(m, combine(grads, n / n.sum(), [], "all"))
    gw = GrandWeight(mode="softmax", layers="features.1", temperature=2.0)  # torch.func path
    m = copy.deepcopy(model)
    gw.loss(m, x, y, np.arange(10)).backward()
    w = torch.softmax(flat(grads, ["features.1.weight", "features.1.bias"]).norm(dim=1) / 2.0, 0)
    torch.testing.assert_close(gw.last_weights, w, rtol=1e-5, atol=1e-7)
    check_grads(m, combine(grads, w, ["features.1.weight", "features.1.bias"]))


def test_rho_softmax_is_softmax_of_the_excess_loss_by_id_with_the_published_gradient():
    model, _, x, y = _setup()
    ids = np.arange(500, 510)
    irr = np.linspace(0.1, 2.0, 10).astype(np.float32)
    perm = np.random.default_rng(0).permutation(10)
    rho = RhoLoss(irr[perm], ids[perm], mode="softmax", temperature=0.7)
    rho.loss(model, x, y, ids).backward()
    m0 = copy.deepcopy(model)
    losses = F.cross_entropy(m0(x), y, reduction="none").detach()
    w = torch.softmax((losses - torch.as_tensor(irr)) / 0.7, 0)
    torch.testing.assert_close(rho.last_weights, w, rtol=1e-5, atol=1e-7)
    # the published (our_loss @ per_w).backward() keeps per_w in the graph: d/dtheta sum_i w_i L_i
    # = sum_j w_j (1 + (L_j - sum_i w_i L_i) / T) grad L_j
    coef = w * (1 + (losses - (w * losses).sum()) / 0.7)
    check_grads(model, combine(per_sample(m0, x, y), coef, [], "all"))


# ---------------------------------------------------------------------------------------------- AGRA
def _agra_expected(model, x, y, pool_x, pool_y, pos, names, threshold=0.0):
    grads = per_sample(model, x, y)
    g = flat(grads, names)
    gc = mean_grad(model, pool_x[pos], pool_y[pos], names)
    score = (g @ gc) / (g.norm(dim=1) * gc.norm() + 1e-6)
    keep = score > threshold
    return grads, score, keep


@pytest.mark.parametrize("kind,layers", [("linear", None), ("mlp", None), ("mlp", "all")])
def test_agra_keeps_samples_aligned_with_the_comparison_batch(kind, layers):
    model, _, x, y = _setup(kind, b=12)
    torch.manual_seed(11)
    pool_x, pool_y = torch.randn(30, 6), torch.randint(0, 4, (30,))
    agra = AGRA(pool_x, pool_y, np.arange(100, 130), comparison_size=8, layers=layers, seed=5)
    agra.loss(model, x, y, np.arange(12)).backward()
    pos = torch.randperm(30, generator=torch.Generator().manual_seed(5))[:8]
    assert np.array_equal(agra.last_comparison_ids, 100 + pos.numpy())
    m0 = copy.deepcopy(model)
    names = agra.names
    grads, score, keep = _agra_expected(m0, x, y, pool_x, pool_y, pos, names)
    assert 0 < int(keep.sum()) < 12  # the test exercises both outcomes
    torch.testing.assert_close(agra.last_scores, score, rtol=1e-4, atol=1e-6)
    w = keep.float() / keep.sum()
    torch.testing.assert_close(agra.last_weights, w)
    check_grads(model, combine(grads, w, names, "all"))  # the kept samples' mean loss trains every parameter


def test_agra_empty_batch_and_the_grad_mimic_code_variant():
    model, _, x, y = _setup("mlp", b=12)
    torch.manual_seed(11)
    pool_x, pool_y = torch.randn(30, 6), torch.randint(0, 4, (30,))
    skip = AGRA(pool_x, pool_y, threshold=0.999, seed=5)
    m = copy.deepcopy(model)
    skip.loss(m, x, y, np.arange(12)).backward()
    assert (skip.last_weights == 0).all()
    assert all(float(p.grad.abs().max()) == 0 for p in m.parameters())
    uni = AGRA(pool_x, pool_y, threshold=0.999, on_empty="uniform", apply_to="layers", seed=5)
    m = copy.deepcopy(model)
    uni.loss(m, x, y, np.arange(12)).backward()
    grads = per_sample(copy.deepcopy(model), x, y)
    check_grads(m, combine(grads, torch.full((12,), 1 / 12), ["head.weight"]))
    # Grad-Mimic's variant: weights on the mimic layer only
    gm = AGRA(pool_x, pool_y, apply_to="layers", seed=5)
    m = copy.deepcopy(model)
    gm.loss(m, x, y, np.arange(12)).backward()
    pos = torch.randperm(30, generator=torch.Generator().manual_seed(5))[:12]
    _, _, keep = _agra_expected(copy.deepcopy(model), x, y, pool_x, pool_y, pos, ["head.weight"])
    check_grads(m, combine(grads, keep.float() / keep.sum(), ["head.weight"]))


# ---------------------------------------------------------------------------------------------- few-shot influence
def test_few_shot_positions_are_k_per_class_and_seeded():
    labels = np.array([0] * 7 + [1] * 3 + [2] * 12)
    pos = few_shot_positions(labels, 5, seed=1)
    assert np.bincount(labels[pos]).tolist() == [5, 3, 5] and len(set(pos)) == len(pos)
    assert np.array_equal(pos, few_shot_positions(labels, 5, seed=1))
    assert not np.array_equal(pos, few_shot_positions(labels, 5, seed=2))


@pytest.mark.parametrize("method,weighting", [("proj", "softmax"), ("cos", "softmax"), ("proj", "raw")])
def test_influence_weights_from_the_clean_mean_gradient(method, weighting):
    model, _, x, y = _setup("mlp", b=10)
    torch.manual_seed(2)
    cx, cy = torch.randn(40, 6), torch.randint(0, 4, (40,))
    inf = FewShotInfluence(cx, cy, np.arange(900, 940), k=3, method=method, weighting=weighting, temperature=0.5,
                           seed=4)
    pos = few_shot_positions(cy.numpy(), 3, seed=4)
    assert np.array_equal(inf.few_shot_ids, 900 + pos)
    inf.loss(model, x, y, np.arange(10)).backward()
    m0 = copy.deepcopy(model)
    grads = per_sample(m0, x, y)
    g = flat(grads, ["head.weight"])
    gc = mean_grad(m0, cx[pos], cy[pos], ["head.weight"])
    score = g @ gc / gc.norm()  # +g_i: aligned with the clean descent direction scores high
    if method == "cos":
        score = score / g.norm(dim=1)
    torch.testing.assert_close(inf.last_scores, score, rtol=1e-4, atol=1e-6)
    w = torch.softmax(score / 0.5, 0) if weighting == "softmax" else score
    torch.testing.assert_close(inf.last_weights, w, rtol=1e-4, atol=1e-6)
    check_grads(model, combine(grads, w, ["head.weight"]))


# ---------------------------------------------------------------------------------------------- Grad-Match
def cords_omp_reg(A, b, tol=1e-4, nnz=None, positive=False, lam=1.0):
    """CORDS's OrthogonalMP_REG transcribed literally (rebuilds A_i A_i^T every step)."""
    from scipy.linalg import lstsq

    AT = A.T
    d, n = A.shape
    nnz = n if nnz is None else nnz
    x = np.zeros(n)
    resid = np.copy(b)
    normb = np.linalg.norm(b)
    indices = []
    for _ in range(nnz):
        if np.linalg.norm(resid) / normb < tol:
            break
        projections = AT.dot(resid)
        index = np.argmax(projections) if positive else np.argmax(abs(projections))
        if index in indices:
            break
        indices.append(index)
        if len(indices) == 1:
            A_i = A[:, index]
            x_i = projections[index] / A_i.T.dot(A_i)
        else:
            A_i = np.vstack([A_i, A[:, index]])
            x_i = lstsq(A_i.dot(A_i.T) + lam * np.identity(A_i.shape[0]), A_i.dot(b))[0]
            if positive:
                while min(x_i) < 0.0:
                    argmin = np.argmin(x_i)
                    indices = indices[:argmin] + indices[argmin + 1:]
                    A_i = np.vstack([A_i[:argmin], A_i[argmin + 1:]])
                    x_i = lstsq(A_i.dot(A_i.T) + lam * np.identity(A_i.shape[0]), A_i.dot(b))[0]
        resid = b - A_i.T.dot(x_i)
    for i, index in enumerate(indices):
        try:
            x[index] += x_i[i]
        except IndexError:
            x[index] += x_i
    return x


@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_orthogonal_mp_equals_cords(positive, lam):
    rng = np.random.default_rng(3)
    for trial in range(5):
        A = rng.normal(size=(12, 30))
        b = A[:, :6] @ rng.uniform(0.2, 1.0, 6) + 0.05 * rng.normal(size=12)
        ours = orthogonal_mp(A, b, nnz=8, positive=positive, lam=lam)
        theirs = cords_omp_reg(A, b, nnz=8, positive=positive, lam=lam)
        np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-10)
    # an exactly sparse non-negative signal over orthogonal atoms is recovered
    A = np.eye(10)
    assert np.allclose(orthogonal_mp(A, np.array([0, 2.0, 0, 0, 1.0, 0, 0, 0, 0, 0]), positive=positive, lam=0.0),
                       [0, 2, 0, 0, 1, 0, 0, 0, 0, 0])


def test_last_layer_gradients_are_cords_bias_then_weight_rows():
    model, _, x, y = _setup("mlp", b=7)
    grads = per_sample(model, x, y)
    ours = last_layer_gradients(model, x, y, batch_size=3)
    expected = torch.cat([grads["head.bias"], grads["head.weight"].reshape(7, -1)], 1).double()
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("selection", ["PerClassPerGradient", "PerClass"])
def test_grad_match_selection_schedule_and_batch_weights(selection):
    torch.manual_seed(0)
    n = 60
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    ids = np.arange(1000, 1000 + n)[::-1].copy()
    model = LinearProbe(5, 3)
    gm = GradMatch(x, y, ids, fraction=0.2, select_every=2, selection=selection, seed=1)
    first = gm.subset_ids.copy()
    assert len(first) == 12 and np.allclose(gm.subset_weights, 1.0)
    seen = []
    for epoch in range(6):
        gm.loss(model, x[:10], y[:10], ids[:10], epoch=epoch)
        seen.append(gm.selections)
    assert seen == [0, 0, 1, 1, 2, 2]  # CORDS: at epochs e % select_every == 0 and e > 1
    # the selection by hand: OMP per class on the class's summed last-layer gradient
    m = copy.deepcopy(model)
    gm.select(m)
    grads = last_layer_gradients(m, x, y).numpy()
    labels = y.numpy()
    expected = {}
    for c in range(3):
        members = np.flatnonzero(labels == c)
        g = grads[members]
        target = g.sum(0)
        if selection == "PerClassPerGradient":
            cols = np.r_[c, 3 + 5 * c: 3 + 5 * (c + 1)]
            g, target = g[:, cols], target[cols]
        coef = cords_omp_reg(g.T, target, nnz=int(np.ceil(12 * len(members) / n)), positive=True, lam=0.0)
        expected.update({int(ids[members[j]]): coef[j] for j in np.flatnonzero(coef)})
    got = dict(zip(gm.subset_ids.tolist(), gm.subset_weights.tolist()))
    # CORDS: per-class budgets ceil(12 n_c / N) may add up to more than 12; random fill only up to 12
    assert len(gm.subset_ids) == max(12, len(expected)) and len(set(gm.subset_ids)) == len(gm.subset_ids)
    for i, c in expected.items():
        assert got[i] == pytest.approx(c, rel=1e-8)
    assert all(got[i] == 1.0 for i in set(got) - set(expected))  # CORDS's random fill, weight 1
    # a batch's loss: sum_i w_i L_i / sum_i w_i over its selected samples (0 for the others), every parameter
    batch = np.arange(0, 30)
    m = copy.deepcopy(model)
    gm.loss(m, x[batch], y[batch], ids[batch], epoch=5).backward()
    w = torch.tensor([got.get(int(i), 0.0) for i in ids[batch]], dtype=torch.float32)
    w = w / w.sum()
    torch.testing.assert_close(gm.last_weights, w)
    check_grads(m, combine(per_sample(copy.deepcopy(model), x[batch], y[batch]), w, [], "all"))


def test_grad_match_with_a_validation_target_and_seeds():
    torch.manual_seed(0)
    x, y = torch.randn(60, 5), torch.randint(0, 3, (60,))
    vx, vy = torch.randn(15, 5), torch.tensor([0, 1, 2] * 5)
    model = LinearProbe(5, 3)
    a = GradMatch(x, y, fraction=0.2, valid_x=vx, valid_y=vy, selection="PerClass", seed=3)
    b = GradMatch(x, y, fraction=0.2, valid_x=vx, valid_y=vy, selection="PerClass", seed=3)
    assert np.array_equal(a.subset_ids, b.subset_ids)
    a.select(model)
    b.select(model)
    assert np.array_equal(a.subset_ids, b.subset_ids) and np.array_equal(a.subset_weights, b.subset_weights)
    grads = last_layer_gradients(model, x, y).numpy()
    vgrads = last_layer_gradients(model, vx, vy).numpy()
    members = np.flatnonzero(y.numpy() == 1)
    coef = cords_omp_reg(grads[members].T, vgrads[vy.numpy() == 1].sum(0), nnz=int(np.ceil(12 * len(members) / 60)),
                         positive=True, lam=0.0)
    chosen = set(members[np.flatnonzero(coef)].tolist())
    assert chosen <= set(a.subset_positions.tolist())
    c = GradMatch(x, y, fraction=0.2, seed=4)
    assert not np.array_equal(a.subset_ids, c.subset_ids)


def test_batch_grad_match_is_the_opt_problem_towards_the_batch_mean_gradient():
    model, _, x, y = _setup("mlp", b=10)
    bgm = BatchGradMatch()
    bgm.loss(model, x, y, np.arange(10)).backward()
    grads = per_sample(copy.deepcopy(model), x, y)
    g = flat(grads, ["head.weight"])
    target = g.mean(0)
    w = (g @ target) / (g * g).sum(1)  # argmin_w sum_i ||w_i g_i - mean g||, sample by sample
    torch.testing.assert_close(bgm.last_weights, w, rtol=1e-4, atol=1e-6)
    check_grads(model, combine(grads, w, ["head.weight"]))


# ---------------------------------------------------------------------------------------------- references
def test_perturbed_reference_adds_absolute_gaussian_noise_to_the_mimic_layer_only():
    _, ref, _, _ = _setup("mlp")
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    out = perturbed_reference(ref, 0.3, seed=9)
    noise = torch.randn(ref.head.weight.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 0.3
    torch.testing.assert_close(out.head.weight, before["head.weight"] + noise.float())
    for n, p in out.named_parameters():
        if n != "head.weight":
            assert torch.equal(p, before[n])
    for n, p in ref.named_parameters():
        assert torch.equal(p, before[n])  # the input is not modified
    again = perturbed_reference(ref, 0.3, seed=9)
    assert all(torch.equal(p, q) for p, q in zip(out.parameters(), again.parameters()))
    every = perturbed_reference(ref, 0.3, seed=9, layers="all")
    assert all(not torch.equal(p, before[n]) for n, p in every.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in perturbed_reference(ref, 0.0).named_parameters())


def test_reference_on_split_trains_a_copy_on_one_stratified_half():
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.tensor([0, 1, 2, 3] * 10)
    init = LinearProbe(6, 4)
    before = copy.deepcopy(init)
    ref = reference_on_split(init, x, y, part=1, fraction=0.5, seed=2, epochs=3, batch_size=8, lr=0.1)
    assert all(torch.equal(p, q) for p, q in zip(init.parameters(), before.parameters()))
    half = split_indices(y.numpy(), (0.5, 0.5), 2)[1]
    by_hand = copy.deepcopy(before)
    fit(by_hand, x[half], y[half], epochs=3, batch_size=8, lr=0.1, momentum=0.9, seed=2, progress=False)
    for p, q in zip(ref.parameters(), by_hand.parameters()):
        torch.testing.assert_close(p, q)
    assert np.bincount(y.numpy()[half]).tolist() == [5, 5, 5, 5]


# ---------------------------------------------------------------------------------------------- seeds and errors
def test_seeded_methods_give_identical_runs():
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 4, (64,))
    ids = np.arange(64)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = LinearProbe(6, 4)
        for method in (AGRA(x[:20], y[:20], seed=3), FewShotInfluence(x, y, k=2, seed=3),
                       GradMatch(x, y, fraction=0.25, seed=3)):
            fit(model, x, y, ids=ids, method=method, epochs=3, batch_size=16, lr=0.1, seed=7, progress=False)
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_bad_parameters_get_one_line_errors():
    _, ref, x, y = _setup("linear")
    cases = [
        (lambda: GradMimic(ref, weighting="sparsemax"), "weighting"),
        (lambda: GradMimic(ref, weighting="opt", opt_lambda=-1), "opt_lambda"),
        (lambda: GradMimic(ref, weighting="opt", opt_norm="linf"), "opt_norm"),
        (lambda: GrandWeight(mode="exp"), "mode"),
        (lambda: GrandWeight(mode="softmax", temperature=0), "temperature"),
        (lambda: RhoLoss(np.ones(3), mode="max"), "mode"),
        (lambda: AGRA(x, y[:3]), "labels"),
        (lambda: AGRA(x, y, comparison_size=100), "comparison_size"),
        (lambda: AGRA(x, y, threshold=2), "threshold"),
        (lambda: AGRA(x, y, on_empty="drop"), "on_empty"),
        (lambda: AGRA(torch.full_like(x, float("nan")), y), "NaN"),
        (lambda: FewShotInfluence(x, y, k=0), "k must"),
        (lambda: FewShotInfluence(x, y, method="dot"), "method"),
        (lambda: FewShotInfluence(x, y, weighting="opt"), "weighting"),
        (lambda: GradMatch(x, y, fraction=0), "fraction"),
        (lambda: GradMatch(x, y, fraction=0.01), "selects nothing"),
        (lambda: GradMatch(x, y, select_every=0), "select_every"),
        (lambda: GradMatch(x, y, selection="PerBatch"), "selection"),
        (lambda: GradMatch(x, y, valid_x=x), "valid_y"),
        (lambda: BatchGradMatch(opt_norm="l3"), "opt_norm"),
        (lambda: perturbed_reference(ref, -0.1), "sigma"),
        (lambda: perturbed_reference(ref, 0.1, layers="nope"), "nope"),
        (lambda: reference_on_split(ref, x, y, part=2), "part"),
        (lambda: reference_on_split(ref, x, y[:4]), "samples"),
    ]
    for fn, word in cases:
        with pytest.raises(ValueError) as exc:
            fn()
        assert "\n" not in str(exc.value) and word in str(exc.value), (word, str(exc.value))
    gm = GradMatch(x, y, fraction=0.5)
    with pytest.raises(ValueError, match="not in Grad-Match"):
        gm.loss(LinearProbe(6, 4), x, y, np.arange(100, 110))
