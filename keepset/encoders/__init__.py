"""Stage 2 of the data flow (beside models): encoders that turn samples into embeddings, an on-disk
embedding cache, and the CLIP-powered dataset adapters.

- ``CLIPEncoder`` (transformers CLIP: images and texts), ``SentenceTransformerEncoder`` / ``load_minilm``
  (texts), ``NetworkEncoder`` (a trained keepset network's penultimate layer: images).
- ``cached_image_embeddings`` / ``cached_text_embeddings``: ``.npy`` cache keyed by encoder and data.
- ``ClipAdapters``, ``train_adapters``, ``info_nce_loss``, ``save_adapters`` / ``load_adapters``.
"""

from keepset.encoders.adapters import (
    ClipAdapters, average_templates, class_prompts, info_nce_loss, load_adapters, save_adapters, train_adapters,
)
from keepset.encoders.base import ImageEncoder, TextEncoder
from keepset.encoders.cache import cached_image_embeddings, cached_text_embeddings, default_cache_dir
from keepset.encoders.clip import CLIPEncoder
from keepset.encoders.network import NetworkEncoder, train_trusted_network
from keepset.encoders.spec import IMAGE_SPEC_HELP, TEXT_SPEC_HELP, load_image_encoder, load_text_encoder
from keepset.encoders.text import SentenceTransformerEncoder, load_minilm, minilm_path

__all__ = [
    "ImageEncoder", "TextEncoder", "CLIPEncoder", "SentenceTransformerEncoder", "load_minilm", "minilm_path",
    "NetworkEncoder", "train_trusted_network", "cached_image_embeddings", "cached_text_embeddings",
    "default_cache_dir", "ClipAdapters", "train_adapters", "info_nce_loss", "save_adapters", "load_adapters",
    "class_prompts", "average_templates", "load_image_encoder", "load_text_encoder", "IMAGE_SPEC_HELP",
    "TEXT_SPEC_HELP",
]
