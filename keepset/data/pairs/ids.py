"""Duplicate-id detection across the shards of a stream, in 8 bytes per pair.

Sources whose ids are only known by reading the data (webdataset json, Hugging Face id columns) check
each shard's ids against those of the shards before it while they stream. ``IdTracker`` keeps a 64-bit
digest of every id seen, in a few sorted numpy runs merged like a log-structured tree (amortised
O(N log N) in all, O(log N) per look-up): memory grows by 8 bytes per pair, never by a shard's data. Two
different ids share a digest with probability about N^2 / 2^65 (3e-6 for ten million pairs), in which
case a duplicate is reported that is not one; a real duplicate is never missed.
"""

from __future__ import annotations

import hashlib

import numpy as np


def id_digests(ids) -> np.ndarray:
    """uint64 [n]: the first 8 bytes of blake2b(str(id)) of every id (ints and strings alike)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(i).encode("utf-8"), digest_size=8).digest(), "little")
                     for i in np.asarray(ids).tolist()], dtype=np.uint64)


class IdTracker:
    """Remembers ids across shards; ``add(ids, shard)`` raises ValueError on an id seen before."""

    def __init__(self, source: str = ""):
        self.source = source
        self._runs: list[np.ndarray] = []
        self.count = 0

    def add(self, ids, shard: str) -> None:
        ids = np.asarray(ids)
        d = id_digests(ids)
        order = np.argsort(d, kind="stable")
        ds = d[order]
        inside = np.flatnonzero(ds[1:] == ds[:-1])
        if len(inside):
            examples = sorted({str(ids[order[k]]) for k in inside[:3]})
            raise ValueError(f"{len(inside)} duplicate ids inside shard {shard} of {self.source} "
                             f"(e.g. {examples}); every pair needs its own id")
        seen = np.zeros(len(ds), dtype=bool)
        for run in self._runs:
            pos = np.searchsorted(run, ds)
            seen |= (pos < len(run)) & (run[np.minimum(pos, len(run) - 1)] == ds)
        if seen.any():
            examples = [str(ids[order[k]]) for k in np.flatnonzero(seen)[:3]]
            raise ValueError(f"{int(seen.sum())} ids in shard {shard} of {self.source} already appeared earlier "
                             f"in the pool (e.g. {examples}); ids must be unique across the pool")
        self._runs.append(ds)
        self.count += len(ds)
        while len(self._runs) >= 2 and len(self._runs[-1]) * 2 >= len(self._runs[-2]):
            b = self._runs.pop()
            a = self._runs.pop()
            self._runs.append(np.sort(np.concatenate([a, b]), kind="stable"))
