"""Loaders that turn files on disk into a ``SampleSet``.

Images come out as float32 ``[N, C, H, W]`` in [0, 1]; feature arrays as float32 ``[N, d]``.
Nothing here unpickles arbitrary objects: CIFAR batches go through a restricted unpickler.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from keepset.data.sampleset import SampleSet

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MNIST_CLASSES = [str(d) for d in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _require(path: Path, what: str, hint: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}. {hint}")
    return path


def load_digits_set() -> SampleSet:
    """scikit-learn's bundled 8x8 digits (1797 samples, 10 classes): the embedded default, no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return SampleSet(ids=np.arange(len(images), dtype=np.int64), labels=bunch.target,
                     class_names=[str(c) for c in bunch.target_names], inputs=images, name="digits")


# ---------------------------------------------------------------- IDX (MNIST / Fashion-MNIST)

def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its declared dtype and shape."""
    path = Path(path)
    raw = _require(path, "IDX file", "Pass the path of an MNIST-style *-ubyte(.gz) file.").read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path} is a corrupt gzip file: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path} is truncated or corrupt: header promises {expected} bytes of data "
                         f"for shape {shape}, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx_pair(root: Path, split: str) -> tuple[Path, Path]:
    prefix = "train" if split == "train" else "t10k"
    for suffix in ("-ubyte.gz", "-ubyte"):
        images = root / f"{prefix}-images-idx3{suffix}"
        labels = root / f"{prefix}-labels-idx1{suffix}"
        if images.exists() and labels.exists():
            return images, labels
    raise FileNotFoundError(
        f"no {prefix}-images-idx3-ubyte(.gz) / {prefix}-labels-idx1-ubyte(.gz) pair in {root}. "
        "Point the spec at a folder holding MNIST-style IDX files "
        "(Fashion-MNIST: `apt-get install dataset-fashion-mnist`).")


def load_idx_set(path: str | Path, split: str = "train", class_names: list[str] | None = None,
                 name: str | None = None) -> SampleSet:
    """MNIST-style IDX images and labels from a folder; ``split`` is "train" or "test"."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _require(Path(path), "IDX data folder", "Give a folder with MNIST-style IDX files.")
    img_path, lbl_path = _find_idx_pair(root, split)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"IDX files in {root} disagree: images {images.shape}, labels {labels.shape}")
    k = int(labels.max()) + 1
    names = class_names if class_names is not None and len(class_names) >= k else [str(c) for c in range(k)]
    x = (images.astype(np.float32) / 255.0)[:, None]
    offset = 0 if split == "train" else 10**7  # ids stay unique across the train and test files
    return SampleSet(ids=np.arange(len(x), dtype=np.int64) + offset, labels=labels.astype(np.int64),
                     class_names=names, inputs=x, name=name or f"idx:{root}")


def load_fashion_mnist_set(path: str | Path | None = None, split: str = "train") -> SampleSet:
    """Fashion-MNIST from the Debian package's folder (or ``path``)."""
    root = Path(path) if path else FASHION_MNIST_DIR
    if not root.exists():
        raise FileNotFoundError(f"Fashion-MNIST not found at {root}. Install it with "
                                "`apt-get install dataset-fashion-mnist` or give fashion-mnist:PATH.")
    spec = "fashion-mnist" if path is None else f"fashion-mnist:{path}"
    return load_idx_set(root, split, FASHION_MNIST_CLASSES, name=spec + ("" if split == "train" else "@test"))


# ---------------------------------------------------------------- CIFAR python batches

class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: dicts, lists, bytes, strings and numpy arrays; nothing callable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles store byte buffers; builds bytes, nothing else
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists; "
            "this file is not a CIFAR python batch or has been tampered with")


def _load_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _CifarUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise ValueError(f"{path} is not a readable CIFAR python batch: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR python batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_cifar_set(path: str | Path, split: str = "train") -> SampleSet:
    """CIFAR-10 or CIFAR-100 python batches (``cifar-10-batches-py`` / ``cifar-100-python``) from a local folder."""
    root = _require(Path(path), "CIFAR folder", "Give the extracted cifar-10-batches-py or cifar-100-python folder.")
    if (root / "data_batch_1").exists():
        files = sorted(root.glob("data_batch_*")) if split == "train" else [root / "test_batch"]
        label_key, meta_file, names_key = "labels", root / "batches.meta", "label_names"
    elif (root / "train").exists():
        files = [root / ("train" if split == "train" else "test")]
        label_key, meta_file, names_key = "fine_labels", root / "meta", "fine_label_names"
    else:
        raise FileNotFoundError(f"{root} holds neither CIFAR-10 (data_batch_1...) nor CIFAR-100 (train/test) batches")
    data, labels = [], []
    for f in files:
        batch = _load_cifar_batch(_require(f, "CIFAR batch", "The CIFAR folder is incomplete."))
        data.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    x = np.concatenate(data).astype(np.float32) / 255.0
    y = np.concatenate(labels)
    if meta_file.exists():
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _load_cifar_batch(meta_file)[names_key]]
    else:
        names = CIFAR10_CLASSES if y.max() < 10 else [str(c) for c in range(int(y.max()) + 1)]
    offset = 0 if split == "train" else 10**7
    return SampleSet(ids=np.arange(len(x), dtype=np.int64) + offset, labels=y, class_names=names,
                     inputs=x, name=f"cifar:{root}")


# ---------------------------------------------------------------- image folders

def load_imagefolder_set(path: str | Path, image_size: int | None = None) -> SampleSet:
    """``root/<class_name>/*.png|jpg``: class names are the sorted folder names; images load lazily.

    Every image is converted to RGB (or kept grayscale when all are) and resized to
    ``image_size`` x ``image_size`` (default: the first image's size).
    """
    from PIL import Image

    root = _require(Path(path), "image folder", "Expected root/<class_name>/*.png|jpg.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; expected root/<class_name>/*.png|jpg")
    files, labels = [], []
    for c, cname in enumerate(classes):
        found = sorted(p for p in (root / cname).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [c] * len(found)
    if not files:
        raise ValueError(f"{root} has class folders but no images ({', '.join(IMAGE_SUFFIXES)})")
    with Image.open(files[0]) as first:
        size = image_size or first.size[0]
        mode = "L" if first.mode in ("L", "1", "I;16") else "RGB"

    def loader(positions: np.ndarray) -> np.ndarray:
        out = []
        for p in positions:
            try:
                with Image.open(files[p]) as im:
                    out.append(np.asarray(im.convert(mode).resize((size, size)), dtype=np.float32) / 255.0)
            except Exception as exc:
                raise ValueError(f"cannot read image {files[p]}: {exc}") from None
        arr = np.stack(out)
        return arr[:, None] if mode == "L" else arr.transpose(0, 3, 1, 2)

    ids = np.array([str(f.relative_to(root)) for f in files])
    return SampleSet(ids=ids, labels=np.array(labels, dtype=np.int64), class_names=classes,
                     loader=loader, name=f"imagefolder:{root}")


# ---------------------------------------------------------------- feature arrays

def load_npz_set(path: str | Path) -> SampleSet:
    """A ``.npz`` with ``features`` [N, d], ``labels`` [N], optional ``ids`` [N], ``class_names`` [K], ``captions`` [N]."""
    path = _require(Path(path), "feature file", "Give an .npz with `features` and `labels` arrays.")
    try:
        z = np.load(path, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise ValueError(f"{path} is not a readable .npz of plain arrays: {exc}") from None
    for key in ("features", "labels"):
        if key not in arrays:
            raise ValueError(f"{path} has no `{key}` array (found: {sorted(arrays)})")
    x = arrays["features"].astype(np.float32)
    if x.ndim != 2:
        raise ValueError(f"`features` in {path} must be 2-D [N, d], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"`features` in {path} holds NaN or inf values; clean them first")
    y = arrays["labels"]
    k = int(np.max(y)) + 1 if len(y) else 0
    names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else [str(c) for c in range(k)]
    ids = arrays.get("ids", np.arange(len(x), dtype=np.int64))
    captions = [str(c) for c in arrays["captions"]] if "captions" in arrays else None
    return SampleSet(ids=ids, labels=y, class_names=names, inputs=x, captions=captions, name=f"npz:{path}")
