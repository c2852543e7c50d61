"""``keepset score``: one score per sample of a data spec, written to a parquet score table (``id`` first, each score
column's direction in the schema metadata) with its manifest beside it (``OUT.manifest.json``)."""

from __future__ import annotations

import importlib
from pathlib import Path

from keepset.cli._common import add_device, add_quiet, check_device, command_parser, positive_int, quiet_libraries, seed
from keepset.cli._method_flags import add_method_flags, method_options
from keepset.data import SPEC_HELP
from keepset.scoring.registry import SCORER_FLAGS, SCORERS, get_scorer, scorer_modules

EXAMPLES = """examples:
  keepset score --data digits --method cos --model out/demo/model.safetensors \\
                --reference out/demo/reference.safetensors --out out/cos.parquet
  keepset score --data digits --method proj --layers all --model M.safetensors --reference R.safetensors --out s.parquet
  keepset score --data digits --method clip-powered --out clip.parquet      # sas + sds, no download
"""


def add_parser(subparsers) -> None:
    methods = "\n".join(f"  {k:<14} {v[2]}" for k, v in sorted(SCORERS.items()))
    p = command_parser(subparsers, "score", help="score every sample of a data set into a parquet table",
                       description=f"{__doc__}\n\nmethods:\n{methods}", epilog=EXAMPLES)
    p.add_argument("--data", required=True, help=SPEC_HELP)
    p.add_argument("--method", required=True, choices=sorted(SCORERS), metavar="METHOD",
                   help="scoring method (see the list above)")
    p.add_argument("--out", required=True, help="output score table (.parquet); OUT.manifest.json is written beside it")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="samples per scoring batch (Mimic Scores; dynamics: up to 256)")
    p.add_argument("--seed", type=seed, default=0,
                   help="seed of randomised steps (CLIP-powered adapters and encoder, dynamics training)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output and its manifest")
    add_device(p, "where the Mimic Scores and the dynamics compute")
    add_quiet(p)
    common = {a.dest: ("keepset.cli.score", a.option_strings[0], a.default) for a in p._actions
              if a.dest in ("batch_size", "seed", "device")}
    p.set_defaults(func=run, _method_flags={**common, **add_method_flags(p, scorer_modules())})


def _method_options(args) -> dict:
    """The options the chosen scorer reads (a flag it would ignore, set to a non-default value, is an error)."""
    return method_options(args, args._method_flags, args.method, lambda m, dest: dest in SCORER_FLAGS[m], SCORERS,
                          skip=("data", "out", "quiet", "overwrite"))


def manifest_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".manifest.json")


def run(args) -> int:
    from keepset.data import load_spec, spec_file
    from keepset.io import atomic_files, check_output_file, write_manifest, write_score_table

    # every check before any work: flags, device, outputs, inputs and optional packages (the method's preflight)
    options = _method_options(args)
    if "device" in options:
        check_device(options["device"])
    out, manifest = Path(args.out), manifest_path(args.out)
    for path in (out, manifest):
        check_output_file(path, args.overwrite)
    module = importlib.import_module(SCORERS[args.method][0])
    info = module.preflight(args.method, options) if hasattr(module, "preflight") else {}
    samples = load_spec(args.data)

    options["progress"] = not args.quiet
    quiet_libraries(args.quiet)
    columns = get_scorer(args.method)(samples, **options)

    encoders = info.get("encoders")
    params = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool, type(None)))}
    if encoders:  # what the defaults resolved to, not None
        params.update(image_encoder=encoders["image"], text_encoder=encoders["text"])
    inputs = dict(info.get("inputs") or {})
    if spec_file(args.data):
        inputs["data"] = spec_file(args.data)
    meta = {"method": args.method, "data": args.data, "class_names": list(samples.class_names)}
    if encoders:
        meta["encoders"] = encoders
    with atomic_files([out, manifest], args.overwrite) as tmp:
        write_score_table(tmp / out.name, samples.ids, columns, labels=samples.labels, metadata=meta)
        write_manifest(tmp / manifest.name, method=args.method, params=params,
                       data={"spec": args.data, "fingerprint": samples.fingerprint(), "n": len(samples)},
                       inputs=inputs, models=info.get("models"), outputs={"scores": out.name})
    print(f"scored {len(samples)} samples with {args.method} -> {args.out} (columns: {', '.join(columns)})")
    return 0
