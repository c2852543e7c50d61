"""Flags that belong to one method of a command with pluggable methods (``keepset score``, ``keepset select``).

Each method module may define ``add_arguments(parser)``; all of them share the command's parser. A flag
that the chosen method does not read would be silently ignored, so ``method_options`` refuses it
(unless left at its default) and names the methods that do read it.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Callable, Iterable


def add_method_flags(parser: argparse.ArgumentParser, modules: Iterable[str]) -> dict[str, tuple[str, str, object]]:
    """Call ``add_arguments(parser)`` of every module; returns {dest: (module, flag, default)} of what they added."""
    flags: dict[str, tuple[str, str, object]] = {}
    for module in modules:
        mod = importlib.import_module(module)
        if hasattr(mod, "add_arguments"):
            before = len(parser._actions)
            mod.add_arguments(parser)
            for action in parser._actions[before:]:
                flags[action.dest] = (module, action.option_strings[0], action.default)
    return flags


def method_options(args: argparse.Namespace, flags: dict[str, tuple[str, str, object]], method: str,
                   reads: Callable[[str, str], bool], methods: Iterable[str], skip: Iterable[str]) -> dict:
    """The options handed to ``method``: every parsed value except ``skip`` and the method flags it does not read.

    flags : from ``add_method_flags``; reads(method, dest) : whether ``method`` reads that flag.
    A flag ``method`` does not read, set to something other than its default, raises ValueError.
    """
    skip = set(skip) | {"func", "command", "_method_flags", "debug"}
    options = {}
    for dest, value in vars(args).items():
        if dest in skip:
            continue
        if dest in flags and not reads(method, dest):
            _, flag, default = flags[dest]
            if value != default:
                users = sorted(m for m in methods if reads(m, dest))
                raise ValueError(f"{flag} does not apply to --method {method}; it is an option of "
                                 f"{', '.join(users)}. Drop it, or choose one of those methods")
            continue
        options[dest] = value
    return options
