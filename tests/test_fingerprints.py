"""Content fingerprints: the embedding cache keys on the data's content, checkpoints are byte-for-byte
reproducible, manifests describe themselves."""

from __future__ import annotations

import os

import numpy as np
import pytest

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
    outs = {subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.npz")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout.strip()
            for seed in ("1", "2")}
    assert outs == {load_npz_set(tmp_path / "f.npz").fingerprint()}


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
import json, sys, torch
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
