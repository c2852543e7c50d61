"""Final metrics of a two-tower probe: zero-shot classification and text-to-image retrieval.

- ``zero_shot_accuracy(probe, image_emb, labels, prompt_emb)``: each image [n, d_img] is given the class
  whose prompt embedding [K, d_txt] (e.g. "a photo of a {class}") lands nearest in the probe's space.
- ``recall_at_k(probe, image_emb, text_emb, k)``: the fraction of captions whose own image is among the k
  images nearest to them, among the given pairs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def _project(probe: nn.Module, image_emb, text_emb) -> tuple[torch.Tensor, torch.Tensor]:
    probe.eval()
    device = next(probe.parameters()).device
    img = torch.as_tensor(np.asarray(image_emb, np.float32), device=device)
    txt = torch.as_tensor(np.asarray(text_emb, np.float32), device=device)
    return probe.image_proj(img).float().cpu(), probe.text_proj(probe.text_mlp(txt)).float().cpu()


def zero_shot_accuracy(probe: nn.Module, image_emb, labels, prompt_emb) -> float:
    """Top-1 accuracy of zero-shot classification: argmax_k cos(probe image i, probe prompt k) against
    ``labels`` [n] in [0, K). ``probe``: a ``TwoTowerProbe`` (``image_proj``, ``text_mlp``, ``text_proj``)."""
    y = np.asarray(labels)
    if len(y) != len(image_emb) or not len(y):
        raise ValueError(f"labels has {len(y)} entries but there are {len(image_emb)} images")
    zi, zp = _project(probe, image_emb, prompt_emb)
    pred = (F.normalize(zi, dim=1) @ F.normalize(zp, dim=1).t()).argmax(1).numpy()
    return float((pred == y).mean())


def recall_at_k(probe: nn.Module, image_emb, text_emb, k: int = 1) -> float:
    """Text-to-image recall@k among the given pairs [n] (rows aligned): a caption counts when its own image
    is among the ``k`` images most similar to it (ties broken against it: a tie with another image's score
    counts as ranked behind it)."""
    if len(image_emb) != len(text_emb) or not len(image_emb):
        raise ValueError(f"image_emb and text_emb need one row per pair, got {len(image_emb)} and {len(text_emb)}")
    zi, zt = _project(probe, image_emb, text_emb)
    sim = F.normalize(zt, dim=1) @ F.normalize(zi, dim=1).t()          # [captions, images]
    own = sim.diagonal()
    rank = (sim >= own[:, None]).sum(1) - 1                            # images scoring at least as high, others
    return float((rank < k).float().mean())
