"""Progress bars that suit both a terminal and a log file.

On a terminal: an ordinary tqdm bar redrawn in place (in a notebook, tqdm's widget). Elsewhere (CI, ``nohup``, a cluster job's log):
tqdm would redraw the bar with carriage returns, which log viewers show as one ever-growing line; here
each refresh becomes one plain line instead, at most one every ``LOG_INTERVAL_S`` seconds, and the final
count is kept.
"""

from __future__ import annotations

import functools
import sys
from typing import Iterable

#: seconds between two progress lines when stderr is not a terminal
LOG_INTERVAL_S = 30.0


class _LineWriter:
    """A file-like object turning tqdm's carriage-return redraws into whole lines on ``stream``."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        for part in text.replace("\r", "\n").split("\n"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@functools.lru_cache(maxsize=None)
def _log_bar_class():
    from tqdm.std import tqdm

    class LogBar(tqdm):
        """No monitor thread: it would redraw (print a line) without progress; postfix and description
        changes wait for the next timed refresh instead of forcing a line each."""

        monitor_interval = 0

        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

        def set_postfix_str(self, s="", refresh=True):
            super().set_postfix_str(s, refresh=False)

        def set_description(self, desc=None, refresh=True):
            super().set_description(desc, refresh=False)

        def set_description_str(self, desc=None, refresh=True):
            super().set_description_str(desc, refresh=False)

    return LogBar


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 enabled: bool = True, leave: bool = False, **kwargs):
    """A tqdm bar on stderr (``enabled=False``: a disabled one that still iterates).

    ``leave`` applies on a terminal; in a log the last line always stays.
    """
    from tqdm.auto import tqdm

    stream = sys.stderr
    if any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__):  # a notebook: tqdm.auto draws a widget
        return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=leave, **kwargs)
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=leave, dynamic_ncols=True,
                    file=stream, **kwargs)
    return _log_bar_class()(iterable, total=total, desc=desc, disable=not enabled, leave=True,
                            file=_LineWriter(stream), mininterval=LOG_INTERVAL_S, ncols=100, ascii=True, **kwargs)
