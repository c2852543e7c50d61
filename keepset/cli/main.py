"""Entry point of the ``keepset`` command.

One error path: every error a user can cause (a bad flag, a missing or corrupt file, an existing output, a
missing optional package, an unusable device) prints one line ``keepset COMMAND: error: ...`` to stderr and
exits 2; Ctrl-C prints one line and exits 130; anything else is a bug in keepset: one line naming the
exception, exit 1. ``--debug`` (anywhere on the command line) also prints the traceback, with the same exit code.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from keepset._version import __version__
from keepset.cli._common import HelpFormatter, KeepsetParser, UsageError

EPILOG = """examples:
  keepset demo                                   # Grad-Mimic end to end on the embedded digits data
  keepset demo --data fashion-mnist --noise 0.4 --out out/fmnist
  keepset filter --data fashion-mnist --trusted-ids trusted.npy --out out/fmnist-filter   # your own labels
  keepset score --data digits --model out/demo/model.safetensors \\
                --reference out/demo/reference.safetensors --method cos --out scores.parquet
  keepset select --scores scores.parquet --method top --column cos --ratio 0.6 --out keep.npy
  keepset report out/demo                        # HTML page and issues table of a run folder
  keepset bench overhead

errors: one line on stderr and exit status 2 (130 when interrupted, 1 for a bug in keepset); --debug, before or
after the command, also prints the traceback.
"""

DEBUG_HELP = "on an error, also print the traceback (for bug reports); the exit status is unchanged"

#: exception types (by class name, anywhere in the exception's MRO) of optional packages that mean a bad input
#: rather than a bug; matched by name so that building the error path imports none of them
_USER_ERROR_NAMES = frozenset({
    "UnpicklingError", "PickleError",            # pickle: a corrupt or hostile CIFAR batch
    "BadZipFile", "TarError", "ReadError",       # npz / webdataset shards
    "SafetensorError",                           # safetensors: a corrupt checkpoint
    "UnidentifiedImageError", "DecompressionBombError",  # PIL
    "ArrowException",                            # pyarrow (ArrowInvalid is also a ValueError)
    "JSONDecodeError",
})

#: the Python exceptions a user causes (ValueError covers UnicodeError, ArrowInvalid, JSONDecodeError; OSError
#: covers FileNotFoundError, FileExistsError / OutputExistsError, PermissionError, IsADirectoryError ...)
_USER_ERRORS = (ValueError, OSError, ImportError, EOFError, MemoryError, UsageError)


def build_parser() -> argparse.ArgumentParser:
    """The ``keepset`` parser with every command (building it imports neither torch nor any optional package)."""
    from keepset.cli import bench, demo, make_noisy, make_pool, report, score, score_pool, select
    from keepset.cli import filter as filter_

    parser = KeepsetParser(
        prog="keepset", description="Score how useful every training sample is and decide which samples to keep.",
        epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"keepset {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (demo, filter_, score, select, report, bench, make_noisy, make_pool, score_pool):
        module.add_parser(sub)
    for p in _subparsers(parser):
        p.formatter_class = HelpFormatter
        # --debug after the command name too; SUPPRESS keeps a top-level --debug from being reset
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def _subparsers(parser: argparse.ArgumentParser):
    """Every (nested) subcommand parser of ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in dict.fromkeys(action.choices.values()):
                yield p
                yield from _subparsers(p)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error the user can fix (bad input, missing file or package), not a bug in keepset."""
    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] == "keepset":
        return False  # keepset's own modules are always installed: a broken import inside keepset is a bug
    if isinstance(exc, _USER_ERRORS):
        return True
    return any(cls.__name__ in _USER_ERROR_NAMES for cls in type(exc).__mro__)


def _message(exc: BaseException) -> str:
    from keepset._checks import one_line

    text = one_line(exc, limit=1000) if str(exc) else type(exc).__name__
    if isinstance(exc, MemoryError):
        return f"out of memory{': ' + text if str(exc) else ''}; use a smaller --batch-size or fewer samples"
    if isinstance(exc, OSError) and exc.strerror and text.startswith("[Errno"):  # the OS's message, not ours
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return text


def _command(args: argparse.Namespace) -> str:
    """``keepset COMMAND`` (``keepset bench NAME`` for a benchmark) for messages."""
    words = [args.command] + ([args.bench] if getattr(args, "bench", None) else [])
    return " ".join(["keepset", *words])


def main(argv: list[str] | None = None) -> int:
    """Run ``keepset ARGV``; returns the exit status (0 done, 1 a bug in keepset, 2 an error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    prog = "keepset"
    saved_argv, sys.argv = sys.argv, ["keepset", *argv]  # what manifests record as the command line
    try:
        parser = build_parser()
        try:
            args, extra = parser.parse_known_args(argv)
        except UsageError as exc:
            prog = exc.prog
            raise
        prog = _command(args)
        if extra:  # reported by the command's parser, not the top-level one
            raise UsageError(prog, f"unrecognized arguments: {' '.join(extra)} (see {prog} --help)")
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{prog}: interrupted" + ("" if prog.startswith("keepset bench") else
                                        "; existing outputs were left as they were (outputs are swapped in whole "
                                        "when a command finishes)"), file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns exceptions into messages
        if debug:
            traceback.print_exc()
        if is_user_error(exc):
            print(f"{prog}: error: {_message(exc)}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error (a bug in keepset, not in your input): {type(exc).__name__}: "
              f"{_message(exc)}; rerun with --debug for the traceback and report it", file=sys.stderr)
        return 1
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    sys.exit(main())
