"""``keepset make-noisy``: a copy of a labelled data set with known corruption, to check a filter against.

Label noise (``keepset.data.add_label_noise``: symmetric or asymmetric, at a rate) and / or damaged images
(``keepset.data.corruption.corrupt_images``: Gaussian noise, blur, occlusion, blank, at a fraction and a
severity), drawn from a seed, never touching the samples named by ``exclude_ids`` (e.g. the ones you will
pass as ``--trusted-ids``). The copy is one ``.npz`` (``images`` or ``features``, ``labels``, ``ids``,
``class_names``, and ``true_labels`` / ``corrupted`` for evaluation) that ``npz:PATH`` reads back: ``keepset
filter`` then reports its detection figures against the recorded corruption (which no decision reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keepset.data import NOISE_KINDS, add_label_noise, load_spec
from keepset.data.corruption import CORRUPTION_KINDS, corrupt_images
from keepset.io import atomic_path, check_writable, read_keep_list


@dataclass
class NoisyCopyConfig:
    data: str
    out: str
    noise: float = 0.0
    noise_kind: str = "symmetric"
    damage: str | None = None          # one of CORRUPTION_KINDS
    damage_fraction: float = 0.0
    damage_severity: int = 3
    exclude_ids: str | None = None     # .npy of ids left untouched
    seed: int = 0
    overwrite: bool = False


def make_noisy_copy(cfg: NoisyCopyConfig) -> dict:
    """Write the noisy copy; returns {"n", "label_noise", "damaged", "untouched", "out"}."""
    if not (np.isfinite(cfg.noise) and 0 <= cfg.noise < 1):
        raise ValueError(f"--noise must be in [0, 1), got {cfg.noise}")
    if cfg.noise_kind not in NOISE_KINDS:
        raise ValueError(f"--noise-kind must be one of {NOISE_KINDS}, got {cfg.noise_kind!r}")
    if cfg.damage is not None and cfg.damage not in CORRUPTION_KINDS:
        raise ValueError(f"--damage must be one of {CORRUPTION_KINDS}, got {cfg.damage!r}")
    if cfg.damage is None and cfg.damage_fraction:
        raise ValueError("--damage-fraction needs --damage KIND")
    if cfg.noise == 0 and not cfg.damage_fraction:
        raise ValueError("nothing to corrupt: give --noise RATE and / or --damage KIND --damage-fraction F")
    if not str(cfg.out).endswith(".npz"):
        raise ValueError(f"--out must name an .npz file, got {cfg.out!r}")
    check_writable(cfg.out, cfg.overwrite)
    samples = load_spec(cfg.data)
    free = np.ones(len(samples), bool)
    if cfg.exclude_ids:
        free[samples.positions_of(read_keep_list(cfg.exclude_ids))] = False
    pos = np.flatnonzero(free)
    labels = samples.labels.copy()
    noisy, flipped = add_label_noise(labels[pos], cfg.noise, cfg.noise_kind, samples.num_classes, cfg.seed)
    labels[pos] = noisy
    corrupted = np.zeros(len(samples), bool)
    corrupted[pos[flipped]] = True
    x = samples.get_inputs()
    damaged = np.zeros(len(samples), bool)
    if cfg.damage is not None:
        if x.ndim != 4:
            raise ValueError(f"--damage corrupts images [N, C, H, W]; {cfg.data} holds feature vectors {x.shape}")
        x_free, hit = corrupt_images(x[pos], cfg.damage, fraction=cfg.damage_fraction,
                                     severity=cfg.damage_severity, seed=cfg.seed + 1)
        x[pos] = x_free
        damaged[pos[hit]] = True
    arrays = {("images" if x.ndim == 4 else "features"): x, "labels": labels, "ids": samples.ids,
              "class_names": np.asarray(samples.class_names), "true_labels": samples.labels,
              "corrupted": corrupted | damaged}
    with atomic_path(cfg.out, cfg.overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return {"n": len(samples), "label_noise": int(corrupted.sum()), "damaged": int(damaged.sum()),
            "untouched": int((~free).sum()), "out": str(Path(cfg.out))}
