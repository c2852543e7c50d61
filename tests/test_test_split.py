"""The test split is for final metrics only: changing its labels changes no estimate, threshold or keep list."""

import dataclasses
import json

import numpy as np
import pytest

from keepset.data import load_spec, split_indices


def _patched_runs(monkeypatch, module, run):
    """Run twice with the same split, the second time with the test split's labels scrambled."""
    samples = load_spec("digits")
    train, trusted, test = split_indices(samples.labels, (0.6, 0.15, 0.25), 0)
    scrambled = samples.labels.copy()
    scrambled[test] = (scrambled[test] + 1 + np.arange(len(test)) % 9) % 10  # every test label changed
    outs = []
    for labels in (samples.labels, scrambled):
        data = dataclasses.replace(samples, labels=labels)
        monkeypatch.setattr(module, "load_spec", lambda spec, data=data: data)
        monkeypatch.setattr(module, "split_indices", lambda *a, **k: [train, trusted, test])
        outs.append(run())
    return outs


def test_demo_estimates_and_keep_list_do_not_read_the_test_split(tmp_path, monkeypatch):
    import keepset.workflows.demo as demo

    def run():
        out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        demo.run_demo(demo.DemoConfig(out=str(out), progress=False), log=lambda *_: None)
        return out

    a, b = _patched_runs(monkeypatch, demo, run)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for key in ("estimated", "reference_agreement", "reference_holdout_accuracy", "reference_check"):
        assert sa["quality"][key] == sb["quality"][key], key
    assert (a / "keep.npy").read_bytes() == (b / "keep.npy").read_bytes()
    assert (a / "scores.parquet").read_bytes() == (b / "scores.parquet").read_bytes()
    assert sa["accuracy"]["reference"] != sb["accuracy"]["reference"]  # the final metrics did read it


def test_detection_bench_estimates_do_not_read_the_test_split(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import keepset.bench.detection as detection
    import keepset.evaluation.proxy as proxy

    samples = load_spec("digits")
    split = proxy.make_split(samples.labels, 0)
    scrambled = samples.labels.copy()
    scrambled[split.test] = (scrambled[split.test] + 3) % 10
    cells = []
    for k, labels in enumerate((samples.labels, scrambled)):
        data = dataclasses.replace(samples, labels=labels)
        monkeypatch.setattr("keepset.data.load_spec", lambda spec, data=data: data)
        monkeypatch.setattr(proxy, "make_split", lambda labels, seed, split=split: split)
        out = tmp_path / f"det{k}"
        assert detection.main(["--seeds", "1", "--kinds", "symmetric", "--rates", "0.4", "--ref-epochs", "10",
                               "--head-epochs", "3", "--methods", "stage2", "mimic", "reference", "loss",
                               "--out", str(out), "--no-progress", "--no-plots"]) == 0
        (cell,) = json.loads((out / "results.json").read_text())["cells"].values()
        cells.append(cell)
    for m in ("stage2", "mimic", "reference", "loss"):
        for metric in ("quality_est", "precision", "recall", "auroc"):
            assert cells[0]["methods"][m][metric] == cells[1]["methods"][m][metric], (m, metric)
    assert cells[0]["reference_accuracy"] != cells[1]["reference_accuracy"]  # test accuracy: a final metric
