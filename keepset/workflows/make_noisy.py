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
from keepset.io import atomic_files, check_output_file, read_keep_list


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


    def validate(self) -> "NoisyCopyConfig":
        """Every check before any work (messages name the command-line flags)."""
        if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) \
                or not (np.isfinite(self.noise) and 0 <= self.noise < 1):
            raise ValueError(f"--noise must be in [0, 1), got {self.noise}")
        if self.noise_kind not in NOISE_KINDS:
            raise ValueError(f"--noise-kind must be one of {NOISE_KINDS}, got {self.noise_kind!r}")
        if self.damage is not None and self.damage not in CORRUPTION_KINDS:
            raise ValueError(f"--damage must be one of {CORRUPTION_KINDS}, got {self.damage!r}")
        if not (isinstance(self.damage_fraction, (int, float)) and np.isfinite(self.damage_fraction)
                and 0 <= self.damage_fraction <= 1):
            raise ValueError(f"--damage-fraction must be in [0, 1], got {self.damage_fraction}")
        if self.damage is None and self.damage_fraction:
            raise ValueError("--damage-fraction needs --damage KIND")
        if self.damage is None and self.damage_severity != 3:
            raise ValueError("--damage-severity applies to --damage KIND only: drop it (it would be ignored), or "
                             "give --damage")
        if not isinstance(self.damage_severity, int) or not 1 <= self.damage_severity <= 5:
            raise ValueError(f"--damage-severity must be an integer from 1 to 5, got {self.damage_severity!r}")
        if self.noise == 0 and not self.damage_fraction:
            raise ValueError("nothing to corrupt: give --noise RATE and / or --damage KIND --damage-fraction F")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if not str(self.out).endswith(".npz"):
            raise ValueError(f"--out must name an .npz file, got {self.out!r}")
        check_output_file(self.out, self.overwrite)
        if self.exclude_ids and not Path(self.exclude_ids).is_file():
            raise FileNotFoundError(f"--exclude-ids {self.exclude_ids}: no such file")
        return self


def make_noisy_copy(cfg: NoisyCopyConfig, manifest: bool = False) -> dict:
    """Write the noisy copy; returns {"n", "label_noise", "damaged", "untouched", "out"}.

    manifest : also write ``OUT.manifest.json`` (inputs and the copy with their hashes); the two are written
        together or not at all.
    """
    cfg.validate()
    samples = load_spec(cfg.data)
    free = np.ones(len(samples), bool)
    if cfg.exclude_ids:
        try:
            free[samples.positions_of(read_keep_list(cfg.exclude_ids))] = False
        except ValueError as exc:
            raise ValueError(f"--exclude-ids {cfg.exclude_ids}: {exc}") from None
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
    out = Path(cfg.out)
    manifest_path = out.with_name(out.name + ".manifest.json")
    with atomic_files([out] + ([manifest_path] if manifest else []), cfg.overwrite) as tmp:
        with open(tmp / out.name, "wb") as fh:
            np.savez(fh, **arrays)
        if manifest:
            from dataclasses import asdict

            from keepset.data import spec_file
            from keepset.io import write_manifest

            inputs = {"data": spec_file(cfg.data), "exclude_ids": cfg.exclude_ids}
            write_manifest(tmp / manifest_path.name, method="keepset-make-noisy", params=asdict(cfg),
                           data={"spec": cfg.data, "fingerprint": samples.fingerprint(), "n": len(samples)},
                           inputs={k: v for k, v in inputs.items() if v}, outputs={"copy": out.name})
    return {"n": len(samples), "label_noise": int(corrupted.sum()), "damaged": int(damaged.sum()),
            "untouched": int((~free).sum()), "out": str(Path(cfg.out))}
