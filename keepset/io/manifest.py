"""A JSON manifest beside every output: the method, its parameters, data and model fingerprints, version."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

from keepset._version import __version__
from keepset.io.atomic import write_text_atomic


def file_fingerprint(path: str | Path) -> str:
    """sha256 (first 16 hex digits) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def write_manifest(path: str | Path, *, method: str, params: dict, data: dict | None = None,
                   models: dict | None = None, outputs: dict | None = None, overwrite: bool = False) -> Path:
    """Write the manifest JSON atomically."""
    doc = {"keepset_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "python": platform.python_version(), "method": method, "params": params,
           "data": data or {}, "models": models or {}, "outputs": outputs or {}}
    return write_text_atomic(path, json.dumps(doc, indent=2, default=str) + "\n", overwrite)
