"""Loaders that turn files on disk into a ``SampleSet``.

Images come out as float32 ``[N, C, H, W]`` in [0, 1]; feature arrays as float32 ``[N, d]``.
Nothing here unpickles arbitrary objects: CIFAR batches go through a restricted unpickler.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import zlib
from pathlib import Path

import numpy as np

from keepset._checks import check_labels, check_not_empty, infer_num_classes, one_line
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

IDX_MAX_BYTES = 1 << 36  # 64 GiB: a header promising more than this is corrupt, refused before reading


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array of its declared dtype and shape.

    The header's size is computed with Python integers (no overflow) and checked against the file
    before the data is read, so a corrupt header never makes keepset allocate what it promises.
    """
    path = _require(Path(path), "IDX file", "Pass the path of an MNIST-style *-ubyte(.gz) file.")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the path of one MNIST-style *-ubyte(.gz) file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise ValueError(f"{path} is not an IDX file (bad magic number)")
            if head[2] not in dtypes:
                raise ValueError(f"{path}: unknown IDX element type 0x{head[2]:02x}")
            ndim = head[3]
            dims = fh.read(4 * ndim)
            if len(dims) != 4 * ndim:
                raise ValueError(f"{path} is truncated: its header declares {ndim} dimensions but ends early")
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(dtypes[head[2]])
            expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
            if expected > IDX_MAX_BYTES:
                raise ValueError(f"{path}: its header promises {expected} bytes of data for shape {shape}, too large "
                                 "for an IDX file; the header is corrupt")
            found_on_disk = None if gz else path.stat().st_size - 4 - 4 * ndim
            if found_on_disk is not None and found_on_disk != expected:
                raise ValueError(f"{path} is truncated or corrupt: header promises {expected} bytes of data for "
                                 f"shape {shape}, found {found_on_disk}")
            raw = fh.read(expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is a corrupt or unreadable {'gzip' if gz else 'IDX'} file: {one_line(exc)}") \
            from None
    if len(raw) != expected:
        raise ValueError(f"{path} is truncated or corrupt: header promises {expected} bytes of data for shape "
                         f"{shape}, found {len(raw) if len(raw) <= expected else 'more'}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


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


def _class_names_for(y: np.ndarray, class_names, where: str, fix: str) -> list[str]:
    """Class names for checked labels ``y``: ``class_names`` when given (every label must index it), else
    "0".."K-1" with K inferred by ``infer_num_classes`` (refused when implausible)."""
    if class_names is not None:
        names = [str(c) for c in class_names]
        check_labels(y, len(names), f"labels in {where}", hint=(
            f"the data set has {len(names)} classes (class_names has {len(names)} entries): remap the labels "
            f"to 0..{len(names) - 1} or give class_names one entry per class"))
        return names
    return [str(c) for c in range(infer_num_classes(y, f"labels in {where}", fix=fix))]


def load_idx_set(path: str | Path, split: str = "train", class_names: list[str] | None = None,
                 name: str | None = None) -> SampleSet:
    """MNIST-style IDX images and labels from a folder; ``split`` is "train" or "test".

    Without ``class_names`` the classes are "0".."K-1", K = max label + 1 (at most the number of samples).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _require(Path(path), "IDX data folder", "Give a folder with MNIST-style IDX files.")
    if not root.is_dir():
        raise ValueError(f"{root} is a file, not a folder; give the folder holding the IDX image and label files")
    img_path, lbl_path = _find_idx_pair(root, split)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3:
        raise ValueError(f"{img_path} must hold 3-D images [N, rows, cols], got shape {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{lbl_path} must hold 1-D labels [N], got shape {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{img_path.name} holds {len(images)} images but {lbl_path.name} holds {len(labels)} "
                         f"labels; use the matching pair of files")
    check_not_empty(len(images), f"{img_path}")
    y = check_labels(labels, name=f"labels in {lbl_path}")
    names = _class_names_for(y, class_names, str(lbl_path), "pass class_names")
    x = (images.astype(np.float32) / 255.0)[:, None]
    offset = 0 if split == "train" else 10**7  # ids stay unique across the train and test files
    return SampleSet(ids=np.arange(len(x), dtype=np.int64) + offset, labels=y,
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
        ("__builtin__", "bytes"), ("builtins", "bytes"),  # how protocol 2 stores an empty byte buffer
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR batch holds only arrays and lists; "
            "this file is not a CIFAR python batch or has been tampered with")


def _load_cifar_batch(path: Path) -> dict:
    """One CIFAR python batch as a dict with str keys; ValueError naming the file for anything else."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder, expected a CIFAR python batch file")
    try:
        with open(path, "rb") as fh:
            obj = _CifarUnpickler(fh, encoding="bytes").load()
    except Exception as exc:  # refused (tampered), truncated, or not a pickle at all
        raise ValueError(f"{path} is not a readable CIFAR python batch: {one_line(exc)}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR python batch (expected a dict, found {type(obj).__name__})")
    return {k.decode(errors="replace") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_entry(batch: dict, key: str, path: Path):
    if key not in batch:
        raise ValueError(f"{path} has no `{key}` entry (found: {sorted(batch)}); it is not a CIFAR-10/100 python "
                         "batch of this kind")
    return batch[key]


def _cifar_images(batch: dict, path: Path) -> np.ndarray:
    """The batch's ``data`` as uint8 [n, 3, 32, 32]."""
    entry = _cifar_entry(batch, "data", path)
    try:
        data = np.asarray(entry)
    except Exception as exc:
        raise ValueError(f"`data` in {path} is not an array: {one_line(exc)}") from None
    if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
        raise ValueError(f"`data` in {path} must hold bytes 0..255 (uint8), got dtype {data.dtype}")
    if data.size % 3072:
        raise ValueError(f"`data` in {path} holds {data.size} values, not a multiple of 3072 (3 x 32 x 32 per "
                         "image); it is not a CIFAR batch")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32)


def load_cifar_set(path: str | Path, split: str = "train") -> SampleSet:
    """CIFAR-10 or CIFAR-100 python batches (``cifar-10-batches-py`` / ``cifar-100-python``) from a local folder.

    Batches are read with a restricted unpickler (arrays, lists and strings only); a tampered, truncated or
    malformed batch raises ValueError naming the file.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _require(Path(path), "CIFAR folder", "Give the extracted cifar-10-batches-py or cifar-100-python folder.")
    if not root.is_dir():
        raise ValueError(f"{root} is a file, not a folder; give the extracted cifar-10-batches-py or "
                         "cifar-100-python folder")
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
        images = _cifar_images(batch, f)
        y = check_labels(_cifar_entry(batch, label_key, f), name=f"`{label_key}` in {f}")
        if len(y) != len(images):
            raise ValueError(f"{f} holds {len(images)} images but {len(y)} labels; the batch is corrupt")
        data.append(images)
        labels.append(y)
    y = np.concatenate(labels)
    check_not_empty(len(y), f"the CIFAR folder {root}")
    if meta_file.exists():
        meta_names = _cifar_entry(_load_cifar_batch(meta_file), names_key, meta_file)
        if not isinstance(meta_names, (list, tuple)):
            raise ValueError(f"`{names_key}` in {meta_file} must be a list of class names")
        names = _class_names_for(y, [n.decode(errors="replace") if isinstance(n, bytes) else str(n)
                                     for n in meta_names], str(root), "")
    else:
        names = CIFAR10_CLASSES if y.max() < 10 else _class_names_for(y, None, str(root), "add the meta file")
    x = np.concatenate(data).astype(np.float32) / 255.0
    offset = 0 if split == "train" else 10**7
    return SampleSet(ids=np.arange(len(x), dtype=np.int64) + offset, labels=y, class_names=names,
                     inputs=x, name=f"cifar:{root}")


# ---------------------------------------------------------------- image folders

def _image_files(folder: Path) -> list[Path]:
    """Every image file (by suffix) under ``folder``, recursively, sorted; symbolic links are followed.

    Raises ValueError naming the folder that cannot be listed, a symbolic-link loop between folders, or an
    image name that is a broken link (or a link loop); nothing is skipped silently.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                raise ValueError(f"{d} leads back to a folder already listed (a symbolic-link loop, or a second link to it); remove the link")
            seen.add(key)
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as exc:
            raise ValueError(f"cannot list {d}: {exc.strerror or one_line(exc)}; make it readable or remove it") \
                from None
        for e in entries:
            p = Path(e.path)
            try:
                is_dir = e.is_dir()  # follows links; False for a broken link or a link loop
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(p)
            elif p.suffix.lower() in IMAGE_SUFFIXES:
                if e.is_symlink() and not p.exists():
                    raise ValueError(f"{p} is a broken symbolic link or part of a symbolic-link loop; fix or remove it")
                found.append(p)
    return sorted(found)


class ImageFolderLoader:
    """Loads images of an image folder by position: ``loader(positions) -> float32 [n, C, size, size]``.

    Every image is converted to ``mode`` ("L" or "RGB") and resized to ``size`` x ``size``; an unreadable
    image raises ValueError naming the file. ``content_digest(positions)`` feeds ``SampleSet.fingerprint``.
    """

    def __init__(self, files: list[Path], size: int, mode: str):
        self.files, self.size, self.mode = files, int(size), mode

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = []
        for p in positions:
            try:
                with Image.open(self.files[p]) as im:
                    out.append(np.asarray(im.convert(self.mode).resize((self.size, self.size)), dtype=np.float32)
                               / 255.0)
            except Exception as exc:
                raise ValueError(f"cannot read image {self.files[p]}: {one_line(exc)}") from None
        if not out:
            shape = (0, 1 if self.mode == "L" else 3, self.size, self.size)
            return np.zeros(shape, dtype=np.float32)
        arr = np.stack(out)
        return arr[:, None] if self.mode == "L" else arr.transpose(0, 3, 1, 2)

    def content_digest(self, positions: np.ndarray, sample_files: int = 64) -> bytes:
        """sha256 digest of the files at ``positions``: every file's path, size and mtime (ns), the bytes of
        ``sample_files`` of them spread evenly over the positions, and the target mode and size.

        An edit that keeps a file's size and mtime (both restored) is seen only in a sampled file.
        """
        h = hashlib.sha256(f"{self.mode}:{self.size}".encode())
        pos = np.asarray(positions, dtype=np.int64)
        for p in pos:
            f = self.files[p]
            try:
                st = f.stat()
            except OSError as exc:
                raise ValueError(f"cannot read image {f}: {exc.strerror or one_line(exc)}") from None
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        if len(pos):
            for p in np.unique(np.linspace(0, len(pos) - 1, min(sample_files, len(pos))).astype(np.int64)):
                try:
                    h.update(self.files[pos[p]].read_bytes())
                except OSError as exc:
                    raise ValueError(f"cannot read image {self.files[pos[p]]}: {exc.strerror or one_line(exc)}") \
                        from None
        return h.digest()


def load_imagefolder_set(path: str | Path, image_size: int | None = None) -> SampleSet:
    """``root/<class_name>/**/*.png|jpg``: class names are the sorted folder names; images load lazily.

    Files of mixed sizes and modes are fine: every image is converted to one mode, grayscale ("L") when
    the *first* image (in sorted path order) is grayscale, else RGB, and resized (stretched, aspect ratio
    not kept) to ``image_size`` x ``image_size`` (default: the first image's width). Ids are the files'
    paths relative to ``root``. Symbolic links are followed; a link loop, a folder that cannot be listed or
    an unreadable image raises ValueError naming it (unreadable images when they are loaded, the first at once).
    """
    from PIL import Image

    root = _require(Path(path), "image folder", "Expected root/<class_name>/*.png|jpg.")
    if not root.is_dir():
        raise ValueError(f"{root} is a file, not a folder; imagefolder expects root/<class_name>/*.png|jpg")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                   or image_size < 1):
        raise ValueError(f"image_size must be a positive integer (pixels), got {image_size!r}")
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    except OSError as exc:
        raise ValueError(f"cannot list {root}: {exc.strerror or one_line(exc)}") from None
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; expected root/<class_name>/*.png|jpg")
    files, labels = [], []
    for c, cname in enumerate(classes):
        found = _image_files(root / cname)
        files += found
        labels += [c] * len(found)
    if not files:
        raise ValueError(f"{root} has class folders but no images ({', '.join(IMAGE_SUFFIXES)}), so it holds no "
                         "samples")
    try:
        with Image.open(files[0]) as first:
            size = image_size or first.size[0]
            mode = "L" if first.mode in ("L", "1", "I;16") else "RGB"
    except Exception as exc:
        raise ValueError(f"cannot read image {files[0]}: {one_line(exc)}") from None

    ids = np.array([p.relative_to(root).as_posix() for p in files])
    return SampleSet(ids=ids, labels=np.array(labels, dtype=np.int64), class_names=classes,
                     loader=ImageFolderLoader(files, size, mode), name=f"imagefolder:{root}")


# ---------------------------------------------------------------- feature arrays

def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz (never unpickling), or ValueError naming the file and what is wrong."""
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give an .npz file (np.savez(path, features=..., labels=...))")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from None
    if magic.startswith(b"\x93NUMPY"):
        raise ValueError(f"{path} is a .npy file (one array); keepset needs an .npz holding `features` and `labels` "
                         "(np.savez(path, features=..., labels=...))")
    if not magic.startswith(b"PK"):
        raise ValueError(f"{path} is not an .npz (zip) file; save one with np.savez(path, features=..., labels=...)")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:  # a corrupt or truncated zip
        raise ValueError(f"{path} is not a readable .npz of plain arrays: {one_line(exc)}") from None
    arrays = {}
    with z:
        for key in z.files:
            try:
                arrays[key] = z[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                    raise ValueError(f"`{key}` in {path} is an object array (pickled Python objects), which keepset "
                                     "never loads; save it as a numeric or string array") from None
                raise ValueError(f"`{key}` in {path} cannot be read: {one_line(exc)}") from None
            except Exception as exc:  # a corrupt member
                raise ValueError(f"`{key}` in {path} cannot be read: {one_line(exc)}") from None
    return arrays


def _npz_ids(raw: np.ndarray, n: int, path: Path) -> np.ndarray:
    """``ids`` of an .npz as int64 or str [n], unique; ValueError naming the problem otherwise."""
    ids = np.asarray(raw)
    if ids.ndim != 1 or len(ids) != n:
        raise ValueError(f"`ids` in {path} must be 1-D with one id per sample ({n}), got shape {ids.shape}")
    if ids.dtype.kind == "f" and np.isfinite(ids).all() and (ids == np.round(ids)).all():
        ids = ids.astype(np.int64)
    if ids.dtype.kind == "S":
        ids = ids.astype(str)
    if ids.dtype.kind not in "iuU":
        raise ValueError(f"`ids` in {path} have dtype {ids.dtype}; ids must be integers or strings")
    uniq, counts = np.unique(ids, return_counts=True)
    dup = uniq[counts > 1]
    if len(dup):
        raise ValueError(f"`ids` in {path} hold {len(dup)} duplicate ids ({int((counts[counts > 1]).sum())} rows, "
                         f"e.g. {dup[:3].tolist()}); every sample needs its own id")
    return ids.astype(np.int64) if ids.dtype.kind in "iu" else ids


def load_npz_set(path: str | Path) -> SampleSet:
    """A ``.npz`` with ``features`` [N, d] or ``images`` [N, C, H, W] / [N, H, W] (floats in [0, 1]), ``labels``
    [N], optional ``ids`` [N], ``class_names`` [K], ``captions`` [N], and, for copies with known corruption
    (``keepset make-noisy``), ``true_labels`` [N] and ``corrupted`` [N] bool (evaluation only).

    Labels must be class indices 0..K-1; without ``class_names`` the classes are "0".."K-1" with
    K = max label + 1, refused when K exceeds N (remap sparse labels, or store ``class_names``).
    """
    path = _require(Path(path), "feature file", "Give an .npz with `features` (or `images`) and `labels` arrays.")
    arrays = _npz_arrays(path)
    if "features" in arrays and "images" in arrays:
        raise ValueError(f"{path} holds both `features` and `images`; keep one of them")
    key = "images" if "images" in arrays else "features"
    for k in (key, "labels"):
        if k not in arrays:
            raise ValueError(f"{path} has no `{k}` array (found: {sorted(arrays)}); save it with "
                             "np.savez(path, features=..., labels=...) or np.savez(path, images=..., labels=...)")
    x = arrays[key]
    if x.dtype.kind not in "biuf":
        raise ValueError(f"`{key}` in {path} must be numbers, got dtype {x.dtype}")
    if key == "images" and x.ndim == 3:
        x = x[:, None]
    if key == "features" and x.ndim != 2:
        raise ValueError(f"`features` in {path} must be 2-D [N, d], got shape {x.shape}; store images as `images`")
    if key == "images" and x.ndim != 4:
        raise ValueError(f"`images` in {path} must be [N, C, H, W] or [N, H, W], got shape {x.shape}")
    n = len(x)
    check_not_empty(n, f"{path}", "`features` has 0 rows")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = ~np.isfinite(x.reshape(n, -1)).all(axis=1)
        raise ValueError(f"`{key}` in {path} holds NaN or inf values in {int(bad.sum())} rows (first at "
                         f"{np.flatnonzero(bad)[:5].tolist()}); clean them first")
    y = check_labels(arrays["labels"], name=f"`labels` in {path}")
    if len(y) != n:
        raise ValueError(f"{path} has {n} rows of `features` but {len(y)} `labels`; give one label per row")
    if "class_names" in arrays and arrays["class_names"].ndim != 1:
        raise ValueError(f"`class_names` in {path} must be 1-D, got shape {arrays['class_names'].shape}")
    names = _class_names_for(y, arrays.get("class_names"), str(path), "store class_names in the .npz")
    ids = _npz_ids(arrays["ids"], n, path) if "ids" in arrays else np.arange(n, dtype=np.int64)
    captions = None
    if "captions" in arrays:
        cap = arrays["captions"]
        if cap.ndim != 1 or len(cap) != n or cap.dtype.kind not in "US":
            raise ValueError(f"`captions` in {path} must be {n} strings, got dtype {cap.dtype} shape {cap.shape}")
        captions = [str(c) for c in cap.astype(str)]
    true_labels = corrupted = None
    if "true_labels" in arrays:
        true_labels = check_labels(arrays["true_labels"], len(names), name=f"`true_labels` in {path}")
        if len(true_labels) != n:
            raise ValueError(f"{path} has {n} rows but {len(true_labels)} `true_labels`")
    if "corrupted" in arrays:
        corrupted = arrays["corrupted"]
        if corrupted.dtype != np.bool_ or corrupted.shape != (n,):
            raise ValueError(f"`corrupted` in {path} must be {n} booleans, got dtype {corrupted.dtype} "
                             f"shape {corrupted.shape}")
    return SampleSet(ids=ids, labels=y, class_names=names, inputs=x, captions=captions, name=f"npz:{path}",
                     true_labels=true_labels, corrupted=corrupted)
