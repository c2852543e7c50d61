"""``keepset make-pool``: an offline image-text pool with known defects (see keepset.workflows.make_pool).

Writes DIR/datacomp/ (DataComp's parquet + npz layout), DIR/wds/ (webdataset tar shards), DIR/pool.json
and DIR/truth.parquet (which pairs were corrupted and how: for evaluation only, never a method's input).
"""

from __future__ import annotations

from keepset.cli._common import add_quiet, command_parser, quiet_libraries
from keepset.data import SPEC_HELP
from keepset.data.corruption import CORRUPTION_KINDS

EXAMPLES = """examples:
  keepset make-pool --data fashion-mnist --n 20000 --out out/pool            # 30% swapped captions
  keepset make-pool --data digits --swap 0.2 --unrelated 0.1 --damaged 0.1 --duplicates 0.05 --out out/dpool
  keepset make-pool --data fashion-mnist --damaged 0.3 --damage-kind blur --damage-severity 4 --swap 0 --out out/blur
read it back:  keepset.data.pairs.load_pairs("datacomp:out/pool/datacomp") or load_pairs("wds:out/pool/wds")
"""


def add_parser(subparsers) -> None:
    p = command_parser(subparsers, "make-pool", help="write an offline image-text pool (DataComp + webdataset layouts) "
                                                     "with recorded defects", description=__doc__, epilog=EXAMPLES)
    p.add_argument("--data", default="fashion-mnist", help=f"labelled image data. {SPEC_HELP}")
    p.add_argument("--out", required=True, help="the pool folder to write (refused if it exists, without --overwrite)")
    p.add_argument("--n", type=int, default=None,
                   help="pairs in the pool, >= 2 (default: every sample of the data not used by the image tower)")
    p.add_argument("--shard-size", type=int, default=10_000, help="pairs per shard")
    p.add_argument("--seed", type=int, default=0, help="seed of every random step (an integer >= 0)")
    p.add_argument("--swap", type=float, default=0.3,
                   help="fraction of pairs given the caption of a pair of another class")
    p.add_argument("--unrelated", type=float, default=0.0,
                   help="fraction of pairs given a sentence about something else")
    p.add_argument("--damaged", type=float, default=0.0, help="fraction of pairs whose image is damaged")
    p.add_argument("--duplicates", type=float, default=0.0,
                   help="fraction of pairs replaced by near-duplicates of clean pairs")
    p.add_argument("--damage-kind", choices=CORRUPTION_KINDS, default="gaussian_noise",
                   help="image corruption of the damaged pairs")
    p.add_argument("--damage-severity", type=int, default=3, choices=range(1, 6), metavar="{1..5}",
                   help="corruption severity")
    p.add_argument("--encoder-fraction", type=float, default=0.1,
                   help="share of the data that trains the image tower and stays out of the pool, in (0, 1)")
    p.add_argument("--encoder-arch", choices=("mlp", "cnn"), default=None,
                   help="image tower (default: cnn for square images of side >= 16, else mlp)")
    p.add_argument("--encoder-epochs", type=int, default=None,
                   help="image tower epochs (default: ceil(30000 / its training samples), within [5, 50])")
    p.add_argument("--text-encoder", default="minilm",
                   help="minilm (offline package) | sentence-transformers:PATH | clip:PATH_OR_NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pool at --out")
    add_quiet(p, "no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from keepset.workflows.make_pool import MakePoolConfig, format_summary, make_pool, validate_config

    cfg = MakePoolConfig(data=args.data, out=args.out, n=args.n, shard_size=args.shard_size, seed=args.seed,
                         swap=args.swap, unrelated=args.unrelated, damaged=args.damaged, duplicates=args.duplicates,
                         damage_kind=args.damage_kind, damage_severity=args.damage_severity,
                         encoder_fraction=args.encoder_fraction, encoder_arch=args.encoder_arch,
                         encoder_epochs=args.encoder_epochs, text_encoder=args.text_encoder,
                         overwrite=args.overwrite, progress=not args.quiet)
    validate_config(cfg, flags=True)  # everything before any work
    quiet_libraries(args.quiet)
    summary = make_pool(cfg, manifest=True)
    print(format_summary(summary))
    print(f"wrote {args.out}/datacomp/, {args.out}/wds/, pool.json, truth.parquet (evaluation only), "
          "image_tower.safetensors, manifest.json")
    return 0
