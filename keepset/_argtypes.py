"""argparse ``type=`` functions that check a flag's value at parse time, before any work: a bad value is a
one-line usage error naming the flag (``argument --batch-size: must be an integer >= 1, got '0'``).

Used by the commands' parsers and by the method modules' ``add_arguments``; nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, epochs, counts)."""
    value = _number(text, int, "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (seeds; counts where 0 means automatic or none)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


seed = nonnegative_int


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates, temperatures)."""
    value = _number(text, float, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def fraction_open(text: str) -> float:
    """A fraction in [0, 1) (noise rates, cut-offs)."""
    value = _number(text, float, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def ratio(text: str) -> float:
    """A keep ratio in (0, 1] (``keepset._checks.check_ratio``)."""
    from keepset._checks import check_ratio

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be the fraction of samples to keep, in (0, 1], got {text!r}") from None
    try:
        return check_ratio(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be the fraction of samples to keep, in (0, 1], got {text!r}") from None


def int_at_least(low: int):
    """A type for integers >= ``low``."""
    def check(text: str) -> int:
        value = _number(text, int, f"an integer >= {low}")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    check.__name__ = f"int_at_least_{low}"
    return check
