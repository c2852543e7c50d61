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
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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


def write_text_atomic(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
