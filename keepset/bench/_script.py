"""Run a benchmark module as a script (``python -m keepset.bench.NAME``)."""

from __future__ import annotations

import argparse
from types import ModuleType


def script_main(module: ModuleType, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with the module's ``add_arguments`` and call its ``run`` (the same code as ``keepset bench``)."""
    name = module.__spec__.name if getattr(module, "__spec__", None) else module.__name__  # not "__main__"
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv)) or 0)
