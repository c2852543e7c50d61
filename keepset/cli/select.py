"""``keepset select``: a score table in, a keep list (ids of the kept samples) out, with its manifest beside it
(``OUT.manifest.json``)."""

from __future__ import annotations

from pathlib import Path

from keepset.cli._common import command_parser, ratio, seed
from keepset.cli._method_flags import add_method_flags, method_options
from keepset.selection.registry import SELECTOR_FLAGS, SELECTORS, get_selector, selector_modules

EXAMPLES = """examples:
  keepset select --scores out/demo/scores.parquet --method top --column mimic_mean --ratio 0.6 --out keep.npy
  keepset select --scores out/demo/scores.parquet --method stage2 --dynamics out/demo/dynamics/gradmimic --out keep2.npy
  keepset select --scores pool.parquet --id-column uid --method top --column clip_score --ratio 0.3 \\
                 --format datacomp --out keep_uids.npy
"""

#: flags naming files the selector reads (recorded with their hashes in the manifest)
INPUT_FLAGS = ("dynamics", "features")


def add_parser(subparsers) -> None:
    methods = "\n".join(f"  {k:<14} {v[2]}" for k, v in sorted(SELECTORS.items()))
    p = command_parser(subparsers, "select", help="turn a score table into a keep list",
                       description=f"{__doc__}\n\nmethods:\n{methods}", epilog=EXAMPLES)
    p.add_argument("--scores", required=True,
                   help="score table (.parquet) keyed by sample id, from keepset score / filter / demo or your own")
    p.add_argument("--id-column", default="id", help="column of --scores holding the sample ids (DataComp: uid)")
    p.add_argument("--method", required=True, choices=sorted(SELECTORS), metavar="METHOD",
                   help="selection method (see the list above)")
    p.add_argument("--ratio", type=ratio, default=None,
                   help="fraction of samples to keep, in (0, 1] (required by every method but stage2 and expr)")
    p.add_argument("--out", required=True, help="keep list (.npy of kept ids); OUT.manifest.json is written beside it")
    p.add_argument("--format", choices=("ids", "datacomp"), default="ids",
                   help="ids: the table's ids; datacomp: 128-bit hex uids as sorted u8,u8 pairs")
    p.add_argument("--seed", type=seed, default=0, help="seed of the randomised selectors (random, ccs, kcenter)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing keep list and its manifest")
    # --ratio and --seed are read by most selectors but not all: checked like the selectors' own flags
    flags = {"ratio": ("keepset.cli.select", "--ratio", None), "seed": ("keepset.cli.select", "--seed", 0),
             **add_method_flags(p, selector_modules())}
    p.set_defaults(func=run, _method_flags=flags)


def manifest_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".manifest.json")


def run(args) -> int:
    import numpy as np

    from keepset.io import atomic_files, check_output_file, read_score_table, uids_to_datacomp, write_keep_list
    from keepset.io import write_manifest

    # every check before any work: flags, outputs, inputs
    options = method_options(args, args._method_flags, args.method, lambda m, dest: dest in SELECTOR_FLAGS[m],
                             SELECTORS, skip=("scores", "out", "method", "id_column", "overwrite"))
    out, manifest = Path(args.out), manifest_path(args.out)
    for path in (out, manifest):
        check_output_file(path, args.overwrite)
    inputs = {"scores": args.scores}
    for dest in INPUT_FLAGS:
        if options.get(dest):
            if not Path(options[dest]).exists():
                raise FileNotFoundError(f"--{dest} {options[dest]}: no such file or folder")
            inputs[dest] = options[dest]
    table = read_score_table(args.scores, id_column=args.id_column)

    keep = np.asarray(get_selector(args.method)(table, **options))
    if keep.dtype != np.bool_ or keep.shape != table["id"].shape:
        raise RuntimeError(f"selector {args.method} returned a mask of shape {keep.shape}, dtype {keep.dtype}")
    kept_ids = table["id"][keep]
    if args.format == "datacomp":
        kept_ids = uids_to_datacomp(kept_ids)
    params = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool, type(None)))}
    params.update(id_column=args.id_column, format=args.format)
    with atomic_files([out, manifest], args.overwrite) as tmp:  # both or neither
        write_keep_list(tmp / out.name, kept_ids)
        write_manifest(tmp / manifest.name, method=args.method, params=params,
                       data={"n": int(len(keep)), "kept": int(keep.sum())}, inputs=inputs,
                       outputs={"keep": out.name})
    print(f"kept {int(keep.sum())} of {len(keep)} samples ({keep.mean():.1%}) -> {args.out}")
    return 0
