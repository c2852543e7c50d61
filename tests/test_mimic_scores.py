"""The four Mimic Score methods against an independent per-sample autograd loop written here."""

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from keepset import mimic_scores
from keepset.models import MLP, SmallCNN


def loop_reference(model, reference, x, y, names, method, temperature=1.0):
    """Per-sample gradients with torch.autograd.grad, one sample at a time (independent of keepset)."""
    params = dict(model.named_parameters())
    ref = dict(reference.named_parameters())
    v = torch.cat([(ref[n] - params[n]).detach().reshape(-1).double() for n in names])
    out = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        g = torch.autograd.grad(loss, [params[n] for n in names])
        g = torch.cat([t.reshape(-1).double() for t in g])
        dot = (-g @ v).item()
        if method.endswith("cos"):
            out.append(dot / (g.norm().item() * v.norm().item()))
        else:
            out.append(dot / v.norm().item())
    s = torch.tensor(out, dtype=torch.float64)
    if method.startswith("normed"):
        s = torch.softmax(s / temperature, 0)
    return s


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def mlp_pair():
    torch.manual_seed(1)
    model, reference = MLP(20, 5, hidden=(16, 12)), MLP(20, 5, hidden=(16, 12))
    x, y = torch.randn(17, 20), torch.randint(0, 5, (17,))
    return model, reference, x, y


@pytest.mark.parametrize("method", ["proj", "cos", "normed_proj", "normed_cos"])
@pytest.mark.parametrize("layers,names", [
    (None, ["head.weight"]),                                    # closed form
    (["head.weight", "head.bias"], ["head.weight", "head.bias"]),  # closed form with bias
    ("features.1.weight", ["features.1.weight"]),               # a non-final layer
    ("features.3", ["features.3.weight", "features.3.bias"]),   # a module prefix
])
def test_methods_match_autograd_loop(mlp_pair, method, layers, names):
    model, reference, x, y = mlp_pair
    got = mimic_scores(model, reference, x, y, layers=layers, method=method, temperature=0.7)
    want = loop_reference(model, reference, x, y, names, method, temperature=0.7)
    assert got.shape == (17,)
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("method", ["proj", "cos"])
def test_all_layers_of_a_cnn(method):
    torch.manual_seed(2)
    model, reference = SmallCNN(1, 8, 3, width=4, hidden=8), SmallCNN(1, 8, 3, width=4, hidden=8)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 3, (6,))
    names = [n for n, _ in model.named_parameters()]
    got = mimic_scores(model, reference, x, y, layers="all", method=method)
    assert rel_err(got, loop_reference(model, reference, x, y, names, method)) < 1e-5


def test_normed_scores_sum_to_one(mlp_pair):
    model, reference, x, y = mlp_pair
    s = mimic_scores(model, reference, x, y, method="normed_proj")
    assert abs(s.sum().item() - 1.0) < 1e-5


def test_sign_follows_the_reference():
    """A sample whose gradient step moves the model towards the reference scores positive."""
    model = nn.Sequential(nn.Linear(2, 2))
    reference = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.zero_(); model[0].bias.zero_()
        reference[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]])); reference[0].bias.zero_()
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 1])  # sample 0 agrees with the reference, sample 1 contradicts it
    s = mimic_scores(model, reference, x, y)
    assert s[0] > 0 > s[1]


def test_bad_inputs(mlp_pair):
    model, reference, x, y = mlp_pair
    with pytest.raises(ValueError, match="unknown mimic method"):
        mimic_scores(model, reference, x, y, method="dot")
    with pytest.raises(ValueError, match="names no parameter"):
        mimic_scores(model, reference, x, y, layers="nope")
    with pytest.raises(ValueError, match="shape"):
        mimic_scores(model, MLP(20, 5, hidden=(16, 7)), x, y, layers="all")
    with pytest.raises(ValueError, match="zero"):
        mimic_scores(model, model, x, y)
    with pytest.raises(ValueError, match="samples"):
        mimic_scores(model, reference, x, y[:3])
    with pytest.raises(ValueError, match="temperature"):
        mimic_scores(model, reference, x, y, method="normed_cos", temperature=0)
