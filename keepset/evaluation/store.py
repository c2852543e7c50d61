"""Resumable benchmark results: one JSON file holding the run's config and every finished cell.

Each finished cell is written at once, atomically (temporary file + ``os.replace``), so an
interrupted run loses at most the cell in progress; a restart with the same config skips the
finished cells. A restart with a different config refuses to mix results unless told to start over.
"""

from __future__ import annotations

import json
from pathlib import Path

from keepset.io.atomic import write_text_atomic


def cell_key(**parts) -> str:
    """A stable key for one cell of a grid: ``cell_key(seed=0, rate=0.2)`` -> "rate=0.2|seed=0"."""
    return "|".join(f"{k}={parts[k]}" for k in sorted(parts))


class ResultStore:
    """JSON results with resume.

    Parameters
    ----------
    path : the JSON file.
    config : everything that determines the results (data, model, epochs ...): JSON-serialisable.
    restart : discard an existing file whose config differs (otherwise raise).
    """

    def __init__(self, path: str | Path, config: dict, restart: bool = False):
        self.path = Path(path)
        self.config = json.loads(json.dumps(config, default=str))
        self.cells: dict[str, dict] = {}
        if self.path.exists():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{self.path} is not a readable results file ({exc}); move it away "
                                 "or pass --restart to start over") from None
            if doc.get("config") == self.config:
                self.cells = dict(doc.get("cells", {}))
            elif not restart:
                raise ValueError(f"{self.path} holds results of another configuration; pass --restart to "
                                 "discard them, or choose another --out folder")

    def done(self, key: str) -> bool:
        return key in self.cells

    def put(self, key: str, result: dict) -> None:
        """Record one finished cell and rewrite the file atomically."""
        self.cells[key] = json.loads(json.dumps(result, default=float))
        self.save()

    def save(self) -> None:
        doc = {"config": self.config, "cells": self.cells}
        write_text_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True) + "\n", overwrite=True)
