import gzip
import os
import pickle

import numpy as np
import pytest

from keepset.data import (
    SampleSet, add_label_noise, flip_permutation, load_spec, read_idx, split_indices,
)
from keepset.data.sources import load_cifar_set, load_imagefolder_set, load_npz_set


def test_symmetric_noise_flips_exactly_and_always_to_another_class():
    y = np.repeat(np.arange(10), 100)
    noisy, corrupted = add_label_noise(y, 0.4, "symmetric", 10, seed=3)
    assert corrupted.sum() == 400
    assert np.array_equal(corrupted, noisy != y)
    # uniform over the 9 other classes: every other class is reached
    for c in range(10):
        assert len(np.unique(noisy[corrupted & (y == c)])) >= 5


def test_noise_is_seeded():
    y = np.arange(1000) % 7
    a = add_label_noise(y, 0.3, "symmetric", 7, seed=1)[0]
    b = add_label_noise(y, 0.3, "symmetric", 7, seed=1)[0]
    c = add_label_noise(y, 0.3, "symmetric", 7, seed=2)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_asymmetric_noise_uses_one_fixed_other_class():
    y = np.repeat(np.arange(6), 2000)
    perm = flip_permutation(6, seed=5)
    assert np.all(perm != np.arange(6)) and sorted(perm) == list(range(6))
    noisy, corrupted = add_label_noise(y, 0.3, "asymmetric", 6, seed=5)
    assert np.array_equal(noisy[corrupted], perm[y[corrupted]])
    assert abs(corrupted.mean() - 0.3) < 0.02


def test_noise_errors():
    with pytest.raises(ValueError, match="rate"):
        add_label_noise([0, 1], 1.5)
    with pytest.raises(ValueError, match="kind"):
        add_label_noise([0, 1], 0.1, kind="pairwise")
    with pytest.raises(ValueError, match="outside"):
        add_label_noise([0, 5], 0.1, num_classes=3)


def test_split_is_stratified_disjoint_and_complete():
    y = np.repeat(np.arange(4), 50)
    parts = split_indices(y, (0.6, 0.2, 0.2), seed=0)
    allpos = np.concatenate(parts)
    assert sorted(allpos) == list(range(200))
    assert [len(p) for p in parts] == [120, 40, 40]
    assert all((y[parts[1]] == c).sum() == 10 for c in range(4))
    with pytest.raises(ValueError, match="sum to 1"):
        split_indices(y, (0.5, 0.2))


def _write_idx(path, arr, code):
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = header + arr.astype(arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_idx_roundtrip_and_spec(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 3
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs, 0x08)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, 0x08)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), imgs)
    s = load_spec(f"idx:{tmp_path}")
    assert s.get_inputs().shape == (12, 1, 28, 28)
    assert np.allclose(s.get_inputs()[3, 0], imgs[3] / 255.0)
    assert list(s.labels) == list(labels)


def test_corrupt_idx_is_reported(tmp_path):
    p = tmp_path / "x-ubyte"
    imgs = np.zeros((4, 5, 5), np.uint8)
    _write_idx(p, imgs, 0x08)
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)
    p.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="magic"):
        read_idx(p)


def test_fashion_mnist_if_installed():
    from keepset.data.sources import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.exists():
        pytest.skip("dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    s = load_spec("fashion-mnist")
    assert len(s) == 60000 and s.class_names[9] == "Ankle boot"
    assert load_spec("fashion-mnist@test").ids.min() >= 10**7


def test_cifar_batches_load_and_malicious_pickles_are_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [i % 10, 1, 2, 3]}
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j"]}))
    s = load_cifar_set(root)
    assert s.get_inputs().shape == (20, 3, 32, 32) and s.class_names[1] == "b"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(ValueError, match="data_batch_1 is not a readable CIFAR python batch: refusing"):
        load_cifar_set(root)


def test_imagefolder(tmp_path):
    from PIL import Image

    for c, color in (("cat", 0), ("dog", 255)):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((10, 10, 3), color, np.uint8)).save(tmp_path / c / f"{i}.png")
    s = load_spec(f"imagefolder:{tmp_path}")
    assert s.class_names == ["cat", "dog"] and len(s) == 6
    x = s.subset(np.array([0, 5])).get_inputs()
    assert x.shape == (2, 3, 10, 10) and x[0].max() == 0 and x[1].min() == 1.0
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_imagefolder_set(tmp_path).get_inputs()


def test_npz(tmp_path):
    p = tmp_path / "f.npz"
    np.savez(p, features=np.ones((5, 3)), labels=np.array([0, 1, 1, 0, 2]), ids=np.array([10, 11, 12, 13, 14]))
    s = load_npz_set(p)
    assert s.get_inputs().shape == (5, 3) and list(s.ids) == [10, 11, 12, 13, 14]
    np.savez(tmp_path / "bad.npz", features=np.full((2, 2), np.nan), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        load_npz_set(tmp_path / "bad.npz")
    np.savez(tmp_path / "nolabels.npz", features=np.ones((2, 2)))
    with pytest.raises(ValueError, match="labels"):
        load_npz_set(tmp_path / "nolabels.npz")


def test_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data spec"):
        load_spec("imagenet")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_spec(f"npz:{tmp_path}/missing.npz")


def test_sampleset_validation_and_subset():
    s = load_spec("digits")
    assert len(s) == 1797 and s.get_inputs().shape == (1797, 1, 8, 8)
    sub = s.subset(s.labels == 3)
    assert set(sub.labels) == {3}
    with pytest.raises(ValueError, match="duplicate"):
        SampleSet(ids=np.array([1, 1]), labels=np.array([0, 1]), class_names=["a", "b"], inputs=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="outside"):
        SampleSet(ids=np.array([1, 2]), labels=np.array([0, 2]), class_names=["a", "b"], inputs=np.zeros((2, 1)))


def test_imagefolder_with_mixed_sizes_and_modes_and_linked_folders(tmp_path):
    """Documented behaviour: every image is converted to the first image's mode and resized to its width."""
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(np.full((10, 10, 3), 200, np.uint8)).save(root / "a" / "0.png")          # RGB 10x10: sets size, mode
    Image.fromarray(np.full((6, 8), 51, np.uint8), "L").save(root / "a" / "1.png")           # grayscale 8x6
    Image.fromarray(np.full((12, 12, 4), 255, np.uint8), "RGBA").save(root / "b" / "2.png")  # RGBA 12x12
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(elsewhere / "3.png")
    os.symlink(elsewhere, root / "b" / "more")  # a linked folder (no loop) is followed
    s = load_imagefolder_set(root)
    assert list(s.ids) == ["a/0.png", "a/1.png", "b/2.png", "b/more/3.png"]
    x = s.get_inputs()
    assert x.shape == (4, 3, 10, 10)
    assert np.allclose(x[1], 51 / 255) and np.allclose(x[2], 1.0) and np.allclose(x[3], 0.0)
    # a grayscale first image makes the whole set grayscale
    Image.fromarray(np.full((5, 5), 0, np.uint8), "L").save(root / "a" / "0.png")
    assert load_imagefolder_set(root).get_inputs().shape == (4, 1, 5, 5)


def test_npz_with_string_ids_class_names_and_whole_float_labels(tmp_path):
    p = tmp_path / "f.npz"
    np.savez(p, features=np.arange(6.0).reshape(3, 2), labels=np.array([2.0, 0.0, 2.0]),
             ids=np.array(["x", "y", "z"]), class_names=np.array(["a", "b", "c"]))
    s = load_npz_set(p)
    assert list(s.ids) == ["x", "y", "z"] and list(s.labels) == [2, 0, 2] and s.class_names == ["a", "b", "c"]
    # without class_names, sparse labels up to N - 1 are accepted (classes "0".."K-1")
    np.savez(p, features=np.ones((4, 2)), labels=np.array([0, 3, 3, 0]))
    assert load_npz_set(p).class_names == ["0", "1", "2", "3"]


def test_noise_infers_num_classes_only_from_dense_labels():
    noisy, corrupted = add_label_noise(np.array([0, 1, 2, 0, 1, 2]), 0.5, seed=0)
    assert set(noisy.tolist()) <= {0, 1, 2} and corrupted.sum() == 3
    with pytest.raises(ValueError, match=r"classes \[1\] never occur"):
        add_label_noise(np.array([0, 2, 2, 0]), 0.5)
    noisy, _ = add_label_noise(np.array([0, 2, 2, 0]), 1.0, num_classes=3, seed=0)
    assert set(noisy.tolist()) <= {0, 1, 2}
