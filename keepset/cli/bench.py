"""``keepset bench NAME``: each benchmark module defines ``add_arguments(parser)``, ``run(args) -> int``
and ``main(argv=None)`` (for ``python -m keepset.bench.NAME``)."""

from __future__ import annotations

import importlib

BENCHMARKS: dict[str, tuple[str, str]] = {
    "overhead": ("keepset.bench.overhead", "time of a Grad-Mimic step against a plain step"),
    "clip-select": ("keepset.bench.clip_select", "exact vs faithful CLIP-powered selection"),
    "detection": ("keepset.bench.detection", "mislabel detection by every method, noise kinds and rates"),
    "pruning": ("keepset.bench.pruning", "train-on-subset accuracy by every method and ratio"),
    "online": ("keepset.bench.online", "online re-weighting: SGD vs Grad-Mimic vs RHO-loss vs GraNd"),
    "sas-detection": ("keepset.bench.sas_detection", "SAS alone as a mislabel detector"),
    "sds-knn": ("keepset.bench.sds_knn", "SDS at scale: exact vs approximate same-label kNN (time, recall, memory)"),
}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run a benchmark that prints figures measured side by side")
    sub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, (module, help_) in BENCHMARKS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue  # not built yet
        bp = sub.add_parser(name, help=help_, description=mod.__doc__)
        mod.add_arguments(bp)
        bp.set_defaults(func=mod.run)
