"""Scorer registry: ``keepset score --method NAME`` looks NAME up here.

A scorer is ``fn(samples: SampleSet, **options) -> dict[str, ndarray [N]]`` (column name -> values)
living in its own module; that module may define ``add_arguments(parser)`` for its CLI flags.
Adding a scorer is one file plus one entry below.
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
