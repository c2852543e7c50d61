"""``keepset make-noisy``: a copy of a labelled data set with known label noise and / or damaged images.

The copy (.npz) records which samples were corrupted; ``keepset filter --data npz:COPY`` then measures how
well it finds them. The corruption record is for evaluation only: no decision reads it.
"""

from __future__ import annotations

from keepset.cli._common import command_parser
from keepset.data import NOISE_KINDS, SPEC_HELP
from keepset.data.corruption import CORRUPTION_KINDS

EXAMPLES = """examples:
  keepset make-noisy --data fashion-mnist --noise 0.4 --exclude-ids trusted.npy --out fmnist-noisy.npz
  keepset make-noisy --data digits --damage blur --damage-fraction 0.2 --damage-severity 4 --out digits-blur.npz
  keepset filter --data npz:fmnist-noisy.npz --trusted-ids trusted.npy --out out/fmnist-noisy
"""


def add_parser(subparsers) -> None:
    p = command_parser(subparsers, "make-noisy", help="copy a data set with known label noise or damaged images (.npz)",
                       description=__doc__, epilog=EXAMPLES)
    p.add_argument("--data", required=True, help=f"the labelled data to copy. {SPEC_HELP}")
    p.add_argument("--out", required=True, help="the copy (.npz); OUT.manifest.json is written beside it")
    p.add_argument("--noise", type=float, default=0.0, help="label-noise rate, in [0, 1)")
    p.add_argument("--noise-kind", choices=NOISE_KINDS, default="symmetric", help="how wrong labels are drawn")
    p.add_argument("--damage", choices=CORRUPTION_KINDS, default=None, help="image corruption kind (default: none)")
    p.add_argument("--damage-fraction", type=float, default=0.0, help="fraction of images damaged (with --damage)")
    p.add_argument("--damage-severity", type=int, default=3, choices=range(1, 6), metavar="{1..5}",
                   help="corruption severity (with --damage)")
    p.add_argument("--exclude-ids", default=None, metavar="FILE",
                   help=".npy of ids left untouched, e.g. the ids you will pass as --trusted-ids (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruption (an integer >= 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out and its manifest")
    p.set_defaults(func=run)


def run(args) -> int:
    from keepset.workflows.make_noisy import NoisyCopyConfig, make_noisy_copy

    cfg = NoisyCopyConfig(data=args.data, out=args.out, noise=args.noise, noise_kind=args.noise_kind,
                          damage=args.damage, damage_fraction=args.damage_fraction,
                          damage_severity=args.damage_severity, exclude_ids=args.exclude_ids, seed=args.seed,
                          overwrite=args.overwrite).validate()  # everything before any work
    s = make_noisy_copy(cfg, manifest=True)
    print(f"wrote {s['out']}: {s['n']} samples, {s['label_noise']} labels flipped, {s['damaged']} images damaged, "
          f"{s['untouched']} left untouched")
    return 0
