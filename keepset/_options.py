"""Checks of the option dataclasses' fields (``FilterOptions``, ``PairFilterOptions``, ``PoolScoreOptions``): one
spelling of every message. Each raises a one-line ValueError naming the option as ``name`` gives it (its field
name, or its command-line flag)."""

from __future__ import annotations

import numbers
from typing import Callable

import numpy as np


def namer(flags: bool) -> Callable[[str], str]:
    """field -> its name in messages: ``--batch-size`` with ``flags``, else ``batch_size``."""
    return (lambda f: "--" + f.replace("_", "-")) if flags else (lambda f: f)


def is_real(x) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def check_int(value, name: str, low: int, note: str = "") -> None:
    """An integer (not a bool) >= ``low``; ``note`` is added after the bound, e.g. " (0: automatic)"."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}{note}, got {value!r}")


def check_fraction(value, name: str) -> None:
    """A finite number in [0, 1)."""
    if not (is_real(value) and np.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")


def check_positive(value, name: str) -> None:
    """A finite number > 0."""
    if not (is_real(value) and np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_choice(value, name: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_device_option(device, name: str, flags: bool) -> None:
    """A usable torch device (``keepset.workflows.filter.check_device``'s message, prefixed by the flag)."""
    from keepset.workflows.filter import check_device

    try:
        check_device(device)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}" if flags else str(exc)) from None
