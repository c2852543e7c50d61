"""Per-sample, per-step training dynamics on disk or in memory.

Every sample is seen once per epoch, so each recorded field is a ``[epochs, N]`` float32 array
(NaN where a sample was not seen), with ``step[epochs, N]`` the global step of each visit and
``batch_size[total_steps]`` the size of every batch. With ``directory`` the arrays are
memory-mapped ``.npy`` files, so 10^6 samples x 50 epochs never needs to sit in RAM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


class DynamicsRecorder:
    """Stores named per-sample values at every step a sample is seen.

    Parameters
    ----------
    n_samples : int
    epochs : int
    fields : names of the recorded values (e.g. ``("mimic", "mimic_normed")``)
    directory : where to memory-map the arrays; None keeps them in RAM
    """

    def __init__(self, n_samples: int, epochs: int, fields: Sequence[str], directory: str | Path | None = None):
        if n_samples < 1 or epochs < 1:
            raise ValueError("a recorder needs n_samples >= 1 and epochs >= 1")
        self.n_samples, self.epochs, self.fields = int(n_samples), int(epochs), tuple(fields)
        self.directory = Path(directory) if directory is not None else None
        shape = (self.epochs, self.n_samples)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            open_mm = np.lib.format.open_memmap
            self.values = {f: open_mm(self.directory / f"{f}.npy", "w+", np.float32, shape) for f in self.fields}
            self.step = open_mm(self.directory / "step.npy", "w+", np.int32, shape)
            for arr in self.values.values():
                arr[:] = np.nan
            self.step[:] = -1
        else:
            self.values = {f: np.full(shape, np.nan, np.float32) for f in self.fields}
            self.step = np.full(shape, -1, np.int32)
        self._batch_sizes: list[int] = []

    @classmethod
    def open(cls, directory: str | Path) -> "DynamicsRecorder":
        """Open dynamics recorded to ``directory`` (read-only memory maps)."""
        d = Path(directory)
        sizes_file = d / "batch_sizes.json"
        if not (d / "step.npy").exists() or not sizes_file.exists():
            raise FileNotFoundError(f"{d} holds no recorded dynamics (step.npy and batch_sizes.json are missing); "
                                    "record them with DynamicsRecorder(directory=...) and flush()")
        self = cls.__new__(cls)
        self.directory = d
        try:
            self.step = np.load(d / "step.npy", mmap_mode="r", allow_pickle=False)
            self.values = {p.stem: np.load(p, mmap_mode="r", allow_pickle=False)
                           for p in sorted(d.glob("*.npy")) if p.stem != "step"}
            self._batch_sizes = [int(b) for b in json.loads(sizes_file.read_text())]
        except ValueError as exc:
            raise ValueError(f"{d} holds corrupt dynamics files: {exc}") from None
        for name, arr in self.values.items():
            if arr.shape != self.step.shape:
                raise ValueError(f"{d}/{name}.npy has shape {arr.shape} but step.npy has {self.step.shape}")
        self.epochs, self.n_samples = self.step.shape
        self.fields = tuple(self.values)
        return self

    def record(self, epoch: int, step: int, indices, **values) -> None:
        """Store ``values[f][i]`` for the samples at positions ``indices`` [B], seen at ``step`` of ``epoch``."""
        idx = _np(indices).astype(np.int64)
        unknown = set(values) - set(self.fields)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; this recorder stores {self.fields}")
        for f, v in values.items():
            self.values[f][epoch, idx] = _np(v).astype(np.float32)
        self.step[epoch, idx] = step
        while len(self._batch_sizes) <= step:
            self._batch_sizes.append(0)
        self._batch_sizes[step] = len(idx)

    @property
    def batch_sizes(self) -> np.ndarray:
        """Size of every recorded step's batch: int64 [total_steps]."""
        return np.asarray(self._batch_sizes, dtype=np.int64)

    def flush(self) -> None:
        """Write memory-mapped arrays and the batch sizes to disk (no-op in memory)."""
        if self.directory is None:
            return
        for arr in [*self.values.values(), self.step]:
            arr.flush()
        (self.directory / "batch_sizes.json").write_text(json.dumps(self._batch_sizes))

    def _reduce_columns(self, field: str, fn, chunk: int = 1 << 16) -> np.ndarray:
        if field not in self.values:
            raise ValueError(f"no recorded field {field!r}; recorded: {list(self.values)}")
        arr = self.values[field]
        out = np.empty(self.n_samples, dtype=np.float32)
        for start in range(0, self.n_samples, chunk):  # column blocks: bounded memory for memory maps
            out[start:start + chunk] = fn(np.asarray(arr[:, start:start + chunk]))
        return out

    def last(self, field: str) -> np.ndarray:
        """Each sample's most recent recorded value of ``field``: float32 [N] (NaN if never seen)."""
        def last_of(block):
            seen = ~np.isnan(block)
            row = block.shape[0] - 1 - np.argmax(seen[::-1], axis=0)
            return np.where(seen.any(0), block[row, np.arange(block.shape[1])], np.nan)
        return self._reduce_columns(field, last_of)

    def mean(self, field: str) -> np.ndarray:
        """Each sample's mean over its recorded values of ``field``: float32 [N] (NaN if never seen)."""
        def mean_of(block):
            seen = ~np.isnan(block)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(seen, block, 0.0).sum(0, dtype=np.float64) / seen.sum(0)
        return self._reduce_columns(field, mean_of)


def _np(v) -> np.ndarray:
    return v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
