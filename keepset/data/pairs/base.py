"""Image-text pairs streamed shard by shard: the ``PairBatch`` container and the ``PairSource`` interface.

A pair has an id (a DataComp uid or another unique string / int64), a text (its caption) and an image,
given as decoded pixels and/or as a precomputed embedding; it has no class. A source lists its shards
in a deterministic order and yields one ``PairBatch`` per shard (``iter_shards``) or sub-batches of a
bounded size (``iter_batches``), so memory is bounded by one shard (or one batch), never by the pool.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

#: bytes hashed from the head and from the tail of every file by ``fingerprint()``
FINGERPRINT_SAMPLE_BYTES = 1 << 16


@dataclass
class PairBatch:
    """A batch of image-text pairs from one shard.

    Attributes
    ----------
    ids : ndarray [n]
        Unique pair ids: str (e.g. DataComp's 32-hex-digit uids) or int64.
    texts : list[str] or None
        The caption of every pair.
    image_emb : float32 [n, d_img] or None
        Precomputed image embeddings (DataComp npz).
    text_emb : float32 [n, d_txt] or None
        Precomputed text embeddings (DataComp npz).
    images : float32 [n, C, H, W] in [0, 1] or None
        Decoded images (webdataset, Hugging Face), all resized to one size.
    columns : dict[str, ndarray [n]]
        Extra per-pair columns (e.g. ``clip_b32_similarity_score``).
    shard : str
        Name of the shard the batch came from.
    """

    ids: np.ndarray
    texts: list[str] | None = None
    image_emb: np.ndarray | None = None
    text_emb: np.ndarray | None = None
    images: np.ndarray | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    shard: str = ""

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids)
        n = len(self.ids)
        if self.ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {self.ids.shape} (shard {self.shard})")
        for name in ("image_emb", "text_emb", "images"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} rows but there are {n} ids (shard {self.shard})")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"texts has {len(self.texts)} entries but there are {n} ids (shard {self.shard})")
        for name, col in self.columns.items():
            if len(col) != n:
                raise ValueError(f"column {name!r} has {len(col)} rows but there are {n} ids (shard {self.shard})")

    def __len__(self) -> int:
        return len(self.ids)

    def require(self, *fields: str) -> "PairBatch":
        """Return self, or raise a ValueError naming the shard when one of ``fields`` is missing (None)."""
        for name in fields:
            if getattr(self, name) is None:
                hint = {"image_emb": "this shard has no image embeddings (no .npz beside its .parquet?); "
                                     "compute them first or use a source with decoded images",
                        "text_emb": "this shard has no text embeddings; compute them first",
                        "images": "this source gives embeddings, not pixels",
                        "texts": "this source has no captions"}.get(name, "")
                raise ValueError(f"shard {self.shard!r} has no {name}: {hint}")
        return self

    def slice(self, start: int, stop: int) -> "PairBatch":
        """Rows ``start:stop`` as a new PairBatch (views where numpy allows)."""
        cut = lambda a: None if a is None else a[start:stop]  # noqa: E731
        return PairBatch(ids=self.ids[start:stop], texts=cut(self.texts), image_emb=cut(self.image_emb),
                         text_emb=cut(self.text_emb), images=cut(self.images),
                         columns={k: v[start:stop] for k, v in self.columns.items()}, shard=self.shard)


def concat_batches(batches: Sequence[PairBatch]) -> PairBatch:
    """Concatenate batches of one shard (same fields present in each)."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]

    def cat(name):
        parts = [getattr(b, name) for b in batches]
        if any(p is None for p in parts):
            return None
        return np.concatenate(parts) if name != "texts" else [t for p in parts for t in p]

    return PairBatch(ids=np.concatenate([b.ids for b in batches]), texts=cat("texts"), image_emb=cat("image_emb"),
                     text_emb=cat("text_emb"), images=cat("images"),
                     columns={k: np.concatenate([b.columns[k] for b in batches]) for k in first.columns},
                     shard=first.shard)


def rechunk(chunks: Iterator[PairBatch], batch_size: int | None) -> Iterator[PairBatch]:
    """Regroup one shard's chunks into batches of exactly ``batch_size`` rows (the last may be smaller);
    ``batch_size=None``: one batch holding the whole shard."""
    pending: list[PairBatch] = []
    count = 0
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        pending.append(chunk)
        count += len(chunk)
        while batch_size is not None and count >= batch_size:
            merged = concat_batches(pending)
            yield merged.slice(0, batch_size)
            rest = merged.slice(batch_size, len(merged))
            pending, count = ([rest] if len(rest) else []), len(rest)
    if pending:
        yield concat_batches(pending)


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def file_digest(path: Path, sample_bytes: int = FINGERPRINT_SAMPLE_BYTES) -> str:
    """``name:size:mtime_ns:sha256(head + tail)`` of one file: cheap, yet changes when its content does."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(sample_bytes))
        if st.st_size > 2 * sample_bytes:
            fh.seek(st.st_size - sample_bytes)
        h.update(fh.read(sample_bytes))
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()[:16]}"


def fingerprint_files(kind: str, files: Sequence[Path], options: dict) -> str:
    """A short hash of a source's kind, options and every file's ``file_digest`` (in shard order)."""
    h = hashlib.sha256()
    h.update(kind.encode())
    for k in sorted(options):
        h.update(f"\0{k}={options[k]!r}".encode())
    for f in files:
        h.update(b"\0" + file_digest(Path(f)).encode())
    return h.hexdigest()[:16]


class PairSource:
    """A pool of image-text pairs read shard by shard.

    Subclasses set ``name`` and ``shards`` (shard names in a deterministic order) and implement
    ``_read_shard(shard, columns, batch_size, state) -> Iterator[PairBatch]`` (chunks of any size from that
    shard; ``state`` is the dict ``_new_pass()`` made for this pass over the pool), ``_files()`` (the files
    whose content defines the pool) and ``_options()`` (reading options that change what comes out).
    """

    name: str = ""
    shards: list[str]

    # ------------------------------------------------------------ subclass hooks
    def _read_shard(self, shard: str, columns: Sequence[str] | None, batch_size: int | None,
                    state: dict) -> Iterator[PairBatch]:  # pragma: no cover - interface
        raise NotImplementedError

    def _new_pass(self) -> dict:
        """Per-pass state (e.g. the ids seen so far), made at the start of every iteration."""
        return {}

    def _files(self) -> list[Path]:  # pragma: no cover - interface
        raise NotImplementedError

    def _options(self) -> dict:
        return {}

    def num_pairs(self) -> int | None:
        """The number of pairs when it is known without reading the data (else None)."""
        return None

    # ------------------------------------------------------------ public
    def iter_shards(self, columns: Sequence[str] | None = None) -> Iterator[PairBatch]:
        """One PairBatch per shard, in ``shards`` order (``columns``: extra columns to read; None: the defaults)."""
        state = self._new_pass()
        for shard in self.shards:
            yield from rechunk(self._read_shard(shard, columns, None, state), None)

    def read_shard(self, shard: str, columns: Sequence[str] | None = None) -> PairBatch:
        """The whole of one shard as one PairBatch (a worker scoring shards independently; checks across
        shards, such as duplicate ids over the pool, are the constructing process's)."""
        if shard not in self.shards:
            raise ValueError(f"{self.name} has no shard {shard!r}; its shards: {self.shards[:3]}...")
        parts = list(rechunk(self._read_shard(shard, columns, None, self._new_pass()), None))
        return parts[0] if parts else PairBatch(ids=np.zeros(0, dtype="<U1"), shard=shard)

    def iter_batches(self, batch_size: int, columns: Sequence[str] | None = None) -> Iterator[PairBatch]:
        """Batches of ``batch_size`` pairs (the last of each shard may be smaller); a batch never spans shards."""
        batch_size = check_batch_size(batch_size)
        state = self._new_pass()
        for shard in self.shards:
            yield from rechunk(self._read_shard(shard, columns, batch_size, state), batch_size)

    def __len__(self) -> int:
        n = self.num_pairs()
        if n is None:
            raise TypeError(f"{type(self).__name__} does not know its size without reading every shard; "
                            "count the pairs with sum(len(b) for b in source.iter_batches(...))")
        return n

    def fingerprint(self) -> str:
        """A short content-based hash: file names, sizes, mtimes and a hash of each file's head and tail,
        plus the reading options (cache keys and manifests)."""
        return fingerprint_files(type(self).__name__, self._files(), self._options())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, shards={len(self.shards)})"


def list_files(root: Path, pattern: str) -> list[Path]:
    """Files under ``root`` matching a glob ``pattern``, sorted by their path relative to ``root``."""
    return sorted((p for p in root.glob(pattern) if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def require_dir(path: str | os.PathLike, what: str, hint: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p}. {hint}")
    if not p.is_dir():
        raise NotADirectoryError(f"{what} must be a directory, got the file {p}. {hint}")
    return p
