"""Dataset adaptation: one linear adapter per modality, trained with a symmetric InfoNCE loss.

``A_I: R^{d_img} -> R^d`` and ``A_T: R^{d_txt} -> R^d`` are two separate ``nn.Linear`` modules (the
published code reuses one module for both; keepset does not). With CLIP both input dims equal d and the
adapters start as the identity, so training starts from CLIP's own alignment. When the dims differ
(e.g. a network's 128-d penultimate features and MiniLM's 384-d text embeddings) the adapters map both
into a common space of ``dim`` (default: the smaller input dim), from a seeded random start.

Duplicates in a batch: prompts are per class, so a batch usually holds several images of one class.
The loss uses the *unique* classes of the batch as the text side:
  image -> text: cross-entropy over the batch's unique class prompts, target = the image's class;
  text -> image: for each class prompt, the mean over its images of -log softmax over the batch's
  images (every image of that class is a positive, SupCon-style).
The two directions are averaged. No image is ever treated as a negative of its own class prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from keepset._checks import check_labels


class ClipAdapters(nn.Module):
    """Two linear adapters: ``image`` (d_img -> dim) and ``text`` (d_txt -> dim)."""

    def __init__(self, d_img: int, d_txt: int, dim: int | None = None, *, identity_init: bool = True):
        super().__init__()
        dim = int(dim or min(d_img, d_txt))
        if min(d_img, d_txt, dim) < 1:
            raise ValueError(f"adapter dims must be >= 1, got d_img={d_img}, d_txt={d_txt}, dim={dim}")
        self.image = nn.Linear(d_img, dim)
        self.text = nn.Linear(d_txt, dim)
        if identity_init:
            for lin, d_in in ((self.image, d_img), (self.text, d_txt)):
                if d_in == dim:
                    with torch.no_grad():
                        lin.weight.copy_(torch.eye(dim))
                        lin.bias.zero_()
        self.config = {"d_img": int(d_img), "d_txt": int(d_txt), "dim": dim}

    def forward(self, img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(img), self.text(txt)

    @torch.no_grad()
    def transform_images(self, img_emb) -> np.ndarray:
        """Adapted image embeddings float32 [N, dim]."""
        self.eval()
        x = torch.as_tensor(np.asarray(img_emb, dtype=np.float32))
        return torch.cat([self.image(x[i:i + 65536]) for i in range(0, len(x), 65536)]).numpy() if len(x) else \
            np.zeros((0, self.config["dim"]), dtype=np.float32)

    @torch.no_grad()
    def transform_texts(self, txt_emb) -> np.ndarray:
        """Adapted text embeddings float32 [M, dim]."""
        self.eval()
        return self.text(torch.as_tensor(np.asarray(txt_emb, dtype=np.float32))).numpy()


def info_nce_loss(img_z: torch.Tensor, txt_z_per_class: torch.Tensor, labels: torch.Tensor,
                  temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE between a batch of images [B, d] and the prompts of their classes.

    ``txt_z_per_class`` [C, d] holds every class prompt; only the batch's unique classes take part.
    Returns a scalar (mean of the image->text and text->image losses; see the module docstring).
    """
    classes, target = torch.unique(labels, return_inverse=True)
    img = F.normalize(img_z, dim=1)
    txt = F.normalize(txt_z_per_class[classes], dim=1)
    logits = img @ txt.T / temperature                      # [B, u]
    loss_i2t = F.cross_entropy(logits, target)
    log_p = torch.log_softmax(logits.T, dim=1)              # [u, B]: each prompt over the batch's images
    positives = (target[None, :] == torch.arange(len(classes), device=labels.device)[:, None]).to(log_p.dtype)
    loss_t2i = (-(log_p * positives).sum(1) / positives.sum(1)).mean()
    return 0.5 * (loss_i2t + loss_t2i)


def class_prompts(class_names: list[str], templates: list[str]) -> list[str]:
    """``[template.format(name) for name in class_names for template in templates]`` (class-major)."""
    if not templates:
        raise ValueError("give at least one prompt template, e.g. 'A photo of a {}'")
    out = []
    for name in class_names:
        for t in templates:
            if "{}" not in t and "{class}" not in t:
                raise ValueError(f"prompt template {t!r} has no '{{}}' (or '{{class}}') for the class name")
            out.append(t.replace("{class}", "{}").format(name))
    return out


def average_templates(txt_emb: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean of the L2-normalised embeddings of each class's templates: [C * T, d] -> [C, d]."""
    emb = np.asarray(txt_emb, dtype=np.float32)
    if len(emb) % num_classes:
        raise ValueError(f"{len(emb)} prompt embeddings is not a multiple of {num_classes} classes")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.reshape(num_classes, len(emb) // num_classes, -1).mean(1)


def train_adapters(img_emb, txt_emb_per_class, labels, *, dim: int | None = None, epochs: int = 30,
                   batch_size: int = 256, lr: float = 1e-4, temperature: float = 0.07, seed: int = 0,
                   progress: bool = True) -> tuple[ClipAdapters, list[float]]:
    """Train the two adapters with Adam on (image embedding, label prompt) pairs.

    Parameters
    ----------
    img_emb : float [N, d_img]; txt_emb_per_class : float [C, d_txt]; labels : int [N] in [0, C)
    dim : common dim (default min(d_img, d_txt)); epochs, batch_size, lr (Adam, 1e-4), temperature
    seed : seeds the initialisation and the batch order (same seed, same adapters)

    Returns (adapters in eval mode, mean loss of every epoch).
    """
    img = torch.as_tensor(np.asarray(img_emb, dtype=np.float32))
    txt = torch.as_tensor(np.asarray(txt_emb_per_class, dtype=np.float32))
    if img.ndim != 2 or txt.ndim != 2:
        raise ValueError(f"img_emb [N, d] and txt_emb_per_class [C, d] must be 2-D, got {tuple(img.shape)}, "
                         f"{tuple(txt.shape)}")
    if not (torch.isfinite(img).all() and torch.isfinite(txt).all()):
        raise ValueError("embeddings hold NaN or inf values; re-encode before training adapters")
    y = torch.as_tensor(check_labels(labels, len(txt)))
    if len(y) != len(img):
        raise ValueError(f"labels has {len(y)} entries but img_emb has {len(img)} rows")
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    torch.manual_seed(int(seed))
    adapters = ClipAdapters(img.shape[1], txt.shape[1], dim)
    opt = torch.optim.Adam(adapters.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    n = len(img)
    steps = (n + batch_size - 1) // batch_size
    history = []
    from keepset._progress import progress_bar

    bar = progress_bar(total=epochs * steps, desc="adapters", enabled=progress)
    try:
        for _ in range(int(epochs)):
            adapters.train()
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for b in range(steps):
                idx = order[b * batch_size:(b + 1) * batch_size]
                zi, zt = adapters(img[idx], txt)
                loss = info_nce_loss(zi, zt, y[idx], temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                bar.update(1)
            history.append(total / n)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    finally:
        bar.close()
    return adapters.eval(), history


def save_adapters(adapters: ClipAdapters, path: str | Path, overwrite: bool = False) -> Path:
    """Write both adapters to ``path`` (.safetensors, config in the header), atomically; same adapters, same bytes."""
    from keepset.models.checkpoint import write_safetensors

    tensors = {k: v.detach().contiguous().cpu() for k, v in adapters.state_dict().items()}
    return write_safetensors(path, tensors, {"keepset_adapters": json.dumps(adapters.config, sort_keys=True)},
                             overwrite=overwrite)


def load_adapters(path: str | Path) -> ClipAdapters:
    """Load adapters written by ``save_adapters`` (safetensors: nothing is unpickled)."""
    from keepset.models.checkpoint import read_safetensors

    tensors, meta = read_safetensors(path, "adapter file")
    if "keepset_adapters" not in meta:
        raise ValueError(f"{path} holds no keepset adapters (missing metadata); write it with save_adapters")
    cfg = json.loads(meta["keepset_adapters"])
    adapters = ClipAdapters(cfg["d_img"], cfg["d_txt"], cfg["dim"])
    try:
        adapters.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not match its declared adapter shapes: {exc}") from None
    return adapters.eval()
