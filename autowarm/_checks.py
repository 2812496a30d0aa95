"""Type checks shared by the public entry points, the one-line form of an error, and the
command lines' refusal of abbreviated options.

Counts and rates may come from numpy or a config library as well as from Python literals, so
any integer type (``numpy.int64``) is an int here and any real type (``numpy.float32``) a real;
a ``bool`` is neither, because ``True`` as a step count is always a mistake.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "check_known_fields",
    "check_seed",
    "error_line",
    "is_finite_real",
    "is_int",
    "is_real",
    "no_abbreviations",
]


def is_int(x: object) -> bool:
    """An integer of any type (``int``, ``numpy.int64``, ...), not a ``bool``."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x: object) -> bool:
    """A real number of any type (``float``, ``int``, ``numpy.float32``, ...), not a ``bool``."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_finite_real(x: object) -> bool:
    """A real number (as :func:`is_real`) that is a finite float: not ``nan``/``inf``, and not
    an int too large for a float (``10**400``, which ``math.isfinite`` would overflow on)."""
    if not is_real(x):
        return False
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]  # a numbers.Real
    except OverflowError:
        return False


def check_seed(seed: Any, seeds: str) -> int:
    """``seed`` as an int, for a seed that ``seeds`` the generators named (the message says
    which).

    Raises:
        ValueError: If it is not an int in ``[0, 2**32)`` (numpy's range for a seed).
    """
    if not is_int(seed) or not 0 <= seed < 2**32:
        raise ValueError(
            f"seed must be an int in [0, 2**32) (it seeds {seeds}), but got seed={seed!r}"
        )
    return int(seed)  # a numpy integer passes the check, but random.seed() refuses it


def check_known_fields(
    keys: Iterable[Any], valid: Sequence[str], where: str, *, also: Sequence[str] = ()
) -> None:
    """Refuse keys of a record (a config file, a saved suggestion) that are not its fields: a
    misspelt field would otherwise be read as its default.

    Raises:
        ValueError: naming the unknown keys, the closest valid name of each where one is
            close (``'warmup_step': did you mean 'warmup_steps'?``), and the valid fields
            (``also``: keys accepted besides them, such as the format's name).
    """
    accepted = (*valid, *also)
    unknown = sorted(str(k) for k in keys if k not in accepted)
    if not unknown:
        return
    import difflib

    close = {k: m[0] for k in unknown if (m := difflib.get_close_matches(k, valid, n=1))}
    hint = "".join(f" ({k!r}: did you mean {v!r}?)" for k, v in close.items())
    extra = f" (and {', '.join(also)})" if also else ""
    raise ValueError(
        f"unknown field(s) {', '.join(map(repr, unknown))} in {where}{hint}; valid fields are "
        f"{', '.join(valid)}{extra}"
    )


def error_line(exc: BaseException) -> str:
    """The first line of an error's message, as ``autowarm`` prints errors (the command line,
    and each ``tune --workers`` process): a ``KeyError``'s argument unquoted, the type's name
    when the message is empty."""
    line = _first_line(exc)
    cause = _system_cause(exc)
    # optuna's own words for a full disk hide it ("Should not reach."); a message that already
    # quotes its cause is left as it is
    if cause is not None and (said := _first_line(cause)) not in line:
        line += f" (caused by {type(cause).__name__}: {said})"
    return line


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _system_cause(exc: BaseException) -> BaseException | None:
    # The first error under ``exc`` (its cause, or the error it was raised handling) that the
    # system or a database raised: a full disk, a file that went away, a locked database.
    seen = {id(exc)}
    inner = exc.__cause__ or exc.__context__
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, OSError) or type(inner).__module__.split(".")[0] in (
            "sqlite3",
            "sqlalchemy",
        ):
            return inner
        inner = inner.__cause__ or inner.__context__
    return None


def no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Refuse abbreviated options in ``parser`` and every subcommand's parser under it.

    argparse takes ``--n-trial`` for ``--n-trials``: a typo that happens to be a prefix would
    run silently as another option, so every option must be spelled out.
    """
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                no_abbreviations(child)
