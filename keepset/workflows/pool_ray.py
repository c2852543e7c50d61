"""The Ray executor of ``keepset score-pool``: a Ray Data pipeline over a pool's shards.

``run_ray(cfg, shards, key)`` builds ``ray.data.from_items`` over the shard names and ``map_batches`` with an
actor pool (``concurrency=workers``, one CPU each; ``num_gpus=1`` per actor with ``--device cuda``): every actor
opens the pool and loads the run's probes (and the encoders of a pool of images) once, then reads, embeds and
scores whole shards with the same ``ShardScorer`` as the local executor, and writes each shard's file itself
(atomically; on a cluster ``--out`` must be a folder every node can write, e.g. a shared file system). The
driver only collects (shard, pairs) rows for progress. A local Ray instance with ``workers`` CPUs is started
unless ``cfg.options.ray_address`` names a cluster (``"auto"`` or ``"ray://HOST:10001"``).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np


class ShardActor:
    """A Ray Data actor: ``actor({"shard": [names]}) -> {"shard": [names], "pairs": [n]}``, writing each shard."""

    def __init__(self, cfg: dict, key: str):
        from keepset.workflows.score_pool import PoolScoreConfig, PoolScoreOptions, ShardScorer, open_pool

        opts = PoolScoreOptions(**cfg.pop("options"))
        self.cfg = PoolScoreConfig(**cfg, options=opts)
        self.key = key
        # the driver checked the whole pool (duplicate ids across shards included); an actor reads its shards
        self.source, embed = open_pool(self.cfg, check_duplicates=False)
        self.scorer = ShardScorer(self.cfg.probe_paths(), opts, embed)

    def __call__(self, batch: dict) -> dict:
        from keepset.workflows.score_pool import write_shard

        names = [str(s) for s in batch["shard"]]
        pairs = [write_shard(Path(self.cfg.out), s, self.key, self.scorer(self.source.read_shard(s))) for s in names]
        return {"shard": np.array(names), "pairs": np.array(pairs, dtype=np.int64)}


def run_ray(cfg, shards: list[str], key: str, log=print) -> dict:
    """Score ``shards`` on Ray (a local instance, or the cluster at ``cfg.options.ray_address``). Returns timings:
    {"startup_seconds": until the first shard was written (Ray's start, the actors' imports and probes),
    "steady_pairs_per_second": pairs of the later shards over their time (None with one shard)}."""
    import time

    from keepset._checks import check_installed

    check_installed("ray", "--executor ray", "ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    opt = cfg.options
    t0 = time.perf_counter()
    started = False
    if not ray.is_initialized():
        if opt.ray_address:
            ray.init(address=opt.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=opt.workers, include_dashboard=False, log_to_driver=False)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        gpu = str(opt.device).startswith("cuda")
        doc = asdict(cfg)
        doc["options"] = {**doc["options"], "progress": False}
        ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
        ds = ds.map_batches(ShardActor, fn_constructor_kwargs={"cfg": doc, "key": key}, batch_size=1,
                            batch_format="numpy", concurrency=opt.workers, num_cpus=1, num_gpus=1 if gpu else 0)
        from keepset._progress import progress_bar

        first, later = None, 0
        with progress_bar(total=len(shards), desc="shards (ray)", enabled=opt.progress) as bar:
            for row in ds.iter_rows():
                if first is None:
                    first = time.perf_counter()
                else:
                    later += int(row["pairs"])
                bar.update(1)
        end = time.perf_counter()
        return {"startup_seconds": round(first - t0, 2),
                "steady_pairs_per_second": round(later / (end - first), 1) if later and end > first else None}
    finally:
        if started:
            ray.shutdown()
