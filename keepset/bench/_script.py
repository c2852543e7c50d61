"""Run a benchmark module as a script (``python -m keepset.bench.NAME``)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def working_folder(out, owned: tuple[str, ...]) -> Path:
    """A benchmark's working folder (``--out``), checked before any work: new, empty, or written by this benchmark
    before (it holds only the entries ``owned``, which the benchmark replaces); never a folder of other files."""
    from keepset.io import check_output_dir

    out = check_output_dir(out, overwrite=True)
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in owned)
        if foreign:
            raise ValueError(f"--out {out} holds files this benchmark did not write ({', '.join(foreign[:3])}); "
                             f"it would overwrite {', '.join(owned)} there: choose a new or empty folder")
    return out


def script_main(module: ModuleType, argv: list[str] | None = None) -> int:
    """``python -m keepset.bench.NAME ARGS`` is ``keepset bench NAME ARGS``: the same parser, checks and error path
    (one line on stderr, exit status 2; ``--debug`` for the traceback). Returns the exit status."""
    import sys

    from keepset.cli.bench import BENCHMARKS
    from keepset.cli.main import main

    module_name = module.__spec__.name if getattr(module, "__spec__", None) else module.__name__  # not "__main__"
    names = [name for name, (mod, _) in BENCHMARKS.items() if mod == module_name]
    if not names:
        raise RuntimeError(f"{module_name} is not a registered benchmark (keepset.cli.bench.BENCHMARKS)")
    return main(["bench", names[0], *(sys.argv[1:] if argv is None else argv)])
