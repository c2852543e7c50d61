"""A JSON manifest beside every output: what ran (method, parameters, command line), on what (data, model and
input fingerprints), with what (keepset, torch, numpy, python and, when loaded, transformers versions, the
platform) and what it wrote (the outputs' sha256)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from keepset._version import __version__
from keepset.io.atomic import write_text_atomic


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _folder_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every file under ``folder``, sorted by relative path."""
    found = []
    for dirpath, _dirs, files in os.walk(folder, onerror=_raise):
        for f in files:
            p = Path(dirpath) / f
            found.append((p.relative_to(folder).as_posix(), p))
    return sorted(found)


def _raise(exc: OSError) -> None:
    raise ValueError(f"cannot list {exc.filename}: {exc.strerror}") from None


def file_fingerprint(path: str | Path, length: int | None = 16) -> str:
    """sha256 of a file's bytes (first ``length`` hex digits; None: all 64).

    For a folder: sha256 over one line ``"<relative/path>\\0<sha256 of the file>\\n"`` per file under it,
    sorted by relative path (so the same files give the same fingerprint wherever the folder lies).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot fingerprint {path}: no such file or folder")
    if path.is_dir():
        h = hashlib.sha256()
        for rel, p in _folder_files(path):
            h.update(f"{rel}\0{_sha256_file(p)}\n".encode())
        digest = h.hexdigest()
    else:
        digest = _sha256_file(path)
    return digest if length is None else digest[:length]


def _describe_path(path: Path, shown: str) -> dict:
    """{"path", "sha256", "bytes"} of a file; a folder also gets "files" (the count)."""
    if path.is_dir():
        files = _folder_files(path)
        return {"path": shown, "sha256": file_fingerprint(path, None), "files": len(files),
                "bytes": sum(p.stat().st_size for _, p in files)}
    return {"path": shown, "sha256": file_fingerprint(path, None), "bytes": path.stat().st_size}


def _resolve(value, base: Path) -> Path:
    p = Path(value)
    return p if p.is_absolute() or not (base / p).exists() else base / p


def _describe(entries: dict | None, base: Path, kind: str) -> dict:
    """Fingerprint every path-like entry that exists (relative paths: from the manifest's folder first).

    ``inputs`` must all be existing paths; ``outputs`` / ``models`` entries that are not existing paths (a
    count, a hash, a file not written yet) are recorded as given.
    """
    out = {}
    for name, value in (entries or {}).items():
        is_path = isinstance(value, (str, os.PathLike))
        if kind == "inputs" and not is_path:
            raise ValueError(f"inputs[{name!r}] must be a path to a file or folder, got {value!r}")
        path = _resolve(value, base) if is_path and str(value) else None
        if path is not None and path.exists():
            out[name] = _describe_path(path, os.fspath(value))
        elif kind == "inputs":
            raise FileNotFoundError(f"input {name!r} not found: {value}; a manifest records only inputs that exist")
        else:
            out[name] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return out


def _versions() -> dict[str, str]:
    """keepset, python, numpy and torch versions; transformers only when it is already imported (no cost)."""
    from importlib import metadata

    versions = {"keepset": __version__, "python": platform.python_version()}
    for name in ("numpy", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = str(module.__version__)
        else:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                versions[name] = "not installed"
    if "transformers" in sys.modules:
        versions["transformers"] = str(getattr(sys.modules["transformers"], "__version__", "unknown"))
    return versions


def write_manifest(path: str | Path, *, method: str, params: dict, data: dict | None = None,
                   models: dict | None = None, outputs: dict | None = None, inputs: dict | None = None,
                   overwrite: bool = False) -> Path:
    """Write the manifest JSON atomically.

    method, params, data : recorded as given (``data`` typically holds the spec and ``SampleSet.fingerprint()``).
    models : {name: fingerprint or checkpoint path}; an existing path is fingerprinted (see
        ``keepset.models.model_fingerprint`` for a module in memory).
    inputs : {name: path}; each must exist (FileNotFoundError otherwise) and is recorded with its sha256 and
        size (a folder: ``file_fingerprint``'s folder hash and its file count).
    outputs : {name: path or value}; paths that exist (relative ones are looked up beside the manifest first)
        are fingerprinted like inputs, so write the manifest after its outputs; other values are kept.

    Also records the versions (keepset, python, numpy, torch, transformers when loaded), the command line
    (``sys.argv``), the platform and the time. Every input is checked before anything is written.
    """
    path = Path(path)
    base = path.parent
    described = {kind: _describe(entries, base, kind)
                 for kind, entries in (("inputs", inputs), ("models", models), ("outputs", outputs))}
    versions = _versions()
    doc = {"keepset_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "python": versions["python"], "versions": versions, "command": list(sys.argv),
           "platform": platform.platform(), "method": method, "params": params, "data": data or {},
           **described}
    return write_text_atomic(path, json.dumps(doc, indent=2, default=str) + "\n", overwrite)
