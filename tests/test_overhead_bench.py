"""Smoke test of ``keepset bench overhead`` (tiny batch; the speed figures come from the benchmark itself)."""

import json
import math

from keepset.bench import overhead


def test_overhead_bench_writes_json_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    args = ["--batch-size", "8", "--repeats", "1", "--steps", "2", "--threads", "1", "--quiet", "--json", str(out)]
    assert overhead.main(args) == 0
    table = capsys.readouterr().out
    assert "plain SGD step" in table and "published step (vmap(grad))" in table
    record = json.loads(out.read_text())
    for key in ("plain_step_s", "last_layer_ratio", "all_proj_ratio", "all_cos_ratio", "vmap_reference_ratio"):
        assert math.isfinite(record[key]) and record[key] > 0, key
    # one repeat: the ratio is that repeat's median step over its plain median step
    assert abs(record["all_cos_ratio"] - record["all_cos_s"] / record["plain_step_s"]) < 1e-9
    assert record["timed_steps_per_variant"] == 1
    assert overhead.main(args) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert overhead.main(args + ["--overwrite"]) == 0


def test_overhead_bench_rejects_bad_options(capsys):
    assert overhead.main(["--steps", "1", "--quiet"]) == 2
    assert "steps" in capsys.readouterr().err
    assert overhead.main(["--threads", "0", "--quiet"]) == 2


def test_reference_step_computes_the_same_gradients_as_the_fused_step():
    """The benchmark compares like with like: all three variants give the same Grad-Mimic gradients."""
    import numpy as np
    import torch

    from keepset.models import SmallCNN
    from keepset.training import GradMimic

    torch.manual_seed(0)
    model, reference = SmallCNN(1, 12, 5, width=4, hidden=8), SmallCNN(1, 12, 5, width=4, hidden=8)
    x, y = torch.rand(6, 1, 12, 12), torch.arange(6) % 5
    got = []
    methods = (GradMimic(reference, layers="all", method="proj"), overhead.VmapReference(reference),
               overhead.VmapReference(reference, vectorised=True))
    for method in methods:
        model.zero_grad()
        method.loss(model, x, y, np.arange(6)).backward()
        got.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert methods[0].uses_fused_step
    for other in got[1:]:
        for name, g in got[0].items():
            assert torch.allclose(other[name], g, rtol=1e-4, atol=1e-6), name
