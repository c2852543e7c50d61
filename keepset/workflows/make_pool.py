"""``make_pool``: an offline image-text pool with known defects, to test pair methods on.

From a labelled image data set (``digits``, ``fashion-mnist``, ...):

1. a stratified, seeded slice of ``encoder_fraction`` of the data trains the *image tower* (a keepset
   network, its penultimate features are the image embeddings: it plays a pretrained image encoder's role);
   those samples are never in the pool. The data's test file is not read (it is for final metrics only);
2. ``n`` pool pairs are drawn (seeded) from the rest; each image gets a caption from templates over its
   class name and two attributes measured on the image itself: tone ("light" / "dark": the mean value of
   its ink pixels, those above ``INK_LEVEL``, against the pool's median) and size ("small" / "large": its
   ink area against its class's median), so every caption is true of its image;
3. disjoint, seeded sets of pairs are corrupted, each at its own fraction: ``swapped`` (the caption of
   another pair whose class differs), ``unrelated`` (a sentence about something else entirely), ``damaged``
   (the image corrupted with ``keepset.data.corruption.corrupt_images``; its caption stays true of the
   original) and ``duplicate`` (a copy of a clean pair's image plus Gaussian noise of std
   ``DUPLICATE_NOISE``, with a caption re-drawn from another template, under its own uid);
4. texts are embedded with MiniLM (offline), images (after 8-bit quantisation, exactly as stored in the
   PNGs) with the image tower;
5. everything is written to a temporary folder beside ``out`` and renamed into place.

Layout of ``out`` (see ``POOL_LAYOUT``)::

    pool.json                    what everything is (spec, seed, fractions, encoders, dims, counts, columns)
    truth.parquet                per uid: label, class, corruption kind, source id, ...: FOR EVALUATION ONLY
    image_tower.safetensors      the image tower (embed new images in the same space)
    datacomp/NNNNNNNN.parquet    uid, text, key, sha256 (of the PNG in the wds shard)
    datacomp/NNNNNNNN.npz        image_emb [n, d_img], text_emb [n, d_txt] float32, rows aligned with the parquet
    wds/NNNNNNNN.tar             {key}.png, {key}.txt, {key}.json ({"key", "uid"})

The embedding keys are ``image_emb`` / ``text_emb``, not DataComp's ``b32_img`` / ``b32_txt``: those names
promise CLIP ViT-B/32 embeddings in one shared space, and these are two unrelated spaces of different
dimensions; a DataComp tool reading them as CLIP would compute nonsense. ``DataCompSource`` reads both
(``embeddings="generic"`` or ``"auto"``). For the same reason no ``clip_*_similarity_score`` column is
written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from keepset._progress import progress_bar
from keepset._version import __version__
from keepset.data import load_spec, split_indices
from keepset.data.corruption import CORRUPTION_KINDS, corrupt_images
from keepset.io import OutputExistsError
from keepset.io.pairs import encode_png, write_datacomp_shard, write_wds_shard
from keepset.models import model_for_inputs, save_checkpoint
from keepset.training import accuracy, embed, fit

#: corruption kinds recorded in truth.parquet ("" for a clean pair)
POOL_CORRUPTIONS = ("swapped", "unrelated", "damaged", "duplicate")
INK_LEVEL = 0.1
DUPLICATE_NOISE = 0.02
TONES = ("dark", "light")
SIZES = ("small", "large")
TEMPLATES = (
    "a photo of a {tone} {cls}.",
    "a {size} {cls}, centred in the picture.",
    "{cls}, product photo.",
    "a {tone} {cls}, {size} in the frame.",
    "a grayscale picture of a {size} {cls}.",
    "a close-up of a {tone} {cls}.",
    "an image showing a {size}, {tone} {cls}.",
    "a catalogue picture of a {cls}.",
)
UNRELATED_SENTENCES = (
    "The train to the coast leaves at seven every morning.",
    "A recipe for lentil soup needs onions, carrots and cumin.",
    "The committee postponed the vote until next spring.",
    "Volcanic islands often have black sand beaches.",
    "She practised the violin for two hours before dinner.",
    "The library extends its opening hours during exams.",
    "Honeybees communicate the direction of flowers by dancing.",
    "The bridge was closed for repairs after the storm.",
    "A comet was visible low on the horizon last night.",
    "The spreadsheet totals the quarterly revenue by region.",
    "Fresh basil wilts quickly if it is kept in the fridge.",
    "The marathon route passes along the old harbour.",
    "Glaciers carve deep valleys over thousands of years.",
    "The meeting minutes were sent to every participant.",
    "Owls can rotate their heads by about two hundred and seventy degrees.",
    "The museum opened a new wing devoted to ancient pottery.",
    "Tomorrow will be cloudy with a chance of light rain.",
    "The chess tournament ended in a draw after six hours.",
    "Solar panels were installed on the school roof.",
    "The ferry crossing takes about forty minutes in calm weather.",
    "A good compost heap needs both green and brown material.",
    "The orchestra tuned up while the audience found their seats.",
    "Mount Everest grows a few millimetres taller every year.",
    "The software update fixes a bug in the calendar sync.",
    "Dolphins sleep with one half of their brain at a time.",
    "The bakery on the corner sells out of bread by noon.",
    "The river floods the meadow almost every winter.",
    "A new cycle lane connects the station to the university.",
    "The telescope collects light from galaxies billions of years old.",
    "He repaired the fence with planks left over from the shed.",
    "The election results will be announced after midnight.",
    "Maple syrup is made by boiling down the sap of maple trees.",
    "The hikers reached the mountain hut before sunset.",
    "Interest rates were left unchanged this quarter.",
    "The kitten fell asleep in a patch of afternoon sun.",
    "A lighthouse has guided ships past these rocks since 1850.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Traffic on the motorway was slow because of roadworks.",
    "The choir rehearses every Thursday evening in the church hall.",
    "Coral reefs are home to a quarter of all marine species.",
    "The printer on the second floor is out of toner.",
    "Wind turbines turned slowly on the ridge above the village.",
    "The children built a sandcastle with a moat around it.",
    "Her novel was translated into fourteen languages.",
    "The garden pond froze over during the cold snap.",
    "A thunderstorm knocked out power across the valley.",
    "The astronauts docked with the space station on Tuesday.",
    "The farmers' market moves indoors for the winter months.",
    "Penguins huddle together to stay warm in Antarctic winters.",
    "The old clock tower chimes every quarter of an hour.",
)
POOL_LAYOUT = {
    "pool.json": "this description: spec, seed, fractions, encoders, dimensions, counts, columns",
    "truth.parquet": "EVALUATION ONLY, never an input to a method: per uid the class label and name, the "
                     "corruption kind ('' for clean), the source sample id, duplicate_of, caption_from, shard, key",
    "image_tower.safetensors": "the keepset network whose penultimate features are image_emb",
    "datacomp/NNNNNNNN.parquet": "uid (32 hex digits), text (the caption), key (the wds sample key), sha256 "
                                 "(of the PNG bytes in the wds shard)",
    "datacomp/NNNNNNNN.npz": "image_emb float32 [n, d_img] (image tower features of the stored 8-bit image), "
                             "text_emb float32 [n, d_txt] (text encoder embedding of text); rows aligned with the "
                             "parquet; NOT CLIP embeddings and NOT one shared space",
    "wds/NNNNNNNN.tar": "{key}.png (the 8-bit image), {key}.txt (the caption, UTF-8), {key}.json "
                        "({\"key\", \"uid\"}); members sorted by key",
}


@dataclass
class MakePoolConfig:
    """Every knob of ``make_pool`` (the CLI's flags)."""

    data: str = "fashion-mnist"
    out: str = "out/pool"
    n: int | None = None              # pool pairs; None: every sample not used by the image tower
    shard_size: int = 10_000
    seed: int = 0
    swap: float = 0.3
    unrelated: float = 0.0
    damaged: float = 0.0
    duplicates: float = 0.0
    damage_kind: str = "gaussian_noise"
    damage_severity: int = 3
    encoder_fraction: float = 0.1     # the image tower's share of the data (never in the pool)
    encoder_arch: str | None = None   # mlp | cnn; None: cnn for square images of side >= 16, else mlp
    encoder_epochs: int | None = None  # None: ceil(30000 / tower training samples), clipped to [5, 50]
    text_encoder: str = "minilm"
    overwrite: bool = False
    progress: bool = True


# ---------------------------------------------------------------- validation and output folder

_FLAGS = {"swapped": "swap", "unrelated": "unrelated", "damaged": "damaged", "duplicate": "duplicates"}


def _check_config(cfg: MakePoolConfig, flags: bool = False) -> dict[str, float]:
    """The corruption fractions, after checking every knob (``flags``: name them by their command-line flags)."""
    def name(field_: str) -> str:
        return "--" + field_.replace("_", "-") if flags else field_

    fractions = {"swapped": cfg.swap, "unrelated": cfg.unrelated, "damaged": cfg.damaged,
                 "duplicate": cfg.duplicates}
    for what, f in fractions.items():
        flag = f" ({name(_FLAGS[what])})" if flags else ""
        try:
            f = float(f)
        except (TypeError, ValueError):
            raise ValueError(f"the {what} fraction must be a number in [0, 1]{flag}, got {f!r}") from None
        if not math.isfinite(f) or not 0.0 <= f <= 1.0:
            raise ValueError(f"the {what} fraction must be in [0, 1]{flag}, got {f!r}")
        fractions[what] = f
    if sum(fractions.values()) > 1.0 + 1e-9:
        raise ValueError(f"the corruption fractions add up to {sum(fractions.values()):.3g} > 1; the corrupted "
                         "sets are disjoint, so lower them")
    if fractions["duplicate"] > 0 and sum(fractions.values()) >= 1.0:
        raise ValueError("near-duplicates copy clean pairs, so the fractions must leave some pairs clean")
    if isinstance(cfg.shard_size, bool) or not isinstance(cfg.shard_size, int) or cfg.shard_size < 1:
        raise ValueError(f"{name('shard_size')} must be a positive integer, got {cfg.shard_size!r}")
    if cfg.n is not None and (isinstance(cfg.n, bool) or not isinstance(cfg.n, int) or cfg.n < 2):
        raise ValueError(f"{name('n')} must be an integer >= 2 (pairs in the pool), got {cfg.n!r}")
    if cfg.damage_kind not in CORRUPTION_KINDS:
        raise ValueError(f"unknown damage kind {cfg.damage_kind!r} ({name('damage_kind')}); choose one of "
                         f"{CORRUPTION_KINDS}")
    if not isinstance(cfg.damage_severity, int) or not 1 <= cfg.damage_severity <= 5:
        raise ValueError(f"damage severity must be an integer from 1 to 5 ({name('damage_severity')}), "
                         f"got {cfg.damage_severity!r}")
    try:
        encoder_fraction = float(cfg.encoder_fraction)
    except (TypeError, ValueError):
        encoder_fraction = math.nan
    if not 0.0 < encoder_fraction < 1.0:
        raise ValueError(f"{name('encoder_fraction')} must be in (0, 1), got {cfg.encoder_fraction!r}")
    if cfg.encoder_arch not in (None, "mlp", "cnn"):
        raise ValueError(f"{name('encoder_arch')} must be 'mlp' or 'cnn', got {cfg.encoder_arch!r}")
    if cfg.encoder_epochs is not None and (isinstance(cfg.encoder_epochs, bool) or
                                           not isinstance(cfg.encoder_epochs, int) or cfg.encoder_epochs < 1):
        raise ValueError(f"{name('encoder_epochs')} must be a positive integer, got {cfg.encoder_epochs!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"{name('seed')} must be an integer >= 0, got {cfg.seed!r}")
    return fractions


def validate_config(cfg: MakePoolConfig, flags: bool = False) -> MakePoolConfig:
    """Every check ``make_pool`` makes before any work: the knobs, the output folder and the text encoder (its
    optional package and files, without loading it)."""
    from keepset.encoders.spec import check_text_encoder

    _check_config(cfg, flags)
    out = Path(cfg.out).expanduser()
    _check_out(out, cfg.overwrite)
    check_text_encoder(cfg.text_encoder)
    return cfg


def _check_out(out: Path, overwrite: bool) -> None:
    from keepset.io.atomic import check_output_dir

    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is a file; give a folder path for the pool")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it, or choose "
                                "another folder")
    if out.exists() and any(out.iterdir()) and not (out / "pool.json").exists():
        raise ValueError(f"{out} exists and is not a keepset pool (no pool.json); refusing to replace it even "
                         "with --overwrite: choose an empty or new folder")
    check_output_dir(out, overwrite=True)  # a valid UTF-8 name under a writable folder


def _install(tmp: Path, out: Path) -> None:
    """Move the finished pool ``tmp`` to ``out`` (replacing an old pool there) with renames only."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "pool")
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)


# ---------------------------------------------------------------- captions

def display_name(class_name: str) -> str:
    """How a class is named in captions: ``"3"`` -> ``"digit 3"``, ``"T-shirt/top"`` -> ``"t-shirt or top"``."""
    name = str(class_name).strip()
    return f"digit {name}" if name.isdigit() else name.lower().replace("/", " or ").replace("_", " ")


def image_attributes(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Tone and size of every image [N, C, H, W], measured on the image (vectorised).

    Returns (light bool [N], large bool [N], thresholds): ``light`` = mean ink value (pixels above
    ``INK_LEVEL``, channels averaged) >= the median over all images; ``large`` = ink area (share of ink
    pixels) >= the median over the images of its class.
    """
    gray = images.mean(axis=1).reshape(len(images), -1)
    ink = gray > INK_LEVEL
    area = ink.mean(axis=1)
    brightness = np.where(ink.any(axis=1), (gray * ink).sum(axis=1) / np.maximum(ink.sum(axis=1), 1), 0.0)
    tone_cut = float(np.median(brightness))
    classes = np.unique(labels)
    size_cut = {int(c): float(np.median(area[labels == c])) for c in classes}
    cut = np.array([size_cut[int(c)] for c in classes])[np.searchsorted(classes, labels)]
    return brightness >= tone_cut, area >= cut, {"tone_median": tone_cut, "size_median_by_class": size_cut}


def render_captions(template_ids: np.ndarray, class_names: list[str], labels: np.ndarray, light: np.ndarray,
                    large: np.ndarray) -> np.ndarray:
    """One caption per pair (object array [N]) from its template, class and attributes: every distinct
    caption is rendered once, then gathered (vectorised over pairs)."""
    names = [display_name(c) for c in class_names]
    table = np.array([[[[t.format(cls=nm, tone=TONES[a], size=SIZES[b]) for b in range(2)] for a in range(2)]
                       for nm in names] for t in TEMPLATES], dtype=object)          # [T, K, 2, 2]
    return table[template_ids, labels, light.astype(np.int64), large.astype(np.int64)]


# ---------------------------------------------------------------- plan

def _rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), tag])


def random_uids(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct random 32-hex-digit uids (vectorised)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    hexed = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype="S32").astype("U32")
    if len(np.unique(hexed)) != n:  # 2^-128 per pair: practically impossible, still never silent
        raise RuntimeError("uid collision; run again with another seed")
    return hexed


def other_class_partner(labels: np.ndarray, who: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For every position in ``who``, a uniformly drawn position j with ``labels[j] != labels[who]`` (vectorised)."""
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    k = np.searchsorted(classes, labels[who])
    n_other = len(labels) - counts[k]
    if (n_other == 0).any():
        raise ValueError("swapped captions need pairs of at least two classes")
    r = (rng.random(len(who)) * n_other).astype(np.int64)
    r = np.minimum(r, n_other - 1)
    r = np.where(r >= starts[k], r + counts[k], r)
    return order[r]


def _canonical_safetensors(path: Path) -> None:
    """Rewrite a safetensors file's JSON header with sorted keys (safetensors writes its metadata map in an
    arbitrary order), so the same weights give the same bytes. The tensor data is untouched."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes with spaces
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


def _epochs_for(n_train: int) -> int:
    return int(min(50, max(5, math.ceil(30000 / max(n_train, 1)))))


def train_image_tower(x: np.ndarray, y: np.ndarray, num_classes: int, *, arch: str | None, epochs: int | None,
                      seed: int, progress: bool) -> tuple[torch.nn.Module, dict]:
    """Train the image tower on (x, y) (85 % of it; the other 15 % measures its accuracy)."""
    fit_pos, val_pos = split_indices(y, (0.85, 0.15), seed)
    if arch is None:
        arch = "cnn" if x.ndim == 4 and x.shape[2] == x.shape[3] and x.shape[2] >= 16 else "mlp"
    epochs = epochs or _epochs_for(len(fit_pos))
    torch.manual_seed(seed)
    model = model_for_inputs(arch, tuple(x.shape[1:]), num_classes)
    fit(model, x[fit_pos], y[fit_pos], epochs=epochs, batch_size=128, lr=0.05, momentum=0.9, seed=seed,
        progress=progress, desc="image tower")
    acc = accuracy(model, x[val_pos], y[val_pos])
    return model.eval(), {"arch": arch, "epochs": epochs, "train_samples": int(len(fit_pos)),
                          "val_samples": int(len(val_pos)), "val_accuracy": round(float(acc), 4)}


# ---------------------------------------------------------------- the workflow

def make_pool(cfg: MakePoolConfig, log=print, manifest: bool = False) -> dict:
    """Build the pool ``cfg`` describes in ``cfg.out``; return the summary written to ``pool.json``.

    manifest : also write ``manifest.json`` into the pool (command line, versions, input and output hashes);
        every other file of the pool is the same bytes for the same config.
    """
    from keepset.encoders.spec import load_text_encoder

    t0 = time.perf_counter()
    fractions = _check_config(cfg)
    out = Path(cfg.out).expanduser()
    _check_out(out, cfg.overwrite)
    samples = load_spec(cfg.data)
    if len(samples.get_inputs([0]).shape) != 4:
        raise ValueError(f"make-pool needs images [N, C, H, W]; {cfg.data!r} gives feature vectors")
    x_all = samples.get_inputs()
    tower_pos, rest_pos = split_indices(samples.labels, (cfg.encoder_fraction, 1 - cfg.encoder_fraction), cfg.seed)
    n = len(rest_pos) if cfg.n is None else cfg.n
    if n > len(rest_pos):
        raise ValueError(f"n={n} pairs asked, but {cfg.data} has {len(rest_pos)} samples outside the image tower's "
                         f"{len(tower_pos)}; lower --n or --encoder-fraction")
    text_encoder = load_text_encoder(cfg.text_encoder, progress=cfg.progress)  # ImportError before any training

    # 1. the image tower, on data that is not in the pool
    tower, tower_info = train_image_tower(x_all[tower_pos], samples.labels[tower_pos], samples.num_classes,
                                          arch=cfg.encoder_arch, epochs=cfg.encoder_epochs, seed=cfg.seed,
                                          progress=cfg.progress)
    log(f"image tower: {tower_info['arch']}, {tower_info['epochs']} epochs on {tower_info['train_samples']} samples, "
        f"held-out accuracy {tower_info['val_accuracy']:.3f}")

    # 2. the pool's slots, their uids and the disjoint corrupted sets
    slot_src = _rng(cfg.seed, 1).choice(rest_pos, size=n, replace=False)   # source position of every slot
    uids = random_uids(n, _rng(cfg.seed, 2))
    counts = {k: int(round(f * n)) for k, f in fractions.items()}
    if sum(counts.values()) > n:
        raise ValueError(f"the corruption fractions ask for {sum(counts.values())} of {n} pairs; lower them")
    order = _rng(cfg.seed, 3).permutation(n)
    kind = np.full(n, "", dtype=object)
    start = 0
    for k in POOL_CORRUPTIONS:
        kind[order[start:start + counts[k]]] = k
        start += counts[k]
    kind = kind.astype(str)
    clean = np.flatnonzero(kind == "")

    # 3. near-duplicates: copies of clean pairs
    rng = _rng(cfg.seed, 4)
    dup = np.flatnonzero(kind == "duplicate")
    dup_of = np.full(n, "", dtype=object)
    eff_src = slot_src.copy()
    original = np.arange(n)
    if len(dup):
        original[dup] = clean[rng.integers(0, len(clean), size=len(dup))]
        eff_src[dup] = slot_src[original[dup]]
        dup_of[dup] = uids[original[dup]]
    labels = samples.labels[eff_src]

    # 4. captions: templates over the class and measured attributes
    light, large, thresholds = image_attributes(x_all[eff_src], labels)
    templates = _rng(cfg.seed, 5).integers(0, len(TEMPLATES), size=n)
    if len(dup):
        shift = rng.integers(1, len(TEMPLATES), size=len(dup))
        templates[dup] = (templates[original[dup]] + shift) % len(TEMPLATES)
    clean_captions = render_captions(templates, samples.class_names, labels, light, large)
    captions = clean_captions.copy()
    caption_from = np.full(n, "", dtype=object)
    swapped = np.flatnonzero(kind == "swapped")
    if len(swapped):
        partner = other_class_partner(labels, swapped, _rng(cfg.seed, 6))
        captions[swapped] = clean_captions[partner]
        caption_from[swapped] = uids[partner]
    unrelated = np.flatnonzero(kind == "unrelated")
    picks = _rng(cfg.seed, 7).integers(0, len(UNRELATED_SENTENCES), size=len(unrelated))
    captions[unrelated] = np.array(UNRELATED_SENTENCES, dtype=object)[picks]
    captions = captions.astype(str).tolist()

    # 5. text embeddings: each distinct caption once
    distinct, inverse = np.unique(np.array(captions), return_inverse=True)
    distinct_emb = np.asarray(text_encoder.encode_texts(distinct.tolist()), dtype=np.float32)
    if distinct_emb.ndim != 2 or not np.isfinite(distinct_emb).all():
        raise ValueError("the text encoder returned non-finite or malformed embeddings")
    text_emb = distinct_emb[inverse.reshape(-1)]

    # 6. shards: images (damaged / perturbed, 8-bit), image embeddings, files
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the pool private to its creator
    try:
        (tmp / "datacomp").mkdir()
        (tmp / "wds").mkdir()
        keys = np.array([f"{i:09d}" for i in range(n)])
        n_shards = math.ceil(n / cfg.shard_size)
        shard_of = np.arange(n) // cfg.shard_size
        image_dim = None
        with progress_bar(total=n, desc="pool shards", enabled=cfg.progress) as bar:
            for s in range(n_shards):
                a, b = s * cfg.shard_size, min(n, (s + 1) * cfg.shard_size)
                imgs = x_all[eff_src[a:b]].copy()
                dmg = np.flatnonzero(kind[a:b] == "damaged")
                if len(dmg):
                    imgs[dmg] = corrupt_images(imgs[dmg], cfg.damage_kind, fraction=1.0,
                                               severity=cfg.damage_severity, seed=cfg.seed * 100_003 + s)[0]
                dups = np.flatnonzero(kind[a:b] == "duplicate")
                if len(dups):
                    noise = _rng(cfg.seed, 1000 + s).normal(0.0, DUPLICATE_NOISE, size=imgs[dups].shape)
                    imgs[dups] = np.clip(imgs[dups] + noise, 0.0, 1.0)
                u8 = np.round(np.clip(imgs, 0.0, 1.0) * 255.0).astype(np.uint8)
                img_emb = embed(tower, u8.astype(np.float32) / 255.0)
                image_dim = img_emb.shape[1]
                pngs = [encode_png(im) for im in u8]
                sha = [hashlib.sha256(p).hexdigest() for p in pngs]
                stem = f"{s:08d}"
                write_datacomp_shard(tmp / "datacomp", stem,
                                     {"uid": uids[a:b], "text": captions[a:b], "key": keys[a:b], "sha256": sha},
                                     {"image_emb": img_emb, "text_emb": text_emb[a:b]})
                write_wds_shard(tmp / "wds" / f"{stem}.tar", [
                    (keys[i], {"png": pngs[i - a], "txt": captions[i].encode("utf-8"),
                               "json": json.dumps({"key": str(keys[i]), "uid": str(uids[i])}, sort_keys=True,
                                                  separators=(",", ":")).encode("utf-8")})
                    for i in range(a, b)])
                bar.update(b - a)

        # 7. truth (evaluation only), the tower, pool.json
        import pyarrow as pa
        import pyarrow.parquet as pq

        truth = pa.table({
            "uid": pa.array(uids.tolist()), "label": pa.array(labels.astype(np.int64)),
            "class_name": pa.array([samples.class_names[y] for y in labels.tolist()]),
            "corruption": pa.array(kind.tolist()), "source_id": pa.array(np.asarray(samples.ids)[eff_src]),
            "duplicate_of": pa.array(dup_of.astype(str).tolist()),
            "caption_from": pa.array(caption_from.astype(str).tolist()),
            "shard": pa.array([f"{s:08d}" for s in shard_of.tolist()]), "key": pa.array(keys.tolist())},
            metadata={b"keepset": b"truth of a keepset make-pool pool: for evaluation only, never a method input"})
        pq.write_table(truth, tmp / "truth.parquet", compression="zstd")
        save_checkpoint(tower, tmp / "image_tower.safetensors", extra={"role": "make-pool image tower", **tower_info})
        _canonical_safetensors(tmp / "image_tower.safetensors")
        summary = {
            "created_by": f"keepset {__version__}",
            "data": cfg.data, "seed": cfg.seed, "n": n, "shard_size": cfg.shard_size, "shards": n_shards,
            "fractions": fractions, "counts": {"clean": int((kind == "").sum()), **counts},
            "damage": {"kind": cfg.damage_kind, "severity": cfg.damage_severity},
            "duplicate_noise_std": DUPLICATE_NOISE,
            "image_encoder": {"kind": "keepset network (penultimate features)", **tower_info,
                              "trained_on": f"a stratified {cfg.encoder_fraction:g} slice of {cfg.data} "
                                            f"({len(tower_pos)} samples, seed {cfg.seed}), none of them in the pool",
                              "dim": int(image_dim), "checkpoint": "image_tower.safetensors"},
            "text_encoder": {"name": text_encoder.name, "fingerprint": text_encoder.fingerprint,
                             "dim": int(text_emb.shape[1])},
            "embedding_keys": {"image": "image_emb", "text": "text_emb",
                               "note": "not CLIP: two separate spaces of different dimensions, so DataComp's "
                                       "b32_img/b32_txt names and CLIP-score columns are deliberately not used; "
                                       "read with keepset's datacomp: source (embeddings=generic|auto)"},
            "captions": {"templates": list(TEMPLATES), "tones": list(TONES), "sizes": list(SIZES),
                         "ink_level": INK_LEVEL, **thresholds, "unrelated_sentences": len(UNRELATED_SENTENCES),
                         "class_names": [display_name(c) for c in samples.class_names]},
            "layout": POOL_LAYOUT,
            "truth_note": "truth.parquet is for evaluation only: no method should read it",
        }
        (tmp / "pool.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n",
                                       encoding="utf-8")
        if manifest:
            from dataclasses import asdict

            from keepset.data import spec_file
            from keepset.io.manifest import write_manifest

            written = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
            write_manifest(tmp / "manifest.json", method="keepset-make-pool", params=asdict(cfg),
                           data={"spec": cfg.data, "fingerprint": samples.fingerprint(), "n": len(samples)},
                           inputs={"data": spec_file(cfg.data)} if spec_file(cfg.data) else None,
                           models={"image_tower": "image_tower.safetensors",
                                   "text_encoder": {"name": text_encoder.name,
                                                    "fingerprint": text_encoder.fingerprint}},
                           outputs={f: f for f in written})
        _install(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - t0, 2)  # returned, not written: the files stay deterministic
    return summary


def format_summary(summary: dict) -> str:
    c = summary["counts"]
    return (f"pool of {summary['n']} pairs in {summary['shards']} shard(s) from {summary['data']}: "
            f"{c['clean']} clean, {c['swapped']} swapped, {c['unrelated']} unrelated, {c['damaged']} damaged "
            f"({summary['damage']['kind']} severity {summary['damage']['severity']}), {c['duplicate']} near-duplicates; "
            f"image_emb {summary['image_encoder']['dim']}-d ({summary['image_encoder']['arch']}, held-out accuracy "
            f"{summary['image_encoder']['val_accuracy']:.3f}), text_emb {summary['text_encoder']['dim']}-d "
            f"({summary['text_encoder']['name']}); {summary['seconds']:.1f} s")
