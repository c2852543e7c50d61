"""A Hugging Face transformers CLIP model as an image and text encoder.

Loaded from a local directory (``save_pretrained`` layout: config.json, model.safetensors, tokenizer
files, optional preprocessor/processor config) or a hub name already in the local HF cache. Nothing is
downloaded unless ``local_files_only=False`` is passed explicitly.

Images (``[N, C, H, W]`` float in [0, 1], 1 or 3 channels) are preprocessed in torch the way
``CLIPImageProcessor`` does: grey -> RGB, bicubic resize of the shortest edge, centre crop, and
normalisation with the processor's mean / std. Embeddings are the projected features
(``get_image_features`` / ``get_text_features``), not normalised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from keepset.data import SampleSet
from keepset.encoders.base import batches, check_texts, hash_strings, positions_of

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(out) -> torch.Tensor:
    """transformers 4 returns a tensor, transformers 5 a ModelOutput whose pooler_output is the projection."""
    if torch.is_tensor(out):
        return out
    for attr in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(out, attr, None)
        if value is not None:
            return value
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")


def _size_value(size, default: int) -> tuple[int | None, tuple[int, int] | None]:
    """(shortest_edge, (height, width)) from a processor size entry (dict or SizeDict)."""
    if size is None:
        return default, None
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    if get("shortest_edge", None):
        return int(get("shortest_edge")), None
    if get("height", None) and get("width", None):
        return None, (int(get("height")), int(get("width")))
    return default, None


class CLIPEncoder:
    """Image and text encoder from a transformers ``CLIPModel``.

    Parameters
    ----------
    path_or_name : a local directory saved with ``save_pretrained`` or a hub name in the local cache
    device : torch device (default CPU)
    batch_size : images / texts per forward pass
    local_files_only : never reach the network (default True)
    """

    def __init__(self, path_or_name: str, *, device=None, batch_size: int = 256, local_files_only: bool = True,
                 progress: bool = True):
        self.source = str(path_or_name)
        path = Path(self.source).expanduser()
        looks_local = path.exists() or self.source.startswith((".", "/", "~"))
        if looks_local and not (path / "config.json").exists():
            raise FileNotFoundError(f"no CLIP model at {path}: expected a directory written by "
                                    "CLIPModel.save_pretrained (with config.json and the weights)")
        src = str(path) if looks_local else self.source
        try:
            from transformers import AutoTokenizer, CLIPModel
        except ImportError:
            raise ImportError("CLIP encoders need the transformers package (pip install transformers)") from None
        try:
            self.model = CLIPModel.from_pretrained(src, local_files_only=local_files_only)
            self.tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local_files_only)
        except OSError as exc:
            raise FileNotFoundError(f"could not load a CLIP model and tokenizer from {self.source!r} "
                                    f"without downloading: {exc}") from None
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.progress = progress
        self._read_preprocessing(src, local_files_only)
        cfg = self.model.config
        self.max_length = int(getattr(cfg.text_config, "max_position_embeddings", 77))
        self.dim = int(cfg.projection_dim)
        self.name = f"clip:{self.source}"
        self.fingerprint = hash_strings([
            "clip", json.dumps(cfg.to_dict(), sort_keys=True, default=str), self._weights_digest(),
            str(self.mean), str(self.std), str(self.resize), str(self.crop)])

    def _weights_digest(self) -> str:
        # hashing every weight of a large CLIP is slow; the tensor names and shapes plus the values of
        # the first and last tensors identify a checkpoint in practice
        import hashlib

        sd = self.model.state_dict()
        keys = sorted(sd)
        h = hashlib.sha256()
        for k in keys:
            h.update(f"{k}{tuple(sd[k].shape)}".encode())
        for k in keys[:2] + keys[-2:]:
            h.update(sd[k].detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def _read_preprocessing(self, src: str, local_files_only: bool) -> None:
        image_size = int(self.model.config.vision_config.image_size)
        mean, std, size, crop = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, None, None
        try:
            from transformers import CLIPImageProcessor

            proc = CLIPImageProcessor.from_pretrained(src, local_files_only=local_files_only)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
            size, crop = getattr(proc, "size", None), getattr(proc, "crop_size", None)
        except (OSError, ValueError, ImportError):
            pass  # no processor config saved: CLIP's standard preprocessing at the model's image size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.resize = _size_value(size, image_size)
        crop_short, crop_hw = _size_value(crop, image_size)
        self.crop = crop_hw or (crop_short, crop_short)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """float [B, C, H, W] in [0, 1] -> normalised pixel values [B, 3, crop_h, crop_w]."""
        x = torch.as_tensor(images, dtype=torch.float32)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"CLIP encodes images [N, C, H, W] with 1 or 3 channels, got shape {tuple(x.shape)}; "
                             "feature arrays need a network or feature encoder instead")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        short, hw = self.resize
        h, w = x.shape[-2:]
        if hw is None:
            scale = short / min(h, w)
            hw = (max(1, round(h * scale)), max(1, round(w * scale)))
        if tuple(hw) != (h, w):
            x = F.interpolate(x, size=hw, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        ch, cw = self.crop
        top, left = max(0, (x.shape[-2] - ch) // 2), max(0, (x.shape[-1] - cw) // 2)
        x = x[..., top:top + ch, left:left + cw]
        if x.shape[-2:] != (ch, cw):
            x = F.interpolate(x, size=(ch, cw), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_images(self, samples: SampleSet, positions=None) -> np.ndarray:
        """Projected image features float32 [len(positions), projection_dim]."""
        pos = positions_of(samples, positions)
        out = np.zeros((len(pos), self.dim), dtype=np.float32)
        for a, b in batches(len(pos), self.batch_size, "CLIP images", self.progress):
            px = self.preprocess(samples.get_inputs(pos[a:b])).to(self.device)
            out[a:b] = _features(self.model.get_image_features(pixel_values=px)).float().cpu().numpy()
        return out

    @torch.no_grad()
    def encode_texts(self, texts) -> np.ndarray:
        """Projected text features float32 [M, projection_dim]."""
        texts = check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for a, b in batches(len(texts), self.batch_size, "CLIP texts", self.progress and len(texts) > self.batch_size):
            tok = self.tokenizer(texts[a:b], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
            out[a:b] = _features(self.model.get_text_features(**tok)).float().cpu().numpy()
        return out
