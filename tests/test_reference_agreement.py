"""The reference-agreement baseline: label loss against torch, disagreement flags, and the quality
estimate against simulated labels whose clean fraction is known."""

import numpy as np
import pytest
import torch

from keepset.scoring.reference_agreement import quality_from_agreement, reference_disagrees, reference_label_loss


def test_label_loss_equals_torch_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=30.0, size=(50, 7))  # large logits: the log-sum-exp must be stable
    labels = rng.integers(0, 7, 50)
    want = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels), reduction="none").numpy()
    np.testing.assert_allclose(reference_label_loss(logits, labels), want, rtol=1e-10, atol=1e-10)


def test_disagreement_flags_the_labels_the_reference_does_not_predict():
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 5.0]])
    np.testing.assert_array_equal(reference_disagrees(logits, [0, 2, 2]), [False, True, False])


def _simulate(n, k, clean_fraction, ref_accuracy, rng):
    """Labels with an exact clean fraction (wrong ones uniform over the other classes) and a reference that
    is right with probability ref_accuracy (wrong predictions uniform over the other classes)."""
    truth = rng.integers(0, k, n)
    other = lambda y: (y + rng.integers(1, k, len(y))) % k  # noqa: E731 - a uniform other class
    labels = truth.copy()
    flip = rng.permutation(n)[: int(round((1 - clean_fraction) * n))]
    labels[flip] = other(truth[flip])
    pred = np.where(rng.random(n) < ref_accuracy, truth, other(truth))
    return labels, pred


@pytest.mark.parametrize("clean_fraction", [1.0, 0.8, 0.4])
@pytest.mark.parametrize("ref_accuracy", [0.95, 0.7])
def test_quality_estimate_recovers_the_clean_fraction(clean_fraction, ref_accuracy):
    rng = np.random.default_rng(1)
    labels, pred = _simulate(200_000, 10, clean_fraction, ref_accuracy, rng)
    agreement = float(np.mean(pred == labels))
    q = quality_from_agreement(agreement, ref_accuracy, 10)
    assert q == pytest.approx(clean_fraction, abs=0.01)
    # the raw agreement rate alone is off by roughly (1 - a) * q: the correction is what makes it usable
    if ref_accuracy == 0.7 and clean_fraction == 1.0:
        assert abs(agreement - clean_fraction) > 0.25


def test_quality_estimate_is_clipped_to_a_fraction():
    assert quality_from_agreement(1.0, 0.9, 10) == 1.0
    assert quality_from_agreement(0.0, 0.9, 10) == 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(agreement=1.2, reference_accuracy=0.9, num_classes=10), "agreement"),
    (dict(agreement=float("nan"), reference_accuracy=0.9, num_classes=10), "agreement"),
    (dict(agreement=0.5, reference_accuracy=0.1, num_classes=10), "chance"),
    (dict(agreement=0.5, reference_accuracy=0.9, num_classes=1), "num_classes"),
])
def test_quality_estimate_rejects_impossible_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quality_from_agreement(**kwargs)


def test_bad_logits_are_refused_with_the_problem_named():
    with pytest.raises(ValueError, match="2-D"):
        reference_label_loss(np.zeros(5), [0] * 5)
    with pytest.raises(ValueError, match="one label per row"):
        reference_label_loss(np.zeros((5, 3)), [0] * 4)
    with pytest.raises(ValueError, match="outside"):
        reference_disagrees(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="non-finite"):
        reference_label_loss(np.array([[0.0, np.nan]]), [0])


def test_benchmark_reference_logits_equal_the_whole_network_on_the_inputs():
    from keepset.evaluation.proxy import Reference
    from keepset.models import model_for_inputs
    from keepset.training import embed, predict_logits

    torch.manual_seed(0)
    net = model_for_inputs("mlp", (8, 8), 10)
    x = np.random.default_rng(0).normal(size=(20, 8, 8)).astype(np.float32)
    ref = Reference(net, 0.9, embed(net, x), embed(net, x[:2]), 0.9)
    np.testing.assert_allclose(ref.train_logits(), predict_logits(net, x).numpy(), rtol=1e-5, atol=1e-5)
