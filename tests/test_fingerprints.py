"""Content fingerprints: the embedding cache keys on the data's content, checkpoints are byte-for-byte
reproducible, manifests describe themselves."""

from __future__ import annotations

import os

import numpy as np

from keepset.data import SampleSet
from keepset.data.sources import load_imagefolder_set, load_npz_set
from keepset.encoders import cached_image_embeddings


class _Doubler:
    """An image encoder whose output is known independently: 2 x the flattened inputs."""

    name = "doubler"
    fingerprint = "dbl"

    def __init__(self):
        self.calls = 0

    def encode_images(self, samples, positions=None):
        self.calls += 1
        return samples.get_inputs().reshape(len(samples), -1) * 2.0


def test_cache_recomputes_when_an_npz_changes_at_the_same_path(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "f.npz"
    labels = np.array([0, 1, 0, 1, 2, 2])
    old = rng.random((6, 4)).astype(np.float32)
    new = rng.random((6, 4)).astype(np.float32)
    enc = _Doubler()
    np.savez(path, features=old, labels=labels)
    assert np.allclose(cached_image_embeddings(enc, load_npz_set(path), tmp_path / "cache"), 2 * old)
    np.savez(path, features=new, labels=labels)  # same path, ids, labels and spec; other features
    got = cached_image_embeddings(enc, load_npz_set(path), tmp_path / "cache")
    assert enc.calls == 2 and np.allclose(got, 2 * new)
    # unchanged data is still served from the cache
    cached_image_embeddings(enc, load_npz_set(path), tmp_path / "cache")
    assert enc.calls == 2


def _samples(x, name="toy", **kw):
    return SampleSet(ids=np.arange(len(x)), labels=np.arange(len(x)) % 2, class_names=["a", "b"], inputs=x,
                     name=name, **kw)


def test_fingerprint_covers_inputs_labels_ids_names_and_captions():
    x = np.random.default_rng(1).random((5, 3)).astype(np.float32)
    base = _samples(x).fingerprint()
    assert _samples(x.copy()).fingerprint() == base  # content, not object identity
    y = x.copy()
    y[4, 2] += 1e-3
    assert _samples(y).fingerprint() != base
    assert _samples(x.astype(np.float64)).fingerprint() != base  # dtype is part of the content
    assert _samples(x, name="other").fingerprint() != base
    assert _samples(x).with_labels(np.array([1, 1, 0, 1, 0])).fingerprint() != base
    assert _samples(x).subset(np.arange(4)).fingerprint() != base
    assert _samples(x, captions=list("abcde")).fingerprint() != _samples(x, captions=list("abcdf")).fingerprint()
    renamed = _samples(x)
    renamed.class_names = ["a", "z"]
    assert renamed.fingerprint() != base


def test_fingerprint_is_the_same_in_another_process(tmp_path):
    import subprocess
    import sys

    x = np.random.default_rng(2).random((7, 2)).astype(np.float32)
    np.savez(tmp_path / "f.npz", features=x, labels=np.arange(7) % 3, ids=np.array([f"s{i}" for i in range(7)]))
    code = ("import sys; from keepset.data.sources import load_npz_set; "
            "print(load_npz_set(sys.argv[1]).fingerprint())")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.npz")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": str(hash("x") % 1000 + 7)}, check=True).stdout.strip()
    assert other == load_npz_set(tmp_path / "f.npz").fingerprint()


def _folder(root, values):
    from PIL import Image

    for i, v in enumerate(values):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4), v, np.uint8), "L").save(d / f"{i}.png")


def test_image_folder_fingerprint_sees_a_changed_file(tmp_path):
    _folder(tmp_path, [10, 20, 30, 40])
    first = load_imagefolder_set(tmp_path).fingerprint()
    assert load_imagefolder_set(tmp_path).fingerprint() == first
    from PIL import Image

    target = tmp_path / "a" / "3.png"
    Image.fromarray(np.full((4, 4), 41, np.uint8), "L").save(target)  # same name, same size, new pixels
    assert load_imagefolder_set(tmp_path).fingerprint() != first
    enc = _Doubler()
    samples = load_imagefolder_set(tmp_path)
    got = cached_image_embeddings(enc, samples, tmp_path / "cache")
    assert np.allclose(got[list(samples.ids).index("a/3.png")], 2 * 41 / 255)


_SAVE_TWICE = """
import sys, torch
from keepset.encoders import ClipAdapters, save_adapters
from keepset.models import MLP, save_checkpoint
out = sys.argv[1]
torch.manual_seed(0)
model = MLP(16, 3, hidden=(7,))
save_checkpoint(model, out + "/m1.safetensors", {"role": "model", "b": 1, "a": {"y": 2, "x": 1}})
save_checkpoint(model, out + "/m2.safetensors", {"a": {"x": 1, "y": 2}, "role": "model", "b": 1})
torch.manual_seed(0)
save_adapters(ClipAdapters(4, 6, 3, identity_init=False), out + "/ad.safetensors")
"""


def test_same_model_same_bytes_in_any_process(tmp_path):
    """Same tensors and metadata -> same file, whatever the metadata's insertion order, the process or its
    PYTHONHASHSEED (safetensors writes its metadata map in a random order unless keepset sorts it)."""
    import json
    import subprocess
    import sys

    files = {}
    for seed in ("1", "2"):
        out = tmp_path / seed
        out.mkdir()
        if seed == "1":  # this process
            exec(_SAVE_TWICE.replace("sys.argv[1]", repr(str(out))), {})
        else:
            subprocess.run([sys.executable, "-c", _SAVE_TWICE, str(out)], check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(hash("x") % 1000 + 7)})
        for name in ("m1", "m2", "ad"):
            files.setdefault(name, set()).add((out / f"{name}.safetensors").read_bytes())
    assert all(len(v) == 1 for v in files.values()), {k: len(v) for k, v in files.items()}
    assert files["m1"] == files["m2"]
    raw = next(iter(files["m1"]))
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header["__metadata__"]
    assert list(meta) == sorted(meta) and list(header) == sorted(header)
    assert meta["keepset_extra"] == json.dumps({"a": {"x": 1, "y": 2}, "b": 1, "role": "model"}, sort_keys=True)
    # the rewritten header still loads, with the same tensors
    from keepset.models import load_checkpoint

    (tmp_path / "m.safetensors").write_bytes(raw)
    model, extra = load_checkpoint(tmp_path / "m.safetensors")
    assert extra == {"a": {"x": 1, "y": 2}, "b": 1, "role": "model"}
    import torch

    from keepset.models import MLP

    torch.manual_seed(0)
    ref = MLP(16, 3, hidden=(7,))
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_records_versions_command_platform_and_input_output_hashes(tmp_path, monkeypatch):
    import importlib.metadata
    import json
    import platform
    import sys

    import torch

    from keepset import __version__
    from keepset.io import write_manifest

    data = tmp_path / "data.npz"
    data.write_bytes(b"some bytes")
    folder = tmp_path / "images"
    (folder / "b").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"A")
    (folder / "b" / "c.png").write_bytes(b"CC")
    out = tmp_path / "run"
    out.mkdir()
    (out / "scores.parquet").write_bytes(b"table")
    monkeypatch.setattr(sys, "argv", ["keepset", "score", "--data", f"npz:{data}"])
    path = write_manifest(out / "manifest.json", method="loss", params={"epochs": 2},
                          data={"spec": f"npz:{data}"}, models={"reference": "sha-of-weights"},
                          inputs={"data": data, "images": folder},
                          outputs={"scores": "scores.parquet", "kept": 5})
    doc = json.loads(path.read_text())
    v = doc["versions"]
    assert v["keepset"] == __version__ and v["python"] == platform.python_version()
    assert v["numpy"] == np.__version__ and v["torch"] == torch.__version__
    assert ("transformers" in v) == ("transformers" in sys.modules)
    if "transformers" in v:
        assert v["transformers"] == importlib.metadata.version("transformers")
    assert doc["command"] == ["keepset", "score", "--data", f"npz:{data}"]
    assert doc["platform"] == platform.platform()
    assert doc["inputs"]["data"] == {"path": str(data), "sha256": _sha256(data), "bytes": 10}
    # a folder: sha256 over "relative/path\0<sha256 of the file>\n" lines, sorted by path
    import hashlib

    lines = "".join(f"{rel}\0{_sha256(folder / rel)}\n" for rel in ("a.png", "b/c.png"))
    assert doc["inputs"]["images"]["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert doc["inputs"]["images"]["files"] == 2 and doc["inputs"]["images"]["bytes"] == 3
    # outputs named relative to the manifest's folder are fingerprinted; other values are kept as given
    assert doc["outputs"]["scores"] == {"path": "scores.parquet", "sha256": _sha256(out / "scores.parquet"),
                                        "bytes": 5}
    assert doc["outputs"]["kept"] == 5
    assert doc["method"] == "loss" and doc["params"] == {"epochs": 2} and doc["models"] == {"reference": "sha-of-weights"}
    assert doc["keepset_version"] == __version__  # the old keys stay


def test_model_fingerprint_sees_names_shapes_dtypes_and_values():
    import copy

    import torch

    from keepset.encoders.base import hash_state_dict
    from keepset.models import MLP, model_fingerprint

    torch.manual_seed(0)
    a = MLP(6, 3, hidden=(4,))
    fp = model_fingerprint(a)
    assert len(fp) == 16 and model_fingerprint(copy.deepcopy(a)) == fp and hash_state_dict(a) == fp
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.head.weight[0, 0] += 1e-6
    assert model_fingerprint(b) != fp
    assert model_fingerprint(copy.deepcopy(a).double()) != fp  # same values, other dtype
    torch.manual_seed(0)
    assert model_fingerprint(MLP(6, 3, hidden=(4,))) == fp  # same seed, same weights
