"""CLIP-powered scores as plain functions over embedding arrays.

- ``semantic_alignment_scores`` (SAS): cosine between each (adapted) image embedding and the
  (adapted) prompt embedding of its label.
- ``sample_diversity_scores`` (SDS): mean Euclidean distance to the K-1 nearest neighbours that share
  the sample's label (grouped by the actual labels; exact kNN, or approximate at scale: ``knn=``).
- ``clip_scores``: DataComp-style cosine between an image embedding and its caption (or label prompt).
- ``minmax``: min-max normalisation to [0, 1].

Everything is vectorised; the same-label kNN is ``keepset.scoring.knn.same_label_knn`` (exact: faiss
``IndexFlatL2`` when installed, otherwise chunked torch matrix products; approximate: an inverted file
searched with matrix products, or faiss HNSW), in bounded memory.
"""

from __future__ import annotations

import numpy as np

from keepset._checks import check_labels, check_scores


def _as_matrix(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [rows, dim], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or inf values; re-encode the samples or drop those rows")
    return arr


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def minmax(scores) -> np.ndarray:
    """Min-max normalise scores [N] to [0, 1]: ``(s - min) / (max - min)``.

    A constant array (max == min) carries no ranking information and maps to all zeros.
    Returns float64 [N].
    """
    s = check_scores(scores)
    if s.size == 0:
        return s
    lo, hi = s.min(), s.max()
    if hi - lo <= 0:
        return np.zeros_like(s)
    return (s - lo) / (hi - lo)


def semantic_alignment_scores(img_emb, txt_emb_per_class, labels) -> np.ndarray:
    """SAS_i = cos(img_emb[i], txt_emb_per_class[labels[i]]).

    Parameters
    ----------
    img_emb : float [N, d]      (adapted) image embeddings
    txt_emb_per_class : float [C, d]   (adapted) prompt embedding of every class
    labels : int [N] in [0, C)

    Returns
    -------
    float64 [N] in [-1, 1] (not yet min-max normalised).
    """
    img = _as_matrix(img_emb, "img_emb")
    txt = _as_matrix(txt_emb_per_class, "txt_emb_per_class")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image embeddings have dim {img.shape[1]} but text embeddings dim {txt.shape[1]}; "
                         "map both into one space (adapters) first")
    y = check_labels(labels, len(txt))
    if len(y) != len(img):
        raise ValueError(f"labels has {len(y)} entries but img_emb has {len(img)} rows")
    return np.einsum("nd,nd->n", _normalise_rows(img), _normalise_rows(txt)[y]).astype(np.float64)


def clip_scores(img_emb, txt_emb, labels=None) -> np.ndarray:
    """DataComp-style CLIP score: cosine between each image and its text.

    ``labels`` None: ``txt_emb`` is one caption embedding per sample [N, d] and score_i = cos(img_i, txt_i).
    ``labels`` given: ``txt_emb`` is one prompt embedding per class [C, d] and score_i = cos(img_i, txt[y_i]).
    Returns float64 [N] in [-1, 1].
    """
    if labels is not None:
        return semantic_alignment_scores(img_emb, txt_emb, labels)
    img = _as_matrix(img_emb, "img_emb")
    txt = _as_matrix(txt_emb, "txt_emb")
    if img.shape != txt.shape:
        raise ValueError(f"with one caption per sample, img_emb {img.shape} and txt_emb {txt.shape} must match")
    return np.einsum("nd,nd->n", _normalise_rows(img), _normalise_rows(txt)).astype(np.float64)


def knn_distances(emb, k: int, *, backend: str = "auto", batch_size: int = 4096) -> np.ndarray:
    """Euclidean distances from every row of ``emb`` [n, d] to its ``k`` nearest rows (itself included).

    Exact search (``keepset.scoring.knn.same_label_knn`` with one label). Returns float32 [n, k] sorted
    ascending; the first column is the row itself, 0. ``backend``: "faiss", "torch" or "auto" (faiss when
    importable); ``batch_size``: rows per block.
    """
    from keepset.scoring.knn import same_label_knn

    x = _as_matrix(emb, "emb")
    n = len(x)
    if isinstance(k, bool) or not 1 <= int(k) <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    out = np.zeros((n, int(k)), dtype=np.float32)
    if k > 1:
        out[:, 1:] = same_label_knn(x, np.zeros(n, dtype=np.int64), int(k), method="exact", exact_backend=backend,
                                    chunk_rows=batch_size)[0]
    return out


def sample_diversity_scores(emb, labels, k: int = 10, *, knn: str = "auto", backend: str = "auto", seed: int = 0,
                            progress: bool = False) -> np.ndarray:
    """SDS_i = mean Euclidean distance from sample i to its K-1 nearest neighbours of the same label.

    Parameters
    ----------
    emb : float [N, d]   (adapted) image embeddings
    labels : int [N]     the samples' labels; neighbours are searched within each label group
    k : int >= 2         neighbourhood size K including the sample itself; capped per class at the class size
    knn : "auto" | "exact" | "ivf" | "hnsw"
                         the neighbour search (``keepset.scoring.knn``). "auto" (default) is exact for every
                         class of at most ``keepset.scoring.knn.AUTO_EXACT_MAX`` (20,000) samples, hence
                         identical to "exact" on data sets of that size per class, and the inverted file
                         ("ivf", recall@10 >= 0.95 measured) above, where exact search grows quadratically
    backend : "auto" | "faiss" | "torch"   engine of the exact search (faiss when installed)
    seed : int           seeds the approximate index (k-means of "ivf")

    Returns
    -------
    float64 [N] >= 0 (0 for a sample alone in its class). Not yet min-max normalised.
    """
    from keepset.scoring.knn import same_label_knn

    x = _as_matrix(emb, "emb")
    y = check_labels(labels)
    if len(y) != len(x):
        raise ValueError(f"labels has {len(y)} entries but emb has {len(x)} rows")
    if isinstance(k, bool) or int(k) < 2:
        raise ValueError(f"k must be >= 2 (the sample itself plus at least one neighbour), got {k}")
    dist, _ = same_label_knn(x, y, int(k), method=knn, exact_backend=backend, seed=seed, progress=progress)
    found = np.isfinite(dist)
    count = found.sum(1)
    total = np.where(found, dist, 0.0).sum(1, dtype=np.float64)
    return np.divide(total, count, out=np.zeros(len(x), dtype=np.float64), where=count > 0)
