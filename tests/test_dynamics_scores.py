"""Training-dynamics scores against hand computations, and the hooks against autograd loops."""

import math

import numpy as np
import pytest
import torch

from keepset.scoring.dynamics import (
    area_under_margin, dynamics_scores, early_mean, el2n, entropy, forgetting_events, last_value,
    least_confidence, logit_margin, prob_margin,
)
from keepset.training import GrandWeight, MeanLoss, RhoLoss, fit, irreducible_losses
from keepset.training.dynamics_observer import DYNAMICS_FIELDS, DynamicsObserver, batch_dynamics

NAN = np.nan


def test_forgetting_events_scripted_sequence():
    # columns are samples, rows epochs (visit order)
    correct = np.array([
        [1, 0, 1, 0, 1, NAN],
        [0, 0, 1, 0, NAN, 1],
        [1, 1, 0, 0, 0, 0],
        [0, 1, 1, 0, 1, NAN],
        [1, 1, 1, 0, 0, 1],
    ])
    # s0: 1->0 (e0->1), 1->0 (e2->3): 2 events; s1: never forgotten: 0; s2: one (e1->2);
    # s3: never learned -> E = 5; s4: 1, (unseen), 0 -> 1 event, then 0->1->0: 2 events;
    # s5: unseen, 1, 0 (event), unseen, 1: 1 event
    expected = [2, 0, 1, 5, 2, 1]
    np.testing.assert_array_equal(forgetting_events(correct), expected)
    np.testing.assert_array_equal(forgetting_events(correct, never_learned=-1)[3], -1)


def test_area_under_margin_from_logits():
    labels = np.array([0, 2])
    epochs = [np.array([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]]),
              np.array([[1.0, 1.5, 0.0], [1.0, 0.0, 4.0]]),
              np.array([[4.0, 0.0, 1.0], [2.0, 2.5, 2.0]])]
    margins = np.stack([logit_margin(z, labels) for z in epochs])
    # sample 0: 2-1=1, 1-1.5=-0.5, 4-1=3 -> mean 3.5/3; sample 1: 1-3=-2, 4-1=3, 2-2.5=-0.5 -> 0.5/3
    np.testing.assert_allclose(margins, [[1, -2], [-0.5, 3], [3, -0.5]])
    np.testing.assert_allclose(area_under_margin(margins), [3.5 / 3, 0.5 / 3])
    # unseen epochs are skipped
    margins[1, 0] = NAN
    np.testing.assert_allclose(area_under_margin(margins)[0], 2.0)


def test_probability_scores_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5], [1.0, 0.0, 0.0]])
    y = np.array([0, 1, 2])
    np.testing.assert_allclose(el2n(p, y), [math.sqrt(0.09 + 0.04 + 0.01), math.sqrt(0.0625 + 0.5625 + 0.25),
                                            math.sqrt(1 + 1)])
    np.testing.assert_allclose(entropy(p), [-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)),
                                            -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)), 0.0])
    np.testing.assert_allclose(prob_margin(p), [0.5, 0.25, 1.0])
    np.testing.assert_allclose(least_confidence(p), [0.3, 0.5, 0.0])
    with pytest.raises(ValueError, match="sum to 1"):
        entropy(np.array([[2.0, 1.0]]))
    with pytest.raises(ValueError, match="outside"):
        el2n(p, np.array([0, 1, 3]))


def test_early_mean_last_value_and_table():
    v = np.array([[1.0, NAN], [3.0, 2.0], [5.0, 4.0]])
    np.testing.assert_allclose(early_mean(v, 2), [2.0, 2.0])
    np.testing.assert_allclose(early_mean(v), [3.0, 3.0])
    np.testing.assert_allclose(last_value(np.array([[1.0, 2.0], [NAN, 3.0]])), [1.0, 3.0])
    with pytest.raises(ValueError, match="early_epochs"):
        early_mean(v, 0)
    table = dynamics_scores({"correct": np.array([[1.0], [0.0]]), "margin": np.array([[1.0], [-3.0]]),
                             "confidence": np.array([[0.5], [0.9]])})
    assert table["forgetting"].tolist() == [1.0] and table["aum"].tolist() == [-1.0]
    np.testing.assert_allclose(table["least_confidence"], [0.1])


def _tiny_problem(n=40, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return x, y


def _autograd_rows(model, x, y, names):
    """Per-sample gradient norms and logits by an explicit loop over samples (the independent reference)."""
    params = dict(model.named_parameters())
    norms = []
    for i in range(len(y)):
        li = torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        g = torch.autograd.grad(li, [params[n] for n in names])
        norms.append(float(torch.sqrt(sum((t ** 2).sum() for t in g))))
    return np.array(norms), model(x).detach().double().numpy()


@pytest.mark.parametrize("mode", ["last", "all"])
def test_dynamics_observer_matches_autograd_loop(mode):
    from keepset.models import MLP
    from keepset.recorder import DynamicsRecorder

    torch.manual_seed(0)
    x, y = _tiny_problem()
    model = MLP(5, 3, hidden=(7,))
    names = ["head.weight", "head.bias"] if mode == "last" else [n for n, _ in model.named_parameters()]
    obs = DynamicsObserver(DynamicsRecorder(None, DYNAMICS_FIELDS), grad_norms=mode)
    method = MeanLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    head = model.head
    rows = []
    for epoch in range(2):
        for s in range(0, 40, 16):
            xb, yb, ids = x[s:s + 16], y[s:s + 16], np.arange(s, min(40, s + 16)) + 1000
            norms, z = _autograd_rows(model, xb, yb, names)
            captured = {}
            h = head.register_forward_hook(lambda m, i, o: captured.update(h=i[0].detach()))
            loss = method.loss(model, xb, yb, ids, epoch=epoch)
            h.remove()
            obs.on_batch(method.last_batch, model, captured["h"])
            opt.zero_grad(); loss.backward(); opt.step()
            rows.append((epoch, ids, norms, z, yb.numpy()))
    got = obs.recorder.read()
    for epoch, ids, norms, z, yb in rows:
        sel = (got["epoch"] == epoch) & np.isin(got["id"], ids)
        assert np.array_equal(got["id"][sel], ids)
        np.testing.assert_allclose(got["grand"][sel], norms, rtol=1e-4, atol=1e-6)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(got["el2n"][sel], el2n(p, yb), rtol=1e-5)
        np.testing.assert_allclose(got["margin"][sel], logit_margin(z, yb), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["loss"][sel], -np.log(p[np.arange(len(yb)), yb]), rtol=1e-5)
        np.testing.assert_array_equal(got["correct"][sel], (z.argmax(1) == yb).astype(float))
        np.testing.assert_allclose(got["entropy"][sel], entropy(p), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["prob_margin"][sel], prob_margin(p), rtol=1e-5, atol=1e-7)


def test_dense_by_epoch_puts_each_record_in_its_epoch_and_column():
    from keepset.models import LinearProbe
    from keepset.recorder import dense_by_epoch

    x, y = _tiny_problem()
    ids = np.arange(40)[::-1] * 3  # ids in another order than the rows
    obs = DynamicsObserver()
    fit(LinearProbe(5, 3), x, y, ids=ids, observers=[obs], epochs=3, batch_size=16, progress=False)
    dense = dense_by_epoch(obs.recorder, ["loss", "correct"], ids)
    assert dense["loss"].shape == (3, 40) and not np.isnan(dense["loss"]).any()
    rec = obs.recorder.read()
    for k in (0, 17, 39):
        for e in range(3):
            want = rec["loss"][(rec["id"] == ids[k]) & (rec["epoch"] == e)]
            assert dense["loss"][e, k] == want[-1]


def test_dynamics_observer_validates_recorder():
    from keepset.recorder import DynamicsRecorder

    with pytest.raises(ValueError, match="fields"):
        DynamicsObserver(DynamicsRecorder(None, ("loss",)))
    with pytest.raises(ValueError, match="unknown dynamics"):
        DynamicsObserver(fields=("nope",))


def test_batch_dynamics_without_head_inputs_has_no_grand():
    out = batch_dynamics(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert "grand" not in out and out["correct"].item() == 0.0 and out["margin"].item() == -1.0


def test_rho_loss_weights_select_top_reducible_losses_by_id():
    from keepset.models import LinearProbe

    x, y = _tiny_problem()
    ids = np.arange(40) * 7 + 3
    irr = np.linspace(0, 2, len(x)).astype(np.float32)
    perm = np.random.default_rng(0).permutation(40)  # irreducible losses given in another order, with their ids
    method = RhoLoss(irr[perm], ids[perm], ratio=0.25)
    model = LinearProbe(5, 3)
    for s in range(0, 40, 16):
        pos = np.arange(s, min(40, s + 16))
        method.loss(model, x[pos], y[pos], ids[pos]).backward()
        losses = method.last_batch.losses.numpy()
        red = losses - irr[pos]
        k = max(1, round(0.25 * len(pos)))
        top = set(np.argsort(-red)[:k].tolist())
        expected = np.array([1.0 / k if i in top else 0.0 for i in range(len(pos))])
        np.testing.assert_allclose(method.last_weights.numpy(), expected)
    with pytest.raises(ValueError, match="irreducible"):
        RhoLoss(irr[:5], ids)
    with pytest.raises(ValueError, match="no irreducible"):
        RhoLoss(irr[:5], ids[:5]).loss(model, x[5:10], y[5:10], ids[5:10])


def test_irreducible_losses_are_cross_entropy():
    from keepset.models import LinearProbe

    x, y = _tiny_problem()
    m = LinearProbe(5, 3)
    z = m(x).detach()
    expected = torch.nn.functional.cross_entropy(z, y, reduction="none").numpy()
    np.testing.assert_allclose(irreducible_losses(m, x, y), expected, rtol=1e-5)


def test_grand_weights_proportional_to_autograd_norms():
    from keepset.models import MLP

    x, y = _tiny_problem()
    torch.manual_seed(1)
    model = MLP(5, 3, hidden=(4,))
    method = GrandWeight()
    for s in range(0, 40, 16):
        xb, yb = x[s:s + 16], y[s:s + 16]
        norms, _ = _autograd_rows(model, xb, yb, ["head.weight", "head.bias"])
        method.loss(model, xb, yb, np.arange(len(yb))).backward()
        np.testing.assert_allclose(method.last_weights.numpy(), norms / norms.sum(), rtol=1e-4)
