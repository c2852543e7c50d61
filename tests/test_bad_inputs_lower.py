"""Bad inputs through the lower layers' Python API (data, encoders' cache, models' checkpoints, io,
evaluation metrics, selection): every one must raise ValueError or FileNotFoundError with a one-line
message that names the offending thing, before any work is done, and leave the files around it as they
were (no file changed, none created, no temporary file left behind).

Each case is a function ``tmp_path -> call``: it builds the bad input under ``tmp_path`` and returns the
zero-argument call under test; the test snapshots every file under ``tmp_path`` before the call and
compares after it. The CLI half of the matrix lives with the CLI tests.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from keepset.data import add_label_noise, load_spec, read_idx, split_indices
from keepset.data.sources import load_cifar_set, load_idx_set, load_imagefolder_set, load_npz_set

CASES: list = []


def case(needle: str):
    """Register ``fn(tmp_path) -> call`` whose error message must contain ``needle`` (case-insensitive)."""
    def register(fn):
        CASES.append(pytest.param(fn, needle, id=fn.__name__.removeprefix("bad_")))
        return fn
    return register


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("build, needle", CASES)
def test_bad_input_gets_a_one_line_error_and_changes_no_file(tmp_path, build, needle):
    call = build(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert needle.lower() in msg.lower(), f"{needle!r} not in {msg!r}"
    assert len(msg) < 400, msg
    assert _snapshot(tmp_path) == before


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 30


# ---------------------------------------------------------------- CIFAR python batches

def _cifar(root: Path, batch: dict | bytes, meta: dict | bytes | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    raw = batch if isinstance(batch, bytes) else pickle.dumps(batch, protocol=2)
    (root / "data_batch_1").write_bytes(raw)
    if meta is not None:
        (root / "batches.meta").write_bytes(meta if isinstance(meta, bytes) else pickle.dumps(meta, protocol=2))
    return root


def _good_batch(n=4):
    return {b"data": np.zeros((n, 3072), np.uint8), b"labels": list(range(n))}


@case("data_batch_1")
def bad_cifar_truncated(tmp_path):
    root = _cifar(tmp_path / "c", pickle.dumps(_good_batch(), protocol=2)[:60])
    return lambda: load_cifar_set(root)


@case("data_batch_1")
def bad_cifar_malicious(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    root = _cifar(tmp_path / "c", {b"data": Evil()})
    return lambda: load_cifar_set(root)


@case("`data`")
def bad_cifar_without_data(tmp_path):
    root = _cifar(tmp_path / "c", {b"labels": [0, 1]})
    return lambda: load_cifar_set(root)


@case("`labels`")
def bad_cifar_wrong_label_key(tmp_path):
    root = _cifar(tmp_path / "c", {b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]})
    return lambda: load_cifar_set(root)


@case("3072")
def bad_cifar_data_not_a_multiple_of_3072(tmp_path):
    root = _cifar(tmp_path / "c", {b"data": np.zeros((4, 3000), np.uint8), b"labels": [0, 1, 2, 3]})
    return lambda: load_cifar_set(root)


@case("3 labels")
def bad_cifar_labels_and_data_disagree(tmp_path):
    root = _cifar(tmp_path / "c", {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2]})
    return lambda: load_cifar_set(root)


@case("batches.meta")
def bad_cifar_meta_broken(tmp_path):
    root = _cifar(tmp_path / "c", _good_batch(), meta=b"\x80\x02}q\x00(X")
    return lambda: load_cifar_set(root)


@case("label_names")
def bad_cifar_meta_without_names(tmp_path):
    root = _cifar(tmp_path / "c", _good_batch(), meta={b"num_cases_per_batch": 4})
    return lambda: load_cifar_set(root)


@case("no samples")
def bad_cifar_empty(tmp_path):
    root = _cifar(tmp_path / "c", {b"data": np.zeros((0, 3072), np.uint8), b"labels": []})
    return lambda: load_cifar_set(root)


# ---------------------------------------------------------------- image folders

def _png(path: Path, size=(6, 6), mode="RGB", value=0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)


@case("0.png")
def bad_image_folder_corrupt_first_image(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "0.png").write_bytes(b"not a png")
    _png(root / "a" / "1.png")
    return lambda: load_imagefolder_set(root)


@case("2.png")
def bad_image_folder_corrupt_later_image(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "a" / "0.png")
    _png(root / "b" / "1.png")
    (root / "b" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return lambda: load_imagefolder_set(root).get_inputs()


@case("loop.png is a broken symbolic link")
def bad_image_folder_symlink_loop(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "a" / "0.png")
    os.symlink(root / "a" / "loop.png", root / "a" / "loop.png")
    return lambda: load_imagefolder_set(root).get_inputs()


@case("symbolic-link loop")
def bad_image_folder_folder_links_to_its_parent(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "a" / "0.png")
    os.symlink(root, root / "a" / "up")
    return lambda: load_imagefolder_set(root)


@case("cannot list")
def bad_image_folder_unreadable_class_folder(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "a" / "0.png")
    _png(root / "b" / "1.png")
    real_scandir = os.scandir

    def call():
        # root can read any folder, so an unreadable one is simulated at the system call
        def scandir(path="."):
            if Path(path) == root / "b":
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)
        os.scandir = scandir
        try:
            load_imagefolder_set(root)
        finally:
            os.scandir = real_scandir
    return call


@case("is a file")
def bad_image_folder_is_a_file(tmp_path):
    (tmp_path / "f.png").write_bytes(b"x")
    return lambda: load_imagefolder_set(tmp_path / "f.png")


# ---------------------------------------------------------------- npz feature arrays

def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@case("1000000000")
def bad_npz_huge_label(tmp_path):
    p = _npz(tmp_path / "f.npz", features=np.ones((5, 2)), labels=np.array([0, 1, 2, 3, 10**9]))
    return lambda: load_npz_set(p)


@case("class_names has 3 entries")
def bad_npz_label_beyond_class_names(tmp_path):
    p = _npz(tmp_path / "f.npz", features=np.ones((4, 2)), labels=np.array([0, 1, 2, 7]),
             class_names=np.array(["a", "b", "c"]))
    return lambda: load_npz_set(p)


@case("not an .npz")
def bad_npz_text_file(tmp_path):
    p = tmp_path / "f.npz"
    p.write_text("id,label\n1,0\n")
    return lambda: load_npz_set(p)


@case(".npy")
def bad_npz_is_an_npy(tmp_path):
    p = tmp_path / "f.npz"
    with open(p, "wb") as fh:
        np.save(fh, np.ones(3))
    return lambda: load_npz_set(p)


@case("5 rows")
def bad_npz_features_labels_length(tmp_path):
    p = _npz(tmp_path / "f.npz", features=np.ones((5, 2)), labels=np.array([0, 1, 0]))
    return lambda: load_npz_set(p)


@case("no samples")
def bad_npz_empty(tmp_path):
    p = _npz(tmp_path / "f.npz", features=np.ones((0, 2)), labels=np.zeros(0, np.int64))
    return lambda: load_npz_set(p)


@case("2 duplicate")
def bad_npz_duplicate_ids(tmp_path):
    p = _npz(tmp_path / "f.npz", features=np.ones((5, 2)), labels=np.array([0, 1, 0, 1, 0]),
             ids=np.array([7, 7, 8, 9, 9]))
    return lambda: load_npz_set(p)


@case("`ids`")
def bad_npz_object_ids(tmp_path):
    p = _npz(tmp_path / "f.npz", features=np.ones((3, 2)), labels=np.array([0, 1, 0]),
             ids=np.array([1, "a", None], dtype=object))
    return lambda: load_npz_set(p)


@case("hold 1 NaN")
def bad_npz_nan_label(tmp_path):
    p = _npz(tmp_path / "f.npz", features=np.ones((3, 2)), labels=np.array([0.0, np.nan, 1.0]))
    return lambda: load_npz_set(p)


@case("-5")
def bad_npz_negative_label(tmp_path):
    p = _npz(tmp_path / "f.npz", features=np.ones((3, 2)), labels=np.array([0, -5, 1]))
    return lambda: load_npz_set(p)


@case("0.5")
def bad_npz_fractional_label(tmp_path):
    p = _npz(tmp_path / "f.npz", features=np.ones((3, 2)), labels=np.array([0, 0.5, 1]))
    return lambda: load_npz_set(p)


@case("`features`")
def bad_npz_string_features(tmp_path):
    p = _npz(tmp_path / "f.npz", features=np.array([["a", "b"], ["c", "d"]]), labels=np.array([0, 1]))
    return lambda: load_npz_set(p)


@case("f.npz")
def bad_npz_is_a_folder(tmp_path):
    (tmp_path / "f.npz").mkdir()
    return lambda: load_npz_set(tmp_path / "f.npz")


# ---------------------------------------------------------------- IDX

def _idx_header(code: int, shape) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(int(s).to_bytes(4, "big") for s in shape)


@case("too large")
def bad_idx_absurd_header(tmp_path):
    p = tmp_path / "x-ubyte"
    p.write_bytes(_idx_header(0x08, (2**31, 2**31, 2**31)) + b"\0" * 10)
    return lambda: read_idx(p)


@case("too large")
def bad_idx_absurd_header_gzipped(tmp_path):
    p = tmp_path / "x-ubyte.gz"
    p.write_bytes(gzip.compress(_idx_header(0x08, (2**31, 2**31, 2**31)) + b"\0" * 10))
    return lambda: read_idx(p)


def _idx_pair(root: Path, images: np.ndarray, labels: np.ndarray, label_code: int = 0x08) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train-images-idx3-ubyte").write_bytes(_idx_header(0x08, images.shape) + images.tobytes())
    (root / "train-labels-idx1-ubyte").write_bytes(_idx_header(label_code, labels.shape) +
                                                   labels.astype(labels.dtype.newbyteorder(">")).tobytes())
    return root


@case("5 labels")
def bad_idx_count_mismatch(tmp_path):
    root = _idx_pair(tmp_path / "d", np.zeros((4, 3, 3), np.uint8), np.arange(5, dtype=np.uint8))
    return lambda: load_idx_set(root)


@case("3-D")
def bad_idx_images_wrong_ndim(tmp_path):
    root = _idx_pair(tmp_path / "d", np.zeros((4, 9), np.uint8), np.arange(4, dtype=np.uint8))
    return lambda: load_idx_set(root)


@case("no samples")
def bad_idx_empty(tmp_path):
    root = _idx_pair(tmp_path / "d", np.zeros((0, 3, 3), np.uint8), np.zeros(0, np.uint8))
    return lambda: load_idx_set(root)


@case("2000000000")
def bad_idx_huge_int32_label(tmp_path):
    root = _idx_pair(tmp_path / "d", np.zeros((3, 3, 3), np.uint8), np.array([0, 1, 2_000_000_000], np.int32),
                     label_code=0x0C)
    return lambda: load_idx_set(root)


# ---------------------------------------------------------------- label noise and splits

@case("num_classes")
def bad_noise_infers_a_billion_classes(tmp_path):
    return lambda: add_label_noise(np.array([0, 1, 2, 10**9]), 0.5, "asymmetric")


@case("nan")
def bad_noise_rate_nan(tmp_path):
    return lambda: add_label_noise(np.array([0, 1, 2]), float("nan"))


@case("noise rate must be a number in [0, 1], got 'abc'")
def bad_noise_rate_not_a_number(tmp_path):
    return lambda: add_label_noise(np.array([0, 1, 2]), "abc")


@case("[5]")
def bad_noise_num_classes_below_max_label(tmp_path):
    return lambda: add_label_noise(np.array([0, 1, 5]), 0.5, num_classes=3)


@case("labels is empty")
def bad_noise_empty(tmp_path):
    return lambda: add_label_noise(np.zeros(0, np.int64), 0.5, num_classes=3)


@case("labels is empty")
def bad_split_empty(tmp_path):
    return lambda: split_indices(np.zeros(0, np.int64))


@case("fractions")
def bad_split_nan_fraction(tmp_path):
    return lambda: split_indices(np.arange(20) % 2, (float("nan"), 0.5))


@case("nan")
def bad_split_nan_label(tmp_path):
    return lambda: split_indices(np.array([0.0, 1.0, np.nan] * 5))


@case("folder")
def bad_spec_imagefolder_on_a_file(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    return lambda: load_spec(f"imagefolder:{tmp_path / 'x.txt'}")


# ---------------------------------------------------------------- checkpoints

@case("extra must be plain JSON data")
def bad_checkpoint_extra_not_json_keeps_the_old_file(tmp_path):
    from keepset.models import MLP, save_checkpoint

    model = MLP(4, 2, hidden=(3,))
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    return lambda: save_checkpoint(model, path, extra={"when": object()})


@case("extra must be plain JSON data")
def bad_checkpoint_extra_nan(tmp_path):
    from keepset.models import MLP, save_checkpoint

    return lambda: save_checkpoint(MLP(4, 2, hidden=(3,)), tmp_path / "m.safetensors", extra={"loss": float("nan")})


# ---------------------------------------------------------------- manifests

@case("missing.npz")
def bad_manifest_missing_input_keeps_the_old_manifest(tmp_path):
    from keepset.io import write_manifest

    path = write_manifest(tmp_path / "manifest.json", method="m", params={})
    return lambda: write_manifest(path, method="m", params={}, inputs={"data": tmp_path / "missing.npz"},
                                  overwrite=True)


@case("inputs['seed']")
def bad_manifest_input_not_a_path(tmp_path):
    from keepset.io import write_manifest

    return lambda: write_manifest(tmp_path / "manifest.json", method="m", params={}, inputs={"seed": 3})


# ---------------------------------------------------------------- evaluation metrics

@case("y_pred")
def bad_detection_metrics_values_other_than_0_1(tmp_path):
    from keepset.evaluation import detection_metrics

    return lambda: detection_metrics(np.array([1, 0, 1]), np.array([2, 0, 1]))


@case("y_true has 3")
def bad_detection_metrics_length_mismatch(tmp_path):
    from keepset.evaluation import detection_metrics

    return lambda: detection_metrics(np.array([True, False, True]), np.array([True, False]))


@case("y_score")
def bad_auroc_nan_scores(tmp_path):
    from keepset.evaluation import auroc

    return lambda: auroc(np.array([True, False, True]), np.array([0.1, np.nan, 0.3]))


# ---------------------------------------------------------------- selection

@case("1000000000")
def bad_balanced_selection_huge_label(tmp_path):
    from keepset.selection.baselines import select_class_balanced

    return lambda: select_class_balanced(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 1, 10**9]), 0.5)


@case("-5")
def bad_balanced_selection_negative_label(tmp_path):
    from keepset.selection.baselines import select_class_balanced

    return lambda: select_class_balanced(np.array([0.1, 0.2, 0.3]), np.array([0, -5, 1]), 0.5)


@case("NaN")
def bad_random_balanced_nan_label(tmp_path):
    from keepset.selection.baselines import select_random_class_balanced

    return lambda: select_random_class_balanced(np.array([0.0, np.nan, 1.0]), 0.5)


@case("empty")
def bad_balanced_selection_empty(tmp_path):
    from keepset.selection.baselines import select_class_balanced

    return lambda: select_class_balanced(np.zeros(0), np.zeros(0, np.int64), 0.5)


@case("n must be")
def bad_random_selection_fractional_n(tmp_path):
    from keepset.selection.baselines import select_random

    return lambda: select_random(2.5, 0.5)


@case("1000000000")
def bad_moderate_huge_label(tmp_path):
    from keepset.selection.moderate import moderate_ds

    return lambda: moderate_ds(np.ones((3, 2)), np.array([0, 1, 10**9]), 0.5)


@case("empty")
def bad_moderate_empty(tmp_path):
    from keepset.selection.moderate import moderate_ds

    return lambda: moderate_ds(np.ones((0, 2)), np.zeros(0, np.int64), 0.5)


@case("ratio")
def bad_moderate_nan_ratio(tmp_path):
    from keepset.selection.moderate import moderate_ds

    return lambda: moderate_ds(np.ones((3, 2)), np.array([0, 1, 1]), float("nan"))


@case("empty")
def bad_ccs_empty(tmp_path):
    from keepset.selection.ccs import ccs_select

    return lambda: ccs_select(np.zeros(0), 0.5)


@case("n_strata")
def bad_ccs_nan_strata(tmp_path):
    from keepset.selection.ccs import ccs_select

    return lambda: ccs_select(np.arange(10.0), 0.5, n_strata=float("nan"))


@case("hard_cutoff")
def bad_ccs_cutoff_not_a_number(tmp_path):
    from keepset.selection.ccs import ccs_select

    return lambda: ccs_select(np.arange(10.0), 0.5, hard_cutoff="abc")


@case("NaN")
def bad_ccs_nan_scores(tmp_path):
    from keepset.selection.ccs import ccs_select

    return lambda: ccs_select(np.array([0.1, np.nan, 0.3]), 0.5)


@case("bin_counts")
def bad_ccs_budgets_fractional_counts(tmp_path):
    from keepset.selection.ccs import ccs_budgets

    return lambda: ccs_budgets([1.5, 2.0], 2)


# ---------------------------------------------------------------- Stage 2 votes

@case("[2, 5]")
def bad_votes_other_than_minus1_0_1(tmp_path):
    from keepset.selection.stage2 import aggregate_votes

    return lambda: aggregate_votes(np.array([[1, 2, 0], [5, 1, -1]]))


@case("NaN")
def bad_votes_nan(tmp_path):
    from keepset.selection.stage2 import aggregate_votes

    return lambda: aggregate_votes(np.array([[1.0, np.nan, 0.0], [1.0, 1.0, -1.0]]))


@case("0.5")
def bad_votes_fractional(tmp_path):
    from keepset.selection.stage2 import aggregate_votes

    return lambda: aggregate_votes(np.array([[1.0, 0.5, 0.0]]))


@case("dtype <U1")
def bad_votes_strings(tmp_path):
    from keepset.selection.stage2 import aggregate_votes

    return lambda: aggregate_votes(np.array([["1", "0"]]))


def test_aggregate_votes_still_accepts_float_and_bool_decisions_holding_valid_values():
    from keepset.selection.stage2 import aggregate_votes

    d = np.array([[1, 0, -1, 1], [1, 1, -1, 0], [0, 0, 1, 1]], dtype=np.int8)
    expected = np.array([True, False, True, True])  # keep share by hand: 2/3, 1/3, 1/1, 2/3
    assert (aggregate_votes(d) == expected).all()
    assert (aggregate_votes(d.astype(np.float32)) == expected).all()
    assert (aggregate_votes(np.array([[True, False], [True, True]])) == np.array([True, True])).all()


@case("1000000000")
def bad_out_of_sample_probs_huge_label(tmp_path):
    from keepset.scoring.peers import out_of_sample_probs

    return lambda: out_of_sample_probs(np.ones((4, 2)), np.array([0, 1, 0, 10**9]))
