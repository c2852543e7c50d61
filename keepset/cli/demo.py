"""``keepset demo``: Grad-Mimic end to end on data with injected label noise (see keepset.workflows.demo).

Splits the data into train / trusted / test (stratified, seeded), corrupts the train labels, runs the filter
workflow of ``keepset filter`` on the noisy train split with the trusted split as the clean data, trains the
same head with plain SGD for comparison, and only then reads the test split for the final metrics. The run
folder (written to a temporary folder and swapped in whole) holds summary.json, scores.parquet, keep.npy, the
two checkpoints, the recorded dynamics and manifest.json.
"""

from __future__ import annotations

from keepset.cli._common import add_device, add_quiet, command_parser, log_to_stderr
from keepset.cli._training_flags import add_training_flags, training_options
from keepset.data import NOISE_KINDS, SPEC_HELP

EXAMPLES = """examples:
  keepset demo                                       # digits, 40% symmetric noise, out/demo
  keepset demo --noise 0.2 --out out/demo-0.2
  keepset demo --data fashion-mnist --noise-kind asymmetric --out out/fmnist
"""


def add_parser(subparsers) -> None:
    p = command_parser(subparsers, "demo", help="Grad-Mimic end to end: noisy labels in, mislabel detection and a "
                                                 "keep list out", description=__doc__, epilog=EXAMPLES)
    p.add_argument("--data", default="digits", help=f"data spec. {SPEC_HELP}")
    p.add_argument("--noise", type=float, default=0.4, help="label-noise rate on the train split, in [0, 1)")
    p.add_argument("--noise-kind", choices=NOISE_KINDS, default="symmetric", help="how wrong labels are drawn")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the noise and training (an integer >= 0)")
    p.add_argument("--out", default="out/demo", help="output folder (written whole at the end)")
    add_training_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run)


def config(args):
    """The demo's config from the parsed flags, validated (flags named as on the command line)."""
    from keepset.workflows.demo import DemoConfig

    cfg = DemoConfig(data=args.data, noise=args.noise, noise_kind=args.noise_kind, seed=args.seed, out=args.out,
                     device=args.device, overwrite=args.overwrite, progress=not args.quiet, **training_options(args))
    return cfg.validate(flags=True)


def run(args) -> int:
    from keepset.io import check_output_dir
    from keepset.workflows.demo import format_summary, run_demo

    cfg = config(args)
    check_output_dir(cfg.out, cfg.overwrite)
    summary = run_demo(cfg, log=log_to_stderr(args.quiet))
    print(format_summary(summary))
    print(f"wrote {args.out}/: summary.json, scores.parquet, keep.npy, manifest.json, dynamics/, model.safetensors, "
          "reference.safetensors")
    return 0
