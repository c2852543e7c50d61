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
  keepset select --scores out/pairs/scores.parquet --method expr \\
                 --expr "top(clip_score, 0.3) - bottom(mimic_mean, 0.2)" --format datacomp --out keep_dc.npy
  keepset select --scores dc=pool_metadata.parquet --id-column uid --scores out/pairs/scores.parquet --id-column id \\
                 --method expr --expr "(dc.clip_b32_similarity_score >= 0.28) - bottom(mimic_mean, 0.2)" --out keep.npy
"""

#: flags naming files the selector reads (recorded with their hashes in the manifest)
INPUT_FLAGS = ("dynamics", "features")


def add_parser(subparsers) -> None:
    methods = "\n".join(f"  {k:<14} {v[2]}" for k, v in sorted(SELECTORS.items()))
    p = command_parser(subparsers, "select", help="turn a score table into a keep list",
                       description=f"{__doc__}\n\nmethods:\n{methods}", epilog=EXAMPLES)
    p.add_argument("--scores", required=True, action="append", metavar="[NAME=]PATH",
                   help="score table (.parquet) keyed by sample id, from keepset score / filter / demo or your own; "
                        "repeat it to join several tables by id; NAME= prefixes that table's columns (NAME.column)")
    p.add_argument("--id-column", action="append", default=None, metavar="COLUMN",
                   help="column of --scores holding the sample ids (default: id; DataComp metadata: uid); give it "
                        "once for every table, or once per --scores, in the same order")
    p.add_argument("--join", choices=("same", "inner"), default="same",
                   help="several --scores: 'same' (default) requires every table to hold the same ids; 'inner' "
                        "keeps the ids all of them hold and says how many each lost")
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

    from keepset.io import atomic_files, check_output_file, uids_to_datacomp, write_keep_list
    from keepset.io import write_manifest

    # every check before any work: flags, outputs, inputs
    options = method_options(args, args._method_flags, args.method, lambda m, dest: dest in SELECTOR_FLAGS[m],
                             SELECTORS, skip=("scores", "out", "method", "id_column", "join", "overwrite"))
    out, manifest = Path(args.out), manifest_path(args.out)
    for path in (out, manifest):
        check_output_file(path, args.overwrite)
    inputs = table_inputs(args.scores)
    for dest in INPUT_FLAGS:
        if options.get(dest):
            if not Path(options[dest]).exists():
                raise FileNotFoundError(f"--{dest} {options[dest]}: no such file or folder")
            inputs[dest] = options[dest]
    table, join_info = read_tables(args.scores, args.id_column, args.join)
    if join_info is not None and any(join_info["dropped"].values()):
        print(f"joined {len(args.scores)} tables on {join_info['n']} shared ids; dropped "
              + ", ".join(f"{n} from {name}" for name, n in join_info["dropped"].items()))

    keep = np.asarray(get_selector(args.method)(table, **options))
    if keep.dtype != np.bool_ or keep.shape != table["id"].shape:
        raise RuntimeError(f"selector {args.method} returned a mask of shape {keep.shape}, dtype {keep.dtype}")
    kept_ids = table["id"][keep]
    if args.format == "datacomp":
        kept_ids = uids_to_datacomp(kept_ids)
    params = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool, type(None)))}
    params.update(id_column=args.id_column or ["id"], format=args.format, join=args.join)
    with atomic_files([out, manifest], args.overwrite) as tmp:  # both or neither
        write_keep_list(tmp / out.name, kept_ids)
        write_manifest(tmp / manifest.name, method=args.method, params=params,
                       data={"n": int(len(keep)), "kept": int(keep.sum())}, inputs=inputs,
                       outputs={"keep": out.name})
    print(f"kept {int(keep.sum())} of {len(keep)} samples ({keep.mean():.1%}) -> {args.out}")
    return 0


def read_tables(specs: list[str], id_columns: list[str] | None, join: str):
    """The score table of one ``--scores`` (join info None) or several joined by id (keepset.io.tables)."""
    from keepset.io.tables import join_score_tables, parse_table_arg, read_score_table

    id_columns = id_columns or ["id"]
    if len(id_columns) not in (1, len(specs)):
        raise ValueError(f"give --id-column once (for every table) or once per --scores ({len(specs)}), "
                         f"got {len(id_columns)}")
    if len(id_columns) == 1:
        id_columns = id_columns * len(specs)
    parsed = [parse_table_arg(s) for s in specs]
    if len(specs) == 1 and parsed[0][0] is None:
        return read_score_table(parsed[0][1], id_column=id_columns[0]), None
    tables = [(prefix, read_score_table(path, id_column=col), prefix or str(path))
              for (prefix, path), col in zip(parsed, id_columns)]
    return join_score_tables(tables, how=join)


def table_inputs(specs: list[str]) -> dict[str, str]:
    """The manifest's inputs: ``scores`` for one table, ``scores[i]`` / ``scores[NAME]`` for several."""
    from keepset.io.tables import parse_table_arg

    if len(specs) == 1:
        return {"scores": str(parse_table_arg(specs[0])[1])}
    out = {}
    for i, spec in enumerate(specs):
        prefix, path = parse_table_arg(spec)
        out[f"scores[{prefix if prefix else i}]"] = str(path)
    return out
