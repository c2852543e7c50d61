"""Score a pool of image-text pairs shard by shard with the probes of a pair run (``keepset score-pool``).

A pair run (``keepset filter --data datacomp:DIR ...``) leaves its probes in its folder: ``reference.safetensors``
(trained on the trusted pairs), ``model.safetensors`` (trained on the pool with Grad-Mimic) and, unless turned
off, ``sas_probe.safetensors`` (fitted to the pool's own pairs). ``score_pool`` applies them to any pool with
the same embeddings (the filtered pool, its next crawl, a bigger pool), one shard at a time:

- ``clip_score``: the pair's cosine under the reference probe (DataComp's CLIP-score analogue);
- ``sas``: its cosine under the pool-fitted probe;
- ``mimic``: the model's Mimic Score against the reference under CLIP's loss, each pair scored with the
  other pairs of its batch present; batches are the shard's rows in file order, split into near-equal
  batches of at most ``batch_size`` (so the score of a pair depends only on its shard, never on the executor);
- ``sds``: the mean distance to its K-1 nearest neighbours among the whole pool's image embeddings (one class:
  pairs have no labels), computed after the per-shard pass (``keepset.scoring.knn``, exact or approximate).

The per-shard pass is one function, ``ShardScorer``, run by an executor: ``local`` (this process, the default,
no Ray) or ``ray`` (a Ray Data pipeline over the shard list, ``map_batches`` with an actor pool whose actors
load the probes once; ``keepset.workflows.pool_ray``). Each shard's scores are written as soon as they exist,
atomically, to ``OUT/shards/<shard>.parquet`` (keyed by ``id``; the image embeddings beside it when SDS is
asked for); a rerun skips every shard whose file was written by the same configuration, so a killed run resumes
at the shard it stopped at. Then ``OUT/scores.parquet`` joins them (duplicate ids refused) and
``OUT/manifest.json`` records the configuration.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

#: the scores ``score_pool`` can compute
SCORES = ("clip_score", "sas", "mimic", "sds")
EXECUTORS = ("local", "ray")
#: the probes of a pair run each score needs
NEEDS = {"clip_score": ("reference",), "sas": ("sas_probe",), "mimic": ("model", "reference"), "sds": ()}
PROBE_FILES = {"reference": "reference.safetensors", "model": "model.safetensors",
               "sas_probe": "sas_probe.safetensors"}
#: metadata key of a shard file: the configuration that wrote it (a rerun of another one recomputes it)
SHARD_KEY = "keepset_pool_key"


@dataclass
class PoolScoreOptions:
    """What ``score_pool`` computes and how (the flags of ``keepset score-pool``)."""

    scores: tuple = ("clip_score", "sas", "mimic")
    batch_size: int = 256            # pairs per contrastive batch of the Mimic Score
    method: str = "proj"             # Mimic Score: proj | cos
    k: int = 10                      # SDS neighbourhood, the pair included
    knn: str = "auto"                # SDS neighbour search: exact | ivf | hnsw | auto
    executor: str = "local"          # local | ray
    ray_address: str | None = None   # an existing Ray cluster ("auto", "ray://host:10001"); None: a local instance
    workers: int = 2                 # Ray actors
    device: str = "cpu"
    seed: int = 0                    # the approximate kNN's k-means
    progress: bool = True

    def validate(self, flags: bool = False) -> "PoolScoreOptions":
        """One-line ValueError naming the first bad option (by its flag with ``flags``), before any work."""
        from keepset._options import check_choice, check_device_option, check_int, namer
        from keepset.scoring.knn import METHODS as KNN_METHODS

        name = namer(flags)
        scores = tuple(self.scores)
        unknown = [s for s in scores if s not in SCORES]
        if not scores or unknown:
            raise ValueError(f"{name('scores')} must name some of {', '.join(SCORES)}, "
                             f"got {','.join(scores) or 'none'}")
        if len(set(scores)) != len(scores):
            raise ValueError(f"{name('scores')} names a score twice: {','.join(scores)}")
        self.scores = scores
        for f, low in (("batch_size", 2), ("k", 2), ("workers", 1)):
            check_int(getattr(self, f), name(f), low)
        if self.method not in ("proj", "cos"):
            raise ValueError(f"{name('method')} must be 'proj' or 'cos', got {self.method!r}")
        check_choice(self.knn, name("knn"), KNN_METHODS)
        check_choice(self.executor, name("executor"), EXECUTORS)
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError(f"{name('ray_address')} names a Ray cluster, which only {name('executor')} ray uses: "
                             f"add {name('executor')} ray, or drop it")
        check_int(self.seed, name("seed"), 0)
        check_device_option(self.device, name("device"), flags)
        return self


@dataclass
class PoolScoreConfig:
    """A ``score_pool`` run: the pool (a pair spec), the pair run whose probes score it, the output folder."""

    data: str
    run: str
    out: str
    image_encoder: str | None = None
    text_encoder: str | None = None
    cache_dir: str | None = None
    overwrite: bool = False
    options: PoolScoreOptions = field(default_factory=PoolScoreOptions)

    def probe_paths(self) -> dict[str, Path]:
        """{probe: path} of the probes the chosen scores need."""
        need = {p for s in self.options.scores for p in NEEDS[s]}
        return {p: Path(self.run) / PROBE_FILES[p] for p in sorted(need)}

    def validate(self, flags: bool = False) -> "PoolScoreConfig":
        """Options, the run's files and the output folder's state, checked before any work."""
        self.options.validate(flags)
        run = Path(self.run)
        if not run.is_dir():
            raise FileNotFoundError(f"pair run folder not found: {run}; give the --out folder of `keepset filter "
                                    "--data datacomp:DIR ...` (it holds reference.safetensors and model.safetensors)")
        for probe, path in self.probe_paths().items():
            if not path.is_file():
                score = next(s for s in self.options.scores if probe in NEEDS[s])
                hint = " (the run was made with --no-sas)" if probe == "sas_probe" else ""
                raise FileNotFoundError(f"{path} not found: the {score} score needs the run's {probe}{hint}; drop "
                                        f"{score} from --scores or give another run")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file; give a folder")
        if out.exists() and any(out.iterdir()) and not (out / "shards").is_dir() and not self.overwrite:
            raise FileExistsError(f"--out {out} holds files that are not a score-pool run; give an empty or new "
                                  "folder, or --overwrite to replace it")
        return self


# ----------------------------------------------------------------------------------------------- per shard
class ShardScorer:
    """Scores of one shard: ``scorer(batch) -> {"id": [n], score: [n], ...}`` (float32 scores, the batch's row
    order), plus ``"image_emb"`` [n, d] when SDS is asked for. Holds the probes (loaded once) and the encoders of
    pools of images; the same object serves the local executor and every Ray actor.

    probes : {"reference" | "model" | "sas_probe": path}; embed : ``embed(batch) -> (img, txt)`` for pools that
    ship images (None: the batch's own embeddings).
    """

    def __init__(self, probes: dict, options: PoolScoreOptions, embed=None):
        import torch

        from keepset.models.checkpoint import load_checkpoint

        self.options = options
        self.device = torch.device(options.device)
        self.probes = {}
        for name, path in probes.items():
            model, _ = load_checkpoint(path)
            self.probes[name] = model.to(self.device).eval()
        self.embed = embed

    def embeddings(self, batch) -> tuple[np.ndarray, np.ndarray]:
        if self.embed is not None:
            return self.embed(batch)
        batch.require("image_emb", "text_emb")
        return np.asarray(batch.image_emb, np.float32), np.asarray(batch.text_emb, np.float32)

    def __call__(self, batch) -> dict[str, np.ndarray]:
        from keepset.scoring.pairs import pair_cosines
        from keepset.workflows.filter_pairs import check_probe_fits

        img, txt = self.embeddings(batch)
        for name, probe in self.probes.items():
            check_probe_fits(probe, img.shape[1], txt.shape[1], f"the run's {name} probe (shard {batch.shard!r})")
        out: dict[str, np.ndarray] = {"id": np.asarray(batch.ids)}
        opt = self.options
        if "clip_score" in opt.scores:
            out["clip_score"] = pair_cosines(self.probes["reference"], img, txt).astype(np.float32)
        if "sas" in opt.scores:
            out["sas"] = pair_cosines(self.probes["sas_probe"], img, txt).astype(np.float32)
        if "mimic" in opt.scores:
            out["mimic"] = shard_mimic_scores(self.probes["model"], self.probes["reference"], img, txt,
                                              opt.batch_size, opt.method, self.device)
        if "sds" in opt.scores:
            out["image_emb"] = img
        return out


def contrastive_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Rows 0..n-1 split in order into ceil(n / batch_size) near-equal batches (sizes differ by at most one, none
    above ``batch_size``): no batch is left with a handful of pairs (a contrastive batch needs negatives)."""
    if n == 0:
        return []
    return np.array_split(np.arange(n), -(-n // batch_size))


def shard_mimic_scores(model, reference, img: np.ndarray, txt: np.ndarray, batch_size: int, method: str,
                       device) -> np.ndarray:
    """Mimic Score of every pair of a shard under CLIP's loss: float32 [n], each pair scored with the other pairs
    of its batch (``contrastive_batches``) present."""
    import torch

    from keepset.losses import clip_loss
    from keepset.models.mimic import mimic_scores

    out = np.empty(len(img), np.float32)
    for rows in contrastive_batches(len(img), batch_size):
        x = (torch.as_tensor(img[rows], device=device), torch.as_tensor(txt[rows], device=device))
        out[rows] = mimic_scores(model, reference, x, loss_fn=clip_loss, method=method).detach().cpu().numpy()
    return out


# ----------------------------------------------------------------------------------------------- shard files
def shard_path(out: Path, shard: str) -> Path:
    return Path(out) / "shards" / f"{shard}.parquet"


def emb_path(out: Path, shard: str) -> Path:
    return Path(out) / "shards" / f"{shard}.image_emb.npy"


def shard_done(out: Path, shard: str, key: str, need_emb: bool) -> bool:
    """Whether ``shard``'s file exists and was written by the configuration ``key`` (and its embeddings with SDS)."""
    from keepset.io.tables import read_table_metadata

    p = shard_path(out, shard)
    if not p.is_file() or (need_emb and not emb_path(out, shard).is_file()):
        return False
    try:
        return read_table_metadata(p).get(SHARD_KEY) == key
    except (OSError, ValueError):
        return False  # a corrupt leftover: recompute it


def write_shard(out: Path, shard: str, key: str, scores: dict[str, np.ndarray]) -> int:
    """Write one shard's scores (and its image embeddings) atomically; returns its number of pairs."""
    from keepset.io.atomic import atomic_path
    from keepset.io.tables import write_score_table

    ids = scores["id"]
    if "image_emb" in scores:
        with atomic_path(emb_path(out, shard), overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(scores["image_emb"], dtype=np.float32), allow_pickle=False)
    cols = {k: v for k, v in scores.items() if k not in ("id", "image_emb")}
    write_score_table(shard_path(out, shard), ids, cols, metadata={SHARD_KEY: key, "shard": shard},
                      overwrite=True)
    return len(ids)


def config_key(cfg: PoolScoreConfig, source_fingerprint: str) -> str:
    """What makes two runs' shard files interchangeable: the pool, the probes' bytes, the encoders, and the options
    that change a score (not the executor, the workers or the progress bar)."""
    from keepset.data.pairs.base import file_digest

    opt = cfg.options
    doc = {"pool": source_fingerprint, "probes": {p: file_digest(path) for p, path in cfg.probe_paths().items()},
           "encoders": [cfg.image_encoder, cfg.text_encoder], "scores": list(opt.scores),
           "batch_size": opt.batch_size, "method": opt.method}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------------------------- the run
def open_pool(cfg: PoolScoreConfig, *, check_duplicates: bool = True):
    """(the pair source, its embedder or None), the pool's errors raised before any work."""
    from keepset.workflows.filter_pairs import open_pair_pool

    return open_pair_pool(cfg.data, cfg.image_encoder, cfg.text_encoder, cfg.cache_dir, progress=False,
                          check_duplicates=check_duplicates)


def score_pool(cfg: PoolScoreConfig, log=print) -> dict:
    """Score every shard (skipping the ones a killed run finished), then SDS and the joined table. Returns the
    summary written to ``OUT/summary.json``."""
    import shutil

    from keepset.io import write_text_atomic
    from keepset.io.manifest import write_manifest

    cfg.validate()
    opt = cfg.options
    out = Path(cfg.out)
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    source, embed = open_pool(cfg)
    key = config_key(cfg, source.fingerprint())
    marker = out / "shards" / "config.json"
    if marker.is_file() and json.loads(marker.read_text()).get("key") != key:
        raise FileExistsError(f"--out {out} holds a score-pool run of another configuration (pool, probes, scores, "
                              "batch size or method differ): give another --out, or --overwrite to replace it")
    (out / "shards").mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_text_atomic(marker, json.dumps({"key": key, "data": cfg.data, "run": str(cfg.run),
                                              "scores": list(opt.scores)}, indent=2) + "\n")
    need_emb = "sds" in opt.scores
    todo = [s for s in source.shards if not shard_done(out, s, key, need_emb)]
    done_before = len(source.shards) - len(todo)
    log(f"{len(source.shards)} shards of {cfg.data}: {done_before} already scored, {len(todo)} to score "
        f"({opt.executor}{f', {opt.workers} workers' if opt.executor == 'ray' else ''})")
    t0 = time.perf_counter()
    timings = {}
    if todo:
        if opt.executor == "ray":
            from keepset.workflows.pool_ray import run_ray

            timings = run_ray(cfg, todo, key, log=log)
        else:
            run_local(cfg, source, embed, todo, key)
    shard_seconds = time.perf_counter() - t0
    import pyarrow.parquet as pq

    scored = sum(pq.ParquetFile(shard_path(out, s)).metadata.num_rows for s in todo)
    t1 = time.perf_counter()
    sds = pool_sds(out, source.shards, opt) if need_emb else None
    sds_seconds = time.perf_counter() - t1
    n = join_shards(out, source.shards, out / "scores.parquet", sds=sds,
                    metadata={"data": cfg.data, "run": str(cfg.run)})
    summary = {"data": cfg.data, "run": str(cfg.run), "n": n, "shards": len(source.shards),
               "shards_resumed": done_before, "scores": list(opt.scores), "executor": opt.executor,
               "workers": opt.workers if opt.executor == "ray" else 1, "seconds_shards": round(shard_seconds, 2),
               "seconds_sds": round(sds_seconds, 2),
               "pairs_scored": int(scored),
               "pairs_per_second": round(scored / shard_seconds, 1) if todo and shard_seconds > 0 else None,
               **timings}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n", overwrite=True)
    params = {k: v for k, v in asdict(opt).items() if k != "progress"}
    write_manifest(out / "manifest.json", method="keepset-score-pool", params=params,
                   data={"spec": cfg.data, "fingerprint": source.fingerprint(), "n": n},
                   inputs={p: str(path) for p, path in cfg.probe_paths().items()},
                   outputs={"scores.parquet": "scores.parquet", "summary.json": "summary.json"}, overwrite=True)
    return summary


def run_local(cfg: PoolScoreConfig, source, embed, shards: list[str], key: str) -> None:
    """The single-process executor: the shards in order, each written as soon as it is scored."""
    from keepset._progress import progress_bar

    scorer = ShardScorer(cfg.probe_paths(), cfg.options, embed)
    with progress_bar(total=len(shards), desc="shards", enabled=cfg.options.progress) as bar:
        for shard in shards:
            write_shard(Path(cfg.out), shard, key, scorer(source.read_shard(shard)))
            bar.update(1)


def join_shards(out: Path, shards: list[str], path: Path, *, sds: np.ndarray | None = None,
                metadata: dict | None = None) -> int:
    """Write the shards' tables, in shard order, as one table at ``path`` (streamed: one shard in memory at a
    time; written atomically), with the ``sds`` column [N] when given. An id in two shards is refused (nothing
    written). Returns the number of pairs."""
    import pyarrow.parquet as pq

    from keepset.io.tables import ScoreTableWriter, read_score_table
    from keepset.recorder.aggregate import hex_halves

    keys, n = [], 0
    with ScoreTableWriter(path, metadata=metadata, overwrite=True) as w:
        for s in shards:
            if not pq.ParquetFile(shard_path(out, s)).metadata.num_rows:
                continue
            t = read_score_table(shard_path(out, s))
            ids = t.pop("id")
            t.pop("label", None)
            halves = hex_halves(ids) if ids.dtype.kind == "U" else None
            keys.append(np.stack(halves, 1) if halves is not None else ids)
            if sds is not None:
                t["sds"] = sds[n:n + len(ids)]
            w.write(ids, t)
            n += len(ids)
        if not n:
            raise ValueError(f"the pool's {len(shards)} shards hold no pairs")
        _check_unique(keys)
    return n


def _check_unique(keys: list[np.ndarray]) -> None:
    """ValueError when a key (an id, or a uid's two 64-bit halves) repeats across the shards."""
    if any(k.ndim == 2 for k in keys) and not all(k.ndim == 2 for k in keys):
        keys = [k if k.ndim == 1 else np.array([f"{a:016x}{b:016x}" for a, b in k.view(np.uint64)]) for k in keys]
    allk = np.concatenate(keys)
    if allk.ndim == 2:
        allk = allk.view([("hi", allk.dtype), ("lo", allk.dtype)]).ravel()
    srt = np.sort(allk)
    dup = int((srt[1:] == srt[:-1]).sum())
    if dup:
        raise ValueError(f"{dup} pair ids appear in more than one shard of the pool; ids must be unique across it "
                         "(deduplicate the shards)")


def pool_sds(out: Path, shards: list[str], opt: PoolScoreOptions) -> np.ndarray:
    """SDS of every pair over the whole pool's image embeddings (one class): float32 [N], shard order."""
    from keepset.scoring.semantic import sample_diversity_scores

    emb = np.concatenate([np.load(emb_path(out, s), allow_pickle=False) for s in shards])
    return sample_diversity_scores(emb, np.zeros(len(emb), np.int64), opt.k, knn=opt.knn, seed=opt.seed,
                                   progress=opt.progress).astype(np.float32)


def format_summary(s: dict) -> str:
    rate = f", {s['pairs_per_second']:,.0f} pairs/s" if s.get("pairs_per_second") else ""
    resumed = f" ({s['shards_resumed']} resumed)" if s["shards_resumed"] else ""
    return (f"scored {s['n']:,} pairs in {s['shards']} shards{resumed} with {s['executor']}"
            f"{' x ' + str(s['workers']) if s['executor'] == 'ray' else ''}: {', '.join(s['scores'])}; "
            f"shards {s['seconds_shards']:.1f} s{rate}" + (f", SDS {s['seconds_sds']:.1f} s" if 'sds' in s['scores']
                                                            else ""))
