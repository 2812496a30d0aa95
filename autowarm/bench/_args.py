"""Argument types of the ``autowarm bench`` sub-actions: a bad value is an argparse error that
names the option and says what to pass, never a run of nothing that exits 0."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

__all__ = [
    "add_run_options",
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
    return _at_least(text, 1)


def worker_count(text: str) -> int:
    """Worker processes: an int >= 0 (0 runs in this process)."""
    return _at_least(text, 0, " (0 runs everything in this process)")


def count(text: str) -> int:
    """A non-negative int (untimed steps)."""
    return _at_least(text, 0)


def add_run_options(
    parser: argparse.ArgumentParser, *, methods: Sequence[str], seeds: int, seeds_help: str
) -> None:
    """``--tasks``, ``--methods`` (default: all of ``methods``), ``--seeds`` and ``--workers``,
    as ``bench eval`` and ``bench study`` take them."""
    parser.add_argument(
        "--tasks",
        type=names,
        default=None,
        help="comma-separated built-in task names, or path/to/task.py:task (default: all "
        "available built-in tasks)",
    )
    parser.add_argument(
        "--methods",
        type=names,
        default=list(methods),
        help=f"comma-separated methods (default: all: {','.join(methods)})",
    )
    parser.add_argument("--seeds", type=positive_int, default=seeds, help=seeds_help)
    parser.add_argument(
        "--workers",
        type=worker_count,
        default=2,
        help="worker processes (default 2); 0 = in-process",
    )


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


def _at_least(text: str, low: int, note: str = "") -> int:
    value = _int(text)
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an int >= {low}{note}, but got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int, but got {text!r}") from None
