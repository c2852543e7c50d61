"""``keepset score``: one score per sample of a data spec, written to a parquet score table."""

from __future__ import annotations

import argparse
import importlib

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
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    owners: dict[str, tuple[str, str, object]] = {}  # dest -> (scorer module, flag, default)
    for module in scorer_modules():
        mod = importlib.import_module(module)
        if hasattr(mod, "add_arguments"):
            before = len(p._actions)
            mod.add_arguments(p)
            for action in p._actions[before:]:
                owners[action.dest] = (module, action.option_strings[0], action.default)
    p.set_defaults(func=run, _scorer_options=owners)


def _method_options(args) -> dict:
    """The options the chosen scorer reads: the common ones and its own module's flags.

    A flag of another scorer set to something other than its default is an error (it would be ignored).
    """
    own_module = SCORERS[args.method][0]
    owners = args._scorer_options
    options = {}
    for key, value in vars(args).items():
        if key in ("func", "command", "data", "out", "quiet", "_scorer_options"):
            continue
        if key in owners and owners[key][0] != own_module:
            module, flag, default = owners[key]
            if value != default:
                users = sorted(m for m, (mod, _, _) in SCORERS.items() if mod == module)
                raise ValueError(f"{flag} does not apply to --method {args.method}; it is an option of "
                                 f"{', '.join(users)}. Drop it, or choose one of those methods")
            continue
        options[key] = value
    return options


def run(args) -> int:
    from keepset.data import load_spec
    from keepset.io import check_writable, write_manifest, write_score_table

    options = _method_options(args)
    check_writable(args.out, args.overwrite)
    samples = load_spec(args.data)
    options["progress"] = not args.quiet
    columns = get_scorer(args.method)(samples, **options)
    write_score_table(args.out, samples.ids, samples.labels, columns, overwrite=args.overwrite,
                      metadata={"keepset_method": args.method, "keepset_data": args.data})
    params = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool, type(None)))}
    write_manifest(f"{args.out}.manifest.json", method=args.method, params=params,
                   data={"spec": args.data, "fingerprint": samples.fingerprint(), "n": len(samples)},
                   outputs={"scores": str(args.out)}, overwrite=args.overwrite)
    print(f"scored {len(samples)} samples with {args.method} -> {args.out} (columns: {', '.join(columns)})")
    return 0
