"""Output paths: which existing files autowarm may replace there, and refusals for the rest.

A command writes over a file only when autowarm wrote it (an earlier schedule, export,
suggestion, evidence table or plot) or when it is empty; anything else at an output path is
the user's, and the command stops before writing anything, saying which file and what to do.
The tests check that every format autowarm writes is recognised here, so a new field in an
export does not make the next run refuse its own earlier output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from autowarm._config_io import FORMAT_NAME, SUGGESTION_FORMAT, check_writable, storage_file_kind

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

# The key sets of ``autowarm export``'s formats other than json/yaml (which carry FORMAT_NAME).
# transformers' get_scheduler keywords, in the order ``export --format transformers`` writes.
_TRANSFORMERS_ORDER: Final = (
    "name",
    "num_warmup_steps",
    "num_training_steps",
    "scheduler_specific_kwargs",
)
# ``export --format trainer``: the schedule's own fields, always first, in this order; then,
# for a suggestion, the optimizer's (Adam family only), clipping and accumulation, then at most
# one mixed-precision flag. Any other key set or order is a file of the user's (a hand-written
# TrainingArguments config with a weight_decay, say), never replaced.
_TRAINER_CORE: Final = (
    "learning_rate",
    "warmup_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "max_steps",
)
_TRAINER_ADAM: Final = ("adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay")
_TRAINER_RUN: Final = ("max_grad_norm", "gradient_accumulation_steps")
_LIGHTNING_KEYS: Final = frozenset({"lr_scheduler", "schedule", "usage"})

# The PNG text chunk autowarm's plots carry (``Software``), which tells them from other images.
PNG_SOFTWARE: Final = "autowarm"

# The first columns of the tables Suggestion.save writes beside its JSON.
TRACE_HEADER: Final = ("phase", "burst", "step", "lr")
SIGNALS_HEADER: Final = ("name", "value", "unit")
# The first columns of `bench regret`'s regret.csv.
REGRET_HEADER: Final = ("task", "method", "total_steps", "seeds")


def _parsed(raw: bytes) -> tuple[dict[Any, Any] | None, bool]:
    # The file's top-level mapping (None if it is not one), and whether it was JSON.
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None, False
    try:
        parsed = json.loads(text)  # first: JSON indented with tabs is not YAML
        was_json = True
    except ValueError:
        try:
            import yaml

            parsed = yaml.safe_load(text)
        except Exception:
            return None, False
        was_json = False
    return (parsed if isinstance(parsed, dict) else None), was_json


def is_schedule_output(raw: bytes) -> bool:
    """A schedule config, or an ``autowarm export`` of one in any of its formats."""
    data, was_json = _parsed(raw)
    if data is None:
        return False
    if data.get("format") == FORMAT_NAME:
        return True
    if set(data) == _LIGHTNING_KEYS:
        inner = data.get("schedule")
        return isinstance(inner, dict) and inner.get("format") == FORMAT_NAME
    # the transformers and trainer exports are JSON, with their keys in the order written
    keys = tuple(data)
    return was_json and (keys == _TRANSFORMERS_ORDER or _is_trainer_export(keys))


def _is_trainer_export(keys: tuple[Any, ...]) -> bool:
    if keys[: len(_TRAINER_CORE)] != _TRAINER_CORE:
        return False
    rest = keys[len(_TRAINER_CORE) :]
    if not rest:
        return True  # a schedule's fields alone
    if rest[: len(_TRAINER_ADAM)] == _TRAINER_ADAM:
        rest = rest[len(_TRAINER_ADAM) :]
    return rest[: len(_TRAINER_RUN)] == _TRAINER_RUN and rest[len(_TRAINER_RUN) :] in (
        (),
        ("bf16",),
        ("fp16",),
    )


def is_suggestion(raw: bytes) -> bool:
    """A suggestion JSON (``Suggestion.save``)."""
    data, _ = _parsed(raw)
    return data is not None and data.get("format") == SUGGESTION_FORMAT


def is_table(header: tuple[str, ...]) -> Callable[[bytes], bool]:
    """A test for a CSV whose first columns are ``header`` (an evidence table)."""

    def check(raw: bytes) -> bool:
        first = raw.split(b"\n", 1)[0].decode("utf-8-sig", "replace").strip()
        return tuple(first.split(","))[: len(header)] == header

    return check


def is_regret_markdown(raw: bytes) -> bool:
    """A regret table ``bench regret`` wrote as Markdown (its header row)."""
    return raw.startswith(b"| task | ")


def is_png(raw: bytes) -> bool:
    """A PNG image autowarm drew (a plot ``--plot`` wrote): the signature, then its
    ``Software`` text chunk before the image data. Another PNG is someone else's."""
    if not raw.startswith(PNG_SIGNATURE):
        return False
    head = raw[: raw.find(b"IDAT")] if b"IDAT" in raw else raw
    return b"Software\x00" + PNG_SOFTWARE.encode() in head


def check_replaceable(path: Path, ours: Callable[[bytes], bool], what: str) -> None:
    """Raise :class:`FileExistsError` when ``path`` holds a file that is not ``what`` (tested
    by ``ours`` on its bytes) and not empty: someone else's file, never to be replaced.

    Also raises :class:`ValueError` as :func:`autowarm._config_io.check_writable`.
    """
    check_writable(path)
    if not path.is_file():
        return
    raw = path.read_bytes()
    if not raw.strip() or ours(raw):
        return
    kind = storage_file_kind(raw)
    found = f"is {kind} (a study's storage)" if kind is not None else f"is not {what}"
    raise FileExistsError(
        f"{path} exists and {found}, so autowarm did not write it and will not replace it: "
        "pass another path, or move or remove that file first"
    )
