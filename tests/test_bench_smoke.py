"""Tiny end-to-end runs of ``keepset bench detection`` and ``keepset bench pruning``: outputs, resume."""

import json

import numpy as np
import pytest

from keepset.bench import detection, pruning
from keepset.evaluation.store import ResultStore, cell_key

pytest.importorskip("matplotlib")


def test_detection_tiny_run_and_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path / "det"
    argv = ["--seeds", "1", "--kinds", "symmetric", "--rates", "0.4", "--ref-epochs", "15", "--head-epochs", "4",
            "--methods", "stage2", "mimic", "reference", "loss", "aum", "cleanlab", "--folds", "3",
            "--out", str(out), "--no-progress"]
    assert detection.main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    (cell,) = doc["cells"].values()
    assert cell["kind"] == "symmetric" and cell["rate"] == 0.4
    assert abs(cell["true_quality"] - 0.6) < 0.01
    for m in ("stage2", "mimic", "reference", "loss", "aum", "cleanlab"):
        r = cell["methods"][m]
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 0 <= r["auroc"] <= 1
        assert abs(r["quality_err"] - abs(r["quality_est"] - cell["true_quality"])) < 1e-9
    # a reference trained on clean trusted labels makes mislabels stand out (far above chance)
    assert cell["methods"]["mimic"]["auroc"] > 0.8 and cell["methods"]["reference"]["auroc"] > 0.8
    assert (out / "results.md").exists() and (out / "precision_recall.png").stat().st_size > 0
    assert (out / "auroc_vs_rate.png").exists()

    # resume: a finished cell is never recomputed
    def boom(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr("keepset.evaluation.proxy.proxy_run", boom)
    assert detection.main(argv) == 0
    # another configuration refuses to mix results unless --restart (one line, exit 2: the CLI's error path)
    capsys.readouterr()
    assert detection.main(argv + ["--early-epochs", "1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("keepset bench detection: error:") and "another configuration" in line


def test_pruning_tiny_run(tmp_path):
    out = tmp_path / "prune"
    argv = ["--seeds", "1", "--ratios", "0.5", "--noise", "0.4", "--methods", "random", "mimic", "stage2", "ccs",
            "kcenter", "moderate", "reference", "--epochs", "3", "--ref-epochs", "30", "--head-epochs", "3",
            "--out", str(out), "--no-progress"]
    assert pruning.main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    cells = doc["cells"]
    assert len(cells) == 1 + 1 + 6  # full, stage2 at its own ratio, 6 methods x 1 ratio
    steps = {c["steps"] for c in cells.values()}
    assert max(steps) - min(steps) <= 17  # same budget for every run (within one subset epoch)
    half = [c for c in cells.values() if c["ratio"] == 0.5]
    assert all(abs(c["kept_fraction"] - 0.5) < 0.01 for c in half)
    by = {c["method"]: c for c in half}
    # random selection is independent of which labels were corrupted (seeds are decorrelated)
    assert abs(by["random"]["kept_corrupted_fraction"] - 0.4) < 0.1
    # the Mimic Score keeps far fewer corrupted labels than random
    assert by["mimic"]["kept_corrupted_fraction"] < by["random"]["kept_corrupted_fraction"] - 0.2
    # and so do the labels the reference trusts most
    assert by["reference"]["kept_corrupted_fraction"] < by["random"]["kept_corrupted_fraction"] - 0.2
    assert (out / "accuracy_vs_ratio.png").exists() and "keep 0.5" in (out / "results.md").read_text()


def test_result_store_atomic_and_config_checked(tmp_path):
    path = tmp_path / "r.json"
    s = ResultStore(path, {"a": 1})
    s.put(cell_key(seed=0, rate=0.2), {"x": np.float64(0.5)})
    assert cell_key(rate=0.2, seed=0) == "rate=0.2|seed=0"
    assert ResultStore(path, {"a": 1}).done("rate=0.2|seed=0")
    with pytest.raises(ValueError, match="another configuration"):
        ResultStore(path, {"a": 2})
    assert not ResultStore(path, {"a": 2}, restart=True).done("rate=0.2|seed=0")
    path.write_text("{broken")
    with pytest.raises(ValueError, match="not a readable"):
        ResultStore(path, {"a": 1})
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_online_comparison_tiny_run_resumes(capsys, tmp_path):
    from keepset.bench import online

    argv = ["--seeds", "1", "--epochs", "2", "--ref-epochs", "5", "--settings", "symmetric:0.4", "--out",
            str(tmp_path), "--no-progress"]
    assert online.main(argv) == 0
    out = capsys.readouterr().out
    for m in online.METHODS:
        assert f"| {m} |" in out
    assert (tmp_path / "reference-seed0.npz").exists() and (tmp_path / "results.md").exists()
    first = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert len(first) == len(online.METHODS)
    assert all(c["accuracy"] is not None and 0 <= c["accuracy"] <= 1 for c in first.values())
    assert online.main(argv) == 0  # resumed: every cell found finished, nothing recomputed
    assert f"{len(online.METHODS)} already done" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == first


def test_stage2_scale_bench_times_every_rule_on_a_planted_log(tmp_path):
    """A tiny stage2-scale run: every rule (the calibrated default included, reading the held-out log) runs in its
    own process over the streamed log and finds the planted noise far better than chance (F1 of flagging at
    random ~0.3)."""
    import json

    from keepset.bench.stage2_scale import main

    out = tmp_path / "figures.json"
    assert main(["--samples", "4000", "--epochs", "4", "--holdout", "400", "--out", str(tmp_path / "w"),
                 "--json", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    rows = {r["binarize"]: r for r in doc["stage2"]}
    assert set(rows) == {"calibrated", "threshold", "kmeans"} and doc["records"] == 16_000
    assert all(r["n"] == 4000 for r in rows.values())
    # the planted noisy 30% score 1.5 std lower: the calibrated rule keeps about the clean 70% (a little more: it drops only what it is sure of)
    assert 0.6 < rows["calibrated"]["kept"] / 4000 < 0.85 and rows["calibrated"]["f1"] > 0.6


def test_scale_bench_scores_a_synthetic_pool_and_compares_sds_searches(tmp_path):
    """A tiny `keepset bench scale`: the pool is scored end to end by `keepset score-pool` in a child process (its
    throughput and the memory of its process tree measured), and SDS's approximate search is compared with the
    exact one (classes under 5,000 rows are searched exactly by ivf too: recall 1)."""
    import json

    from keepset.bench.scale import main

    out = tmp_path / "scale.json"
    assert main(["--sizes", "3000", "--shard-size", "1000", "--dim", "16", "--executors", "local", "--json", str(out),
                 "--quiet"]) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert row["n"] == 3000 and row["executor"] == "local" and row["pairs_per_second"] > 0
    assert row["peak_tree_mb"] >= row["peak_driver_mb"] > 50          # a Python process with torch loaded
    sds = {r["method"]: r for r in doc["sds"]}
    assert sds["exact"]["recall"] == 1.0 and sds["ivf"]["recall"] == 1.0 and sds["ivf"]["spearman_sds"] > 0.999
