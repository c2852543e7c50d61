import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keepset.models import MLP, load_checkpoint, save_checkpoint
from keepset.training import fit


def test_same_seed_same_run():
    x, y = torch.randn(100, 10), torch.randint(0, 3, (100,))
    torch.manual_seed(0); a = MLP(10, 3)
    b = copy.deepcopy(a)
    fit(a, x, y, epochs=2, batch_size=16, seed=4, progress=False)
    fit(b, x, y, epochs=2, batch_size=16, seed=4, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


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
