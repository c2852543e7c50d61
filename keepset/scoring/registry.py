"""Scorer registry: ``keepset score --method NAME`` looks NAME up here.

A scorer is ``fn(samples: SampleSet, **options) -> dict[str, ndarray [N]]`` (column name -> values)
living in its own module; that module may define ``add_arguments(parser)`` for its CLI flags (without importing
torch at module level: ``keepset --help`` reads them) and ``preflight(method, options) -> dict``, the checks that
``keepset score`` runs before any work (it returns what the manifest records: ``inputs``, ``models``,
``encoders``). Adding a scorer is one file plus one entry in ``SCORERS`` and one in ``SCORER_FLAGS`` below.
"""

from __future__ import annotations

import importlib

# name: (module, function, one-line help)
SCORERS: dict[str, tuple[str, str, str]] = {
    "proj": ("keepset.scoring.mimic", "score_mimic", "Mimic Score, projection on theta_ref - theta"),
    "cos": ("keepset.scoring.mimic", "score_mimic", "Mimic Score, cosine with theta_ref - theta"),
    "normed_proj": ("keepset.scoring.mimic", "score_mimic", "softmax(proj / tau) over each batch"),
    "normed_cos": ("keepset.scoring.mimic", "score_mimic", "softmax(cos / tau) over each batch"),
    "sas": ("keepset.scoring.clip_powered", "score_sas", "CLIP-powered semantic alignment (adapted image vs label prompt)"),
    "sds": ("keepset.scoring.clip_powered", "score_sds", "CLIP-powered diversity: mean distance to K-1 same-label neighbours"),
    "clip-powered": ("keepset.scoring.clip_powered", "score_clip_powered", "sas and sds columns in one pass"),
    "clip-score": ("keepset.scoring.clip_powered", "score_clip_score", "DataComp CLIP score: cos(image, caption or prompt)"),
    "dynamics": ("keepset.scoring.dynamics_scorer", "score_dynamics",
                 "training dynamics: loss, el2n, grand, forgetting, aum, entropy, margin, least_confidence"),
}


_MIMIC = frozenset({"model", "reference", "layers", "allow_partial_reference", "batch_size", "device"})
_CLIP = frozenset({"image_encoder", "text_encoder", "templates", "adapter_epochs", "adapter_lr", "adapter_batch_size",
                   "adapter_dim", "adapter_temperature", "encoder_epochs", "cache_dir", "no_cache", "save_adapters",
                   "seed"})

#: the ``keepset score`` flags (argparse dests) each scorer reads; any other method flag, or a common one
#: (--batch-size, --seed, --device) the scorer does not read, is refused rather than ignored
SCORER_FLAGS: dict[str, frozenset[str]] = {
    "proj": _MIMIC,
    "cos": _MIMIC,
    "normed_proj": _MIMIC | {"temperature"},
    "normed_cos": _MIMIC | {"temperature"},
    "sas": _CLIP,
    "sds": _CLIP | {"k", "knn"},
    "clip-powered": _CLIP | {"k", "knn"},
    "clip-score": frozenset({"image_encoder", "text_encoder", "templates", "cache_dir", "no_cache"}),
    "dynamics": frozenset({"dyn_model", "dyn_epochs", "dyn_lr", "early_epochs", "batch_size", "seed", "device"}),
}


def scorer_names() -> list[str]:
    return sorted(SCORERS)


def get_scorer(name: str):
    """The scorer function registered as ``name``; ValueError listing the known names otherwise."""
    if name not in SCORERS:
        raise ValueError(f"unknown scoring method {name!r}; known: {', '.join(scorer_names())}")
    module, func, _ = SCORERS[name]
    return getattr(importlib.import_module(module), func)


def scorer_modules() -> list[str]:
    return sorted({m for m, _, _ in SCORERS.values()})
