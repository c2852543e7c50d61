"""The same results on a GPU as on the CPU (skipped where no CUDA device is available)."""

import copy

import numpy as np
import pytest
import torch

from keepset.models import SmallCNN
from keepset.training import GradMimic

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@cuda
@pytest.mark.parametrize("layers,fused", [(None, True), ("all", True), ("all", False)])
def test_gradmimic_scores_and_gradients_match_between_cpu_and_cuda(layers, fused):
    torch.manual_seed(0)
    model, reference = SmallCNN(1, 12, 5, width=4, hidden=8), SmallCNN(1, 12, 5, width=4, hidden=8)
    x, y = torch.rand(16, 1, 12, 12), torch.arange(16) % 5
    out = {}
    for device in ("cpu", "cuda"):
        m, r = copy.deepcopy(model).to(device), copy.deepcopy(reference)
        gm = GradMimic(r, layers=layers, method="cos", fused=fused)
        gm.loss(m, x.to(device), y.to(device), np.arange(16)).backward()
        out[device] = (gm.last_scores.cpu(), {n: p.grad.cpu() for n, p in m.named_parameters()})
    torch.testing.assert_close(out["cpu"][0], out["cuda"][0], rtol=1e-4, atol=1e-5)
    for n, g in out["cpu"][1].items():
        torch.testing.assert_close(g, out["cuda"][1][n], rtol=1e-4, atol=1e-5, msg=n)


@cuda
def test_filter_workflow_on_cuda_keeps_what_the_cpu_keeps(tmp_path):
    from keepset.data import add_label_noise, load_spec
    from keepset.workflows.filter import FilterOptions, filter_samples
    import dataclasses

    s = load_spec("digits")
    trusted, rest = s.subset(np.arange(300)), s.subset(np.arange(300, len(s)))
    noisy, corrupted = add_label_noise(rest.labels, 0.3, "symmetric", 10, 0)
    rest = dataclasses.replace(rest, labels=noisy)
    keeps = {}
    for device in ("cpu", "cuda"):
        r = filter_samples(rest, trusted, options=FilterOptions(device=device, progress=False), log=lambda *_: None)
        keeps[device] = r.keep
    assert (keeps["cpu"] == keeps["cuda"]).mean() > 0.98
