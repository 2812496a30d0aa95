"""Argument types of the ``autowarm bench`` sub-actions: a bad value is an argparse error that
names the option and says what to pass, never a run of nothing that exits 0."""

from __future__ import annotations

import argparse
import math

__all__ = [
    "count",
    "names",
    "nonnegative_ints",
    "positive_floats",
    "positive_int",
    "sizes",
    "worker_count",
]


def names(text: str) -> list[str]:
    """Comma-separated names (tasks, methods), at least one, without repeats."""
    out = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not out:
        raise argparse.ArgumentTypeError("give at least one name, comma separated")
    return out


def positive_int(text: str) -> int:
    """An int >= 1 (seeds, steps)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, but got {text!r}")
    return value


def worker_count(text: str) -> int:
    """Worker processes: an int >= 0 (0 runs in this process)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"must be an int >= 0 (0 runs everything in this process), but got {text!r}"
        )
    return value


def count(text: str) -> int:
    """A non-negative int (untimed steps)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, but got {text!r}")
    return value


def positive_floats(text: str) -> list[float]:
    """Comma-separated finite floats > 0 (peak LRs), at least one, without repeats."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be numbers, comma separated: {text!r}") from None
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad or not values:
        raise argparse.ArgumentTypeError(
            f"must be finite numbers > 0, comma separated (e.g. 1e-3,3e-3), but got {text!r}"
        )
    return list(dict.fromkeys(values))


def nonnegative_ints(text: str) -> list[int]:
    """Comma-separated ints >= 0 (warmup steps), at least one, without repeats."""
    values = [_int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(
            f"must be ints >= 0, comma separated (e.g. 0,100,500), but got {text!r}"
        )
    return list(dict.fromkeys(values))


def sizes(text: str) -> list[int]:
    """Comma-separated parameter counts >= 1 (``1e6,3e7`` allowed), at least one."""
    try:
        values = [int(float(x)) for x in text.split(",") if x.strip()]
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"must be numbers, comma separated: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"must be parameter counts >= 1, comma separated (e.g. 1e6,1e7), but got {text!r}"
        )
    return values


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int, but got {text!r}") from None
