"""CLIP-powered scorers for ``keepset score``: ``sas``, ``sds``, ``clip-powered`` (both) and ``clip-score``.

Pipeline (``adapted_embeddings``): encode every image (``--image-encoder``) and the class prompts
(``--text-encoder``, ``--templates``), cache the embeddings on disk, train the two linear adapters
on (image, label prompt) pairs with symmetric InfoNCE (cached as safetensors too), then score in the
adapted space. SAS and SDS are min-max normalised to [0, 1]; ``clip-score`` is the raw cosine.

Defaults need no download: image encoder ``network:trusted`` (a keepset network trained on the data's
trusted split), text encoder MiniLM from the offline package. When the image encoder is ``clip:X`` and
no text encoder is given, the same CLIP model encodes the prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keepset.data import SampleSet
from keepset.encoders import (
    IMAGE_SPEC_HELP, TEXT_SPEC_HELP, average_templates, cached_image_embeddings, cached_text_embeddings,
    class_prompts, default_cache_dir, load_adapters, save_adapters, train_adapters,
)
from keepset.encoders.base import hash_strings
from keepset.scoring.knn import AUTO_EXACT_MAX, METHODS as KNN_METHODS
from keepset.scoring.semantic import clip_scores, minmax, sample_diversity_scores, semantic_alignment_scores

DEFAULT_TEMPLATES = ("A photo of a {}",)


def add_arguments(parser) -> None:
    g = parser.add_argument_group("CLIP-powered scores (sas, sds, clip-powered, clip-score)")
    g.add_argument("--image-encoder", default=None, help=f"image encoder: {IMAGE_SPEC_HELP}")
    g.add_argument("--text-encoder", default=None,
                   help=f"text encoder: {TEXT_SPEC_HELP}; default the image encoder's CLIP when it is one")
    g.add_argument("--templates", default=None,
                   help="prompt templates separated by '|', '{}' is the class name (default 'A photo of a {}')")
    g.add_argument("--k", type=int, default=10, help="SDS neighbourhood size K incl. the sample (10; capped per class)")
    g.add_argument("--knn", default="auto", choices=KNN_METHODS,
                   help="SDS same-label neighbour search (sds and clip-powered only): exact, ivf (approximate "
                   "inverted file), hnsw (faiss), or auto (default: exact for classes of at most "
                   f"{AUTO_EXACT_MAX:,} samples, ivf above)")
    g.add_argument("--adapter-epochs", type=int, default=30, help="adapter training epochs (30)")
    g.add_argument("--adapter-lr", type=float, default=1e-4, help="adapter Adam learning rate (1e-4)")
    g.add_argument("--adapter-batch-size", type=int, default=256, help="adapter batch size (256)")
    g.add_argument("--adapter-dim", type=int, default=None, help="common adapted dim (default min of the two dims)")
    g.add_argument("--adapter-temperature", type=float, default=0.07, help="InfoNCE temperature (0.07)")
    g.add_argument("--encoder-epochs", type=int, default=30, help="epochs of the network:trusted encoder (30)")
    g.add_argument("--cache-dir", default=None, help="embedding / adapter cache (default $KEEPSET_CACHE or "
                   "~/.cache/keepset)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    g.add_argument("--save-adapters", default=None, help="also write the trained adapters here (.safetensors)")


def _templates(templates) -> list[str]:
    if templates is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(templates, str):
        templates = [t.strip() for t in templates.split("|") if t.strip()]
    return list(templates)


def _cache_dir(cache_dir, no_cache: bool):
    if no_cache:
        return None
    return Path(cache_dir) if cache_dir else default_cache_dir()


def _image_encoder(spec, samples: SampleSet, cache, clip_cache: dict, seed: int, encoder_epochs: int, progress: bool):
    from keepset.encoders import NetworkEncoder, load_image_encoder, train_trusted_network
    from keepset.encoders.network import default_architecture
    from keepset.models import load_checkpoint, save_checkpoint

    if (spec or "network:trusted").strip().lower() != "network:trusted" or cache is None:
        return load_image_encoder(spec, samples, clip_cache=clip_cache, seed=seed, encoder_epochs=encoder_epochs,
                                  progress=progress)
    arch = default_architecture(samples)
    path = Path(cache) / "networks" / f"trusted-{samples.fingerprint()}-{arch}-e{encoder_epochs}-s{seed}.safetensors"
    if path.exists():
        try:
            return NetworkEncoder(load_checkpoint(path)[0], name="network:trusted", progress=progress)
        except ValueError:
            pass  # corrupt cache entry: retrain
    model, _ = train_trusted_network(samples, arch=arch, epochs=encoder_epochs, seed=seed, progress=progress)
    save_checkpoint(model, path)
    return NetworkEncoder(model, name="network:trusted", progress=progress)


def encoders_for(samples: SampleSet, image_encoder=None, text_encoder=None, *, cache=None, seed: int = 0,
                 encoder_epochs: int = 30, progress: bool = True):
    """(image encoder, text encoder) for the given specs (see the module docstring for the defaults)."""
    from keepset.encoders import load_text_encoder

    clip_cache: dict = {}
    img_enc = _image_encoder(image_encoder, samples, cache, clip_cache, seed, encoder_epochs, progress)
    if text_encoder is None and (image_encoder or "").lower().startswith("clip:"):
        text_encoder = image_encoder
    txt_enc = load_text_encoder(text_encoder, clip_cache=clip_cache, progress=progress)
    return img_enc, txt_enc


def adapted_embeddings(samples: SampleSet, *, image_encoder=None, text_encoder=None, templates=None,
                       adapter_epochs: int = 30, adapter_lr: float = 1e-4, adapter_batch_size: int = 256,
                       adapter_dim: int | None = None, adapter_temperature: float = 0.07, encoder_epochs: int = 30,
                       cache_dir=None, no_cache: bool = False, save_adapters_to=None, seed: int = 0,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Adapted image embeddings [N, d] and adapted class-prompt embeddings [C, d] of ``samples``."""
    cache = _cache_dir(cache_dir, no_cache)
    img_enc, txt_enc = encoders_for(samples, image_encoder, text_encoder, cache=cache, seed=seed,
                                    encoder_epochs=encoder_epochs, progress=progress)
    tpl = _templates(templates)
    img = cached_image_embeddings(img_enc, samples, cache)
    prompts = class_prompts(samples.class_names, tpl)
    txt = average_templates(cached_text_embeddings(txt_enc, prompts, cache), samples.num_classes)
    key = hash_strings([img_enc.fingerprint, txt_enc.fingerprint, samples.fingerprint(), *tpl, str(adapter_epochs),
                        str(adapter_lr), str(adapter_batch_size), str(adapter_dim), str(adapter_temperature),
                        str(seed)])
    path = None if cache is None else Path(cache) / "adapters" / f"adapters-{key}.safetensors"
    adapters = None
    if path is not None and path.exists():
        try:
            adapters = load_adapters(path)
        except ValueError:
            adapters = None  # corrupt cache entry: retrain
    if adapters is None:
        adapters, _ = train_adapters(img, txt, samples.labels, dim=adapter_dim, epochs=adapter_epochs,
                                     batch_size=adapter_batch_size, lr=adapter_lr, temperature=adapter_temperature,
                                     seed=seed, progress=progress)
        if path is not None:
            save_adapters(adapters, path, overwrite=True)
    if save_adapters_to:
        save_adapters(adapters, save_adapters_to)
    return adapters.transform_images(img), adapters.transform_texts(txt)


def _pipeline_options(options: dict) -> dict:
    names = ("image_encoder", "text_encoder", "templates", "adapter_epochs", "adapter_lr", "adapter_batch_size",
             "adapter_dim", "adapter_temperature", "encoder_epochs", "cache_dir", "no_cache", "seed", "progress")
    out = {k: options[k] for k in names if k in options and options[k] is not None}
    if options.get("save_adapters"):
        out["save_adapters_to"] = options["save_adapters"]
    return out


def _no_knn(options: dict, method: str) -> None:
    """``--knn`` only steers SDS: refuse it (when changed from its default) for a scorer without SDS."""
    if options.get("knn", "auto") != "auto":
        raise ValueError(f"--knn does not apply to --method {method}; it is an option of sds and clip-powered. "
                         "Drop it, or choose one of those methods")


def score_clip_powered(samples: SampleSet, *, k: int = 10, knn: str = "auto", **options) -> dict[str, np.ndarray]:
    """{"sas": [N], "sds": [N]}, both min-max normalised to [0, 1] (input of ``clip-powered`` selection)."""
    img, txt = adapted_embeddings(samples, **_pipeline_options(options))
    sas = semantic_alignment_scores(img, txt, samples.labels)
    sds = sample_diversity_scores(img, samples.labels, k, knn=knn, seed=options.get("seed", 0),
                                  progress=options.get("progress", False))
    return {"sas": minmax(sas).astype(np.float32), "sds": minmax(sds).astype(np.float32)}


def score_sas(samples: SampleSet, **options) -> dict[str, np.ndarray]:
    """{"sas": [N]}: min-max normalised semantic alignment of each image with its label's prompt."""
    _no_knn(options, "sas")
    img, txt = adapted_embeddings(samples, **_pipeline_options(options))
    return {"sas": minmax(semantic_alignment_scores(img, txt, samples.labels)).astype(np.float32)}


def score_sds(samples: SampleSet, *, k: int = 10, knn: str = "auto", **options) -> dict[str, np.ndarray]:
    """{"sds": [N]}: min-max normalised mean distance to the K-1 nearest same-label neighbours
    (``knn``: the neighbour search, see ``keepset.scoring.knn``)."""
    img, _ = adapted_embeddings(samples, **_pipeline_options(options))
    sds = sample_diversity_scores(img, samples.labels, k, knn=knn, seed=options.get("seed", 0),
                                  progress=options.get("progress", False))
    return {"sds": minmax(sds).astype(np.float32)}


def score_clip_score(samples: SampleSet, *, image_encoder=None, text_encoder=None, templates=None, cache_dir=None,
                     no_cache: bool = False, seed: int = 0, progress: bool = True, **rest) -> dict[str, np.ndarray]:
    """{"clip_score": [N]}: DataComp-style cosine of the raw CLIP image embedding and the sample's caption
    (or, without captions, its label prompt averaged over templates). Needs a CLIP model
    (``--image-encoder clip:PATH``); no adapters."""
    _no_knn(rest, "clip-score")
    if not (image_encoder or "").lower().startswith("clip:"):
        raise ValueError("clip-score compares images and texts in CLIP's own space: pass --image-encoder clip:PATH "
                         "(a local CLIP directory or a hub name in the local cache)")
    cache = _cache_dir(cache_dir, no_cache)
    img_enc, txt_enc = encoders_for(samples, image_encoder, text_encoder, cache=cache, seed=seed, progress=progress)
    img = cached_image_embeddings(img_enc, samples, cache)
    if samples.captions is not None:
        txt = cached_text_embeddings(txt_enc, samples.captions, cache)
        if txt.shape[1] != img.shape[1]:
            raise ValueError(f"image ({img.shape[1]}-d) and text ({txt.shape[1]}-d) encoders live in different spaces; "
                             "use the same CLIP model for both")
        return {"clip_score": clip_scores(img, txt).astype(np.float32)}
    prompts = class_prompts(samples.class_names, _templates(templates))
    txt = average_templates(cached_text_embeddings(txt_enc, prompts, cache), samples.num_classes)
    if txt.shape[1] != img.shape[1]:
        raise ValueError(f"image ({img.shape[1]}-d) and text ({txt.shape[1]}-d) encoders live in different spaces; "
                         "use the same CLIP model for both")
    return {"clip_score": clip_scores(img, txt, samples.labels).astype(np.float32)}
