"""keepset.GradMimic in any training loop: scores, weights and gradients against a per-sample autograd loop,
fused and unfused paths, GradScaler, gradient accumulation, autocast, resumable recording by id."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keepset.models import MLP, SmallCNN
from keepset.recorder import DynamicsRecorder, per_sample
from keepset.training import GradMimic, fit
from keepset.training.dynamics_observer import DynamicsObserver


def naive_step(model, reference, x, y, names, method="proj", tau=1.0, apply_to="layers"):
    """Scores, weights and the re-weighted gradient from an explicit loop over samples."""
    params = dict(model.named_parameters())
    ref = dict(reference.named_parameters())
    v = {n: (ref[n] - params[n]).detach() for n in names}
    v_norm = torch.sqrt(sum((t * t).sum() for t in v.values()))
    b = len(y)
    per = []
    for i in range(b):
        li = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        per.append(torch.autograd.grad(li, list(params.values())))
    scores = []
    for g in per:
        gd = dict(zip(params, g))
        dot = -sum((gd[n] * v[n]).sum() for n in names)
        if method == "cos":
            gn = torch.sqrt(sum((gd[n] ** 2).sum() for n in names))
            scores.append(dot / (gn * v_norm))
        else:
            scores.append(dot / v_norm)
    scores = torch.stack(scores)
    w = torch.softmax(scores / tau, 0)
    grads = {}
    for k, n in enumerate(params):
        stack = torch.stack([g[k] for g in per])
        weighted = n in names or apply_to == "all"
        ww = w if weighted else torch.full((b,), 1.0 / b)
        grads[n] = torch.tensordot(ww, stack, 1)
    return scores.detach(), w.detach(), grads


def _models(kind):
    torch.manual_seed(3)
    if kind == "mlp":
        model, reference = MLP(6, 4, hidden=(5,)), MLP(6, 4, hidden=(5,))
        x = torch.randn(9, 6)
    else:
        model, reference = SmallCNN(1, 8, 4, width=3, hidden=6), SmallCNN(1, 8, 4, width=3, hidden=6)
        x = torch.rand(9, 1, 8, 8)
    y = torch.randint(0, 4, (9,))
    return model, reference, x, y


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("layers", [None, "all", "features.1"])
@pytest.mark.parametrize("method", ["proj", "cos"])
@pytest.mark.parametrize("fused", [True, False])
def test_scores_weights_and_gradients_match_a_per_sample_loop(kind, layers, method, fused):
    model, reference, x, y = _models(kind)
    if kind == "cnn" and layers == "features.1":
        layers = "features.3"
    gm = GradMimic(reference, layers=layers, method=method, temperature=0.5, fused=fused)
    loss = gm.loss(model, x, y, ids=np.arange(100, 109))
    assert gm.uses_fused_step == fused
    loss.backward()
    scores, w, grads = naive_step(copy.deepcopy(model), reference, x, y, gm.names, method, 0.5)
    torch.testing.assert_close(gm.last_scores, scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gm.last_weights, w, rtol=1e-5, atol=1e-7)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6, msg=n)


def test_apply_to_all_reweights_every_parameter():
    model, reference, x, y = _models("mlp")
    for fused, layers in ((True, "all"), (False, None)):
        m = copy.deepcopy(model)
        gm = GradMimic(reference, layers=layers, apply_to="all", fused=fused)
        gm.loss(m, x, y, np.arange(9)).backward()
        _, _, grads = naive_step(copy.deepcopy(model), reference, x, y, gm.names, apply_to="all")
        for n, p in m.named_parameters():
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6)


def test_reweight_off_gives_plain_gradients_and_still_records():
    model, reference, x, y = _models("cnn")
    plain = copy.deepcopy(model)
    F.cross_entropy(plain(x), y).backward()
    rec = DynamicsRecorder(None, ("mimic", "mimic_normed", "weight"))
    gm = GradMimic(reference, layers="all", reweight=False, record_to=rec)
    gm.loss(model, x, y, np.arange(9)).backward()
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    got = rec.read()
    assert np.allclose(got["weight"], 1 / 9)
    assert np.array_equal(got["id"], np.arange(9))


def test_gradient_scaler_and_accumulation():
    model, reference, x, y = _models("mlp")
    # reference run: two micro-batches, plain backward of mean/2 each
    a = copy.deepcopy(model)
    gm_a = GradMimic(reference, temperature=0.5)
    for part in (slice(0, 5), slice(5, 9)):
        (gm_a.loss(a, x[part], y[part], np.arange(9)[part]) / 2).backward()
    # expected from the naive loop, micro-batch by micro-batch
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for part in (slice(0, 5), slice(5, 9)):
        _, _, g = naive_step(copy.deepcopy(model), reference, x[part], y[part], gm_a.names, tau=0.5)
        for n in expected:
            expected[n] += g[n] / 2
    for n, p in a.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-5, atol=1e-6)
    # the same with a GradScaler: the scaled gradients divided by the scale are the same
    b = copy.deepcopy(model)
    gm_b = GradMimic(reference, temperature=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for part in (slice(0, 5), slice(5, 9)):
        scaler.scale(gm_b.loss(b, x[part], y[part], np.arange(9)[part]) / 2).backward()
    for n, p in b.named_parameters():
        torch.testing.assert_close(p.grad / 1024.0, expected[n], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gm_b.last_scores, gm_a.last_scores, rtol=1e-5, atol=1e-6)


def test_autocast_bfloat16_runs_and_scores_close_to_float32():
    model, reference, x, y = _models("mlp")
    gm32 = GradMimic(reference)
    gm32.loss(copy.deepcopy(model), x, y, np.arange(9)).backward()
    gm16 = GradMimic(reference)
    m = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = gm16.loss(m, x, y, np.arange(9))
    loss.backward()
    assert gm16.uses_fused_step
    assert all(p.grad.dtype == torch.float32 for p in m.parameters())
    torch.testing.assert_close(gm16.last_scores, gm32.last_scores, rtol=0.05, atol=0.05)


def test_fit_equals_a_plain_dataloader_loop(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    ids = np.array([f"{i:032x}" for i in range(1000, 1040)])
    model0, reference = MLP(6, 3, hidden=(5,)), MLP(6, 3, hidden=(5,))
    a = copy.deepcopy(model0)
    gm_a = GradMimic(reference, layers="all", record_to=tmp_path / "fit")
    fit(a, x, y, ids=ids, method=gm_a, epochs=2, batch_size=8, lr=0.1, momentum=0.9, seed=5, progress=False)
    # own loop over the same batches
    b = copy.deepcopy(model0)
    gm_b = GradMimic(reference, layers="all", record_to=tmp_path / "own")
    opt = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(5)
    for epoch in range(2):
        order = torch.randperm(40, generator=gen)
        for s in range(0, 40, 8):
            idx = order[s:s + 8]
            loss = gm_b.loss(b, x[idx], y[idx], ids[idx.numpy()], epoch=epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    gm_b.close()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    ra, rb = DynamicsRecorder.open(tmp_path / "fit").read(), DynamicsRecorder.open(tmp_path / "own").read()
    assert np.array_equal(ra["id"], rb["id"]) and np.array_equal(ra["step"], rb["step"])
    np.testing.assert_allclose(ra["mimic"], rb["mimic"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ra["weight"], rb["weight"], rtol=1e-6, atol=1e-7)
    assert sorted(set(ra["id"])) == sorted(ids) and len(ra["id"]) == 80
    assert set(ra["epoch"]) == {0, 1}


def test_recording_resumes_after_a_restart(tmp_path):
    model, reference, x, y = _models("mlp")
    gm = GradMimic(reference, record_to=tmp_path / "dyn")
    gm.loss(model, x[:5], y[:5], np.arange(5)).backward()
    gm.close()
    with pytest.raises(FileExistsError):
        GradMimic(reference, record_to=tmp_path / "dyn")
    gm2 = GradMimic(reference, record_to=tmp_path / "dyn", resume=True)
    assert gm2.step == 1
    gm2.loss(model, x[5:], y[5:], np.arange(5, 9)).backward()
    gm2.close()
    got = DynamicsRecorder.open(tmp_path / "dyn").read()
    assert got["step"].tolist() == [0] * 5 + [1] * 4
    assert got["id"].tolist() == list(range(9))


def test_bad_batches_get_one_line_errors():
    model, reference, x, y = _models("mlp")
    gm = GradMimic(reference)
    cases = [
        (lambda: gm.loss(model, x, y, None), "ids"),
        (lambda: gm.loss(model, x, y, np.arange(8)), "ids"),
        (lambda: gm.loss(model, x, y.float(), np.arange(9)), "integer"),
        (lambda: gm.loss(model, x, y[:, None], np.arange(9)), "1-D"),
        (lambda: gm.loss(model, x, torch.full((9,), 7), np.arange(9)), "outside"),
        (lambda: gm.loss(model, x, torch.full((9,), -1), np.arange(9)), "outside"),
        (lambda: gm.loss(model, x[:0], y[:0], np.arange(0)), "empty"),
        (lambda: gm.loss(model, torch.full_like(x, float("nan")), y, np.arange(9)), "NaN"),
        (lambda: gm.loss(model, x, y, np.array([1] * 9)), None),
    ]
    for fn, word in cases[:-1]:
        with pytest.raises(ValueError) as exc:
            fn()
        assert "\n" not in str(exc.value) and word in str(exc.value)
    with pytest.raises(ValueError):
        GradMimic(reference, temperature=0)
    with pytest.raises(ValueError):
        GradMimic(reference, method="normed_proj")
    with pytest.raises(ValueError, match="no_grad"):
        with torch.no_grad():
            gm.loss(model, x, y, np.arange(9))


def test_observer_records_dynamics_by_id():
    torch.manual_seed(0)
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    ids = np.arange(500, 530)
    obs = DynamicsObserver()
    model = MLP(4, 3)
    fit(model, x, y, ids=ids, observers=[obs], epochs=2, batch_size=7, progress=False)
    loss = per_sample(obs.recorder, "loss", "count", ids=ids)
    assert np.array_equal(loss, np.full(30, 2.0))


def test_coupled_clip_loss_trains_with_exact_weights_and_gradients():
    """Contrastive probing: a two-tower probe under CLIP's loss (each pair's loss couples the batch). The
    fused step does not apply; scores, weights and the re-weighted gradient equal a per-pair autograd loop."""
    from keepset.losses import clip_loss
    from keepset.models import TwoTowerProbe

    torch.manual_seed(0)
    model, reference = TwoTowerProbe(6, 5, 4), TwoTowerProbe(6, 5, 4)
    img, txt = torch.randn(7, 6), torch.randn(7, 5)
    gm = GradMimic(reference, layers="all", method="cos", temperature=0.5, loss_fn=clip_loss)
    loss = gm.loss(model, (img, txt), None, np.arange(7))
    assert not gm.uses_fused_step
    loss.backward()
    params = dict(model.named_parameters())
    ref = dict(reference.named_parameters())
    v = {n: (ref[n] - p).detach() for n, p in params.items()}
    v_norm = torch.sqrt(sum((t * t).sum() for t in v.values()))
    m2 = copy.deepcopy(model)
    p2 = dict(m2.named_parameters())
    losses = clip_loss(m2(img, txt))
    per = [torch.autograd.grad(losses[i], list(p2.values()), retain_graph=True) for i in range(7)]
    dots = torch.stack([-sum((g * v[n]).sum() for n, g in zip(p2, gs)) for gs in per])
    norms = torch.stack([torch.sqrt(sum((g * g).sum() for g in gs)) for gs in per])
    score = dots / (norms * v_norm)
    torch.testing.assert_close(gm.last_scores, score, rtol=1e-4, atol=1e-6)
    w = torch.softmax(score / 0.5, 0)
    for k, n in enumerate(p2):
        want = sum(w[i] * per[i][k] for i in range(7))
        torch.testing.assert_close(params[n].grad, want, rtol=1e-4, atol=1e-6, msg=n)


def test_an_unmarked_coupled_loss_is_refused():
    from keepset.losses import clip_loss
    from keepset.models import TwoTowerProbe

    def my_clip(outputs, y):  # the same coupled loss, without the marker
        return clip_loss.__wrapped__(outputs, y) if hasattr(clip_loss, "__wrapped__") else clip_loss(outputs, y)

    torch.manual_seed(0)
    model, reference = TwoTowerProbe(6, 5, 4), TwoTowerProbe(6, 5, 4)
    gm = GradMimic(reference, layers="all", loss_fn=my_clip)
    with pytest.raises(ValueError, match="coupl"):
        gm.loss(model, (torch.randn(5, 6), torch.randn(5, 5)), None, np.arange(5))


def test_a_model_calling_a_scored_layer_twice_falls_back_exactly():
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(6, 6)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))

    torch.manual_seed(1)
    model, reference = Twice(), Twice()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    gm = GradMimic(reference, layers="all")
    gm.loss(model, x, y, np.arange(8)).backward()
    assert gm.uses_fused_step  # planned, but this batch took the exact unfused path
    scores, w, grads = naive_step(copy.deepcopy(model), reference, x, y, gm.names)
    torch.testing.assert_close(gm.last_scores, scores, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("layers", [None, "all", "features.1"])
@pytest.mark.parametrize("reweight", [True, False])
def test_from_the_second_batch_the_scored_parameters_skip_their_mean_gradient_and_stay_exact(kind, layers, reweight):
    """After one batch the fused step knows the call structure and the scored parameters enter the forward
    detached (their mean gradient is never computed); every later batch must still match the loop."""
    model, reference, x, y = _models(kind)
    if kind == "cnn" and layers == "features.1":
        layers = "features.3"
    gm = GradMimic(reference, layers=layers, temperature=0.5, reweight=reweight)
    gm.loss(model, x[:4], y[:4], np.arange(4)).backward()  # batch 1: learns the call structure
    assert gm._swap_ok
    model.zero_grad()
    with pytest.MonkeyPatch.context() as mp:
        calls = []
        orig = GradMimic._layer_grads
        mp.setattr(GradMimic, "_layer_grads", lambda self, p, *a: calls.append(p.swap) or orig(self, p, *a))
        gm.loss(model, x, y, np.arange(9)).backward()
    assert calls == [True]
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())  # every parameter is back
    scores, w, grads = naive_step(copy.deepcopy(model), reference, x, y, gm.names, tau=0.5)
    if not reweight:  # the mean gradient
        m2 = copy.deepcopy(model)
        mean = torch.autograd.grad(F.cross_entropy(m2(x), y), list(m2.parameters()))
        grads = dict(zip([n for n, _ in m2.named_parameters()], mean))
    torch.testing.assert_close(gm.last_scores, scores, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-6, msg=n)


def test_second_batch_with_gradient_scaler_and_accumulation():
    model, reference, x, y = _models("cnn")
    gm = GradMimic(reference, layers="all", temperature=0.5)
    gm.loss(model, x[:3], y[:3], np.arange(3)).backward()
    model.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    for part in (slice(0, 5), slice(5, 9)):
        scaler.scale(gm.loss(model, x[part], y[part], np.arange(9)[part]) / 2).backward()
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for part in (slice(0, 5), slice(5, 9)):
        _, _, g = naive_step(copy.deepcopy(model), reference, x[part], y[part], gm.names, tau=0.5)
        for n in expected:
            expected[n] += g[n] / 2
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad / 256.0, expected[n], rtol=1e-5, atol=1e-6, msg=n)


def test_a_call_structure_change_after_the_first_batch_is_refused_not_silently_wrong():
    class Sometimes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(6, 6)
            self.head = torch.nn.Linear(6, 3)
            self.twice = False

        def forward(self, x):
            h = torch.tanh(self.inner(x))
            if self.twice:
                h = torch.tanh(self.inner(h))
            return self.head(h)

    torch.manual_seed(1)
    model, reference = Sometimes(), Sometimes()
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    gm = GradMimic(reference, layers="all")
    gm.loss(model, x, y, np.arange(8)).backward()
    model.twice = True
    with pytest.raises(ValueError, match="fused=False"):
        gm.loss(model, x, y, np.arange(8))
    assert all(isinstance(p, torch.nn.Parameter) for p in model.parameters())
