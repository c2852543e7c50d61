"""``mimic_scores`` refuses bad input with a one-line ValueError before any work (issue 12), and takes
numpy inputs as ``fit`` does."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keepset.models import MLP
from keepset.models.mimic import mimic_scores


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model, reference = MLP(6, 4, hidden=(5,)), MLP(6, 4, hidden=(5,))
    x, y = torch.randn(7, 6), torch.arange(7) % 4
    return model, reference, x, y


def one_line(exc_info):
    msg = str(exc_info.value)
    assert msg and "\n" not in msg, msg
    return msg


def loop_proj(model, reference, x, y):
    """proj scores of the final Linear's weight by a per-sample autograd loop (independent of keepset)."""
    v = (reference.head.weight - model.head.weight).detach()
    out = []
    for i in range(len(x)):
        g, = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), [model.head.weight])
        out.append((-(g * v).sum() / v.norm()).item())
    return torch.tensor(out)


def test_negative_label_is_refused_not_wrapped(setup):
    model, reference, x, y = setup
    y = y.clone()
    y[2] = -1
    with pytest.raises(ValueError, match=r"outside \[0, 4\)") as e:
        mimic_scores(model, reference, x, y)
    one_line(e)


def test_label_equal_to_the_class_count_is_refused(setup):
    model, reference, x, y = setup
    y = y.clone()
    y[0] = 4
    with pytest.raises(ValueError, match=r"outside \[0, 4\)") as e:
        mimic_scores(model, reference, x, y)
    assert "4 outputs" in one_line(e)


def test_fractional_float_labels_are_refused_integral_ones_accepted(setup):
    model, reference, x, y = setup
    with pytest.raises(ValueError, match="integer class indices") as e:
        mimic_scores(model, reference, x, y.float() + 0.5)
    one_line(e)
    torch.testing.assert_close(mimic_scores(model, reference, x, y.float()), mimic_scores(model, reference, x, y))


def test_column_label_tensor_is_refused(setup):
    model, reference, x, y = setup
    with pytest.raises(ValueError, match=r"1-D.*\(7, 1\)") as e:
        mimic_scores(model, reference, x, y[:, None])
    one_line(e)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method", ["proj", "normed_proj"])
def test_non_finite_inputs_are_refused_with_rows_named(setup, bad, method):
    model, reference, x, y = setup
    x = x.clone()
    x[3, 1] = bad
    x[5, 0] = bad
    with pytest.raises(ValueError, match=r"2 rows.*\[3, 5\]") as e:
        mimic_scores(model, reference, x, y, method=method)
    one_line(e)


def test_wrong_feature_size_is_a_value_error(setup):
    model, reference, x, y = setup
    with pytest.raises(ValueError, match="shape") as e:
        mimic_scores(model, reference, torch.randn(7, 9), y)
    one_line(e)


def test_empty_batch_is_refused(setup):
    model, reference, x, y = setup
    with pytest.raises(ValueError, match="empty") as e:
        mimic_scores(model, reference, x[:0], y[:0])
    one_line(e)


def test_missing_labels_for_cross_entropy_are_refused(setup):
    model, reference, x, _ = setup
    with pytest.raises(ValueError, match="labels") as e:
        mimic_scores(model, reference, x)
    one_line(e)


def test_numpy_inputs_are_accepted_like_fit(setup):
    model, reference, x, y = setup
    want = loop_proj(model, reference, x, y)
    got = mimic_scores(model, reference, x.double().numpy(), y.numpy().astype(np.int32))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mimic_scores(model, reference, x.tolist(), y.tolist()), want, rtol=1e-4, atol=1e-6)


def test_reference_of_another_architecture_is_refused_unless_allowed(setup):
    model, _, x, y = setup
    other = MLP(6, 4, hidden=(5, 5))  # head.weight [4, 5] like the model's, but one more hidden layer
    with pytest.raises(ValueError, match="allow_partial_reference") as e:
        mimic_scores(model, other, x, y)
    one_line(e)
    got = mimic_scores(model, other, x, y, allow_partial_reference=True)
    v = (other.head.weight - model.head.weight).detach()
    want = []
    for i in range(len(x)):
        g, = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), [model.head.weight])
        want.append((-(g * v).sum() / v.norm()).item())
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-4, atol=1e-6)


def test_scorer_refuses_another_architecture_unless_allowed(setup):
    from keepset.data import SampleSet
    from keepset.scoring.mimic import score_mimic

    model, _, x, y = setup
    other = MLP(6, 4, hidden=(5, 5))
    samples = SampleSet(np.arange(7), y.numpy(), list("abcd"), inputs=x.numpy())
    with pytest.raises(ValueError, match="allow_partial_reference"):
        score_mimic(samples, model=model, reference=other, progress=False)
    out = score_mimic(samples, model=model, reference=other, progress=False, allow_partial_reference=True)
    assert out["proj"].shape == (7,)
