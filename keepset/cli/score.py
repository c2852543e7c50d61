"""``keepset score``: one score per sample of a data spec, written to a parquet score table."""

from __future__ import annotations

import argparse

from keepset.cli._common import add_device, add_quiet
from keepset.cli._method_flags import add_method_flags, method_options
from keepset.data import SPEC_HELP
from keepset.scoring.registry import SCORERS, get_scorer, scorer_modules

EXAMPLES = """examples:
  keepset score --data digits --method cos --model out/demo/model.safetensors \\
                --reference out/demo/reference.safetensors --out out/cos.parquet
  keepset score --data digits --method proj --layers all --model M.safetensors --reference R.safetensors --out s.parquet
"""


def add_parser(subparsers) -> None:
    methods = "\n".join(f"  {k:<14} {v[2]}" for k, v in sorted(SCORERS.items()))
    p = subparsers.add_parser("score", help="score every sample of a data set into a parquet table",
                              description=f"{__doc__}\n\nmethods:\n{methods}", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help=SPEC_HELP)
    p.add_argument("--method", required=True, choices=sorted(SCORERS), metavar="METHOD",
                   help="scoring method (see the list above)")
    p.add_argument("--out", required=True, help="output score table (.parquet)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per scoring batch (default 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of randomised steps (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=run, _method_flags=add_method_flags(p, scorer_modules()))


def _method_options(args) -> dict:
    """The common options and the chosen scorer's own flags (another scorer's flag, if set, is an error)."""
    flags = args._method_flags
    return method_options(args, flags, args.method, lambda m, dest: flags[dest][0] == SCORERS[m][0], SCORERS,
                          skip=("data", "out", "quiet"))


def run(args) -> int:
    from keepset.data import load_spec
    from keepset.io import check_writable, write_manifest, write_score_table

    from keepset.workflows.filter import check_device

    options = _method_options(args)
    check_device(args.device)
    check_writable(args.out, args.overwrite)
    check_writable(f"{args.out}.manifest.json", args.overwrite)
    samples = load_spec(args.data)
    options["progress"] = not args.quiet
    columns = get_scorer(args.method)(samples, **options)
    write_score_table(args.out, samples.ids, columns, labels=samples.labels, overwrite=args.overwrite,
                      metadata={"method": args.method, "data": args.data, "class_names": list(samples.class_names)})
    params = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool, type(None)))}
    write_manifest(f"{args.out}.manifest.json", method=args.method, params=params,
                   data={"spec": args.data, "fingerprint": samples.fingerprint(), "n": len(samples)},
                   outputs={"scores": str(args.out)}, overwrite=args.overwrite)
    print(f"scored {len(samples)} samples with {args.method} -> {args.out} (columns: {', '.join(columns)})")
    return 0
