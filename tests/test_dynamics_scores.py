"""Training-dynamics scores against hand computations, and the hooks against autograd loops."""

import math

import numpy as np
import pytest
import torch

from keepset.scoring.dynamics import (
    area_under_margin, dynamics_scores, early_mean, el2n, entropy, forgetting_events, last_value,
    least_confidence, logit_margin, prob_margin,
)
from keepset.training import fit
from keepset.training.dynamics_hook import DYNAMICS_FIELDS, DynamicsHook, batch_dynamics
from keepset.training.online_baselines import GrandWeightHook, RhoLossHook, irreducible_losses
from keepset.training.recorder import DynamicsRecorder

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


class _AutogradCheck:
    """Test hook: per-sample gradient norms and raw quantities by an explicit loop over samples."""

    def __init__(self, names):
        self.names, self.rows = names, []

    def on_batch(self, state):
        params = dict(state.model.named_parameters())
        norms = []
        for i in range(len(state.y)):
            g = torch.autograd.grad(state.losses[i], [params[n] for n in self.names], retain_graph=True)
            norms.append(float(torch.sqrt(sum((t ** 2).sum() for t in g))))
        z = state.logits.detach().double().numpy()
        self.rows.append((state.epoch, state.indices.numpy().copy(), np.array(norms), z, state.y.numpy().copy()))


@pytest.mark.parametrize("mode", ["last", "all"])
def test_dynamics_hook_matches_autograd_loop(mode):
    torch.manual_seed(0)
    x, y = _tiny_problem()
    model = torch.nn.Sequential()  # MLP with a .head: use keepset's MLP
    from keepset.models import MLP

    model = MLP(5, 3, hidden=(7,))
    names = ["head.weight", "head.bias"] if mode == "last" else [n for n, _ in model.named_parameters()]
    check = _AutogradCheck(names)
    rec = DynamicsRecorder(len(x), 2, DYNAMICS_FIELDS)
    fit(model, x, y, epochs=2, batch_size=16, lr=0.1, hooks=[check, DynamicsHook(rec, grad_norms=mode)],
        progress=False)
    for epoch, idx, norms, z, yb in check.rows:
        np.testing.assert_allclose(rec.values["grand"][epoch, idx], norms, rtol=1e-4, atol=1e-6)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(rec.values["el2n"][epoch, idx], el2n(p, yb), rtol=1e-5)
        np.testing.assert_allclose(rec.values["margin"][epoch, idx], logit_margin(z, yb), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rec.values["loss"][epoch, idx], -np.log(p[np.arange(len(yb)), yb]), rtol=1e-5)
        np.testing.assert_array_equal(rec.values["correct"][epoch, idx], (z.argmax(1) == yb).astype(float))
        np.testing.assert_allclose(rec.values["entropy"][epoch, idx], entropy(p), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rec.values["prob_margin"][epoch, idx], prob_margin(p), rtol=1e-5, atol=1e-7)
    assert not np.isnan(rec.values["loss"]).any()  # every sample seen every epoch


def test_dynamics_hook_validates_recorder():
    x, y = _tiny_problem()
    from keepset.models import LinearProbe

    with pytest.raises(ValueError, match="lacks fields"):
        fit(LinearProbe(5, 3), x, y, epochs=1, hooks=[DynamicsHook(DynamicsRecorder(40, 1, ("loss",)))],
            progress=False)
    with pytest.raises(ValueError, match="unknown dynamics"):
        DynamicsHook(fields=("nope",))


def test_batch_dynamics_without_head_inputs_has_no_grand():
    out = batch_dynamics(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert "grand" not in out and out["correct"].item() == 0.0 and out["margin"].item() == -1.0


class _Capture:
    def __init__(self, hook):
        self.hook, self.seen = hook, []

    def on_batch(self, state):
        self.seen.append((state.losses.detach().numpy().copy(), state.indices.numpy().copy(),
                          state.sample_weights.numpy().copy()))


def test_rho_loss_weights_select_top_reducible_losses():
    from keepset.models import LinearProbe

    x, y = _tiny_problem()
    irr = np.linspace(0, 2, len(x)).astype(np.float32)
    hook = RhoLossHook(irr, ratio=0.25)
    cap = _Capture(hook)
    fit(LinearProbe(5, 3), x, y, epochs=1, batch_size=16, hooks=[hook, cap], progress=False)
    for losses, idx, w in cap.seen:
        red = losses - irr[idx]
        k = max(1, round(0.25 * len(idx)))
        top = set(np.argsort(-red)[:k].tolist())
        expected = np.array([1.0 / k if i in top else 0.0 for i in range(len(idx))])
        np.testing.assert_allclose(w, expected)
    with pytest.raises(ValueError, match="irreducible"):
        fit(LinearProbe(5, 3), x, y, epochs=1, hooks=[RhoLossHook(irr[:5])], progress=False)


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
    check = _AutogradCheck(["head.weight", "head.bias"])
    hook = GrandWeightHook()
    cap = _Capture(hook)
    fit(model, x, y, epochs=1, batch_size=16, hooks=[check, hook, cap], progress=False)
    for (_, _, norms, _, _), (_, _, w) in zip(check.rows, cap.seen):
        np.testing.assert_allclose(w, norms / norms.sum(), rtol=1e-4)
