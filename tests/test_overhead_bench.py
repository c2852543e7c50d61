"""Smoke test of ``keepset bench overhead`` (tiny batch; the speed figures come from the benchmark itself)."""

import json
import math

from keepset.bench import overhead


def test_overhead_bench_writes_json_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    args = ["--batch-size", "8", "--repeats", "1", "--steps", "2", "--threads", "1", "--quiet", "--json", str(out)]
    assert overhead.main(args) == 0
    table = capsys.readouterr().out
    assert "plain SGD step" in table and "vmap(grad) reference" in table
    record = json.loads(out.read_text())
    for key in ("plain_step_s", "last_layer_ratio", "all_proj_ratio", "all_cos_ratio", "vmap_reference_ratio"):
        assert math.isfinite(record[key]) and record[key] > 0, key
    assert abs(record["all_cos_ratio"] - record["all_cos_s"] / record["plain_step_s"]) < 1e-9
    assert overhead.main(args) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert overhead.main(args + ["--overwrite"]) == 0


def test_overhead_bench_rejects_bad_options(capsys):
    assert overhead.main(["--steps", "1", "--quiet"]) == 2
    assert "steps" in capsys.readouterr().err
    assert overhead.main(["--threads", "0", "--quiet"]) == 2
