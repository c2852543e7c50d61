"""Contrastive probing, the image-text analogue of linear probing: frozen image and text encoders
(their embeddings precomputed, as DataComp ships them) and trainable projections into a shared space,
trained and scored with CLIP's loss (``keepset.losses.clip_loss``)."""

from __future__ import annotations

import math

import torch
from torch import nn


class TwoTowerProbe(nn.Module):
    """Trainable projections of frozen image and text embeddings into one space.

    Parameters
    ----------
    d_img, d_txt : sizes of the frozen image and text embeddings.
    dim : size of the shared space.
    text_hidden : widths of an optional MLP on the text side (``text_mlp``: Linear -> ReLU per width)
        before ``text_proj``; ``text_mlp.0`` is then its first Linear. Empty: ``text_mlp`` is the identity.
    learn_scale : learn the logit scale (parameter ``log_scale``, initialised to ``log(init_scale)``);
        the forward then returns it as a third output, which ``clip_loss`` uses.
    init_scale : initial logit scale (CLIP's ``1 / 0.07``).
    bias : whether the projections have a bias (CLIP's have none).

    ``forward(img [B, d_img], txt [B, d_txt])`` returns ``(zi [B, dim], zt [B, dim])``, or
    ``(zi, zt, scale)`` with ``learn_scale``. The default Mimic Score layers are both projections' weights.
    """

    def __init__(self, d_img: int, d_txt: int, dim: int, *, text_hidden: tuple[int, ...] | list[int] = (),
                 learn_scale: bool = False, init_scale: float = 1.0 / 0.07, bias: bool = False):
        super().__init__()
        for name, val in (("d_img", d_img), ("d_txt", d_txt), ("dim", dim)):
            if int(val) != val or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        text_hidden = tuple(int(h) for h in text_hidden)
        if any(h < 1 for h in text_hidden):
            raise ValueError(f"text_hidden widths must be positive, got {text_hidden}")
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
        self.image_proj = nn.Linear(d_img, dim, bias=bias)
        layers: list[nn.Module] = []
        width = d_txt
        for h in text_hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.text_mlp = nn.Sequential(*layers)
        self.text_proj = nn.Linear(width, dim, bias=bias)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale))) if learn_scale else None
        self.default_mimic_layers = ["image_proj.weight", "text_proj.weight"]
        self.config = {"kind": "two_tower", "d_img": int(d_img), "d_txt": int(d_txt), "dim": int(dim),
                       "text_hidden": list(text_hidden), "learn_scale": bool(learn_scale),
                       "init_scale": float(init_scale), "bias": bool(bias)}

    def forward(self, img: torch.Tensor, txt: torch.Tensor):
        zi = self.image_proj(img)
        zt = self.text_proj(self.text_mlp(txt))
        if self.log_scale is not None:
            return zi, zt, self.log_scale.exp()
        return zi, zt
