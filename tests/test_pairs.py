"""Pair sources: DataComp (parquet + npz), webdataset tars, Hugging Face datasets on disk.

Fixtures are written with pyarrow, np.savez, tarfile and PIL directly (the way other tools write these
formats), never with keepset's own writers.
"""

import io
import json
import os
import tarfile
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from keepset.data.pairs import (
    DataCompSource, HFSource, PairBatch, WebDatasetSource, load_pairs, uid_to_u64,
)


def _uids(n, seed):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("0123456789abcdef"), 32)) for _ in range(n)]


def _datacomp(root, shard_rows=(5, 7, 4), family="b32", dim=(6, 4), seed=0, npz=True, scores=True):
    """A DataComp-style pool; returns the uids, texts and float16 embeddings in pool order."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    uids, texts, img, txt = [], [], [], []
    for s, n in enumerate(shard_rows):
        u = _uids(n, seed * 100 + s)
        t = [f"caption {s}-{i} \u00e9" for i in range(n)]
        cols = {"uid": u, "text": t, "url": [f"http://x/{i}" for i in range(n)]}
        if scores:
            cols["clip_b32_similarity_score"] = rng.random(n).astype(np.float32)
        pq.write_table(pa.table(cols), root / f"{s:08d}.parquet")
        ie = rng.normal(size=(n, dim[0])).astype(np.float16)
        te = rng.normal(size=(n, dim[1])).astype(np.float16)
        if npz:
            np.savez(root / f"{s:08d}.npz", **{f"{family}_img": ie, f"{family}_txt": te})
        uids += u
        texts += t
        img.append(ie)
        txt.append(te)
    return uids, texts, np.concatenate(img), np.concatenate(txt)


# ---------------------------------------------------------------- DataComp

def test_datacomp_reads_every_shard_in_order(tmp_path):
    uids, texts, img, txt = _datacomp(tmp_path / "pool")
    src = load_pairs(f"datacomp:{tmp_path / 'pool'}")
    assert isinstance(src, DataCompSource) and src.shards == ["00000000", "00000001", "00000002"]
    assert len(src) == 16 and src.embeddings == "b32"
    batches = list(src.iter_shards())
    assert [b.shard for b in batches] == src.shards and [len(b) for b in batches] == [5, 7, 4]
    ids = np.concatenate([b.ids for b in batches])
    assert ids.tolist() == uids
    assert [t for b in batches for t in b.texts] == texts
    got_img = np.concatenate([b.image_emb for b in batches])
    assert got_img.dtype == np.float32 and np.array_equal(got_img, img.astype(np.float32))
    assert np.array_equal(np.concatenate([b.text_emb for b in batches]), txt.astype(np.float32))
    assert list(batches[0].columns) == ["clip_b32_similarity_score"]
    # sub-batches never span shards and keep the order
    sizes = [(b.shard, len(b)) for b in src.iter_batches(3, columns=["url"])]
    assert sizes == [("00000000", 3), ("00000000", 2), ("00000001", 3), ("00000001", 3), ("00000001", 1),
                     ("00000002", 3), ("00000002", 1)]
    assert np.concatenate([b.ids for b in src.iter_batches(3)]).tolist() == uids


@pytest.mark.parametrize("family", ["l14", "generic"])
def test_datacomp_embedding_families(tmp_path, family):
    keys = {"l14": "l14", "generic": None}
    root = tmp_path / "p"
    if family == "generic":
        uids, _, img, txt = _datacomp(root, npz=False)
        for s, (a, b) in enumerate([(0, 5), (5, 12), (12, 16)]):
            np.savez(root / f"{s:08d}.npz", image_emb=img[a:b], text_emb=txt[a:b])
    else:
        uids, _, img, txt = _datacomp(root, family=keys[family])
    auto = DataCompSource(root)
    assert auto.embeddings == family
    b = next(DataCompSource(root, embeddings=family).iter_shards())
    assert np.array_equal(b.image_emb, img[:5].astype(np.float32))
    with pytest.raises(ValueError, match="b32_img"):
        DataCompSource(root, embeddings="b32")


def test_datacomp_shard_without_npz_gives_texts_and_a_clear_error(tmp_path):
    root = tmp_path / "p"
    _datacomp(root)
    os.remove(root / "00000001.npz")
    src = DataCompSource(root)
    assert src.shards_without_embeddings == ["00000001"]
    batches = list(src.iter_shards())
    assert batches[1].image_emb is None and len(batches[1].texts) == 7
    batches[0].require("image_emb", "text_emb")
    with pytest.raises(ValueError, match="shard '00000001' has no image_emb"):
        batches[1].require("image_emb")


def _write_garbage(path, data=b"not a real file at all" * 10):
    path.write_bytes(data)


@pytest.mark.parametrize("damage,exc,match", [
    ("missing_dir", FileNotFoundError, "not found"),
    ("no_shards", ValueError, "no \\*.parquet shards"),
    ("corrupt_parquet", ValueError, "00000001.parquet is not a readable parquet"),
    ("corrupt_npz", ValueError, "00000002.npz is not a readable .npz"),
    ("no_uid", ValueError, "no \\['uid'\\] column"),
    ("rows", ValueError, "has 3 rows but 00000000.parquet has 5"),
    ("duplicate", ValueError, "2 duplicate uids"),
    ("non_hex", ValueError, "1 uids in shard 00000001 are not 32 hex digits"),
])
def test_datacomp_bad_inputs(tmp_path, damage, exc, match):
    root = tmp_path / "p"
    uids, _, img, txt = _datacomp(root)
    if damage == "missing_dir":
        root = tmp_path / "nowhere"
    elif damage == "no_shards":
        root = tmp_path / "empty"
        root.mkdir()
    elif damage == "corrupt_parquet":
        _write_garbage(root / "00000001.parquet")
    elif damage == "corrupt_npz":
        _write_garbage(root / "00000002.npz")
    elif damage == "no_uid":
        pq.write_table(pa.table({"text": ["a"]}), root / "00000001.parquet")
    elif damage == "rows":
        np.savez(root / "00000000.npz", b32_img=img[:3], b32_txt=txt[:3])
    elif damage == "duplicate":  # two uids of shard 0 reused in shard 2
        t = pq.read_table(root / "00000002.parquet").to_pydict()
        t["uid"][0], t["uid"][3] = uids[1], uids[4].upper()
        pq.write_table(pa.table(t), root / "00000002.parquet")
    elif damage == "non_hex":
        t = pq.read_table(root / "00000001.parquet").to_pydict()
        t["uid"][2] = "z" * 32
        pq.write_table(pa.table(t), root / "00000001.parquet")
    with pytest.raises(exc, match=match) as err:
        DataCompSource(root)
    assert "\n" not in str(err.value)


def test_datacomp_nan_embeddings_and_missing_column_fail_at_read(tmp_path):
    root = tmp_path / "p"
    _, _, img, txt = _datacomp(root)
    img = img[5:12].copy()
    img[2, 1] = np.nan
    np.savez(root / "00000001.npz", b32_img=img, b32_txt=txt[5:12])
    src = DataCompSource(root)
    with pytest.raises(ValueError, match="shard 00000001: `b32_img` in 00000001.npz has 1 rows with NaN"):
        list(src.iter_shards())
    with pytest.raises(ValueError, match="has no column\\(s\\) \\['nope'\\]"):
        next(src.iter_shards(columns=["nope"]))


def test_uid_to_u64_agrees_with_python_ints():
    uids = _uids(50, 3) + ["FFFFFFFFFFFFFFFF0000000000000001"]
    hi, lo = uid_to_u64(np.array(uids))
    assert hi.tolist() == [int(u[:16], 16) for u in uids] and lo.tolist() == [int(u[16:], 16) for u in uids]
    with pytest.raises(ValueError, match="3 uids are not 32 hex digits"):
        uid_to_u64(np.array(["abc", "g" * 32, uids[0], "\u00e9" * 16 + "0" * 16]))


def test_fingerprint_follows_content(tmp_path):
    root = tmp_path / "p"
    _datacomp(root)
    a = DataCompSource(root).fingerprint()
    assert DataCompSource(root).fingerprint() == a
    _, _, img, txt = _datacomp(tmp_path / "q", seed=1)
    np.savez(root / "00000000.npz", b32_img=img[:5], b32_txt=txt[:5])  # same size, other bytes
    assert DataCompSource(root).fingerprint() != a


# ---------------------------------------------------------------- memory

def _peak_while_iterating(src):
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    rows = 0
    for batch in src.iter_shards():
        rows += len(batch)
        del batch
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak, rows


def test_datacomp_memory_is_bounded_by_a_shard(tmp_path):
    peaks = {}
    for shards in (3, 15):
        root = tmp_path / f"p{shards}"
        _datacomp(root, shard_rows=(400,) * shards, dim=(256, 256), scores=False)
        peaks[shards], rows = _peak_while_iterating(DataCompSource(root))
        assert rows == 400 * shards
    shard_bytes = 400 * 256 * 4 * 2  # both embeddings of one shard as float32
    assert peaks[3] > shard_bytes               # the measurement sees numpy's buffers
    assert peaks[15] < peaks[3] + shard_bytes // 4, peaks   # 5x the shards, no more memory


def test_wds_memory_is_bounded_by_a_shard(tmp_path):
    peaks = {}
    for shards in (3, 15):
        root = tmp_path / f"w{shards}"
        root.mkdir()
        for s in range(shards):
            _tar(root / f"{s:05d}.tar", [_sample(f"{s:05d}{i:04d}", seed=s * 1000 + i, size=(32, 32), mode="RGB")
                                          for i in range(60)])
        peaks[shards], rows = _peak_while_iterating(WebDatasetSource(root))
        assert rows == 60 * shards
    shard_bytes = 60 * 3 * 32 * 32 * 4
    assert peaks[3] > shard_bytes
    assert peaks[15] < peaks[3] + shard_bytes // 4, peaks


# ---------------------------------------------------------------- webdataset

def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _sample(key, seed, size=(8, 6), mode="L", json_fields=None, ext="png"):
    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else (*size, 3)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    files = {ext: _png(arr) if ext == "png" else _jpeg(arr), "txt": f"text of {key}".encode()}
    if json_fields is not None:
        files["json"] = json.dumps(json_fields).encode()
    return key, files, arr


def _jpeg(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _tar(path, samples, extra_members=()):
    with tarfile.open(path, "w") as tf:
        for key, files, _ in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        for info, data in extra_members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)


def test_wds_reads_ids_texts_and_images(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    s0 = [_sample("a/000", 0, json_fields={"uid": "u0", "score": 0.5}),
          _sample("a/001", 1, json_fields={"key": "k1", "score": 0.25}),
          _sample("a/002", 2, json_fields={"score": 1.0})]
    s1 = [_sample("b/000", 3, json_fields={"uid": "u3", "score": 2.0})]
    _tar(root / "00000.tar", s0)
    _tar(root / "00001.tar", s1)
    for spec in (f"wds:{root}", f"wds:{root}/*.tar", f"wds:{root}/{{00000..00001}}.tar"):
        src = load_pairs(spec)
        assert src.shards == ["00000", "00001"]
        batches = list(src.iter_shards(columns=["score"]))
        assert [b.ids.tolist() for b in batches] == [["u0", "k1", "a/002"], ["u3"]]
        assert batches[0].texts == ["text of a/000", "text of a/001", "text of a/002"]
        assert batches[0].images.shape == (3, 1, 8, 6) and batches[0].images.dtype == np.float32
        for b, samples in zip(batches, (s0, s1)):
            for img, (_, _, arr) in zip(b.images, samples):
                assert np.array_equal(img[0], arr.astype(np.float32) / 255)
        assert batches[0].columns["score"].tolist() == [0.5, 0.25, 1.0]
    with pytest.raises(TypeError, match="does not know its size"):
        len(src)


def test_wds_resizes_to_a_common_size_and_mode(tmp_path):
    samples = [_sample("000", 0, size=(10, 10), mode="RGB"), _sample("001", 1, size=(20, 14), mode="L", ext="jpg")]
    _tar(tmp_path / "s.tar", samples)
    b = next(WebDatasetSource(tmp_path / "s.tar").iter_shards())
    assert b.images.shape == (2, 3, 10, 10)               # the first image's size and mode
    b = next(load_pairs(f"wds:{tmp_path / 's.tar'}?size=4&mode=L").iter_shards())
    assert b.images.shape == (2, 1, 4, 4)
    assert next(WebDatasetSource(tmp_path / "s.tar", decode_images=False).iter_shards()).images is None


def _bad_tar(tmp_path, kind):
    path = tmp_path / f"{kind}.tar"
    good = [_sample("000", 0), _sample("001", 1)]
    if kind == "traversal":
        info = tarfile.TarInfo("../evil.txt")
        info.size = 3
        _tar(path, good, [(info, b"bad")])
    elif kind == "absolute":
        info = tarfile.TarInfo("/etc/evil.txt")
        info.size = 3
        _tar(path, good, [(info, b"bad")])
    elif kind == "symlink":
        info = tarfile.TarInfo("002.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        _tar(path, good, [(info, None)])
    elif kind == "no_txt":
        key, files, arr = _sample("002", 2)
        del files["txt"]
        _tar(path, good + [(key, files, arr)])
    elif kind == "no_image":
        key, files, arr = _sample("002", 2)
        del files["png"]
        _tar(path, good + [(key, files, arr)])
    elif kind == "bad_image":
        key, files, arr = _sample("002", 2)
        files["png"] = b"\x89PNG\r\n\x1a\n" + b"broken" * 20
        _tar(path, good + [(key, files, arr)])
    elif kind == "bad_json":
        key, files, arr = _sample("002", 2)
        files["json"] = b"{not json"
        _tar(path, good + [(key, files, arr)])
    elif kind == "corrupt_tar":
        path.write_bytes(b"\x00\x01garbage" * 100)
    elif kind == "duplicate":
        _tar(path, good + [_sample("002", 2, json_fields={"uid": "000"})])
    return path


@pytest.mark.parametrize("kind,match", [
    ("traversal", "'../evil.txt' has an absolute path or '..'"),
    ("absolute", "'/etc/evil.txt' has an absolute path or '..'"),
    ("symlink", "'002.png' is a link"),
    ("no_txt", "sample '002' in shard no_txt has no txt"),
    ("no_image", "sample '002' in shard no_image has no image"),
    ("bad_image", "cannot decode image 002.png in shard bad_image"),
    ("bad_json", "002.json in shard bad_json is not valid JSON"),
    ("corrupt_tar", "is not a readable tar file"),
    ("duplicate", "1 duplicate ids inside shard duplicate"),
])
def test_wds_bad_shards_one_line_errors(tmp_path, kind, match):
    src = WebDatasetSource(_bad_tar(tmp_path, kind))
    with pytest.raises(ValueError, match=match) as err:
        list(src.iter_shards())
    assert "\n" not in str(err.value)
    assert not (tmp_path.parent / "evil.txt").exists()


def test_wds_duplicates_across_shards_and_pixel_cap(tmp_path):
    _tar(tmp_path / "0.tar", [_sample("000", 0), _sample("001", 1)])
    _tar(tmp_path / "1.tar", [_sample("001", 2)])
    with pytest.raises(ValueError, match="1 ids in shard 1 .* already appeared earlier in the pool"):
        list(WebDatasetSource(tmp_path).iter_shards())
    assert sum(len(b) for b in WebDatasetSource(tmp_path, check_duplicates=False).iter_shards()) == 3
    with pytest.raises(ValueError, match="6x8 \\(width x height\\) = 48 pixels, over the limit of 40"):
        list(WebDatasetSource(tmp_path / "0.tar", max_pixels=40).iter_shards())
    with pytest.raises(FileNotFoundError, match="no webdataset shard matches"):
        WebDatasetSource(tmp_path / "*.nothing")


# ---------------------------------------------------------------- Hugging Face

def _hf_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    arrs = [rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8) for _ in range(n)]
    return arrs, [f"caption {i}" for i in range(n)], [f"id-{seed}-{i}" for i in range(n)]


def test_hf_parquet_folder(tmp_path):
    root = tmp_path / "hub" / "data"
    root.mkdir(parents=True)
    all_arrs, all_ids = [], []
    for s, n in enumerate((4, 3)):
        arrs, caps, ids = _hf_rows(n, seed=s)
        img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table({"img": pa.array([{"bytes": _png(a), "path": None} for a in arrs], type=img_type),
                          "caption": caps, "key": ids, "aesthetic": np.arange(n, dtype=np.float64)})
        pq.write_table(table, root / f"train-{s:05d}-of-00002.parquet", row_group_size=2)
        all_arrs += arrs
        all_ids += ids
    src = load_pairs(f"hf:{tmp_path / 'hub'}?image=img&text=caption&id=key")
    assert isinstance(src, HFSource) and len(src) == 7
    assert src.shards == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    batches = list(src.iter_shards(columns=["aesthetic"]))
    assert np.concatenate([b.ids for b in batches]).tolist() == all_ids
    images = np.concatenate([b.images for b in batches])
    assert images.shape == (7, 3, 5, 7)
    assert np.array_equal(images, np.stack(all_arrs).transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert [len(b) for b in src.iter_batches(3)] == [3, 1, 3]
    # no id column: positions across shards
    src = HFSource(tmp_path / "hub", image_column="img", text_column="caption")
    assert np.concatenate([b.ids for b in src.iter_batches(2)]).tolist() == list(range(7))
    with pytest.raises(ValueError, match="has no column\\(s\\) \\['image'\\]"):
        HFSource(tmp_path / "hub", text_column="caption")


def test_hf_file_references_and_bad_paths(tmp_path):
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": None, "path": "x.png"}], type=img_type), "text": ["a"]}),
                   tmp_path / "refs.parquet")
    with pytest.raises(ValueError, match="stored as a file reference"):
        list(HFSource(tmp_path / "refs.parquet").iter_shards())
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pairs(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no dataset"):
        load_pairs(f"hf:{tmp_path / 'empty'}")


def test_hf_saved_with_datasets(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the `datasets` package (extra: hf) is not installed")
    arrs, caps, ids = _hf_rows(5)
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in arrs], "text": caps, "uid": ids},
                                    features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                                                "uid": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=2)
    src = load_pairs(f"hf:{tmp_path / 'saved'}?id=uid")
    assert src.format == "arrow" and len(src.shards) == 2 and len(src) == 5
    batches = list(src.iter_shards())
    assert np.concatenate([b.ids for b in batches]).tolist() == ids
    assert [t for b in batches for t in b.texts] == caps
    assert np.array_equal(np.concatenate([b.images for b in batches]),
                          np.stack(arrs).transpose(0, 3, 1, 2).astype(np.float32) / 255)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="DatasetDict with splits \\['train'\\]"):
        load_pairs(f"hf:{tmp_path / 'dd'}")
    assert len(load_pairs(f"hf:{tmp_path / 'dd' / 'train'}")) == 5


# ---------------------------------------------------------------- specs

@pytest.mark.parametrize("spec,match", [
    ("", "empty pair spec"), ("parquet:/x", "unknown pair spec"), ("datacomp:", "unknown pair spec"),
    ("hf:/x?colour=red", "unknown option 'colour' for hf"), ("wds:/x?size=big", "size must be an integer"),
    ("datacomp:/x?embeddings", "bad options"), ("hf:/x?id=", "option 'id' in pair spec 'hf:/x\\?id=' has no value"),
])
def test_load_pairs_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match) as err:
        load_pairs(spec)
    assert "\n" not in str(err.value)


def test_load_pairs_options_and_keywords(tmp_path):
    _datacomp(tmp_path / "p", family="l14")
    assert load_pairs(f"datacomp:{tmp_path / 'p'}?embeddings=l14").embeddings == "l14"
    assert load_pairs(f"datacomp:{tmp_path / 'p'}", embeddings="l14").embeddings == "l14"
    with pytest.raises(ValueError, match="contradicts"):
        load_pairs(f"datacomp:{tmp_path / 'p'}?embeddings=l14", embeddings="b32")


def test_pair_batch_checks_lengths():
    with pytest.raises(ValueError, match="texts has 1 entries but there are 2 ids"):
        PairBatch(ids=np.array(["a", "b"]), texts=["x"])
