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

from keepset._argtypes import int_at_least, positive_float, positive_int
from keepset.data import SampleSet
from keepset.encoders.spec import IMAGE_SPEC_HELP, TEXT_SPEC_HELP, check_encoder_specs, resolve_encoder_specs
from keepset.scoring.knn import AUTO_EXACT_MAX, METHODS as KNN_METHODS
from keepset.scoring.semantic import clip_scores, minmax, sample_diversity_scores, semantic_alignment_scores

# The encoders (torch, transformers) are imported inside the functions: ``keepset score --help`` reads
# ``add_arguments`` without loading them.

DEFAULT_TEMPLATES = ("A photo of a {}",)


def add_arguments(parser) -> None:
    g = parser.add_argument_group("CLIP-powered scores (sas, sds, clip-powered, clip-score)")
    g.add_argument("--image-encoder", default=None, help=f"image encoder: {IMAGE_SPEC_HELP}")
    g.add_argument("--text-encoder", default=None,
                   help=f"text encoder: {TEXT_SPEC_HELP} (default: the image encoder's CLIP when it is one, "
                        "else minilm)")
    g.add_argument("--templates", default=None,
                   help="prompt templates separated by '|', '{}' is the class name (default: 'A photo of a {}')")
    g.add_argument("--k", type=int_at_least(2), default=10,
                   help="SDS neighbourhood size K including the sample (capped per class)")
    g.add_argument("--knn", default="auto", choices=KNN_METHODS,
                   help="SDS same-label neighbour search (sds and clip-powered only): exact, ivf (approximate "
                   "inverted file), hnsw (faiss), or auto (default: exact for classes of at most "
                   f"{AUTO_EXACT_MAX:,} samples, ivf above)")
    g.add_argument("--adapter-epochs", type=positive_int, default=30, help="adapter training epochs")
    g.add_argument("--adapter-lr", type=positive_float, default=1e-4, help="adapter Adam learning rate")
    g.add_argument("--adapter-batch-size", type=positive_int, default=256, help="adapter batch size")
    g.add_argument("--adapter-dim", type=positive_int, default=None,
                   help="common adapted dimension (default: the smaller of the two embedding sizes)")
    g.add_argument("--adapter-temperature", type=positive_float, default=0.07, help="InfoNCE temperature")
    g.add_argument("--encoder-epochs", type=positive_int, default=30,
                   help="epochs of the network:trusted image encoder")
    g.add_argument("--cache-dir", default=None, help="embedding / adapter cache (default: $KEEPSET_CACHE or "
                   "~/.cache/keepset)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    g.add_argument("--save-adapters", default=None,
                   help="also write the trained adapters here (.safetensors) (default: not written)")


def preflight(method: str, options: dict) -> dict:
    """Checks before any work (``keepset score`` calls it first): the encoders can be built (spec, files,
    optional packages: ImportError naming the extra), and no option is set that the encoders would ignore.

    Returns what the manifest records: {"encoders": resolved specs, "inputs": {name: path}}.
    """
    image, text = check_encoder_specs(options.get("image_encoder"), options.get("text_encoder"))
    if method == "clip-score" and not image.lower().startswith("clip:"):
        raise ValueError("clip-score compares images and texts in CLIP's own space: pass --image-encoder clip:PATH "
                         "(a local CLIP directory or a hub name in the local cache)")
    trusted = image.lower() == "network:trusted"
    if not trusted and options.get("encoder_epochs", 30) != 30:
        raise ValueError(f"--encoder-epochs trains the network:trusted image encoder; {image} is used as it is: "
                         "drop --encoder-epochs")
    if options.get("no_cache") and options.get("cache_dir"):
        raise ValueError("--cache-dir names the cache that --no-cache turns off: give one of them")
    save = options.get("save_adapters")
    if save:
        from keepset.io import check_output_file

        check_output_file(save, overwrite=False)
    inputs = {}
    if image.lower().startswith("network:") and not trusted:
        inputs["image_encoder"] = image.partition(":")[2]  # a checkpoint file: hashed in the manifest
    return {"encoders": {"image": image, "text": text}, "inputs": inputs}


def _templates(templates) -> list[str]:
    if templates is None:
        return list(DEFAULT_TEMPLATES)
    if isinstance(templates, str):
        templates = [t.strip() for t in templates.split("|") if t.strip()]
    return list(templates)


def _cache_dir(cache_dir, no_cache: bool):
    from keepset.encoders import default_cache_dir

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
    _, text_encoder = resolve_encoder_specs(image_encoder, text_encoder)
    txt_enc = load_text_encoder(text_encoder, clip_cache=clip_cache, progress=progress)
    return img_enc, txt_enc


def adapted_embeddings(samples: SampleSet, *, image_encoder=None, text_encoder=None, templates=None,
                       adapter_epochs: int = 30, adapter_lr: float = 1e-4, adapter_batch_size: int = 256,
                       adapter_dim: int | None = None, adapter_temperature: float = 0.07, encoder_epochs: int = 30,
                       cache_dir=None, no_cache: bool = False, save_adapters_to=None, seed: int = 0,
                       progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Adapted image embeddings [N, d] and adapted class-prompt embeddings [C, d] of ``samples``."""
    from keepset.encoders import (
        average_templates, cached_image_embeddings, cached_text_embeddings, class_prompts, load_adapters,
        save_adapters, train_adapters,
    )
    from keepset.encoders.base import hash_strings

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
    from keepset.encoders import average_templates, cached_image_embeddings, cached_text_embeddings, class_prompts

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
