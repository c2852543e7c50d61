"""Two hooks that both weight a batch must not silently override each other; Grad-Mimic can record
under another method's weights when that method's hook comes first."""

import copy

import numpy as np
import pytest
import torch

from keepset.models import SmallCNN
from keepset.models.mimic import mimic_scores
from keepset.training import DynamicsRecorder, GradMimicHook, fit
from keepset.training.online_baselines import GrandWeightHook, RhoLossHook


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model, reference = SmallCNN(1, 8, 3, width=4, hidden=8), SmallCNN(1, 8, 3, width=4, hidden=8)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(24, 1, 8, 8, generator=gen), torch.randint(0, 3, (24,), generator=gen)
    irreducible = np.linspace(0.0, 1.0, 24).astype(np.float32)
    return model, reference, x, y, irreducible


def _train(model, x, y, hooks, epochs=2):
    m = copy.deepcopy(model)
    fit(m, x, y, epochs=epochs, batch_size=8, lr=0.1, seed=3, hooks=hooks, progress=False)
    return m


def test_recording_under_rho_weights_leaves_the_rho_run_unchanged(setup):
    model, reference, x, y, irreducible = setup
    rho_only = _train(model, x, y, [RhoLossHook(irreducible, ratio=0.5)])
    rec = DynamicsRecorder(len(y), 2, ("mimic", "mimic_normed"))
    both = _train(model, x, y, [RhoLossHook(irreducible, ratio=0.5),
                                GradMimicHook(reference, layers="all", reweight=False, recorder=rec)])
    for (name, p), q in zip(rho_only.named_parameters(), both.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    # the first step's scores are those of the initial model on the first batch (fit draws the order from seed)
    first = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))[:8]
    expected = torch.as_tensor(mimic_scores(model, reference, x[first], y[first], layers="all", method="proj"))
    got = torch.as_tensor(rec.values["mimic"][0][first.numpy()])
    assert torch.allclose(got, expected.to(got.dtype), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("second", ["rho", "grand"])
def test_a_second_reweighting_hook_is_refused(setup, second):
    model, reference, x, y, irreducible = setup
    other = RhoLossHook(irreducible) if second == "rho" else GrandWeightHook()
    for hooks in ([GradMimicHook(reference, layers="all"), other],
                  [GradMimicHook(reference, layers="all", reweight=False), other],
                  [other, GradMimicHook(reference, layers="all")]):
        with pytest.raises(ValueError, match="both set the batch's weights"):
            _train(model, x, y, hooks, epochs=1)
