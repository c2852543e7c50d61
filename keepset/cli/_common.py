"""Flags shared by the commands: one spelling, one help text each."""

from __future__ import annotations

import sys


def add_device(parser) -> None:
    parser.add_argument("--device", default="cpu",
                        help="where models compute: cpu (default), cuda, cuda:N or mps")


def add_quiet(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")


def log_to_stderr(quiet: bool):
    """A ``log(message)`` function printing to stderr (silent with ``quiet``)."""
    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr)
    return log
