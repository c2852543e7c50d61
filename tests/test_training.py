import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keepset.models import MLP, load_checkpoint, save_checkpoint
from keepset.training import DynamicsRecorder, GradMimicHook, fit
from keepset.training.loop import BatchState, _backward


def test_same_seed_same_run():
    x, y = torch.randn(100, 10), torch.randint(0, 3, (100,))
    torch.manual_seed(0); a = MLP(10, 3)
    b = copy.deepcopy(a)
    fit(a, x, y, epochs=2, batch_size=16, seed=4, progress=False)
    fit(b, x, y, epochs=2, batch_size=16, seed=4, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("layers", [None, "all", "features.1"])
def test_gradmimic_step_uses_weighted_gradient_on_scored_layers_only(layers):
    torch.manual_seed(3)
    model, reference = MLP(6, 4, hidden=(5,)), MLP(6, 4, hidden=(5,))
    x, y = torch.randn(9, 6), torch.randint(0, 4, (9,))
    hook = GradMimicHook(reference, layers=layers, temperature=0.5)
    hook.on_train_start(model, 9, 1, 1)
    captured = {}
    h = model.head.register_forward_hook(lambda m, i, o: captured.update(h=i[0]))
    logits = model(x)
    h.remove()
    losses = F.cross_entropy(logits, y, reduction="none")
    state = BatchState(0, 0, torch.arange(9), x, y, logits, losses, captured["h"].detach(), model)
    hook.on_batch(state)
    w = state.sample_weights
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    params = dict(model.named_parameters())
    _backward(state, params)
    got = {n: p.grad.clone() for n, p in params.items()}
    # independent: autograd of the weighted sum for scored layers, of the mean for the others
    for n, p in params.items():
        loss_i = F.cross_entropy(model(x), y, reduction="none")
        target = (w.detach() * loss_i).sum() if n in hook.names else loss_i.mean()
        want = torch.autograd.grad(target, p)[0]
        assert torch.allclose(got[n], want, atol=1e-6), n


def test_reweight_off_records_without_changing_training():
    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    a, ref = MLP(8, 3), MLP(8, 3)
    b = copy.deepcopy(a)
    rec = DynamicsRecorder(64, 2, ("mimic", "mimic_normed"))
    fit(a, x, y, epochs=2, batch_size=16, seed=1, progress=False)
    fit(b, x, y, epochs=2, batch_size=16, seed=1, progress=False,
        hooks=[GradMimicHook(ref, reweight=False, recorder=rec)])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not np.isnan(rec.values["mimic"]).any()
    assert rec.batch_sizes.tolist() == [16] * 8


def test_recorder_memmap_survives_reopen(tmp_path):
    rec = DynamicsRecorder(5, 3, ("loss",), directory=tmp_path)
    rec.record(0, 0, [0, 2], loss=[1.0, 2.0])
    rec.record(2, 7, [2], loss=[5.0])
    rec.flush()
    back = DynamicsRecorder.open(tmp_path)
    assert back.last("loss")[[0, 2]].tolist() == [1.0, 5.0]
    assert back.mean("loss")[2] == pytest.approx(3.5)
    assert np.isnan(back.mean("loss")[1])
    with pytest.raises(FileNotFoundError, match="no recorded dynamics"):
        DynamicsRecorder.open(tmp_path / "nothing")


def test_checkpoint_roundtrip_and_corrupt_file(tmp_path):
    m = MLP(4, 2, hidden=(3,))
    save_checkpoint(m, tmp_path / "m.safetensors")
    back, _ = load_checkpoint(tmp_path / "m.safetensors")
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), back.parameters()))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")


def test_fit_rejects_bad_input():
    m = MLP(3, 2)
    with pytest.raises(ValueError, match="NaN"):
        fit(m, torch.full((4, 3), float("nan")), torch.zeros(4, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="samples"):
        fit(m, torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        fit(m, torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), optimizer="lbfgs", progress=False)
