"""Training batches of embedded image-text pairs, streamed from a ``PairSource`` with bounded memory.

``embedded_chunks(source, chunk, embed)`` yields ``PairChunk`` (ids, image and text embeddings, texts,
extra columns, shard) chunk by chunk, computing embeddings with ``embed`` for sources that ship pixels.
``shuffled_batches(chunks, batch_size, buffer, seed)`` regroups a stream of chunks into training batches
shuffled inside a bounded buffer: rows are gathered until ``buffer`` of them are held, shuffled with the
seed, emitted as full batches (the remainder, fewer than ``batch_size`` rows, stays for the next fill); at
the end of the stream the last rows, with the last full batch, are split into near-equal batches, so no
batch is smaller than half ``batch_size`` (a contrastive batch of one pair has no negatives). Memory:
``buffer + 2 batch_size`` rows at most. Same chunks and seed, same batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np


@dataclass
class PairChunk:
    """Embedded pairs: ids [n], image_emb float32 [n, d_img], text_emb float32 [n, d_txt], texts (list or
    None), columns {name: [n]}, the shard they came from."""

    ids: np.ndarray
    image_emb: np.ndarray
    text_emb: np.ndarray
    texts: list | None = None
    columns: dict = field(default_factory=dict)
    shard: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> "PairChunk":
        """The rows ``rows`` (positions or a boolean mask) as a new chunk."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == np.bool_ else np.asarray(rows)
        return PairChunk(self.ids[rows], self.image_emb[rows], self.text_emb[rows],
                         None if self.texts is None else [self.texts[i] for i in rows.tolist()],
                         {k: v[rows] for k, v in self.columns.items()}, self.shard)


def embedded_chunks(source, chunk_size: int, embed: Callable | None = None, *, columns=None,
                    texts: bool = False) -> Iterator[PairChunk]:
    """The pairs of ``source`` as ``PairChunk``s of at most ``chunk_size`` rows, in the source's order.

    embed : None (the source must ship ``image_emb`` and ``text_emb``: a shard without them raises the
        source's one-line error), or ``embed(batch) -> (image_emb, text_emb)`` for a ``PairBatch``.
    columns : extra columns to read (None: the source's defaults); texts : keep the captions.
    """
    for batch in source.iter_batches(chunk_size, columns=columns):
        if embed is None:
            batch.require("image_emb", "text_emb")
            img, txt = batch.image_emb, batch.text_emb
        else:
            img, txt = embed(batch)
        yield PairChunk(batch.ids, np.asarray(img, dtype=np.float32), np.asarray(txt, dtype=np.float32),
                        list(batch.texts) if texts and batch.texts is not None else None,
                        dict(batch.columns), batch.shard)


def _concat(parts: list[PairChunk]) -> PairChunk:
    if len(parts) == 1:
        return parts[0]
    return PairChunk(np.concatenate([p.ids for p in parts]), np.concatenate([p.image_emb for p in parts]),
                     np.concatenate([p.text_emb for p in parts]))


def shuffled_batches(chunks: Iterable[PairChunk], batch_size: int, *, buffer: int, seed) -> Iterator[PairChunk]:
    """Training batches (ids, image_emb, text_emb) from ``chunks``, shuffled inside a buffer of ``buffer``
    rows (module docstring). ``seed``: an int or a sequence of ints (e.g. ``[seed, epoch]``)."""
    if int(batch_size) < 2:
        raise ValueError(f"batch_size must be >= 2 for a contrastive loss, got {batch_size}")
    if int(buffer) < int(batch_size):
        raise ValueError(f"the shuffle buffer ({buffer} rows) must hold at least one batch ({batch_size})")
    rng = np.random.default_rng(seed)
    held: list[PairChunk] = []
    count = 0
    last: PairChunk | None = None  # the last full batch, held back so the stream's tail can join it
    for chunk in chunks:
        if not len(chunk):
            continue
        held.append(PairChunk(chunk.ids, chunk.image_emb, chunk.text_emb))
        count += len(chunk)
        if count < buffer:
            continue
        pool = _concat(held)
        pool = pool.take(rng.permutation(len(pool)))
        n_full = len(pool) // batch_size
        for b in range(n_full):
            if last is not None:
                yield last
            last = pool.take(np.arange(b * batch_size, (b + 1) * batch_size))
        rest = pool.take(np.arange(n_full * batch_size, len(pool)))
        held, count = ([rest] if len(rest) else []), len(rest)
    tail = [last] if last is not None else []
    if held:
        rest = _concat(held)
        tail.append(rest.take(rng.permutation(len(rest))))
    if not tail:
        return
    tail_chunk = _concat(tail)
    n_parts = max(1, -(-len(tail_chunk) // batch_size))
    for part in np.array_split(np.arange(len(tail_chunk)), n_parts):
        yield tail_chunk.take(part)


class SpilledChunks:
    """Embedded chunks written once to a local folder and read back on every later pass, so a pool whose
    embeddings are computed (images decoded and encoded) pays that cost once per run. One ``.npz`` per chunk
    (ids, image_emb, text_emb, texts, the numeric extra columns), read with ``allow_pickle=False``; memory is
    one chunk. ``spill(chunks)`` writes while passing the chunks through; ``chunks()`` reads them back."""

    def __init__(self, folder):
        from pathlib import Path

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: list = []

    def spill(self, chunks: Iterable[PairChunk]) -> Iterator[PairChunk]:
        for chunk in chunks:
            path = self.folder / f"chunk-{len(self.files):06d}.npz"
            arrays = {"ids": chunk.ids, "image_emb": chunk.image_emb, "text_emb": chunk.text_emb,
                      "shard": np.array(chunk.shard)}
            if chunk.texts is not None:
                arrays["texts"] = np.array(chunk.texts, dtype=str) if len(chunk.texts) else np.zeros(0, "<U1")
            for k, v in chunk.columns.items():
                v = np.asarray(v)
                if v.dtype.kind in "biuf":
                    arrays[f"col:{k}"] = v
            np.savez(path, **arrays)
            self.files.append(path)
            yield chunk

    def chunks(self, texts: bool = False) -> Iterator[PairChunk]:
        for path in self.files:
            with np.load(path, allow_pickle=False) as z:
                yield PairChunk(z["ids"], z["image_emb"], z["text_emb"],
                                z["texts"].tolist() if texts and "texts" in z.files else None,
                                {k[4:]: z[k] for k in z.files if k.startswith("col:")}, str(z["shard"]))
