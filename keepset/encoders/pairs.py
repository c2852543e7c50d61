"""Embeddings of image-text pairs for sources that ship pixels and captions (webdataset, Hugging Face).

``PairEmbedder(image_encoder, text_encoder, cache_dir)`` is called on one ``PairBatch`` at a time and
returns its (image embeddings, text embeddings): the batch's own precomputed embeddings when it has them
(DataComp), else the images through the image encoder and the captions through the text encoder, each
cached on disk by content (the image cache key hashes the batch's ids and pixels with the encoder's
fingerprint; the text key hashes the captions), so a second pass over the pool (every training epoch,
the final scoring pass, a rerun) reads the cache instead of encoding again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keepset.data import SampleSet
from keepset.encoders.cache import cached_image_embeddings, cached_text_embeddings

#: the image encoders that need no labels (``network:trusted`` trains on classes, which pairs do not have)
PAIR_IMAGE_SPEC_HELP = "network:CHECKPOINT.safetensors (e.g. a make-pool pool's image_tower.safetensors) | clip:PATH"


def load_pair_encoders(image_spec: str | None, text_spec: str | None, *, progress: bool = True):
    """(image encoder, text encoder) for pairs; ValueError for ``network:trusted`` or a missing image spec."""
    from keepset.encoders.spec import load_image_encoder, load_text_encoder, parse_spec

    if not image_spec:
        raise ValueError(f"this pool holds images, not embeddings: pass an image encoder (--image-encoder "
                         f"{PAIR_IMAGE_SPEC_HELP}); the text encoder defaults to MiniLM")
    kind, arg = parse_spec(image_spec, ("network", "clip"), PAIR_IMAGE_SPEC_HELP)
    if kind == "network" and arg == "trusted":
        raise ValueError("network:trusted trains an image encoder on class labels, which image-text pairs do not "
                         f"have; give {PAIR_IMAGE_SPEC_HELP}")
    clip_cache: dict = {}
    image = load_image_encoder(image_spec, clip_cache=clip_cache, progress=False)
    if text_spec is None and kind == "clip":
        text_spec = image_spec
    text = load_text_encoder(text_spec, clip_cache=clip_cache, progress=False)
    return image, text


class PairEmbedder:
    """``embedder(batch) -> (image_emb float32 [n, d_img], text_emb float32 [n, d_txt])`` (module docstring).

    image_encoder / text_encoder : keepset encoders (``encode_images(SampleSet)``, ``encode_texts(list)``),
        or None when every batch ships its own embeddings. cache_dir : embedding cache folder (None: none).
    """

    def __init__(self, image_encoder=None, text_encoder=None, cache_dir: str | Path | None = None):
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.cache_dir = cache_dir
        self.fingerprint = (f"{getattr(image_encoder, 'fingerprint', 'none')}+"
                            f"{getattr(text_encoder, 'fingerprint', 'none')}")

    def __call__(self, batch) -> tuple[np.ndarray, np.ndarray]:
        img, txt = batch.image_emb, batch.text_emb
        if img is None:
            if batch.images is None:
                batch.require("image_emb")  # the source's one-line error naming the shard
            if self.image_encoder is None:
                raise ValueError(f"shard {batch.shard!r} holds images, not embeddings: pass an image encoder "
                                 f"(--image-encoder {PAIR_IMAGE_SPEC_HELP})")
            samples = SampleSet(ids=batch.ids, labels=np.zeros(len(batch), np.int64), class_names=["pair"],
                                inputs=np.asarray(batch.images, dtype=np.float32), name=f"pairs:{batch.shard}")
            img = cached_image_embeddings(self.image_encoder, samples, self.cache_dir)
        if txt is None:
            if batch.texts is None:
                batch.require("texts")
            if self.text_encoder is None:
                raise ValueError(f"shard {batch.shard!r} has captions but no text embeddings: pass a text encoder")
            txt = cached_text_embeddings(self.text_encoder, list(batch.texts), self.cache_dir)
        return np.asarray(img, dtype=np.float32), np.asarray(txt, dtype=np.float32)
