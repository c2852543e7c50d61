"""keepset score-pool: a pool of pairs scored shard by shard with a pair run's probes, in this process and on Ray
(issue 15): values against hand computations, Ray equal to the single process, resume after a kill, bad inputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from keepset.bench.scale import write_probes, write_synthetic_pool
from keepset.cli.main import main

SHARDS = [230, 170, 201]
D_IMG, D_TXT = 12, 10
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install \"keepset[ray]\")")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("scorepool")
    uids = write_synthetic_pool(d / "pool", SHARDS, d_img=D_IMG, d_txt=D_TXT, seed=3)
    write_probes(d / "run", D_IMG, D_TXT, dim=8, seed=5)
    return d, uids


def _score(d: Path, out: Path, *extra: str) -> int:
    return main(["score-pool", "--data", f"datacomp:{d / 'pool'}", "--run", str(d / "run"), "--out", str(out),
                 "--quiet", *extra])


def _table(path: Path):
    return pq.read_table(path).to_pandas()


def _weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _shard_arrays(d: Path, i: int) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(d / "pool" / f"{i:08d}.npz")
    return z["b32_img"].astype(np.float64), z["b32_txt"].astype(np.float64)


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_local_scores_equal_hand_computations(pool, tmp_path):
    d, uids = pool
    out = tmp_path / "s"
    assert _score(d, out, "--scores", "clip_score,sas,mimic,sds", "--batch-size", "64") == 0
    t = _table(out / "scores.parquet")
    assert t.id.tolist() == uids.tolist()                        # every pair once, by uid, in pool order
    ref, sas_p, model = (_weights(d / "run" / f"{n}.safetensors") for n in ("reference", "sas_probe", "model"))
    img = np.concatenate([_shard_arrays(d, i)[0] for i in range(len(SHARDS))])
    txt = np.concatenate([_shard_arrays(d, i)[1] for i in range(len(SHARDS))])
    # clip_score / sas: cosine of the two projections, by numpy from the stored weights
    np.testing.assert_allclose(t.clip_score, _cos(img @ ref["image_proj.weight"].T, txt @ ref["text_proj.weight"].T),
                               atol=1e-5)
    np.testing.assert_allclose(t.sas, _cos(img @ sas_p["image_proj.weight"].T, txt @ sas_p["text_proj.weight"].T),
                               atol=1e-5)
    # mimic: per-pair autograd of CLIP's loss with the batch present, batches = each shard's rows split into
    # near-equal consecutive runs of at most 64; score = <-g_i, V> / ||V|| over both projections' weights
    v = {k: torch.tensor(ref[k] - model[k], dtype=torch.float64) for k in ("image_proj.weight", "text_proj.weight")}
    norm_v = torch.sqrt(sum((x ** 2).sum() for x in v.values()))
    expected, start = [], 0
    for i, n in enumerate(SHARDS):
        si, st = _shard_arrays(d, i)
        nb = -(-n // 64)
        for rows in np.array_split(np.arange(n), nb):
            wi = torch.tensor(model["image_proj.weight"], dtype=torch.float64, requires_grad=True)
            wt = torch.tensor(model["text_proj.weight"], dtype=torch.float64, requires_grad=True)
            zi = torch.nn.functional.normalize(torch.tensor(si[rows]) @ wi.T, dim=1)
            zt = torch.nn.functional.normalize(torch.tensor(st[rows]) @ wt.T, dim=1)
            s = zi @ zt.T / 0.07
            for j in range(len(rows)):  # pair j's loss: mean of its row's and its column's cross-entropy
                loss = (torch.logsumexp(s[j], 0) + torch.logsumexp(s[:, j], 0)) / 2 - s[j, j]
                gi, gt = torch.autograd.grad(loss, (wi, wt), retain_graph=True)
                expected.append(float(-((gi * v["image_proj.weight"]).sum() + (gt * v["text_proj.weight"]).sum())
                                      / norm_v))
        start += n
    np.testing.assert_allclose(t.mimic, expected, rtol=1e-3, atol=1e-6)
    # sds: mean distance to the 9 nearest other image embeddings of the whole pool (one class)
    x = img.astype(np.float32)
    dist = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0))
    np.fill_diagonal(dist, np.inf)
    np.testing.assert_allclose(t.sds, np.sort(dist, 1)[:, :9].mean(1), rtol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == sum(SHARDS) and summary["shards"] == 3 and summary["pairs_scored"] == sum(SHARDS)


def test_a_killed_run_resumes_at_the_missing_shard_with_identical_scores(pool, tmp_path):
    d, _ = pool
    out = tmp_path / "s"
    assert _score(d, out) == 0
    first = _table(out / "scores.parquet")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    (out / "shards" / "00000001.parquet").unlink()              # as if killed before shard 1 was written
    (out / "scores.parquet").unlink()
    assert _score(d, out) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    assert after["00000000.parquet"] == before["00000000.parquet"]  # finished shards are not recomputed
    assert after["00000002.parquet"] == before["00000002.parquet"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards_resumed"] == 2 and summary["pairs_scored"] == SHARDS[1]
    again = _table(out / "scores.parquet")
    assert again.equals(first)


def test_bad_inputs_are_refused_before_any_work(pool, tmp_path, capsys):
    d, _ = pool
    cases = [
        (["--run", str(tmp_path / "none")], "pair run folder not found"),
        (["--scores", "clip"], "--scores must name some of"),
        (["--ray-address", "auto"], "only --executor ray uses"),
        (["--knn", "ivf"], "--knn steers the sds score"),
        (["--batch-size", "1"], "--batch-size"),
    ]
    for extra, msg in cases:
        out = tmp_path / "o"
        argv = ["score-pool", "--data", f"datacomp:{d / 'pool'}", "--run", str(d / "run"), "--out", str(out), "--quiet"]
        for flag, value in zip(extra[::2], extra[1::2]):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
        assert not out.exists()
    # a run without the sas probe cannot give sas
    run = tmp_path / "run"
    write_probes(run, D_IMG, D_TXT, dim=8)
    (run / "sas_probe.safetensors").unlink()
    assert main(["score-pool", "--data", f"datacomp:{d / 'pool'}", "--run", str(run), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "sas_probe" in capsys.readouterr().err
    # probes made for other embedding sizes
    other = tmp_path / "other"
    write_probes(other, D_IMG + 1, D_TXT, dim=8)
    assert main(["score-pool", "--data", f"datacomp:{d / 'pool'}", "--run", str(other), "--out",
                 str(tmp_path / "o2"), "--quiet"]) == 2
    assert "sizes 13 / 10 but the pool's are 12 / 10" in capsys.readouterr().err
    # another configuration in a finished folder is not silently replaced
    out = tmp_path / "done"
    assert _score(d, out, "--scores", "clip_score") == 0
    capsys.readouterr()
    assert _score(d, out, "--scores", "mimic") == 2
    assert "another configuration" in capsys.readouterr().err
    assert _score(d, out, "--scores", "mimic", "--overwrite") == 0
    assert list(_table(out / "scores.parquet").columns) == ["id", "mimic"]


@needs_ray
@pytest.mark.slow
def test_ray_with_two_workers_equals_the_single_process(pool, tmp_path):
    d, uids = pool
    assert _score(d, tmp_path / "local", "--scores", "clip_score,sas,mimic,sds") == 0
    assert _score(d, tmp_path / "ray", "--scores", "clip_score,sas,mimic,sds", "--executor", "ray",
                  "--workers", "2") == 0
    a, b = _table(tmp_path / "local" / "scores.parquet"), _table(tmp_path / "ray" / "scores.parquet")
    assert b.id.tolist() == uids.tolist()
    for c in ("clip_score", "sas", "mimic", "sds"):
        np.testing.assert_allclose(b[c], a[c], atol=1e-5, err_msg=c)
    for i in range(len(SHARDS)):                                  # per shard, keyed by uid
        sa = _table(tmp_path / "local" / "shards" / f"{i:08d}.parquet")
        sb = _table(tmp_path / "ray" / "shards" / f"{i:08d}.parquet")
        assert sa.id.tolist() == sb.id.tolist()
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["workers"] == 2
