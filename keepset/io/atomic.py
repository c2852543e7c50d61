"""Atomic writes: data goes to a temporary file beside the target, then ``os.replace`` moves it in,
so a crash never leaves a half-written output and an existing output is never silently overwritten."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


class OutputExistsError(FileExistsError):
    """Raised when an output exists and overwriting was not asked for."""


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    """Return ``path`` as a Path; raise OutputExistsError if it exists and ``overwrite`` is False."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True (--overwrite on the CLI) "
                                "to replace it, or choose another output path")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file path")
    return path


def _default_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give (0666 minus the umask); mkstemp uses 0600."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False):
    """Yield a temporary path in the target's folder; on success it replaces ``path`` atomically."""
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def json_default(v):
    """``json.dumps(..., default=json_default)``: numpy scalars as Python numbers and bools."""
    import numpy as np

    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.bool_):
        return bool(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def write_text_atomic(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _check_utf8(path: Path, what: str) -> None:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the {what} name {str(path)!r} is not valid UTF-8; choose another name") from None


def _check_parent_writable(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a folder we may create entries in."""
    probe = path.resolve().parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {probe} is a file, not a folder; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write under {probe}: choose a writable --out")


def check_output_file(path: str | Path, overwrite: bool = False) -> Path:
    """Validate an output file before any work: a valid UTF-8 name, not an existing file (unless ``overwrite``),
    not a folder, under a folder that exists or can be created and is writable. Returns it as a Path."""
    path = Path(path)
    _check_utf8(path, "output file")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; --out must name a file")
    check_writable(path, overwrite)
    _check_parent_writable(path)
    return path


def check_output_dir(path: str | Path, overwrite: bool = False) -> Path:
    """Validate an output folder before any work: it must not exist (unless ``overwrite``), must not be a file,
    and its parent must be creatable and writable. Returns it as a Path."""
    path = Path(path)
    _check_utf8(path, "output folder")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; --out must name a folder")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{path} already holds outputs; pass --overwrite (overwrite=True) to replace them "
                                "or choose another --out")
    _check_parent_writable(path)
    return path


@contextlib.contextmanager
def atomic_files(paths, overwrite: bool = False):
    """Write several outputs of one folder as a group (e.g. a keep list and its manifest).

    Checks every path first (``check_output_file``), then yields a fresh temporary folder beside them; write each
    output there under its own file name (a manifest there may name its outputs by file name: they lie beside
    it). On success each replaces its target by a rename, one after the other with no work in between; on
    failure (or a kill before the renames) no target is touched and the temporary folder is removed (a killed
    run's ``.<name>.tmp-*`` is left beside them and never read).
    """
    import shutil

    paths = [check_output_file(p, overwrite) for p in paths]
    parents = {p.resolve().parent for p in paths}
    if len(parents) != 1:
        raise ValueError(f"outputs written together must share one folder, got {sorted(map(str, parents))}")
    if len({p.name for p in paths}) != len(paths):
        raise ValueError(f"two outputs share a name: {[str(p) for p in paths]}")
    parent = parents.pop()
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{paths[0].name}.tmp-"))
    try:
        yield tmp
        missing = [p.name for p in paths if not (tmp / p.name).is_file()]
        if missing:
            raise RuntimeError(f"outputs not written: {missing}")
        for p in paths:
            os.replace(tmp / p.name, p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False):
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` whole.

    A run that fails or is killed leaves ``path`` exactly as it was (the temporary folder, named
    ``.<name>.tmp-*``, is removed on failure; a killed run's is left beside it and never read).
    """
    import shutil

    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
