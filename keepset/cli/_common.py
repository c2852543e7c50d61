"""What the commands share: the parser class (one-line usage errors), the help formatter (every default shown),
one spelling and one help text per common flag, and argparse types that validate numbers before any work.

Nothing here imports torch: ``keepset --help`` builds every command's parser.
"""

from __future__ import annotations

import argparse
import re
import sys

# argparse types that check numbers at parse time (in keepset._argtypes so that method modules can use them too)
from keepset._argtypes import (  # noqa: F401
    fraction_open, int_at_least, nonnegative_int, positive_float, positive_int, ratio, seed,
)

#: ``literal`` (RST) in docstrings used as help descriptions: shown as plain text
_RST_LITERAL = re.compile(r"``(.+?)``")
_RST_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj):`~?([^`]+)`")


class UsageError(Exception):
    """A command-line usage error (raised by ``KeepsetParser.error``; ``main`` prints it on one line, exit 2)."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class KeepsetParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ``UsageError`` (one line, naming the command) instead of printing the
    usage block and exiting; ``main`` prints ``keepset COMMAND: error: ... (see keepset COMMAND --help)``."""

    def error(self, message):  # noqa: D401 - argparse's hook
        raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written (examples keep their layout); every flag's help ends with its default.

    ``(default: X)`` is appended unless the help already states the default (it contains "(default"), the flag
    is a switch (store_true / store_false), its default is None or suppressed, or it is a positional argument.
    """

    def _get_help_string(self, action):
        help_ = action.help or ""
        if "(default" in help_ or not action.option_strings or action.help is argparse.SUPPRESS:
            return help_
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction,
                               argparse._VersionAction)):
            return help_
        if action.default is None or action.default is argparse.SUPPRESS:
            return help_
        default = action.default
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{help_} (default: {shown.replace('%', '%%')})".lstrip()


def plain(text: str | None) -> str | None:
    """A docstring as help text: RST literals (````x````) and roles (``:func:`x```) become plain ``x``."""
    if text is None:
        return None
    return _RST_ROLE.sub(r"\1", _RST_LITERAL.sub(r"\1", text))


def command_parser(subparsers, name: str, *, help: str, description: str | None = None, epilog: str | None = None):
    """A subcommand parser with the shared formatter, its description and epilog made plain."""
    return subparsers.add_parser(name, help=help, description=plain(description), epilog=plain(epilog),
                                 formatter_class=HelpFormatter)


# ---------------------------------------------------------------- shared flags


def add_device(parser, what: str = "where models compute") -> None:
    parser.add_argument("--device", default="cpu", help=f"{what}: cpu, cuda, cuda:N or mps")


def add_quiet(parser, what: str = "no progress bars or progress lines") -> None:
    """``--quiet`` (dest ``quiet``); ``--no-progress``, the benchmarks' old spelling, is a hidden alias."""
    parser.add_argument("--quiet", action="store_true", help=what)
    parser.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def quiet_libraries(quiet: bool) -> None:
    """With ``--quiet``, also silence the progress bars of Hugging Face libraries (model loading)."""
    import os

    if quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def log_to_stderr(quiet: bool):
    """A ``log(message)`` function printing to stderr (silent with ``quiet``)."""
    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr)
    return log


def check_device(device: str) -> None:
    """A usable torch device (``keepset.workflows.filter.check_device``), checked before any work."""
    from keepset.workflows.filter import check_device as check

    try:
        check(device)
    except ValueError as exc:
        raise ValueError(f"--device: {exc}") from None
