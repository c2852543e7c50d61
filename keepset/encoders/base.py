"""The encoder interface and shared helpers.

An image encoder has ``encode_images(samples: SampleSet, positions=None) -> float32 [N, d]``; a text
encoder has ``encode_texts(texts: list[str]) -> float32 [M, d]``. Both expose ``fingerprint`` (a short
string identifying the weights and preprocessing, used as the cache key) and ``name``.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Protocol, runtime_checkable

import numpy as np
import torch

from keepset.data import SampleSet
from keepset.models.fingerprint import model_fingerprint


@runtime_checkable
class ImageEncoder(Protocol):
    name: str
    fingerprint: str

    def encode_images(self, samples: SampleSet, positions=None) -> np.ndarray: ...


@runtime_checkable
class TextEncoder(Protocol):
    name: str
    fingerprint: str

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...


def hash_strings(parts: Iterable[str], length: int = 16) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:length]


def hash_state_dict(module: torch.nn.Module, length: int = 16) -> str:
    """A short hash of every tensor of ``module`` (names, dtypes, shapes and values): ``model_fingerprint``."""
    return model_fingerprint(module, length)


def check_texts(texts) -> list[str]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings")
    return list(texts)


def batches(n: int, batch_size: int, desc: str, progress: bool):
    """Yield (start, stop) pairs covering range(n) in batches, with a tqdm bar."""
    from keepset._progress import progress_bar

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with progress_bar(total=n, desc=desc, enabled=progress) as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            yield start, stop
            bar.update(stop - start)


def positions_of(samples: SampleSet, positions) -> np.ndarray:
    return np.arange(len(samples)) if positions is None else np.asarray(positions, dtype=np.int64)
