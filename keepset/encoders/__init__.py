"""Stage 2 of the data flow (beside models): encoders that turn samples into embeddings, an on-disk
embedding cache, and the CLIP-powered dataset adapters.

- ``CLIPEncoder`` (transformers CLIP: images and texts), ``SentenceTransformerEncoder`` / ``load_minilm``
  (texts), ``NetworkEncoder`` (a trained keepset network's penultimate layer: images).
- ``cached_image_embeddings`` / ``cached_text_embeddings``: ``.npy`` cache keyed by encoder and data.
- ``ClipAdapters``, ``train_adapters``, ``info_nce_loss``, ``save_adapters`` / ``load_adapters``.
"""

from __future__ import annotations

import importlib

# name -> submodule. Imported on first use (PEP 562), so that ``keepset.encoders.spec`` (the CLI's help texts) and
# ``keepset.encoders.base`` load without torch: ``keepset --help`` must stay fast.
_EXPORTS = {
    "ClipAdapters": "adapters", "average_templates": "adapters", "class_prompts": "adapters",
    "info_nce_loss": "adapters", "load_adapters": "adapters", "save_adapters": "adapters",
    "train_adapters": "adapters",
    "ImageEncoder": "base", "TextEncoder": "base",
    "cached_image_embeddings": "cache", "cached_text_embeddings": "cache", "default_cache_dir": "cache",
    "CLIPEncoder": "clip",
    "NetworkEncoder": "network", "train_trusted_network": "network",
    "IMAGE_SPEC_HELP": "spec", "TEXT_SPEC_HELP": "spec", "load_image_encoder": "spec", "load_text_encoder": "spec",
    "SentenceTransformerEncoder": "text", "load_minilm": "text", "minilm_path": "text",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"keepset.encoders.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keepset.encoders' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "ImageEncoder", "TextEncoder", "CLIPEncoder", "SentenceTransformerEncoder", "load_minilm", "minilm_path",
    "NetworkEncoder", "train_trusted_network", "cached_image_embeddings", "cached_text_embeddings",
    "default_cache_dir", "ClipAdapters", "train_adapters", "info_nce_loss", "save_adapters", "load_adapters",
    "class_prompts", "average_templates", "load_image_encoder", "load_text_encoder", "IMAGE_SPEC_HELP",
    "TEXT_SPEC_HELP",
]
