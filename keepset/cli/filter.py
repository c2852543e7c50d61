"""``keepset filter``: find the mislabelled and worthless samples of your own labelled data (labels as given).

A reference trained on trusted, clean samples (a separate data set, or ids naming clean samples inside the
data) or given as a checkpoint defines where good samples push the model; Grad-Mimic trains a linear head
on the reference's frozen features with every sample's Mimic Score re-weighting its batch, records every
score by id, and Stage 2 turns the recording into a keep list. The run folder holds scores.parquet (by id),
keep.npy, summary.json (the quality estimate and its independent check), manifest.json, the recorded
dynamics and the two checkpoints.
"""

from __future__ import annotations

from keepset.cli._common import add_device, add_quiet, command_parser, log_to_stderr
from keepset.cli._training_flags import add_training_flags, training_options
from keepset.data import SPEC_HELP

EXAMPLES = """examples:
  keepset filter --data fashion-mnist --trusted-ids trusted.npy --out out/fmnist-filter
  keepset filter --data npz:mine.npz --trusted npz:clean.npz --out out/mine
  keepset filter --data imagefolder:photos --reference out/demo/reference.safetensors --out out/photos
  keepset select --scores out/mine/scores.parquet --method stage2 --dynamics out/mine/dynamics --out keep2.npy
"""


def add_parser(subparsers) -> None:
    p = command_parser(subparsers, "filter", help="Grad-Mimic on your own labelled data: scores by id, a keep list, "
                                                   "a quality estimate", description=__doc__, epilog=EXAMPLES)
    p.add_argument("--data", required=True, help=f"the data to filter. {SPEC_HELP}")
    src = p.add_argument_group("the reference (one of --trusted / --trusted-ids, and / or --reference)")
    src.add_argument("--trusted", default=None,
                     help="a separate data set with clean labels (same classes) (default: none)")
    src.add_argument("--trusted-ids", default=None, metavar="FILE",
                     help=".npy of ids inside --data whose labels are clean; they train the reference and are "
                          "kept, not filtered (default: none)")
    src.add_argument("--reference", default=None, metavar="CKPT",
                     help="a trained keepset network (.safetensors) to use as the reference; with trusted "
                          "samples too, all of them are held out to check it (default: none)")
    p.add_argument("--out", required=True, help="output folder (written whole at the end)")
    add_training_flags(p)
    p.add_argument("--reference-epochs", type=int, default=0,
                   help="epochs of the reference, 0: automatic (not with --reference)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random step (an integer >= 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run)


def config(args):
    """The filter's config from the parsed flags, validated (flags named as on the command line)."""
    from keepset.workflows.filter import FilterConfig, FilterOptions

    opt = FilterOptions(**training_options(args), reference_epochs=args.reference_epochs, seed=args.seed,
                        device=args.device, progress=not args.quiet)
    cfg = FilterConfig(data=args.data, trusted=args.trusted, trusted_ids=args.trusted_ids, reference=args.reference,
                       out=args.out, overwrite=args.overwrite, options=opt)
    return cfg.validate(flags=True)


def run(args) -> int:
    from keepset.io import check_output_dir
    from keepset.workflows.filter import format_summary, run_filter

    cfg = config(args)
    check_output_dir(cfg.out, cfg.overwrite)
    summary = run_filter(cfg, log=log_to_stderr(args.quiet))
    print(format_summary(summary))
    print(f"wrote {args.out}/: scores.parquet, keep.npy, summary.json, manifest.json, dynamics/")
    return 0
