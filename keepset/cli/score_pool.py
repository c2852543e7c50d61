"""``keepset score-pool``: score a pool of image-text pairs shard by shard with a pair run's probes, in this
process or on Ray (see keepset.workflows.score_pool).

Writes OUT/shards/<shard>.parquet as each shard is scored (a rerun resumes at the first unscored shard),
then OUT/scores.parquet (id + the scores), OUT/summary.json and OUT/manifest.json.
"""

from __future__ import annotations

from keepset._argtypes import int_at_least, positive_int, seed
from keepset.cli._common import add_device, add_quiet, command_parser, log_to_stderr, quiet_libraries
from keepset.data.pairs.spec import PAIRS_SPEC_HELP

EXAMPLES = """examples:
  keepset filter --data datacomp:pool --trusted-ids trusted.npy --out out/pairs          # trains the probes
  keepset score-pool --data datacomp:pool --run out/pairs --out out/pool-scores          # one process
  keepset score-pool --data datacomp:pool --run out/pairs --out out/pool-scores --executor ray --workers 8
  keepset score-pool --data datacomp:/shared/pool --run out/pairs --out /shared/scores --executor ray \\
                     --ray-address auto                                                   # an existing cluster
  keepset score-pool --data datacomp:pool --run out/pairs --out out/s --scores clip_score,mimic,sds --knn ivf
"""


def add_parser(subparsers) -> None:
    p = command_parser(subparsers, "score-pool", help="score a pool of pairs shard by shard with a pair run's probes "
                                                      "(one process or Ray), resumable", description=__doc__,
                       epilog=EXAMPLES)
    p.add_argument("--data", required=True, help=f"the pool to score: {PAIRS_SPEC_HELP}")
    p.add_argument("--run", required=True, help="the folder a `keepset filter --data datacomp:...` run wrote (its "
                                                "reference, model and sas_probe .safetensors)")
    p.add_argument("--out", required=True, help="output folder; a rerun with the same configuration resumes it")
    p.add_argument("--scores", default="clip_score,sas,mimic",
                   help="comma-separated, among clip_score (cosine under the reference probe), sas (under the "
                        "pool-fitted probe), mimic (the model's Mimic Score under CLIP's loss), sds (diversity over "
                        "the whole pool's image embeddings)")
    p.add_argument("--batch-size", type=int_at_least(2), default=256,
                   help="pairs per contrastive batch of the Mimic Score (a shard's rows in order)")
    p.add_argument("--method", choices=("proj", "cos"), default="proj", help="the Mimic Score")
    p.add_argument("--k", type=int_at_least(2), default=10, help="SDS neighbourhood size K, the pair included")
    p.add_argument("--knn", choices=("exact", "ivf", "hnsw", "auto"), default="auto",
                   help="SDS neighbour search (auto: exact up to 20,000 pairs, ivf above)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: this process (no Ray needed); ray: a Ray Data pipeline with an actor pool")
    p.add_argument("--ray-address", default=None,
                   help="an existing Ray cluster for --executor ray ('auto', 'ray://HOST:10001'); --out must then be "
                        "a folder every node can write (default: a local Ray instance with --workers CPUs)")
    p.add_argument("--workers", type=positive_int, default=2, help="Ray actors (each loads the probes once)")
    p.add_argument("--image-encoder", default=None,
                   help="pools of images (wds:, hf:): network:CKPT.safetensors or clip:PATH (default: none; "
                        "required for such pools)")
    p.add_argument("--text-encoder", default=None,
                   help="pools of images: minilm | sentence-transformers:PATH | clip:PATH (default: minilm)")
    p.add_argument("--cache-dir", default=None,
                   help="embedding cache of those encoders (default: $KEEPSET_CACHE or ~/.cache/keepset)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the approximate kNN's k-means")
    p.add_argument("--overwrite", action="store_true", help="discard an existing --out folder instead of resuming it")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run)


def config(args):
    """The run's config from the flags, validated (flags named as on the command line) before any work."""
    from keepset.workflows.score_pool import PoolScoreConfig, PoolScoreOptions

    scores = tuple(s.strip() for s in args.scores.split(",") if s.strip())
    opt = PoolScoreOptions(scores=scores, batch_size=args.batch_size, method=args.method, k=args.k, knn=args.knn,
                           executor=args.executor, ray_address=args.ray_address, workers=args.workers,
                           device=args.device, seed=args.seed, progress=not args.quiet)
    for flag, value in (("--k", args.k != 10), ("--knn", args.knn != "auto")):
        if value and "sds" not in scores:
            raise ValueError(f"{flag} steers the sds score, which --scores {args.scores} does not ask for: add sds, "
                             f"or drop {flag}")
    if args.executor == "ray":
        from keepset._checks import check_installed

        check_installed("ray", "--executor ray", "ray")
    cfg = PoolScoreConfig(data=args.data, run=args.run, out=args.out, image_encoder=args.image_encoder,
                          text_encoder=args.text_encoder, cache_dir=args.cache_dir, overwrite=args.overwrite,
                          options=opt)
    return cfg.validate(flags=True)


def run(args) -> int:
    from keepset.workflows.score_pool import format_summary, score_pool

    cfg = config(args)
    quiet_libraries(args.quiet)
    summary = score_pool(cfg, log=log_to_stderr(args.quiet))
    print(format_summary(summary))
    print(f"wrote {args.out}/: scores.parquet, shards/, summary.json, manifest.json")
    return 0
