"""Scores of image-text pairs under a two-tower probe, as plain functions over embedding arrays.

- ``pair_cosines(probe, image_emb, text_emb)``: cosine between each pair's projected image and its own
  projected caption. Under the reference probe (projections trained on trusted pairs) it is keepset's
  analogue of DataComp's CLIP score (``clip_score``); under adapters fitted to the pool's own pairs it is
  the Semantic Alignment Score with each pair's own caption (``sas``).
- ``quality_above_clean_quantile(pool_scores, clean_scores, percentile)``: a dataset-quality estimate from
  where the pool's scores sit against those of clean held-out pairs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def pair_cosines(probe: nn.Module, image_emb, text_emb, *, batch_size: int = 8192) -> np.ndarray:
    """cos(probe's image projection, probe's text projection) of every pair: float64 [n] in [-1, 1].

    probe : a two-tower module ``probe(img [B, d_img], txt [B, d_txt]) -> (zi, zt[, scale])``
    (``keepset.models.TwoTowerProbe``); image_emb float [n, d_img], text_emb float [n, d_txt] (frozen
    encoders' embeddings, rows aligned). Computed in batches on the probe's device, returned on the CPU.
    """
    img = np.asarray(image_emb, dtype=np.float32)
    txt = np.asarray(text_emb, dtype=np.float32)
    if img.ndim != 2 or txt.ndim != 2 or len(img) != len(txt):
        raise ValueError(f"image_emb [n, d_img] and text_emb [n, d_txt] must be 2-D with one row per pair, got "
                         f"{img.shape} and {txt.shape}")
    if not (np.isfinite(img).all() and np.isfinite(txt).all()):
        raise ValueError("the embeddings hold NaN or inf values; recompute them")
    was_training = probe.training
    probe.eval()
    device = next(probe.parameters()).device
    out = []
    for s in range(0, len(img), batch_size):
        zi, zt = probe(torch.from_numpy(img[s:s + batch_size]).to(device),
                       torch.from_numpy(txt[s:s + batch_size]).to(device))[:2]
        out.append(F.cosine_similarity(zi.float(), zt.float(), dim=1).cpu())
    probe.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def quality_above_clean_quantile(pool_scores, clean_scores, percentile: float = 5.0) -> dict:
    """Estimated fraction of good pairs in a pool from clean held-out pairs' scores.

    With ``t`` the ``percentile``-th percentile of ``clean_scores`` [m] (pairs known to be clean, never
    trained on), a clean pool pair scores at least ``t`` with probability ``1 - percentile / 100``, so

        estimate = min(1, #{pool_scores >= t} / (N (1 - percentile / 100)))

    It counts a corrupted pair that scores like a clean one as clean, so it over-estimates quality by the
    share of corrupted pairs above ``t``, and its own noise grows as ``m`` shrinks (the percentile of a few
    dozen scores moves). Returns {"estimate", "threshold", "percentile", "n_clean"}.
    """
    pool = np.asarray(pool_scores, dtype=np.float64)
    clean = np.asarray(clean_scores, dtype=np.float64)
    if pool.ndim != 1 or clean.ndim != 1 or not len(pool) or not len(clean):
        raise ValueError("pool_scores and clean_scores must be non-empty 1-D score arrays")
    if not (np.isfinite(pool).all() and np.isfinite(clean).all()):
        raise ValueError("the scores hold NaN or inf values")
    if not 0 <= percentile < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    t = float(np.percentile(clean, percentile))
    above = float((pool >= t).mean())
    return {"estimate": min(1.0, above / (1.0 - percentile / 100.0)), "threshold": t,
            "percentile": float(percentile), "n_clean": int(len(clean))}
