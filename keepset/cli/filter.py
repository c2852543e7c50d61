"""``keepset filter``: find the mislabelled and worthless samples of your own labelled data (labels as given),
or the mismatched pairs of an image-text pool (``--data datacomp:DIR``, ``wds:PATH``, ``hf:PATH``).

A reference trained on trusted, clean samples (a separate data set, or ids naming clean samples inside the
data) or given as a checkpoint defines where good samples push the model; Grad-Mimic trains a linear head
on the reference's frozen features with every sample's Mimic Score re-weighting its batch, records every
score by id, and Stage 2 turns the recording into a keep list. The run folder holds scores.parquet (by id),
keep.npy, summary.json (the quality estimate and its independent check), manifest.json, the recorded
dynamics and the two checkpoints.

Image-text pairs (contrastive probing): frozen image and text embeddings, two trainable projections (a
two-tower probe) trained with CLIP's loss; the reference's projections train on the trusted pairs, the
model's on the pool with Grad-Mimic, both from one initialisation. The pool streams shard by shard. The run
folder adds keep_datacomp.npy (DataComp's sorted u8,u8 uid array, for its resharder) and per-pair clip_score
and sas columns.
"""

from __future__ import annotations

from keepset.cli._common import add_device, add_quiet, command_parser, log_to_stderr
from keepset.cli._training_flags import LABELLED_ONLY, add_training_flags, pair_training_options, training_options
from keepset.data import SPEC_HELP
from keepset.data.pairs.spec import PAIRS_SPEC_HELP

PAIR_KINDS = ("datacomp", "wds", "hf")
#: flags (argparse dest -> spelling) that only a pool of pairs reads (LABELLED_ONLY: only labelled data)
PAIRS_ONLY = {"dim": "--dim", "text_hidden": "--text-hidden", "shuffle_buffer": "--shuffle-buffer",
              "no_sas": "--no-sas", "truth": "--truth", "image_encoder": "--image-encoder",
              "text_encoder": "--text-encoder", "cache_dir": "--cache-dir"}

EXAMPLES = """examples:
  keepset filter --data fashion-mnist --trusted-ids trusted.npy --out out/fmnist-filter
  keepset filter --data datacomp:out/pool/datacomp --trusted-ids trusted_uids.npy --out out/pairs \\
                 --truth out/pool/truth.parquet
  keepset filter --data wds:out/pool/wds --trusted-ids trusted_uids.npy --out out/pairs-wds \\
                 --image-encoder network:out/pool/image_tower.safetensors
  keepset filter --data npz:mine.npz --trusted npz:clean.npz --out out/mine
  keepset filter --data imagefolder:photos --reference out/demo/reference.safetensors --out out/photos
  keepset select --scores out/mine/scores.parquet --method stage2 --dynamics out/mine/dynamics --out keep2.npy
"""


def add_parser(subparsers) -> None:
    p = command_parser(subparsers, "filter", help="Grad-Mimic on your own labelled data or image-text pool: scores "
                                                   "by id, a keep list, a quality estimate",
                       description=__doc__, epilog=EXAMPLES)
    p.add_argument("--data", required=True,
                   help=f"the data to filter. {SPEC_HELP}; image-text pairs: {PAIRS_SPEC_HELP}")
    src = p.add_argument_group("the reference (one of --trusted / --trusted-ids, and / or --reference)")
    src.add_argument("--trusted", default=None,
                     help="a separate data set with clean labels (same classes), or a separate pool of clean pairs "
                          "(default: none)")
    src.add_argument("--trusted-ids", default=None, metavar="FILE",
                     help=".npy of ids inside --data whose labels are clean (pairs: uids, or DataComp's u8,u8 "
                          "array); they train the reference and are kept, not filtered (default: none)")
    src.add_argument("--reference", default=None, metavar="CKPT",
                     help="a trained keepset network (.safetensors) to use as the reference (pairs: the "
                          "reference.safetensors of an earlier pair run); with trusted samples too, all of them are "
                          "held out to check it (default: none)")
    p.add_argument("--out", required=True, help="output folder (written whole at the end)")
    add_training_flags(p, pairs=True)
    p.add_argument("--reference-epochs", type=int, default=0,
                   help="epochs of the reference, 0: automatic (not with --reference)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random step (an integer >= 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    pairs = p.add_argument_group("image-text pairs only")
    pairs.add_argument("--dim", type=int, default=None, help="size of the two-tower probe's shared space (default: 64)")
    pairs.add_argument("--text-hidden", default=None, metavar="W[,W...]",
                       help="widths of an MLP on the text side before its projection (default: none)")
    pairs.add_argument("--shuffle-buffer", type=int, default=None,
                       help="pairs shuffled together while streaming (default: 16384; memory: that many embeddings)")
    pairs.add_argument("--no-sas", action="store_true",
                       help="skip the probe fitted to the pool's own pairs (the sas column)")
    pairs.add_argument("--truth", default=None, metavar="FILE",
                       help="evaluation only: a truth parquet (uid + corruption, e.g. make-pool's truth.parquet); the "
                            "summary reports detection against it, no decision reads it (default: none)")
    pairs.add_argument("--image-encoder", default=None,
                       help="pools of images (wds:, hf:): network:CKPT.safetensors (e.g. a pool's "
                            "image_tower.safetensors) or clip:PATH (default: none; required for such pools)")
    pairs.add_argument("--text-encoder", default=None,
                       help="pools of images: minilm | sentence-transformers:PATH | clip:PATH (default: minilm)")
    pairs.add_argument("--cache-dir", default=None,
                       help="embedding cache of those encoders (default: $KEEPSET_CACHE or ~/.cache/keepset)")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run)


def is_pair_spec(spec: str) -> bool:
    """Whether a --data spec names an image-text pool (``datacomp:``, ``wds:``, ``hf:``)."""
    return isinstance(spec, str) and spec.strip().partition(":")[0].lower() in PAIR_KINDS


def _refuse(args, flags: dict, what: str, data: str) -> None:
    given = [flag for dest, flag in flags.items() if getattr(args, dest) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only to {what}; "
                         f"--data {data} is not: drop {'it' if len(given) == 1 else 'them'}")


def config(args):
    """The filter's config from the parsed flags, validated (flags named as on the command line): a
    ``FilterConfig`` for labelled data, a ``PairFilterConfig`` for an image-text pool."""
    if is_pair_spec(args.data):
        return pair_config(args)
    from keepset.workflows.filter import FilterConfig, FilterOptions

    _refuse(args, PAIRS_ONLY, "image-text pools (datacomp:, wds:, hf:)", args.data)
    if args.trusted and is_pair_spec(args.trusted):
        raise ValueError(f"--trusted {args.trusted} is a pool of pairs but --data {args.data} is labelled data")
    opt = FilterOptions(**training_options(args), reference_epochs=args.reference_epochs, seed=args.seed,
                        device=args.device, progress=not args.quiet)
    cfg = FilterConfig(data=args.data, trusted=args.trusted, trusted_ids=args.trusted_ids, reference=args.reference,
                       out=args.out, overwrite=args.overwrite, options=opt)
    return cfg.validate(flags=True)


def _widths(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(w) for w in text.replace(" ", "").split(",") if w)
    except ValueError:
        raise ValueError(f"--text-hidden takes comma-separated integer widths, e.g. 256,128; got {text!r}") from None


def pair_config(args):
    """The pair filter's config from the parsed flags, validated (flags named as on the command line)."""
    from keepset.workflows.filter_pairs import PairFilterConfig, PairFilterOptions

    _refuse(args, LABELLED_ONLY, "labelled data", args.data)
    if args.trusted and not is_pair_spec(args.trusted):
        raise ValueError(f"--trusted {args.trusted} is labelled data but --data {args.data} is a pool of pairs; give "
                         f"a pool of clean pairs ({PAIRS_SPEC_HELP}) or --trusted-ids")
    d = PairFilterOptions()
    opt = PairFilterOptions(**pair_training_options(args), dim=d.dim if args.dim is None else args.dim,
                            text_hidden=_widths(args.text_hidden), reference_epochs=args.reference_epochs,
                            shuffle_buffer=d.shuffle_buffer if args.shuffle_buffer is None else args.shuffle_buffer,
                            sas=not args.no_sas, seed=args.seed, device=args.device, progress=not args.quiet)
    cfg = PairFilterConfig(data=args.data, trusted=args.trusted, trusted_ids=args.trusted_ids,
                           reference=args.reference, truth=args.truth, image_encoder=args.image_encoder,
                           text_encoder=args.text_encoder, cache_dir=args.cache_dir, out=args.out,
                           overwrite=args.overwrite, options=opt)
    return cfg.validate(flags=True)


def run(args) -> int:
    from keepset.io import check_output_dir

    cfg = config(args)
    check_output_dir(cfg.out, cfg.overwrite)
    if is_pair_spec(args.data):
        from keepset.workflows.filter_pairs import format_pair_summary, run_filter_pairs

        summary = run_filter_pairs(cfg, log=log_to_stderr(args.quiet))
        print(format_pair_summary(summary))
        extra = ", keep_datacomp.npy" if "keep_datacomp.npy" in summary.get("keep_list", "") else ""
        print(f"wrote {args.out}/: scores.parquet, keep.npy{extra}, summary.json, manifest.json, dynamics/, "
              "checkpoints")
        return 0
    from keepset.workflows.filter import format_summary, run_filter

    summary = run_filter(cfg, log=log_to_stderr(args.quiet))
    print(format_summary(summary))
    print(f"wrote {args.out}/: scores.parquet, keep.npy, summary.json, manifest.json, dynamics/, model.safetensors, "
          "reference.safetensors")
    return 0
