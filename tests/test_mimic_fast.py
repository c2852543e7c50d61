"""Whole-network Mimic Scores and the fused Grad-Mimic step against an explicit per-sample autograd loop.

The reference in every test is written here: a Python loop over samples calling torch.autograd.grad.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keepset.models import MLP, LinearProbe, SmallCNN
from keepset.models import layer_identities
from keepset.models.layer_identities import LayerGrads
from keepset.models.mimic import mimic_scores, resolve_layers
from keepset.models.sample_gradients import alignment_terms
import numpy as np

from keepset.recorder import DynamicsRecorder
from keepset.training import GradMimic, fit

RTOL = 1e-4


@pytest.fixture(params=["materialised", "grouped", "implicit"])
def conv_form(request, monkeypatch):
    """Run a test three ways: conv layers' per-sample gradients formed by a batched product with unfolded
    patches (the default for small patches), by a grouped convolution-backward (larger patches), and the
    implicit forms only (conv with V, unfolded Gram / chunks, weighted conv-backward)."""
    if request.param == "grouped":
        monkeypatch.setattr(layer_identities, "SMALL_PATCH", 0)
    if request.param == "implicit":
        monkeypatch.setattr(layer_identities, "MATERIALISE_ELEMENTS", 0)
    return request.param


def ce(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


def loop_terms(model, x, y, names, v):
    """<-g_i, V> and ||g_i|| by autograd, one sample at a time."""
    params = dict(model.named_parameters())
    dots, norms = [], []
    for i in range(len(x)):
        loss = ce(model(x[i:i + 1]), y[i:i + 1])[0]
        gs = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        gs = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, gs)]
        dots.append(-sum((g.double() * v[n].double()).sum() for n, g in zip(names, gs)))
        norms.append(torch.sqrt(sum((g.double() ** 2).sum() for g in gs)))
    return torch.stack(dots), torch.stack(norms)


def loop_scores(model, reference, x, y, names, method, temperature=1.0):
    ref = dict(reference.named_parameters())
    v = {n: (ref[n] - p).detach() for n, p in model.named_parameters() if n in names}
    dots, norms = loop_terms(model, x, y, names, v)
    v_norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v.values()))
    score = dots / v_norm if method.endswith("proj") else dots / (norms * v_norm)
    if method.startswith("normed"):
        score = torch.softmax(score / temperature, 0)
    return score


def close(a, b, rtol=RTOL):
    a, b = a.double(), b.double()
    scale = b.abs().max().clamp_min(1e-12)
    assert ((a - b).abs().max() / scale) < rtol, (a, b)


def small_cnn(seed):
    torch.manual_seed(seed)
    return SmallCNN(1, 12, 5, width=4, hidden=16)


def pair(kind, seed=0):
    if kind == "cnn":
        return small_cnn(seed), small_cnn(seed + 100), torch.rand(9, 1, 12, 12)
    torch.manual_seed(seed)
    if kind == "mlp":
        m, r = MLP(20, 5, hidden=(16, 12)), MLP(20, 5, hidden=(16, 12))
    else:
        m, r = LinearProbe(20, 5), LinearProbe(20, 5)
    return m, r, torch.randn(9, 20)


class OddNet(nn.Module):
    """Strided grouped conv, GroupNorm (no identity: jvp path), a conv and a Linear on sequences (Gram forms)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, stride=2, padding=1, groups=2)
        self.norm = nn.GroupNorm(2, 6)
        self.conv2 = nn.Conv2d(6, 16, 2, stride=2, dilation=1)
        self.seq = nn.Linear(16, 12)
        self.head = nn.Linear(48, 5)
        with torch.no_grad():  # GroupNorm starts at (1, 0): move it so that two nets differ there too
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = self.conv2(torch.relu(self.norm(self.conv(x))))  # [B, 16, 2, 2]
        h = self.seq(h.flatten(2).transpose(1, 2))  # [B, 4, 12]: a Linear over 4 positions
        return self.head(torch.relu(h).flatten(1))


class TwiceNet(nn.Module):
    """A Linear called twice in one forward: its identity does not apply."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


def test_resolve_layers_name_list_prefix_all():
    m = small_cnn(0)
    assert resolve_layers(m, None) == ["head.weight"]
    assert resolve_layers(m, "head.bias") == ["head.bias"]
    assert resolve_layers(m, "features.3") == ["features.3.weight", "features.3.bias"]
    assert resolve_layers(m, ["head", "features.0.weight"]) == ["head.weight", "head.bias", "features.0.weight"]
    assert resolve_layers(m, "all") == [n for n, _ in m.named_parameters()]
    m.features[0].weight.requires_grad_(False)
    assert "features.0.weight" not in resolve_layers(m, "all")
    with pytest.raises(ValueError, match="names no parameter"):
        resolve_layers(m, "features.99")


LAYER_CHOICES = [None, "head", "FIRST", ["FIRST.weight", "head.bias"], "all"]
FIRST = {"cnn": "features.0", "mlp": "features.1", "linear": "head"}


@pytest.mark.parametrize("kind", ["cnn", "mlp", "linear"])
@pytest.mark.parametrize("layers", LAYER_CHOICES, ids=str)
@pytest.mark.parametrize("method", ["proj", "cos", "normed_cos"])
def test_scores_match_autograd_loop(kind, layers, method, conv_form):
    model, reference, x = pair(kind)
    if isinstance(layers, list):
        layers = [s.replace("FIRST", FIRST[kind]) for s in layers]
    elif layers == "FIRST":
        layers = FIRST[kind]
    y = torch.arange(len(x)) % 5
    names = resolve_layers(model, layers)
    got = mimic_scores(model, reference, x, y, layers=layers, method=method, temperature=0.5)
    close(got, loop_scores(model, reference, x, y, names, method, 0.5))


@pytest.mark.parametrize("path", ["auto", "jvp", "vmap"])
def test_every_path_matches_loop_on_the_cnn(path):
    model, reference, x = pair("cnn", 3)
    y = torch.arange(len(x)) % 5
    names = resolve_layers(model, "all")
    ref = dict(reference.named_parameters())
    v = {n: (ref[n] - p).detach() for n, p in model.named_parameters()}
    dots, norms = alignment_terms(model, x, y, v, ce, True, path=path)
    want_dots, want_norms = loop_terms(model, x, y, names, v)
    close(dots, want_dots)
    close(norms, want_norms)
    dots_only, none = alignment_terms(model, x, y, v, ce, False, path=path)
    assert none is None
    close(dots_only, want_dots)


@pytest.mark.parametrize("layers", ["all", "conv", "seq", "norm", ["conv2.weight", "norm.bias", "seq.bias"]], ids=str)
def test_other_layers_strides_groups_sequences(layers, conv_form):
    torch.manual_seed(1)
    model, reference = OddNet(), OddNet()
    x, y = torch.randn(7, 2, 8, 8), torch.arange(7) % 5
    names = resolve_layers(model, layers)
    for method in ("proj", "cos"):
        close(mimic_scores(model, reference, x, y, layers=layers, method=method),
              loop_scores(model, reference, x, y, names, method))


def test_module_called_twice_falls_back_exactly():
    torch.manual_seed(2)
    model, reference = TwiceNet(), TwiceNet()
    x, y = torch.randn(6, 6), torch.arange(6) % 3
    close(mimic_scores(model, reference, x, y, layers="all", method="cos"),
          loop_scores(model, reference, x, y, resolve_layers(model, "all"), "cos"))


def test_frozen_backbone_layer_can_still_be_scored():
    model, reference, x = pair("cnn", 4)
    y = torch.arange(len(x)) % 5
    names = ["features.0.weight", "features.3.weight"]
    want = loop_scores(model, reference, x, y, names, "cos")
    for p in model.features.parameters():
        p.requires_grad_(False)
    close(mimic_scores(model, reference, x, y, layers=names, method="cos"), want)


def test_batch_coupling_layer_is_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    reference = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    with pytest.raises(ValueError, match="BatchNorm"):
        mimic_scores(model, reference, x, y, layers="all")
    model.eval()  # running statistics: samples independent again
    close(mimic_scores(model, reference, x, y, layers="all", method="cos"),
          loop_scores(model, reference, x, y, resolve_layers(model, "all"), "cos"))


def test_layer_grads_weighted_sum_and_norms_linear_and_conv(conv_form):
    torch.manual_seed(5)
    for layer, a in [(nn.Linear(5, 4), torch.randn(6, 3, 5)), (nn.Conv2d(3, 4, 3, stride=2, padding=1),
                                                                 torch.randn(6, 3, 7, 7))]:
        a = a.requires_grad_()
        z = layer(a)
        delta = torch.randn_like(z)
        lg = LayerGrads(layer, a, delta)
        assert lg.materialise == (conv_form != "implicit" and isinstance(layer, nn.Conv2d))
        w = torch.rand(6)
        per = [torch.autograd.grad((z[i] * delta[i]).sum(), [layer.weight, layer.bias], retain_graph=True)
               for i in range(6)]
        gw, gb = lg.weighted(w)
        close(gw, sum(w[i] * per[i][0] for i in range(6)))
        close(gb, sum(w[i] * per[i][1] for i in range(6)))
        close(lg.sq_norms(True, True), torch.stack([(g[0] ** 2).sum() + (g[1] ** 2).sum() for g in per]))


def _one_step(model, gm, x, y):
    """One Grad-Mimic step's gradients: {name: grad}."""
    model.zero_grad()
    gm.loss(model, x, y, np.arange(len(x))).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("layers,method,apply_to", [
    ("all", "cos", "layers"), ("features.3", "proj", "layers"), (["features.0.weight"], "proj", "layers"),
    (None, "proj", "layers"), ("all", "proj", "all"), (["head.bias", "features.0.weight"], "cos", "layers"),
], ids=str)
def test_fused_step_gradients_match_autograd(layers, method, apply_to, conv_form):
    model, reference, x = pair("cnn", 6)
    y = torch.arange(len(x)) % 5
    names = resolve_layers(model, layers)
    gm = GradMimic(reference, layers=layers, method=method, temperature=0.7, apply_to=apply_to)
    grads = _one_step(model, gm, x, y)
    assert gm.uses_fused_step
    w = torch.softmax(loop_scores(model, reference, x, y, names, method) / 0.7, 0).float()
    close(gm.last_weights, w)
    params = dict(model.named_parameters())
    losses = ce(model(x), y)
    weighted = torch.autograd.grad((w * losses).sum(), list(params.values()), retain_graph=True)
    mean = torch.autograd.grad(losses.mean(), list(params.values()))
    for (n, _), gw, gmean in zip(params.items(), weighted, mean):
        want = gw if (apply_to == "all" or n in names) else gmean
        close(grads[n], want)


def test_fused_step_without_reweighting_gives_mean_gradient_and_records():
    model, reference, x = pair("mlp", 7)
    y = torch.arange(len(x)) % 5
    rec = DynamicsRecorder(None, ("mimic", "mimic_normed", "weight"))
    gm = GradMimic(reference, layers="all", method="cos", reweight=False, record_to=rec)
    grads = _one_step(model, gm, x, y)
    assert gm.uses_fused_step
    params = dict(model.named_parameters())
    mean = torch.autograd.grad(ce(model(x), y).mean(), list(params.values()))
    for (n, _), g in zip(params.items(), mean):
        close(grads[n], g)
    close(torch.as_tensor(rec.read()["mimic"]), loop_scores(model, reference, x, y, resolve_layers(model, "all"), "cos"))


def test_fit_fused_equals_unfused_and_fallback_layers_train():
    x, y = torch.rand(40, 1, 12, 12), torch.arange(40) % 5
    trained = []
    for fused in (True, False):
        model, reference, _ = pair("cnn", 8)
        gm = GradMimic(reference, layers="all", method="cos", fused=fused)
        fit(model, x, y, method=gm, epochs=1, batch_size=16, lr=0.05, progress=False)
        trained.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(trained[0], trained[1], atol=1e-5)
    # a GroupNorm layer has no identity: Grad-Mimic falls back to jvp + vmap and a re-weighted loss
    torch.manual_seed(0)
    model, reference = OddNet(), OddNet()
    gm = GradMimic(reference, layers="all", method="cos")
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, torch.randn(12, 2, 8, 8), torch.arange(12) % 5, method=gm, epochs=1, batch_size=6, progress=False)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    x, y = torch.randn(6, 2, 8, 8), torch.arange(6) % 5
    m2 = OddNet()
    m2.load_state_dict(model.state_dict())
    gm2 = GradMimic(reference, layers="all", method="cos")
    grads = _one_step(m2, gm2, x, y)
    assert not gm2.uses_fused_step
    names = resolve_layers(m2, "all")
    w = torch.softmax(loop_scores(m2, reference, x, y, names, "cos"), 0).float()
    want = torch.autograd.grad((w * ce(m2(x), y)).sum(), [p for p in m2.parameters()])
    for (n, _), g in zip(m2.named_parameters(), want):
        close(grads[n], g)


def test_conv_with_string_padding_takes_the_generic_path():
    torch.manual_seed(3)

    def make():
        return nn.Sequential(nn.Conv2d(1, 3, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(75, 4))

    model, reference = make(), make()
    x, y = torch.randn(5, 1, 5, 5), torch.arange(5) % 4
    assert layer_identities.covered_modules(model, ["0.weight", "3.weight"]) == (
        {"3": {"weight": True, "bias": False}}, ["0.weight"])
    for method in ("proj", "cos"):
        close(mimic_scores(model, reference, x, y, layers="all", method=method),
              loop_scores(model, reference, x, y, resolve_layers(model, "all"), method))


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), ((1, 2), (2, 0), (2, 1))])
def test_unfold_patches_equals_torch_unfold(stride, padding, dilation):
    conv = nn.Conv2d(3, 2, (3, 2), stride=stride, padding=padding, dilation=dilation)
    a = torch.randn(4, 3, 9, 8)
    want = F.unfold(a, conv.kernel_size, dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    assert torch.equal(layer_identities.unfold_patches(a, conv), want)


def test_in_place_relu_after_a_linear_is_exact():
    """An in-place ReLU overwrites the Linear's output: scores and the fused step's gradients stay exact."""
    torch.manual_seed(4)

    def make():
        return nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3))

    model, reference = make(), make()
    x, y = torch.randn(6, 5), torch.arange(6) % 3
    names = resolve_layers(model, "all")
    close(mimic_scores(model, reference, x, y, layers="all", method="cos"),
          loop_scores(model, reference, x, y, names, "cos"))
    gm = GradMimic(reference, layers="all", method="cos")
    grads = _one_step(model, gm, x, y)
    assert gm.uses_fused_step
    w = torch.softmax(loop_scores(model, reference, x, y, names, "cos"), 0).float()
    close(gm.last_weights, w)
    want = torch.autograd.grad((w * ce(model(x), y)).sum(), list(model.parameters()))
    for (n, _), g in zip(model.named_parameters(), want):
        close(grads[n], g)
