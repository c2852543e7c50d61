"""``keepset bench NAME``: each benchmark module defines ``add_arguments(parser)`` (without importing torch at module
level: ``keepset --help`` builds every parser), ``run(args) -> int`` and ``main(argv=None)`` (for
``python -m keepset.bench.NAME``, which is the same as ``keepset bench NAME``)."""

from __future__ import annotations

import importlib

from keepset.cli._common import command_parser

BENCHMARKS: dict[str, tuple[str, str]] = {
    "overhead": ("keepset.bench.overhead", "time of a Grad-Mimic step against a plain step"),
    "clip-select": ("keepset.bench.clip_select", "exact vs faithful CLIP-powered selection"),
    "detection": ("keepset.bench.detection", "mislabel detection by every method, noise kinds and rates"),
    "pruning": ("keepset.bench.pruning", "train-on-subset accuracy by every method and ratio"),
    "online": ("keepset.bench.online", "online re-weighting: SGD vs Grad-Mimic vs RHO-loss vs GraNd"),
    "sas-detection": ("keepset.bench.sas_detection", "SAS alone as a mislabel detector"),
    "sds-knn": ("keepset.bench.sds_knn", "SDS at scale: exact vs approximate same-label kNN (time, recall, memory)"),
    "stage2-scale": ("keepset.bench.stage2_scale", "Stage 2 out of core: time and peak memory on 10^7 records"),
    "coupled": ("keepset.bench.coupled", "Mimic Score terms under CLIP's loss: closed form vs jvp vs per-pair loop"),
    "image-text": ("keepset.bench.image_text", "image-text pairs: Mimic Score vs clip score vs SAS, train-on-subset, "
                                               "steps to plain training's loss"),
    "scale": ("keepset.bench.scale", "score-pool at 10^5-10^6 pairs: one process vs Ray (throughput, peak memory), "
                                     "SDS exact vs approximate"),
    "report-scale": ("keepset.bench.report_scale", "time of keepset report on a synthetic 100,000-sample run"),
}


def add_parser(subparsers) -> None:
    p = command_parser(subparsers, "bench", help="run a benchmark that prints figures measured side by side",
                       description="Benchmarks print figures measured side by side in one run; "
                                   "keepset bench NAME --help lists a benchmark's flags.")
    sub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, (module, help_) in BENCHMARKS.items():
        mod = importlib.import_module(module)
        bp = command_parser(sub, name, help=help_, description=mod.__doc__)
        mod.add_arguments(bp)
        bp.set_defaults(func=mod.run)
