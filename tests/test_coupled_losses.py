"""Losses that couple the batch (CLIP's) and the contrastive probe: every path's Mimic Score terms against a
per-pair autograd loop written here (the gradient of pair i's loss with the whole batch present)."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from keepset import losses as klosses
from keepset.losses import check_declared_coupling, clip_loss, coupled, couples_batch, per_sample_cross_entropy
from keepset.models import TwoTowerProbe, build_model, load_checkpoint, save_checkpoint
from keepset.models import sample_gradients
from keepset.models.mimic import mimic_scores, resolve_layers
from keepset.models.layer_identities import ActivationCapture
from keepset.models.sample_gradients import (
    alignment_terms, coupled_layer_terms, coupled_split, fused_step_applies, per_sample_grads,
)

RTOL = 1e-4
B = 9


def symmetric_clip(img, txt, scale):
    """CLIP's batch loss as its papers write it: (CE(S, arange) + CE(S^T, arange)) / 2."""
    s = scale * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).t()
    t = torch.arange(len(img))
    return (F.cross_entropy(s, t) + F.cross_entropy(s.t(), t)) / 2


def loop_terms(model, x, names, v, loss_fn=clip_loss):
    """<-g_i, V> and ||g_i|| with g_i = d L_i / d theta by autograd, one pair at a time, the batch present."""
    params = dict(model.named_parameters())
    losses = loss_fn(model(*x), None)
    dots, norms = [], []
    for i in range(len(losses)):
        gs = torch.autograd.grad(losses[i], [params[n] for n in names], retain_graph=True, allow_unused=True)
        gs = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, gs)]
        dots.append(-sum((g.double() * v[n].double()).sum() for n, g in zip(names, gs)))
        norms.append(torch.sqrt(sum((g.double() ** 2).sum() for g in gs)))
    return torch.stack(dots), torch.stack(norms)


def loop_scores(model, reference, x, names, method, temperature=1.0):
    ref = dict(reference.named_parameters())
    v = {n: (ref[n] - p).detach() for n, p in model.named_parameters() if n in names}
    dots, norms = loop_terms(model, x, names, v)
    v_norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v.values()))
    score = dots / v_norm if method.endswith("proj") else dots / (norms * v_norm)
    if method.startswith("normed"):
        score = torch.softmax(score / temperature, 0)
    return score


def close(a, b, rtol=RTOL):
    a, b = a.double(), b.double()
    scale = b.abs().max().clamp_min(1e-12)
    assert ((a - b).abs().max() / scale) < rtol, (a, b)


def probe_pair(seed=0, learn_scale=True, bias=True):
    """Model and reference: d_img 12 > B (Gram form), text_mlp.0 input 10 > B (Gram), text_proj input 7 < B
    (product form)."""
    torch.manual_seed(seed)
    kw = dict(text_hidden=(8, 7), learn_scale=learn_scale, bias=bias, init_scale=5.0)
    model, reference = TwoTowerProbe(12, 10, 6, **kw), TwoTowerProbe(12, 10, 6, **kw)
    if learn_scale:
        with torch.no_grad():
            reference.log_scale.add_(0.3)
    x = (torch.randn(B, 12), torch.randn(B, 10))
    return model, reference, x


@pytest.fixture(params=["factored", "cotangents", "loss_backward"])
def route(request, monkeypatch):
    """Run a test three ways: projections by the factored closed form and deeper Linear layers from the loss's
    Jacobian w.r.t. the model's outputs (default); every Linear from those output Jacobians; every Linear from
    a batched backward through the loss itself (a loss that declares no Jacobian)."""
    if request.param != "factored":
        monkeypatch.setattr(sample_gradients, "_factored_layers", lambda *a, **k: {})
    if request.param == "loss_backward":
        monkeypatch.setattr(sample_gradients, "_output_jacobians", lambda *a, **k: None)
    return request.param


def direction(model, reference, names):
    ref = dict(reference.named_parameters())
    return {n: (ref[n] - p).detach() for n, p in model.named_parameters() if n in names}


# -- the loss ------------------------------------------------------------------------------------

def test_clip_loss_mean_is_clips_symmetric_loss_and_rows_are_row_plus_column():
    torch.manual_seed(0)
    img, txt = torch.randn(7, 5), torch.randn(7, 5)
    per = clip_loss((img, txt))
    assert per.shape == (7,)
    close(per.mean(), symmetric_clip(img, txt, 1 / 0.07), 1e-6)
    # pair 3 alone: its row's and its column's cross-entropy, target 3
    s = (1 / 0.07) * F.normalize(img, dim=1) @ F.normalize(txt, dim=1).t()
    row = F.cross_entropy(s[3:4], torch.tensor([3]))
    col = F.cross_entropy(s[:, 3][None], torch.tensor([3]))
    close(per[3], (row + col) / 2, 1e-6)
    # a scale from the model (third output) or given explicitly
    close(clip_loss((img, txt, torch.tensor(2.5))).mean(), symmetric_clip(img, txt, 2.5), 1e-6)
    close(clip_loss((img, txt), logit_scale=2.5), clip_loss((img, txt, torch.tensor(2.5))), 1e-6)


def test_clip_loss_bad_outputs():
    img = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss((img, torch.randn(4, 2)))
    with pytest.raises(ValueError, match="two towers"):
        clip_loss(img)
    with pytest.raises(ValueError, match="pass one"):
        clip_loss((img, img, torch.tensor(2.0)), logit_scale=3.0)
    with pytest.raises(ValueError, match="positive"):
        clip_loss((img, img), logit_scale=-1.0)


def test_coupling_markers():
    assert couples_batch(clip_loss) and not couples_batch(per_sample_cross_entropy) and not couples_batch(None)
    assert couples_batch(functools.partial(clip_loss, logit_scale=3.0))

    def mine(out, y):
        return clip_loss(out) * 2

    assert not couples_batch(mine)
    assert coupled(mine) is mine and couples_batch(mine)


def test_unmarked_coupled_loss_is_refused_on_every_path():
    model, reference, x = probe_pair(1)
    v = direction(model, reference, ["image_proj.weight"])

    def unmarked(out, y):
        return clip_loss(out)

    for path in ("auto", "jvp", "vmap"):
        with pytest.raises(ValueError, match="keepset.losses.coupled"):
            alignment_terms(model, x, None, v, unmarked, True, path=path)
    with pytest.raises(ValueError, match="not marked"):
        mimic_scores(model, reference, x, layers="image_proj.weight", loss_fn=unmarked)
    # an unmarked independent loss passes the check
    out = model(*x)
    check_declared_coupling(lambda o, y: (o[0] ** 2).sum(1), out, None)


# -- the model -----------------------------------------------------------------------------------

def test_two_tower_probe_shapes_defaults_and_checkpoint(tmp_path):
    model, _, x = probe_pair(2)
    zi, zt, scale = model(*x)
    assert zi.shape == zt.shape == (B, 6) and abs(scale.item() - 5.0) < 1e-5
    assert resolve_layers(model, None) == ["image_proj.weight", "text_proj.weight"]
    assert "text_mlp.0.weight" in resolve_layers(model, "all") and "log_scale" in resolve_layers(model, "all")
    plain = TwoTowerProbe(4, 3, 2)
    assert len(plain(torch.randn(5, 4), torch.randn(5, 3))) == 2 and plain.image_proj.bias is None
    path = save_checkpoint(model, tmp_path / "probe.safetensors")
    loaded, _ = load_checkpoint(path)
    assert isinstance(loaded, TwoTowerProbe)
    for a, b in zip(loaded(*x), model(*x)):
        torch.testing.assert_close(a, b)
    assert isinstance(build_model(model.config), TwoTowerProbe)
    with pytest.raises(ValueError, match="positive"):
        TwoTowerProbe(0, 3, 2)


# -- exactness -----------------------------------------------------------------------------------

LAYERS = ["image_proj.weight", "text_mlp.0.weight", "text_proj", "all", None]


@pytest.mark.parametrize("layers", LAYERS, ids=str)
@pytest.mark.parametrize("method", ["proj", "cos", "normed_proj", "normed_cos"])
def test_scores_match_per_pair_loop(layers, method, route):
    model, reference, x = probe_pair(3)
    names = resolve_layers(model, layers)
    got = mimic_scores(model, reference, x, layers=layers, method=method, temperature=0.5, loss_fn=clip_loss)
    assert got.shape == (B,)
    close(got, loop_scores(model, reference, x, names, method, 0.5))


@pytest.mark.parametrize("path", ["auto", "jvp", "vmap"])
@pytest.mark.parametrize("layers", ["image_proj.weight", "text_mlp.0.weight", "all"], ids=str)
def test_every_path_matches_per_pair_loop(path, layers, route):
    model, reference, x = probe_pair(4)
    names = resolve_layers(model, layers)
    v = direction(model, reference, names)
    want_dots, want_norms = loop_terms(model, x, names, v)
    dots, norms = alignment_terms(model, x, None, v, clip_loss, True, path=path)
    close(dots, want_dots)
    close(norms, want_norms)
    dots_only, none = alignment_terms(model, x, None, v, clip_loss, False, path=path)
    assert none is None
    close(dots_only, want_dots)


def test_independent_shortcut_would_be_wrong():
    """The per-sample shortcut (one backward of sum_i L_i read as every pair's own gradient) disagrees with
    the loop here, so the exactness tests above can tell the two apart."""
    model, reference, x = probe_pair(5)
    names = ["image_proj.weight"]
    v = direction(model, reference, names)
    want, _ = loop_terms(model, x, names, v)
    zi = model.image_proj(x[0])
    delta, = torch.autograd.grad(clip_loss((zi, model.text_proj(model.text_mlp(x[1])), model.log_scale.exp())).sum(),
                                 zi)
    shortcut = -((delta @ v["image_proj.weight"]) * x[0]).sum(1)
    assert ((shortcut.double() - want).abs().max() / want.abs().max()) > 0.1


def test_factored_jacobian_equals_autograd():
    torch.manual_seed(12)
    img, txt, scale = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), torch.tensor(
        3.0, dtype=torch.float64)
    want = torch.autograd.functional.jacobian(lambda a, b, c: clip_loss((a, b, c)), (img, txt, scale))
    image, text, dscale = klosses.clip_pair_jacobians((img, txt, scale))
    torch.testing.assert_close(image.dense(), want[0])
    torch.testing.assert_close(text.dense(slice(2, 5)), want[1][2:5])
    torch.testing.assert_close(dscale, want[2])
    assert klosses.clip_pair_jacobians((torch.zeros(6, 4), txt)) is None  # a zero embedding: no smooth form


def test_projections_take_the_factored_form(monkeypatch):
    model, reference, x = probe_pair(13)
    names = resolve_layers(model, ["image_proj", "text_proj"])
    v = direction(model, reference, names)
    want_dots, want_norms = loop_terms(model, x, names, v)

    def boom(*a, **k):
        raise AssertionError("a Jacobian-row path was used")

    monkeypatch.setattr(sample_gradients, "coupled_linear_terms", boom)
    monkeypatch.setattr(sample_gradients, "_generic_terms", boom)
    dots, norms = alignment_terms(model, x, None, v, clip_loss, True)
    close(dots, want_dots)
    close(norms, want_norms)


def test_a_fixed_scale_through_functools_partial_is_used(route):
    model, reference, x = probe_pair(14, learn_scale=False)
    loss = functools.partial(clip_loss, logit_scale=2.0)
    names = resolve_layers(model, "all")
    v = direction(model, reference, names)
    want_dots, want_norms = loop_terms(model, x, names, v, loss_fn=loss)
    dots, norms = alignment_terms(model, x, None, v, loss, True)
    close(dots, want_dots)
    close(norms, want_norms)


def test_linear_layers_take_the_closed_form_not_the_generic_path(monkeypatch):
    model, reference, x = probe_pair(6, learn_scale=False)
    names = resolve_layers(model, "all")  # every parameter is an nn.Linear's
    v = direction(model, reference, names)
    want_dots, want_norms = loop_terms(model, x, names, v)

    def boom(*a, **k):
        raise AssertionError("the generic jvp/Jacobian path was used")

    monkeypatch.setattr(sample_gradients, "_generic_terms", boom)
    dots, norms = alignment_terms(model, x, None, v, clip_loss, True)
    close(dots, want_dots)
    close(norms, want_norms)


@pytest.mark.parametrize("chunk", [1, 700])
def test_chunked_jacobians_are_exact(chunk, monkeypatch, route):
    """Rows of the Jacobians in chunks of one and of a few rows give the same answer."""
    monkeypatch.setattr(sample_gradients, "CHUNK_ELEMENTS", chunk)
    model, reference, x = probe_pair(7)
    names = resolve_layers(model, "all")
    v = direction(model, reference, names)
    want_dots, want_norms = loop_terms(model, x, names, v)
    for path in ("auto", "jvp", "vmap"):
        dots, norms = alignment_terms(model, x, None, v, clip_loss, True, path=path)
        close(dots, want_dots)
        close(norms, want_norms)


def test_linear_over_positions_and_a_user_marked_loss():
    """A Linear applied at several positions per sample, under a user's own coupled loss (marked)."""

    class SeqNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Linear(4, 5)
            self.out = nn.Linear(5, 3)

        def forward(self, x):  # x [B, 6, 4]
            return self.out(torch.tanh(self.tok(x)).mean(1))

    @coupled
    def centred(out, y):  # each sample's loss depends on the batch mean
        return ((out - out.mean(0)) ** 2).sum(1) + F.cross_entropy(out, y, reduction="none")

    torch.manual_seed(8)
    model, reference = SeqNet(), SeqNet()
    x, y = torch.randn(7, 6, 4), torch.arange(7) % 3
    names = resolve_layers(model, "all")
    v = direction(model, reference, names)
    params = dict(model.named_parameters())
    losses = centred(model(x), y)
    want_d, want_n = [], []
    for i in range(7):
        gs = torch.autograd.grad(losses[i], [params[n] for n in names], retain_graph=True)
        want_d.append(-sum((g.double() * v[n].double()).sum() for n, g in zip(names, gs)))
        want_n.append(torch.sqrt(sum((g.double() ** 2).sum() for g in gs)))
    for path in ("auto", "jvp", "vmap"):
        dots, norms = alignment_terms(model, x, y, v, centred, True, path=path)
        close(dots, torch.stack(want_d))
        close(norms, torch.stack(want_n))


def test_per_sample_grads_of_a_coupled_loss_are_the_jacobian_rows():
    model, _, x = probe_pair(9)
    params = dict(model.named_parameters())
    g = per_sample_grads(model, x, None, ["text_mlp.0.weight"], clip_loss)["text_mlp.0.weight"]
    losses = clip_loss(model(*x))
    for i in (0, 4):
        want, = torch.autograd.grad(losses[i], params["text_mlp.0.weight"], retain_graph=True)
        close(g[i], want)


def test_numpy_pairs_and_cross_entropy_unchanged():
    model, reference, x = probe_pair(10)
    got = mimic_scores(model, reference, tuple(t.double().numpy() for t in x), loss_fn=clip_loss)
    close(got, mimic_scores(model, reference, x, loss_fn=clip_loss), 1e-6)
    with pytest.raises(ValueError, match="NaN or inf"):
        bad = x[1].clone()
        bad[2, 0] = float("nan")
        mimic_scores(model, reference, (x[0], bad), loss_fn=clip_loss)
    with pytest.raises(ValueError, match="batch size"):
        mimic_scores(model, reference, (x[0], x[1][:4]), loss_fn=clip_loss)
    with pytest.raises(ValueError, match="clip_loss"):
        mimic_scores(model, reference, x, np.zeros(B, dtype=np.int64))  # cross-entropy on a two-tower model


def test_fused_step_predicate():
    model, _, _ = probe_pair(11, learn_scale=False)
    assert not fused_step_applies(model, ["image_proj.weight"], clip_loss)
    assert fused_step_applies(model, ["image_proj.weight"], per_sample_cross_entropy)
    assert not fused_step_applies(probe_pair(11)[0], ["image_proj.weight", "log_scale"], None)
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    assert not fused_step_applies(bn, ["0.weight"], None)
    assert not fused_step_applies(bn.eval(), ["0.weight"], klosses.clip_loss)
    assert fused_step_applies(bn.eval(), ["0.weight"], None)


def test_coupled_bench_tiny_run(capsys):
    from keepset.bench import coupled

    assert coupled.main(["--batch", "8", "--d-img", "6", "--d-txt", "5", "--dim", "4", "--text-hidden", "3",
                         "--repeats", "1", "--f64-check"]) == 0
    out = capsys.readouterr().out
    timing, f64 = out.split("float64:")
    rows = [r for r in timing.splitlines() if r.startswith("| ") and r[2] in "ita"]
    assert len(rows) == 6  # 3 layer choices x (proj, cos)
    for r in rows:
        errs = [float(e) for e in r.rstrip(" |").split("|")[-1].split(",")]
        assert max(errs) < 1e-4, r
    rows = [r for r in f64.splitlines() if r.startswith("| ") and r[2] in "ita"]
    assert len(rows) == 3
    for r in rows:
        assert max(float(e) for e in r.strip(" |").split("|")[1:]) < 1e-4, r


@pytest.mark.parametrize("layers", [None, "all"], ids=str)
def test_training_step_recipe_reuses_the_forward_and_weights_exactly(layers, route):
    """What a training step does for a coupled loss: score from its own forward (coupled_layer_terms), then the
    loop's weighted backward of sum_i w_i L_i on the same graph, which is sum_i w_i g_i for every pair."""
    model, reference, x = probe_pair(15, learn_scale=False)
    names = resolve_layers(model, layers)
    covered, rest = coupled_split(model, names)
    assert not rest
    v = direction(model, reference, names)
    modules = dict(model.named_modules())
    capture = ActivationCapture({n: modules[n] for n in covered})
    outputs = model(*x)
    losses = clip_loss(outputs)
    calls = capture.single_calls(B)
    dots, sq = coupled_layer_terms(clip_loss, losses, outputs, None, calls, covered, v, True)
    dots_only, none = coupled_layer_terms(clip_loss, losses, outputs, None, calls, covered, v, False)
    capture.remove()
    want_dots, want_norms = loop_terms(model, x, names, v)
    close(dots, want_dots)
    close(sq.sqrt(), want_norms)
    assert none is None
    close(dots_only, want_dots)
    w = torch.softmax(dots / want_dots.abs().max().float(), 0).detach()
    params = [p for _, p in model.named_parameters()]
    got = torch.autograd.grad((w * losses).sum(), params, retain_graph=True)
    per_pair = [torch.autograd.grad(losses[i], params, retain_graph=True) for i in range(B)]
    for k, g in enumerate(got):
        close(g, sum(w[i] * per_pair[i][k] for i in range(B)))
