"""``autowarm.suggest()``: measure the model and return a warmup length and a peak LR."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import itertools
import json
import logging
import math
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from autowarm._checks import check_known_fields, check_seed, is_finite_real, is_int, is_real
from autowarm._config_io import (
    SUGGESTION_FORMAT,
    DuplicateKeyError,
    atomic_write,
    check_format_version,
    storage_file_kind,
    unique_keys,
)
from autowarm._groups import (
    GroupSpec,
    ParamGroups,
    build_checked,
    optimizer_default,
    resolve_param_groups,
    second_moment_beta,
)
from autowarm._train import (
    BatchStream,
    LossFn,
    MixedPrecision,
    add_note,
    autocast_of,
    check_accumulation_steps,
    check_batched,
    check_precision,
    describe_batch,
    empty_data_error,
    loss_call,
    mixed_precision,
    model_device,
    nan_in_batch,
    not_iterable_error,
    resolve_loss_fn,
)
from autowarm.probe._bursts import Budget, ProbeRunner
from autowarm.probe._search import (
    NoUsableLR,
    ProbeOutcome,
    active_settings,
    outcome_signals,
    run_search,
)
from autowarm.probe._state import (
    as_device,
    grads_kept,
    loss_modules,
    preserved,
    refuse_unsupported_model,
)
from autowarm.schedules import ScheduleConfig

if TYPE_CHECKING:
    from autowarm.reporting import Report

_log = logging.getLogger("autowarm")

__all__ = ["ProbeDivergedError", "Suggestion", "suggest"]

SUGGESTION_FORMAT_VERSION = 1
_REQUIRED = ("schedule", "probe_steps", "rationale")
# The fields of a suggestion's JSON besides format and format_version: to_dict's, and the
# tables' fingerprints that save adds.
_FIELDS = (
    "warmup_steps",
    "peak_lr",
    "probe_steps",
    "confidence",
    "low_confidence_reasons",
    "deciding_signal",
    "wall_seconds",
    "rationale",
    "schedule",
    "training",
    "tables",
)
LOW_CONFIDENCE_WARNING = "the probe's answer has low confidence: "
"""How the warning of a low-confidence answer starts (a filter can match it)."""

# The fields of Suggestion.training (training_record writes them all; param_groups only with
# groups).
_TRAINING_FIELDS = (
    "optimizer",
    "optimizer_settings",
    "grad_clip",
    "accumulation_steps",
    "precision",
)


class ProbeDivergedError(RuntimeError):
    """The probe found no usable LR: its range test found none that lowered the loss before
    the sweep diverged, or every burst it ran diverged; ``trace`` holds what was recorded."""

    def __init__(self, message: str, trace: pd.DataFrame) -> None:
        super().__init__(message)
        self.trace = trace


@dataclass(frozen=True)
class Suggestion:
    """The probe's answer and the evidence behind it.

    Attributes:
        warmup_steps: suggested linear warmup, in optimizer steps.
        peak_lr: suggested peak LR.
        schedule: the full schedule, ready: ``suggestion.schedule.lambda_lr(optimizer)``.
        probe_steps: optimizer steps (forward + backward passes) the probe took.
        rationale: a paragraph a person can check.
        trace: one row per probe step of every burst. ``step`` counts from 0 within a burst
            (the rationale's "step N" is this one): row ``step`` k holds the loss of the batch
            before the burst's update k+1 and the second-moment statistics read after that
            update (the rationale's "update N" is Adam's update count, row N-1).
        signals: the derived measurements (``name``, ``value``, ``unit``, ``description``).
        confidence: ``"high"``, or ``"low"`` with ``low_confidence_reasons``.
        deciding_signal: which signal set the warmup (``loss bursts``, ``second moment``,
            ``none needed``).
        wall_seconds: wall time of the probe.
        training: the settings the probe trained under, which the real run should share:
            ``optimizer`` (the class's qualified name), ``optimizer_settings`` (its
            signature's defaults updated by ``optimizer_kwargs``: ``betas``, ``eps``,
            ``weight_decay``...; JSON-able values only), ``grad_clip``,
            ``accumulation_steps`` and ``precision``; with ``param_groups=``, also
            ``param_groups``, each group's ``lr_scale`` and own settings. Empty in a
            suggestion saved by an autowarm before 0.1.0's record of them.
            :meth:`to_trainer_args` reads it.
    """

    warmup_steps: int
    peak_lr: float
    schedule: ScheduleConfig
    probe_steps: int
    rationale: str
    # the evidence, not the answer: equality and hashing compare the answer (so the tables
    # and the probe's wall time are left out)
    trace: pd.DataFrame = field(repr=False, compare=False)
    signals: pd.DataFrame = field(repr=False, compare=False)
    confidence: str = "high"
    low_confidence_reasons: tuple[str, ...] = ()
    deciding_signal: str = ""
    wall_seconds: float = field(default=0.0, compare=False)
    training: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # What from_dict checks of a saved one, so that what save() writes load() reads: a
        # suggestion built or replaced by hand (dataclasses.replace(s, schedule=...)) whose
        # top-level numbers no longer match its schedule was saved, then refused.
        if not isinstance(self.schedule, ScheduleConfig):
            raise TypeError(
                f"schedule must be a ScheduleConfig, but got {type(self.schedule).__name__}"
            )
        for key, value in (
            ("warmup_steps", self.schedule.warmup_steps),
            ("peak_lr", self.schedule.peak_lr),
        ):
            if getattr(self, key) != value:
                raise ValueError(
                    f"{key}={getattr(self, key)!r}, but the schedule's is {value!r}: the "
                    f"schedule is the answer; pass {key}=schedule.{key} (with "
                    f"dataclasses.replace, give both)"
                )
        # "field": the message of a saved suggestion's field too (from_dict builds through here)
        if self.confidence not in ("high", "low"):
            raise ValueError(
                f"field 'confidence' must be 'high' or 'low', but got {self.confidence!r}"
            )
        reasons: object = self.low_confidence_reasons  # typed a tuple; a list comes too
        if not isinstance(reasons, (tuple, list)) or not all(isinstance(r, str) for r in reasons):
            raise ValueError(
                f"field 'low_confidence_reasons' must be a list of str, but got {reasons!r}"
            )
        object.__setattr__(self, "low_confidence_reasons", tuple(reasons))  # hashable

    @property
    def low_confidence(self) -> bool:
        """True when the probe could not decide firmly (see ``low_confidence_reasons``)."""
        return self.confidence != "high"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (the tables are saved beside it by :meth:`save`)."""
        return {
            "format": SUGGESTION_FORMAT,
            "format_version": SUGGESTION_FORMAT_VERSION,
            "warmup_steps": self.warmup_steps,
            "peak_lr": self.peak_lr,
            "probe_steps": self.probe_steps,
            "confidence": self.confidence,
            "low_confidence_reasons": list(self.low_confidence_reasons),
            "deciding_signal": self.deciding_signal,
            "wall_seconds": self.wall_seconds,
            "rationale": self.rationale,
            "schedule": self.schedule.to_dict(),
            "training": dict(self.training),
        }

    def to_trainer_args(self) -> dict[str, Any]:
        """``TrainingArguments`` fields for a ``transformers.Trainer`` run that trains as the
        probe measured: the schedule's (:meth:`ScheduleConfig.to_trainer_args`) and, from
        :attr:`training`, ``adam_beta1``, ``adam_beta2``, ``adam_epsilon`` and
        ``weight_decay`` (probed with ``torch.optim.AdamW`` or ``Adam``), ``max_grad_norm``
        (the probe's ``grad_clip``; ``0.0``, no clipping, where it had none, as the Trainer
        otherwise clips at 1.0), ``gradient_accumulation_steps``, and ``bf16``/``fp16`` for a
        mixed-precision probe.

        The warmup depends on Adam's ``beta2`` and the peak on the rest: a Trainer left at
        its defaults (``beta2=0.999``, clipping at 1.0) trains another run than the one
        measured. One difference stays: the Trainer's AdamW leaves biases and normalisation
        weights out of weight decay, which the probe's optimizer did not.

        Warns (``UserWarning``) and gives the schedule's fields alone for a suggestion that
        records no training settings (saved by an older autowarm), and leaves the optimizer
        fields out, with a warning, for another optimizer (pass it to ``Trainer(optimizers=
        ...)``). Warns too for a probe of parameter groups with their own scales or settings
        (``param_groups=``), which one ``learning_rate`` and ``weight_decay`` cannot hold.

        Raises:
            TransformersExportError: as :meth:`ScheduleConfig.to_transformers`.
        """
        return trainer_args(self.schedule, self.training, stacklevel=3)

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON) and the tables beside it (``.trace.csv``, ``.signals.csv``).

        The JSON is written last, whole or not at all, and records the tables' row counts,
        which :meth:`load` checks: tables left from another suggestion are named, not read.

        Raises:
            ValueError: ``path`` does not end in ``.json``, or cannot be written (a folder
                is there, or a file where a parent folder should be); checked before writing.
            FileExistsError: ``path`` or a table's file exists and is not a suggestion's
                (someone else's file); checked before writing, and nothing is written.
        """
        path = check_suggestion_path(path)
        self.trace.to_csv(path.with_suffix(".trace.csv"), index=False)
        self.signals.to_csv(path.with_suffix(".signals.csv"), index=False)
        data = self.to_dict()
        data["tables"] = {
            "trace_sha256": _digest(path.with_suffix(".trace.csv")),
            "signals_sha256": _digest(path.with_suffix(".signals.csv")),
        }
        atomic_write(path, json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Suggestion:
        """Read a suggestion written by :meth:`save` (tables are empty if missing).

        Raises:
            ValueError: If the file is not a suggestion JSON (a study's storage passed here by
                mistake is named as one) or a field is malformed; the message names the file.
        """
        path = Path(path)
        return cls._from_record(path, read_suggestion_record(path))

    @classmethod
    def _from_record(cls, path: Path, data: Mapping[str, Any]) -> Suggestion:
        """:meth:`load` of a record already read from ``path`` (:func:`read_suggestion_record`):
        its fields, and its tables beside it."""
        trace_p, sig_p = path.with_suffix(".trace.csv"), path.with_suffix(".signals.csv")
        saved = data.get("tables")
        if isinstance(saved, Mapping):
            for table_path, key in ((trace_p, "trace_sha256"), (sig_p, "signals_sha256")):
                want = saved.get(key)
                if isinstance(want, str) and table_path.is_file() and _digest(table_path) != want:
                    raise ValueError(
                        f"{table_path} is not the table {path.name} was saved with (another "
                        "suggestion's, or edited since): put that one back, or delete it to "
                        f"load {path.name} without it"
                    )
        trace, signals = _read_table(trace_p), _read_table(sig_p)
        try:
            return cls.from_dict(data, trace=trace, signals=signals)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        trace: pd.DataFrame | None = None,
        signals: pd.DataFrame | None = None,
    ) -> Suggestion:
        """Rebuild a suggestion from :meth:`to_dict` (tables empty unless given).

        Raises:
            ValueError: If ``schedule``, ``probe_steps`` or ``rationale`` is missing, a field
                is unknown (a misspelt one would be read as its default), or any field is
                malformed, the ``training`` record's too (the message names the field and what
                it must be).
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"a suggestion must be a mapping of field names to values (Suggestion.to_dict), "
                f"but got {type(data).__name__}: {data!r}"
            )
        check_format_version(data, SUGGESTION_FORMAT_VERSION)
        check_known_fields(data, _FIELDS, "suggestion", also=("format", "format_version"))
        for key in _REQUIRED:
            if key not in data:
                raise ValueError(
                    f"missing field {key!r} (a suggestion has {', '.join(_REQUIRED)}; write "
                    "one with Suggestion.save)"
                )
        if not isinstance(data["schedule"], Mapping):
            raise ValueError(f"field 'schedule' must be a mapping, but got {data['schedule']!r}")
        try:
            schedule = ScheduleConfig.from_dict(data["schedule"])
        except ValueError as exc:
            raise ValueError(f"field 'schedule': {exc}") from None
        probe_steps = data["probe_steps"]
        if not is_int(probe_steps) or probe_steps < 0:
            raise ValueError(f"field 'probe_steps' must be an int >= 0, but got {probe_steps!r}")
        for key, value in (("peak_lr", schedule.peak_lr), ("warmup_steps", schedule.warmup_steps)):
            if key in data and data[key] != value:
                raise ValueError(
                    f"field {key!r} is {data[key]!r}, but the schedule's is {value!r}: the "
                    "schedule is what the suggestion gives, so edit it there (and drop or match "
                    f"the top-level {key!r})"
                )
        wall_seconds = data.get("wall_seconds", 0.0)
        if not is_real(wall_seconds) or not 0 <= wall_seconds < math.inf:
            raise ValueError(
                f"field 'wall_seconds' must be a number of seconds >= 0, but got {wall_seconds!r}"
            )
        training = check_training(data.get("training", {}))
        return cls(
            training=training,
            warmup_steps=schedule.warmup_steps,
            peak_lr=schedule.peak_lr,
            schedule=schedule,
            probe_steps=int(probe_steps),
            rationale=cls._str_field(data, "rationale", ""),
            trace=pd.DataFrame() if trace is None else trace,
            signals=pd.DataFrame() if signals is None else signals,
            # checked by __post_init__, as for a suggestion built by hand
            confidence=cls._str_field(data, "confidence", "high"),
            low_confidence_reasons=data.get("low_confidence_reasons", ()),
            deciding_signal=cls._str_field(data, "deciding_signal", ""),
            wall_seconds=float(wall_seconds),
        )

    @staticmethod
    def _str_field(data: Mapping[str, Any], key: str, default: str) -> str:
        value = data.get(key, default)
        if not isinstance(value, str):
            raise ValueError(f"field {key!r} must be a str, but got {value!r}")
        return value

    def report(self, **kwargs: Any) -> Report:
        """The report of this suggestion: tables, figure data, ``.write(out_dir)``.

        Keyword arguments go to :func:`autowarm.report` (e.g. ``benchmark=``, ``task=``).
        """
        from autowarm.reporting import report

        return report(self, **kwargs)


def _read_table(path: Path) -> pd.DataFrame | None:
    # a table saved empty (a suggestion rebuilt from to_dict) is a bare newline
    if not path.exists():
        return None
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (ValueError, OSError) as exc:  # pandas' ParserError, UnicodeDecodeError, a folder
        raise ValueError(
            f"{path}: not a table written by Suggestion.save ({exc}); delete it to load the "
            "suggestion without it"
        ) from None


def _digest(path: Path) -> str:
    # The saved table's fingerprint, recorded in its suggestion's JSON.
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def read_suggestion_record(path: Path, *, storage_advice: str | None = None) -> Mapping[str, Any]:
    """The JSON of a suggestion file as :meth:`Suggestion.save` wrote it, before its fields are
    read (:meth:`Suggestion.from_dict`) and without its tables. The files people pass by
    mistake are named: a study's storage (with ``storage_advice``, what to pass instead; by
    default ``--storage``), a schedule config, other YAML.

    Raises:
        ValueError: the file is a study's storage, not UTF-8 JSON, gives a field twice, or is
            not an autowarm suggestion; the message names the file.
    """
    raw = path.read_bytes()
    storage = storage_file_kind(raw)
    if storage is not None:
        advice = storage_advice or (
            f"pass it as --storage {path} instead (in Python: tune(..., storage="
            f"{str(path)!r})); a suggestion is the JSON written by Suggestion.save() or "
            "`autowarm probe`"
        )
        raise ValueError(
            f"{path} is {storage} (a study's storage?), not a suggestion JSON: {advice}"
        )
    schedule = (
        f"{path} is a schedule config, not a suggestion: pass the suggestion JSON written by "
        "Suggestion.save() or `autowarm demo` (suggestion.json)"
    )
    try:
        # a byte order mark is not the JSON's; a field given twice is refused, not the
        # last one taken, as in a schedule config
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=unique_keys)
    except DuplicateKeyError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path} is not a suggestion JSON file (not UTF-8 text: {exc}): pass the JSON "
            "written by Suggestion.save() or `autowarm probe`"
        ) from None
    except json.JSONDecodeError as exc:
        import yaml

        try:  # what people pass by mistake: a schedule config or other YAML
            other = yaml.safe_load(raw)
        except yaml.YAMLError:
            other = None
        fields = {*ScheduleConfig.__dataclass_fields__, "format", "format_version"}
        if isinstance(other, dict) and (
            other.get("format") == "autowarm.schedule" or set(other) <= fields
        ):
            raise ValueError(f"{schedule} (this one is YAML)") from None
        if isinstance(other, dict):
            keys = ", ".join(sorted(map(str, other))[:6])
            raise ValueError(
                f"{path} is not a suggestion JSON file: it is YAML (keys {keys}); a "
                "suggestion is the JSON written by Suggestion.save() or `autowarm demo`"
            ) from None
        raise ValueError(f"{path} is not a suggestion JSON file ({exc})") from None
    fmt = data.get("format") if isinstance(data, Mapping) else None
    if fmt == "autowarm.schedule":
        raise ValueError(schedule)
    if fmt != SUGGESTION_FORMAT:
        got = fmt if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(
            f"{path} is not an autowarm suggestion: format must be {SUGGESTION_FORMAT!r}, but "
            f"got format={got!r}"
        )
    assert isinstance(data, Mapping)
    return data


def check_suggestion_path(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path` a suggestion can be saved at, its folder made.

    Raises:
        ValueError: it does not end in ``.json``, is a folder, or a file stands where one of
            its parent folders should be.
        FileExistsError: the JSON, or a table beside it (``.trace.csv``, ``.signals.csv``),
            exists and is not one a suggestion wrote: someone else's file, never replaced.
    """
    from autowarm._outputs import (
        SIGNALS_HEADER,
        TRACE_HEADER,
        check_replaceable,
        is_suggestion,
        is_table,
    )

    path = Path(path)
    if path.suffix.lower() != ".json":
        raise ValueError(f"path must end in .json, but got path={str(path)!r}")
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder: pass a file name in it, e.g. {path / 'suggestion.json'}"
        )
    check_replaceable(path, is_suggestion, "a suggestion JSON")
    for table in (path.with_suffix(".trace.csv"), path.with_suffix(".signals.csv")):
        if table.is_dir():
            raise ValueError(
                f"{table} is a folder, where the suggestion's table beside {path.name} goes: "
                "move it away, or save the suggestion under another name"
            )
    check_replaceable(
        path.with_suffix(".trace.csv"), is_table(TRACE_HEADER), "a suggestion's trace table"
    )
    check_replaceable(
        path.with_suffix(".signals.csv"), is_table(SIGNALS_HEADER), "a suggestion's signals table"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _resolve_total_steps(
    total_steps: int | None, data: Iterable[Any], accumulation_steps: int = 1
) -> int:
    if total_steps is not None:
        if not is_int(total_steps) or total_steps < 1:
            raise ValueError(
                f"total_steps must be an int >= 1, but got total_steps={total_steps!r}"
            )
        return int(total_steps)
    # What is wrong with the data itself comes first: "not iterable" or "empty" says more than
    # a run length read from it.
    kind: type = type(data)  # typed Iterable, but what users pass is checked here
    if not hasattr(kind, "__iter__") and not hasattr(kind, "__getitem__"):
        raise not_iterable_error(data)
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            "total_steps is needed when the data has no len(): pass total_steps=<optimizer "
            "steps of the real run>"
        ) from None
    if n == 0:
        raise empty_data_error(data)
    steps = max(1, int(n) // accumulation_steps)
    per = f" of {accumulation_steps} batches each" if accumulation_steps > 1 else ""
    warnings.warn(
        f"total_steps not given: assuming one pass over the data ({steps} steps{per}); pass "
        "total_steps=<optimizer steps of the real run> for a schedule that fits it",
        UserWarning,
        stacklevel=3,
    )
    return steps


def _resolve_budget(budget_steps: int | None, total_steps: int) -> int:
    if budget_steps is None:
        # 10% of the run in forward passes, counted from outside: the optimizer steps plus
        # the one forward pass that checks the first batch before any training; at least
        # 60, but never more than the run.
        budget = min(total_steps, max(60, int(0.1 * total_steps) - 1))
        if budget < 40:
            raise ValueError(
                f"total_steps={total_steps} is too short to probe: the probe needs at least "
                "40 steps (a range test and a few bursts), and would spend the whole run; "
                "pass the optimizer steps of the real run as total_steps, or for a run this "
                "short skip the probe (a constant LR, no warmup)"
            )
        if budget > 0.1 * total_steps:
            warnings.warn(
                f"the probe takes {budget} steps, {budget / total_steps:.0%} of this "
                f"{total_steps}-step run (at least 60, never more than the run; it is 10% "
                "from 600 steps up)",
                UserWarning,
                stacklevel=3,
            )
        return budget
    if not is_int(budget_steps) or budget_steps < 40:
        raise ValueError(
            f"budget_steps must be an int >= 40 (a range test and a few bursts), but got "
            f"budget_steps={budget_steps!r}"
        )
    if budget_steps > total_steps:
        raise ValueError(
            f"budget_steps={budget_steps} is more than the whole run (total_steps="
            f"{total_steps}): the probe would cost more than training; pass at most "
            "total_steps, or leave budget_steps out for 10% of the run"
        )
    return int(budget_steps)


def _check_optimizer_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(kwargs or {})
    if "lr" in out:
        raise ValueError(
            "optimizer_kwargs must not contain 'lr': the probe chooses the LR; pass the other "
            "settings (betas, weight_decay, ...) only"
        )
    if "params" in out:
        raise ValueError(
            "optimizer_kwargs must not contain 'params': the probe builds the optimizer on the "
            "model's parameters; to group them (another weight_decay for biases, an LR ratio), "
            "pass param_groups=[{'params': [...], ...}, ...]"
        )
    if out.get("maximize"):
        # The probe reads a falling loss as progress and a rising one as instability.
        raise ValueError(
            "optimizer_kwargs has maximize=True, but the probe needs a loss to minimise: "
            "negate the objective in loss_fn (return -objective) and leave maximize out"
        )
    return out


def suggest(
    model: nn.Module,
    dataloader: Iterable[Any],
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    *,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    criterion: Callable[[Any, Any], torch.Tensor] | None = None,
    total_steps: int | None = None,
    budget_steps: int | None = None,
    decay: str = "cosine",
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
    snapshot_device: torch.device | str | None = None,
    param_groups: ParamGroups | None = None,
    accumulation_steps: int = 1,
    precision: str = "32-true",
    grad_clip: float | None = None,
) -> Suggestion:
    """Probe ``model`` on ``dataloader`` and suggest a warmup length and a peak LR.

    The probe runs short training bursts from the model's current (initial) weights: an
    exponential LR range test; equal bursts at candidate peaks below its edge (a linear ramp
    over their first quarter, then the peak), which pick the peak; and one burst at that peak
    without a ramp, compared batch for batch with the ramped one, which says whether the peak
    needs warmup (then a quarter of the run, as in the bursts). All the while Adam's second
    moment is read from the optimizer state; the step at which it settles is the least warmup.
    The model comes back exactly as it was (weights, buffers, ``requires_grad``, ``.grad``,
    train/eval modes, the attributes a forward sets on its modules, RNG states), whether
    ``suggest`` returns, raises, or is interrupted (a plain tensor attribute that a forward
    changes in place is not restored, and a warning names it). The
    README's "The probe" section, and the docstrings of ``autowarm.probe._search`` and
    ``autowarm.probe.signals``, give each rule and the literature behind it.

    Args:
        model: the model to probe, on its device (or pass ``device``).
        dataloader: any re-iterable of batches (cycled when exhausted), or an iterator, which is
            consumed only as far as the probe needs (its batches are kept to replay them).
            The model gets a copy of each batch, so a model writing into its inputs changes
            neither the data nor what a later burst replays.
        optimizer_cls: optimizer class of the real run (AdamW, Adam, any with ``exp_avg_sq``;
            without a second moment the warmup comes from loss signals alone). RAdam is
            probed as Adam with the same settings, with a warning: its rectified first steps
            would hide its step size from short bursts.
        optimizer_kwargs: its settings except ``lr`` (e.g. ``{"betas": (0.9, 0.95)}``;
            ``maximize=True`` is refused: negate the loss instead).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, for any batch format.
        criterion: ``criterion(output, target)`` for ``(inputs, targets)`` batches.
        total_steps: optimizer steps of the real run (default: one pass over a sized loader).
        budget_steps: most optimizer steps the probe may take (default: 10% of
            ``total_steps`` less one, for the forward pass that checks the first batch;
            at least 60, at most ``total_steps``; a run under 40 steps is refused).
        decay: decay shape of the suggested schedule (see ``ScheduleConfig``).
        device: move the model here for the probe (it is moved back afterwards).
        seed: seed of the probe, an int in ``[0, 2**32)``: every burst seeds torch, numpy,
            ``random`` and the loader's own generator with it (same seed, same machine: same
            suggestion); their states are put back afterwards.
        progress: show a progress bar (only on terminals).
        snapshot_device: where to keep the copy of the initial weights (``"cpu"`` saves GPU
            memory for a GPU model).
        param_groups: the real run's parameter groups, when it has several: a list of dicts
            ``{"params": [...], "lr_scale": 0.1, "weight_decay": 0.0, ...}`` (the model's
            parameters; any per-group setting of the optimizer; not ``"lr"``), or a function
            of the model returning one. Group ``i`` trains at ``lr_scale`` (default 1) times
            the LR the probe tries, so ``peak_lr`` is the LR of a group with scale 1:
            ``s.schedule.lambda_lr(optimizer)`` on an optimizer built from the same groups
            reads their ``"lr_scale"`` keys (or pass ``group_scales=``).
            Default: one group of every parameter with ``requires_grad=True``.
        accumulation_steps: batches whose gradients add up before each optimizer step, as in
            a run with gradient accumulation (each loss divided by their number). A step is
            still one optimizer update: ``total_steps``, ``budget_steps``, ``warmup_steps``
            and ``probe_steps`` count updates, each of ``accumulation_steps`` batches.
        precision: ``"32-true"``; ``"bf16-mixed"`` (the forward pass and the loss under
            ``torch.autocast`` in bfloat16); or ``"16-mixed"`` (float16 autocast with a
            ``torch.amp.GradScaler``, whose overflow-skipped updates are recorded in the
            trace's ``skipped`` column and not read as divergence). The weights stay float32.
        grad_clip: the real run's gradient-norm clipping (``clip_grad_norm_`` of the
            accumulated, unscaled gradient to this total norm), or ``None`` for none. Clipping
            tames the large early updates that warmup exists for, so probe with the run's.

    Returns:
        A :class:`Suggestion`; ``suggestion.schedule.lambda_lr(optimizer)`` is ready to use.

    Raises:
        TypeError: an argument of the wrong kind (a model that is not an ``nn.Module``, data
            that is not an iterable of batches, an optimizer class that is not one), or a
            batch the default handling cannot score (neither a mapping nor an ``(inputs,
            targets)`` pair, or a pair without ``criterion``: pass ``loss_fn``); the message
            says what to pass.
        ValueError: bad arguments, empty data, a batch
            holding a NaN on which the loss was non-finite (an inf in a batch, such as an
            additive ``-inf`` attention mask, is not blamed), parameters with
            post-accumulate-grad hooks (an optimizer stepped in backward).
        RuntimeError: a call inside a ``torch.autocast`` block (pass ``precision``
            instead).
        ProbeDivergedError: no usable LR: the range test found none that lowered the loss
            before it diverged (a budget too small for the sweep, or a broken loss), or every
            burst diverged; the message says which, and the error carries the trace.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    refuse_unsupported_model(model)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise ValueError(
            "the model's weights are on the meta device, which holds no values (a model built "
            "under torch.device('meta')): materialise it first (model.to_empty(device=...), "
            "then initialise the weights or load a checkpoint)"
        )
    device = as_device(device, "device")
    if device is not None and device.type == "meta":
        raise ValueError("device='meta' holds no values: pass 'cpu', 'cuda' or None")
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r}, but this torch has no CUDA device to use (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}): pass device=None to "
            "probe where the model is, or 'cpu'"
        )
    if _distributed(model):
        # Ranks whose bursts stop at different steps would wait on each other's all-reduce
        # forever, and ranks that happen not to would pair up unrelated bursts; the probe is a
        # single-process job.
        raise ValueError(
            "suggest() probes one process, but the model is distributed (DDP, FSDP or "
            "DeepSpeed): pass the unwrapped module (model.module, or model._orig_mod.module "
            "for torch.compile(DDP(model))) on one rank, then share the suggestion (e.g. "
            "torch.distributed.broadcast_object_list)"
        )
    _check_optimizer_cls(optimizer_cls)
    _refuse_ambient_autocast()
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "suggest() was called inside torch.inference_mode(), where nothing can be trained: "
            "call it outside that block (the probe turns gradients on for its own bursts)"
        )
    _refuse_step_in_backward(model)
    kwargs = _check_optimizer_kwargs(optimizer_kwargs)
    accumulation_steps = check_accumulation_steps(accumulation_steps)
    _warn_process_group(accumulation_steps)
    check_precision(precision)
    if grad_clip is not None and not (is_finite_real(grad_clip) and grad_clip > 0):
        raise ValueError(
            "grad_clip must be a positive finite number (the real run's max gradient norm) or "
            f"None, but got grad_clip={grad_clip!r}"
        )
    check_batched(dataloader, "dataloader")  # before its len(), which would count examples
    total = _resolve_total_steps(total_steps, dataloader, accumulation_steps)
    budget_n = _resolve_budget(budget_steps, total)
    seed = check_seed(seed, "torch, numpy and random")
    ScheduleConfig(peak_lr=1.0, total_steps=total, warmup_steps=0, decay=decay)  # validate early
    probe_cls, proxy_note = _probe_optimizer(optimizer_cls)
    resolved_loss = resolve_loss_fn(loss_fn, criterion)
    groups = (
        None
        if param_groups is None
        else resolve_param_groups(param_groups, model, probe_cls, kwargs)
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    if groups is None and trainable:
        build_checked(probe_cls, trainable, kwargs)  # a misspelt setting, before any training
    start = time.perf_counter()
    original_device = model_device(model)
    target = device if device is not None else original_device
    # A CPU model probed on a GPU: the CUDA generators are captured before the probe's first
    # CUDA draw, so the user's first one after it is the same as without the probe.
    on_cuda = "cuda" in (target.type, original_device.type)
    amp = mixed_precision(precision, model, target)
    with (
        preserved(model, snapshot_device=snapshot_device, cuda_rng=on_cuda) as snapshot,
        contextlib.ExitStack() as loss_state,
        torch.enable_grad(),  # the bursts train even when called under torch.no_grad()
    ):
        for module in loss_modules(loss_fn, criterion, model=model):
            # a criterion with weights or buffers of its own (a learned temperature, a margin
            # head) comes back as it was too, .grad included; inside the model's snapshot, so
            # that one restores the RNG last
            loss_state.enter_context(
                preserved(
                    module,
                    snapshot_device=snapshot_device,
                    what=f"a module the loss uses ({type(module).__name__})",
                )
            )
        moved = target != original_device
        stream = BatchStream(dataloader, target)
        try:
            if moved:
                model.to(target)
            outcome, runner = _probe(
                model,
                stream,
                resolved_loss,
                probe_cls,
                kwargs,
                snapshot,
                budget_n,
                total,
                seed,
                progress,
                groups,
                accumulation_steps,
                amp,
                None if grad_clip is None else float(grad_clip),
            )
        finally:
            # The loader's own generators (if any) shuffle the user's real run as before, and
            # a loader with persistent workers starts its next epoch afresh, as without the
            # probe.
            try:
                stream.close()
            finally:
                stream.restore_generators()
            if moved:
                model.to(original_device)
    trace = pd.DataFrame(runner.trace_rows())
    suggestion = _suggestion(
        outcome,
        runner,
        trace,
        total,
        decay,
        time.perf_counter() - start,
        preface=" ".join(x for x in (proxy_note, _groups_note(groups)) if x) or None,
        training=training_record(
            optimizer_cls, kwargs, grad_clip, accumulation_steps, precision, groups
        ),
        passes_note=_passes_note(dataloader, total, accumulation_steps, runner),
    )
    if suggestion.low_confidence:
        # a script that never reads s.confidence would use the answer as a firm one
        warnings.warn(
            LOW_CONFIDENCE_WARNING
            + "; ".join(suggestion.low_confidence_reasons)
            + " (the suggestion's low_confidence_reasons; its rationale says what was "
            "measured)",
            UserWarning,
            stacklevel=2,
        )
    return suggestion


def check_training(training: object) -> dict[str, Any]:
    """A suggestion's ``training`` record (:attr:`Suggestion.training`) as a dict, checked
    field by field; ``{}`` (a suggestion saved before the record) stays empty.

    Raises:
        ValueError: it is not a mapping, lacks a field or has an unknown one, or a field is
            malformed; the message starts ``field 'training'`` and names the field, the value
            and what to give instead.
    """
    if not isinstance(training, Mapping):
        raise ValueError(f"field 'training' must be a mapping, but got {training!r}")
    if not training:
        return {}
    try:
        return _checked_training(training)
    except ValueError as exc:
        raise ValueError(f"field 'training': {exc}") from None


def _checked_training(training: Mapping[str, Any]) -> dict[str, Any]:
    check_known_fields(training, _TRAINING_FIELDS, "training", also=("param_groups",))
    for key in _TRAINING_FIELDS:
        if key not in training:
            raise ValueError(
                f"missing field {key!r} (a training record has {', '.join(_TRAINING_FIELDS)}, "
                "as suggest() records them; an empty one, {}, records none)"
            )
    name = training["optimizer"]
    if not isinstance(name, str) or not name:
        raise ValueError(
            "optimizer must be the optimizer class's qualified name (a str such as "
            f"'torch.optim.AdamW'), but got optimizer={name!r}"
        )
    settings = training["optimizer_settings"]
    if not isinstance(settings, Mapping) or not all(isinstance(k, str) for k in settings):
        raise ValueError(
            "optimizer_settings must be a mapping of the optimizer's settings (its keyword "
            f"arguments: betas, eps, weight_decay...), but got {settings!r}"
        )
    if name in _TRAINER_ADAM:  # the settings the exports read (other optimizers' are theirs)
        _check_adam_settings(settings)
    clip = training["grad_clip"]
    if clip is not None and not (is_finite_real(clip) and clip > 0):
        raise ValueError(
            "grad_clip must be a positive finite number (the max gradient norm the probe "
            f"clipped to) or null (no clipping), but got grad_clip={clip!r}"
        )
    checked: dict[str, Any] = {
        "optimizer": name,
        "optimizer_settings": dict(settings),
        "grad_clip": None if clip is None else float(clip),
        "accumulation_steps": check_accumulation_steps(training["accumulation_steps"]),
        "precision": check_precision(training["precision"]),
    }
    if "param_groups" in training:  # recorded since autowarm recorded groups
        checked["param_groups"] = _checked_groups(training["param_groups"])
    return checked


def _checked_groups(groups: object) -> list[dict[str, Any]]:
    # The training record's parameter groups: a list of {"lr_scale": positive, ...settings}.
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ValueError(
            "param_groups must be a non-empty list of groups ({'lr_scale': 1.0, ...} each), "
            f"but got {groups!r}"
        )
    out = []
    for i, group in enumerate(groups):
        if not (
            isinstance(group, Mapping)
            and all(isinstance(k, str) for k in group)
            and is_finite_real(group.get("lr_scale"))
            and group["lr_scale"] > 0
        ):
            raise ValueError(
                f"param_groups[{i}] must be a mapping with a positive lr_scale and the "
                f"group's own optimizer settings, but got {group!r}"
            )
        out.append(dict(group))
    return out


def _check_adam_settings(settings: Mapping[str, Any]) -> None:
    # Adam's and AdamW's settings as torch.optim takes them, before an export reads them.
    betas = settings.get("betas", (0.9, 0.999))
    if not (
        isinstance(betas, (list, tuple))
        and len(betas) == 2
        and all(is_finite_real(b) and 0 <= b < 1 for b in betas)
    ):
        raise ValueError(
            "optimizer_settings: betas must be a pair [beta1, beta2] of numbers in [0, 1), but "
            f"got betas={betas!r}"
        )
    for key in ("eps", "weight_decay"):
        value = settings.get(key, 0.0)
        if not (is_finite_real(value) and value >= 0):
            raise ValueError(
                f"optimizer_settings: {key} must be a finite number >= 0, but got {key}={value!r}"
            )
    for key in ("amsgrad", "decoupled_weight_decay"):
        # flags the exports act on: a "false" string would read as true
        flag = settings.get(key, False)
        if not isinstance(flag, bool):
            raise ValueError(
                f"optimizer_settings: {key} must be true or false, but got {key}={flag!r}"
            )


def trainer_args(
    schedule: ScheduleConfig, training: Mapping[str, Any], *, stacklevel: int = 2
) -> dict[str, Any]:
    """``TrainingArguments`` fields for ``schedule`` trained with the settings ``training``
    records (:attr:`Suggestion.training`; see :meth:`Suggestion.to_trainer_args`).

    Raises:
        ValueError: ``training`` is malformed (as :func:`check_training`).
    """
    training = check_training(training)
    args = schedule.to_trainer_args()
    if not training:
        warnings.warn(
            "this suggestion records no training settings (saved by an older autowarm): "
            "only the schedule's fields are given; set the Trainer's optimizer settings, "
            "clipping and accumulation to those of the probe yourself",
            UserWarning,
            stacklevel=stacklevel,
        )
        return args
    # check_training gave every field (or returned {} above)
    name = training["optimizer"]
    settings = training["optimizer_settings"]
    if name in _TRAINER_ADAM:
        betas = settings.get("betas", (0.9, 0.999))
        args.update(
            adam_beta1=float(betas[0]),
            adam_beta2=float(betas[1]),
            adam_epsilon=float(settings.get("eps", 1e-8)),
            weight_decay=float(settings.get("weight_decay", 0.0)),
        )
        if settings.get("amsgrad"):
            warnings.warn(
                "the probe ran with amsgrad=True, which TrainingArguments cannot set: pass "
                "the optimizer to Trainer(optimizers=...)",
                UserWarning,
                stacklevel=stacklevel,
            )
        # Adam(decoupled_weight_decay=True) is AdamW
        decoupled = name == "torch.optim.AdamW" or settings.get("decoupled_weight_decay")
        if args["weight_decay"] and not decoupled:
            warnings.warn(
                "the probe ran torch.optim.Adam with weight_decay (L2 in the gradient); the "
                "Trainer's AdamW decays the weights directly, another optimizer: probe "
                "with AdamW, or pass Adam to Trainer(optimizers=...)",
                UserWarning,
                stacklevel=stacklevel,
            )
    else:
        warnings.warn(
            f"the probe ran {name}, which TrainingArguments "
            "cannot select: pass it to Trainer(optimizers=(optimizer, None)) built with "
            "the probe's settings; the optimizer fields are left out",
            UserWarning,
            stacklevel=stacklevel,
        )
    groups = training.get("param_groups")
    if groups is not None and _has_own_settings(groups):
        warnings.warn(
            f"the schedule was measured on {len(groups)} parameter group(s) "
            f"({_describe_groups(groups)}), "
            "which TrainingArguments cannot hold: its learning_rate (the LR of a group with "
            "lr_scale 1) and weight_decay apply to every parameter (the Trainer itself leaves "
            "biases and LayerNorm weights undecayed); build the optimizer from the same "
            "groups and pass Trainer(optimizers=(optimizer, schedule.lambda_lr(optimizer)))",
            UserWarning,
            stacklevel=stacklevel,
        )
    clip = training["grad_clip"]
    args["max_grad_norm"] = float(clip) if clip is not None else 0.0
    args["gradient_accumulation_steps"] = training["accumulation_steps"]
    precision = training["precision"]
    if precision == "bf16-mixed":
        args["bf16"] = True
    elif precision == "16-mixed":
        args["fp16"] = True
    return args


_NOT_SETTINGS = ("lr_scale", "name")  # a group's scale (read apart) and its label


def _has_own_settings(groups: Sequence[Mapping[str, Any]]) -> bool:
    # Groups that one learning_rate and one weight_decay cannot stand for.
    return any(g["lr_scale"] != 1.0 or any(k not in _NOT_SETTINGS for k in g) for g in groups)


def _describe_groups(groups: Sequence[Mapping[str, Any]]) -> str:
    # "lr_scale 0.1, 1; weight_decay=0.0 in group 1", groups counted from 0 as given
    scales = sorted({float(g["lr_scale"]) for g in groups})
    parts = ["lr_scale " + ", ".join(f"{x:g}" for x in scales)]
    for i, g in enumerate(groups):
        own = ", ".join(f"{k}={v!r}" for k, v in g.items() if k not in _NOT_SETTINGS)
        if own:
            parts.append(f"{own} in group {i}")
    return "; ".join(parts)


# The optimizers whose settings TrainingArguments holds (adam_beta1/2, adam_epsilon).
_TRAINER_ADAM = ("torch.optim.AdamW", "torch.optim.Adam")


def training_record(
    optimizer_cls: Callable[..., torch.optim.Optimizer],
    kwargs: Mapping[str, Any],
    grad_clip: float | None,
    accumulation_steps: int,
    precision: str,
    groups: Sequence[GroupSpec] | None = None,
) -> dict[str, Any]:
    """:attr:`Suggestion.training`: the settings the probe trained under, JSON-able.

    ``groups``: the parameter groups it trained (``param_groups=``), recorded as
    ``param_groups``, one ``{"lr_scale": ..., <the group's own settings>}`` each (the members
    are the model's, not recorded); without them the key is left out (one group of every
    trainable parameter)."""
    settings: dict[str, Any] = {}
    try:
        params = inspect.signature(optimizer_cls.__init__).parameters.values()
        settings = {
            p.name: p.default
            for p in params
            if p.default is not inspect.Parameter.empty and p.name not in ("lr", "params")
        }
    except (TypeError, ValueError, AttributeError):  # no signature to read (a C extension)
        pass
    settings.update(kwargs)
    # a study's task may name a factory (a functools.partial) rather than a class
    name = (
        f"{getattr(optimizer_cls, '__module__', None) or '?'}."
        f"{getattr(optimizer_cls, '__qualname__', None) or repr(optimizer_cls)}"
    )
    if optimizer_cls in (torch.optim.AdamW, torch.optim.Adam):
        name = f"torch.optim.{optimizer_cls.__name__}"  # not torch.optim.adamw.AdamW
    plain = {k: _plain(v) for k, v in settings.items()}
    record: dict[str, Any] = {
        "optimizer": name,
        "optimizer_settings": {k: v for k, v in plain.items() if v is not _UNSET_VALUE},
        "grad_clip": None if grad_clip is None else float(grad_clip),
        "accumulation_steps": int(accumulation_steps),
        "precision": precision,
    }
    if groups is not None:
        record["param_groups"] = [
            {
                "lr_scale": float(g.lr_scale),
                # as optimizer_settings: a setting with no JSON form (a dtype) is left out
                **{
                    k: v
                    for k, v in ((k, _plain(v)) for k, v in g.options.items())
                    if v is not _UNSET_VALUE
                },
            }
            for g in groups
        ]
    return record


_UNSET_VALUE = object()


def _plain(value: Any) -> Any:
    # a JSON-able copy of an optimizer setting, or _UNSET_VALUE for one that is not
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if is_real(value):
        return int(value) if is_int(value) else float(value)
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return _UNSET_VALUE if any(v is _UNSET_VALUE for v in items) else items
    return _UNSET_VALUE


_GROUPS_NOTE = "The probe trained {n} parameter groups at {scales} times each LR it tried"


def _device_failure(exc: BaseException) -> bool:
    # Out of memory, or an error the device reported (a device-side assert leaves the CUDA
    # context unusable): neither is a loss that needs autograd.
    kinds = tuple(
        k
        for k in (
            getattr(torch, "OutOfMemoryError", None),
            getattr(torch, "AcceleratorError", None),
        )
        if isinstance(k, type)
    )
    return bool(kinds) and isinstance(exc, kinds)


def _distributed(model: nn.Module) -> bool:
    # DistributedDataParallel, FSDP (FullyShardedDataParallel, or fully_shard's DTensor
    # parameters) or a DeepSpeed engine, also inside torch.compile's wrapper (OptimizedModule
    # keeps the compiled module as _orig_mod; compile(DDP(m)) is the order torch's docs use):
    # each issues collectives at every forward or backward.
    seen = 0
    while seen < 8:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return True
        if type(model).__name__ in ("FullyShardedDataParallel", "DeepSpeedEngine"):
            return True
        if any(type(p).__name__ == "DTensor" for p in model.parameters()):
            return True
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return False
        model, seen = inner, seen + 1
    return False


def _warn_process_group(accumulation_steps: int) -> None:
    # suggest() called on every rank of a multi-process job (a plain model, before DDP
    # wraps it): each rank probes its own shard and answers differently, and the replicas
    # would train different schedules. A call on one rank alone is right, but the batch it
    # probes with must be the run's global one; this process cannot tell which, so it warns.
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    if world > 1:
        warnings.warn(
            f"suggest() is probing in rank {dist.get_rank()} of a process group of {world}: "
            "if it runs on every rank, each probes its own batches and returns its own answer; "
            "call it on one rank and share the suggestion (torch.distributed."
            "broadcast_object_list). The run's update averages every rank's batch: probe "
            "with batches of that global size, or with "
            f"accumulation_steps={world * accumulation_steps} ({world} ranks x the run's own "
            f"{accumulation_steps}) over one rank's loader",
            UserWarning,
            stacklevel=3,
        )


def _groups_note(groups: list[GroupSpec] | None) -> str | None:
    if groups is None:
        return None
    scales = ", ".join(f"{g.lr_scale:g}" for g in groups)
    return (
        _GROUPS_NOTE.format(n=len(groups), scales=scales)
        + "; the LRs below are those of a group at scale 1."
    )


# _GROUPS_NOTE up to its scales, with any group count: what trained_in_groups looks for
_GROUPS_NOTE_SEEN = re.compile(
    r"\b" + re.escape(_GROUPS_NOTE.split("{scales}")[0]).replace(re.escape("{n}"), r"\d+")
)


def trained_in_groups(rationale: str) -> bool:
    """Whether a suggestion's rationale says the probe trained parameter groups at their own
    ``lr_scale`` (its LRs, in the trace and the figures, are then those of a scale-1 group)."""
    return _GROUPS_NOTE_SEEN.search(rationale) is not None


def _probe_optimizer(
    optimizer_cls: type[torch.optim.Optimizer],
) -> tuple[type[torch.optim.Optimizer], str | None]:
    # The optimizer the bursts train with, and the sentence that says why when it is not the
    # user's. RAdam scales its first ~2/(1-b2) updates down (its rectification, ~0.1x at step
    # 20), so bursts of tens of steps would read a peak many times too large; after it, RAdam
    # is Adam, whose keyword arguments are a superset of RAdam's.
    if not issubclass(optimizer_cls, torch.optim.RAdam):
        return optimizer_cls, None
    note = (
        f"{optimizer_cls.__name__} rectifies its own first ~2/(1-beta2) updates (a built-in "
        "warmup that short bursts cannot see past), so the probe measured with torch.optim.Adam "
        "of the same settings; use the peak with RAdam as it is (its rectification only adds "
        "to the warmup)."
    )
    warnings.warn(note, UserWarning, stacklevel=3)
    return torch.optim.Adam, note


def _probe(
    model: nn.Module,
    stream: BatchStream,
    loss_fn: LossFn,
    optimizer_cls: type[torch.optim.Optimizer],
    kwargs: dict[str, Any],
    snapshot: Any,
    budget_n: int,
    total: int,
    seed: int,
    progress: bool,
    groups: list[GroupSpec] | None = None,
    accumulation_steps: int = 1,
    amp: MixedPrecision | None = None,
    grad_clip: float | None = None,
) -> tuple[ProbeOutcome, ProbeRunner]:
    from tqdm.auto import tqdm

    first = stream.first()  # empty data fails here, before any training
    structure = _trained_structure(model)
    outside: list[torch.Tensor] = []
    # A bad batch format fails here with its message, and a note on what the batch held.
    try:
        try:
            # with its graph where anything trains, to find what a backward gives a .grad to
            trains = any(p.requires_grad for p in model.parameters())
            outside, loss = _first_loss(model, first, loss_fn, amp, grad=trains)
        except RuntimeError as first_error:
            if _device_failure(first_error):
                raise  # out of memory, or a device-side error: a retry would fail the same
            # A loss that takes gradients inside itself (an input-gradient penalty) needs
            # autograd; the graph is dropped at once. A real error raises again here, in the
            # grad mode the probe trains in, alone: not chained to its own first occurrence.
            try:
                outside, loss = _first_loss(model, first, loss_fn, amp, grad=True)
            except Exception as again:
                raise again from None
    except Exception as exc:
        add_note(
            exc,
            lambda: (
                f"autowarm: raised by {loss_call(loss_fn, first)} on the first batch, before "
                f"any training; the batch (on the model's device) was {describe_batch(first)}"
            ),
        )
        raise
    _refuse_added_in_forward(model, structure)
    if not torch.isfinite(loss).all():
        if nan_in_batch(first):
            raise ValueError(
                f"the loss of the first batch (batch 0 of the data as it is yielded) is "
                f"{float(loss)}, and the batch holds a NaN: clean the data (e.g. check "
                "torch.isnan on each batch's tensors) and probe again"
            )
        raise ValueError(
            f"the loss of the first batch at the initial weights is {float(loss)}: check the "
            "model's initialisation and the data before probing"
        )
    # on terminals only (None); left out where TQDM_DISABLE is set, which tqdm reads only
    # for an argument not passed
    shown: dict[str, Any] = {"disable": None if progress else True}
    if progress and "TQDM_DISABLE" in os.environ:
        del shown["disable"]
    bar = tqdm(total=budget_n, desc="autowarm probe", unit="step", leave=False, **shown)
    runner = ProbeRunner(
        model=model,
        stream=stream,
        loss_fn=loss_fn,
        optimizer_cls=optimizer_cls,
        optimizer_kwargs=kwargs,
        snapshot=snapshot,
        seed=seed,
        budget=Budget(total=budget_n, on_step=functools.partial(_tick, bar)),
        param_groups=groups,
        accumulation_steps=accumulation_steps,
        amp=amp,
        grad_clip=grad_clip,
    )
    # Tensors outside the model that the loss trains through (a learned temperature held by
    # the loss_fn, not a module): the probe's backward passes give them a .grad, which the
    # user's first update would add in; it is put back as it was.
    try:
        torch.manual_seed(seed)
        with grads_kept(outside):
            outcome = _search_or_raise(
                runner, total, second_moment_beta(optimizer_cls, kwargs, groups)
            )
    finally:
        bar.close()
    if runner.has_second_moment is False:
        warnings.warn(
            _no_second_moment_message(optimizer_cls, runner.second_moment_note),
            UserWarning,
            stacklevel=3,
        )
    return outcome, runner


def _no_second_moment_message(
    optimizer_cls: type[torch.optim.Optimizer], note: str | None = None
) -> str:
    name = optimizer_cls.__name__
    if note is not None:
        return (
            f"{name} keeps Adam's second moment, but the probe cannot read it here ({note}: "
            "the monitor reads dense gradients); the estimate uses the loss signals alone, and "
            "warmup may well matter"
        )
    if issubclass(optimizer_cls, torch.optim.SGD):
        return (
            f"{name} keeps no second moment (exp_avg_sq): warmup matters little for it, and "
            "the estimate uses the loss signals alone"
        )
    # RMSprop, Adagrad, Adafactor, NovoGrad...: adaptive, but their second moment has another
    # name or shape, so the probe cannot read it; warmup may well matter for them.
    return (
        f"{name} keeps no second moment the probe can read (an exp_avg_sq shaped like each "
        "parameter, in param groups with Adam's betas; an adaptive optimizer may keep its own "
        "under another name or shape): the estimate uses the loss signals alone"
    )


def _tick(bar: Any) -> None:
    bar.update(1)


def _search_or_raise(runner: ProbeRunner, total: int, beta2: float | None) -> ProbeOutcome:
    try:
        outcome = run_search(runner, total_steps=total, settings=active_settings(), beta2=beta2)
    except NoUsableLR as exc:
        raise ProbeDivergedError(
            _no_usable_lr_message(exc, runner, total), pd.DataFrame(runner.trace_rows())
        ) from None
    warm = outcome.verdicts
    if warm and all(v.burst.diverged for v in warm) and outcome.warmup_from_bursts is None:
        trace = pd.DataFrame(runner.trace_rows())
        lrs = sorted({round(v.burst.peak_lr, 12) for v in warm})
        step = _same_nonfinite_step([v.burst.rows for v in warm])
        if step is not None and all(
            (v.burst.burst, step) in runner.nonfinite_weights for v in warm
        ):
            raise ProbeDivergedError(_overflowing_update_message(step, lrs, runner), trace)
        if step is not None:
            which, them = _batches_of_step(runner, step)
            raise ProbeDivergedError(
                f"every burst's loss was non-finite at step {step} whatever its LR (peaks "
                f"{lrs}): {which} or the loss on it is the likely cause, not the LR; check "
                f"{them} and the loss on it. The trace is in error.trace",
                trace,
            )
        sweep = [b.rows for b in runner.bursts if b.phase == "range_test"]
        outlier = _same_blowup_step([v.burst.rows for v in warm], sweep[0] if sweep else [])
        if outlier is not None:
            step, loss, typical = outlier
            which, them = _batches_of_step(runner, step)
            one = which if runner.accumulation_steps == 1 else f"one of {which}"
            raise ProbeDivergedError(
                f"every burst blew up at the same step, {step}, whatever its LR (peaks {lrs}): "
                f"its loss there was {loss:.4g} against a median of {typical:.4g} over the "
                f"steps before, and the range test's loss jumped there too, at an LR too "
                f"small to blow anything up, so {one} is far above the others (an outlier "
                f"example, heavy-tailed targets), not the LR; check {them}, or clip the "
                "targets or use a loss that bounds an outlier's pull (torch.nn.HuberLoss) for "
                "the probe as for the run. The trace is in error.trace",
                trace,
            )
        raise ProbeDivergedError(
            f"every LR the probe tried diverged (peaks {lrs}, ramps up to "
            f"{max(v.burst.warmup_steps for v in warm)} steps); check the loss and the model's "
            "initialisation, or give a larger budget_steps. The trace is in error.trace",
            trace,
        )
    return outcome


def _no_usable_lr_message(exc: NoUsableLR, runner: ProbeRunner, total: int) -> str:
    # The range test found no LR to go on (it diverged before the loss fell, or no LR lowered
    # the loss): in a short sweep each LR gets few steps, so a slow starter has no time to show
    # progress before the sweep reaches LRs that blow up. More steps is the first thing to try.
    settings = active_settings()
    n_rt = sum(1 for b in runner.bursts if b.phase == "range_test" for _ in b.rows)
    budget = runner.budget.total
    sweep = (
        f"its range test swept lr {settings.lr_min:g} to {settings.lr_max:g} in {n_rt} steps "
        f"(of a budget of {budget}), a few steps per LR, which may be too few for the loss to "
        "fall"
    )
    if budget < total:
        more = (
            f"pass a larger budget_steps (e.g. budget_steps={min(total, 2 * budget)}; at most "
            f"total_steps={total}), so that the sweep spends more steps on each LR"
        )
    else:
        more = f"this probe already had the whole {total}-step run as its budget"
    return (
        f"the probe found no LR to suggest: {exc}. {sweep[0].upper()}{sweep[1:]}; {more}. If "
        "that does not help, check the loss and the model's initialisation. The trace is in "
        "error.trace"
    )


def _overflowing_update_message(step: int, lrs: list[float], runner: ProbeRunner) -> str:
    # Every burst's loss went non-finite at the same step, with weights already non-finite:
    # the optimizer's update overflowed at every LR (down to tiny ones), not the data.
    low = sorted(
        {str(p.dtype).removeprefix("torch.") for p in runner.model.parameters()}
        & {"float16", "bfloat16"}
    )
    eps = runner.optimizer_kwargs.get("eps", optimizer_default(runner.optimizer_cls, "eps"))
    hint = ""
    if (
        low
        and isinstance(eps, float)
        and float(torch.tensor(eps, dtype=getattr(torch, low[0]))) == 0
    ):
        hint = (
            f" The model's weights are {low[0]}, in which {runner.optimizer_cls.__name__}'s "
            f"eps={eps:g} is 0, so its update divides by zero wherever the second moment "
            "underflows: keep the weights in float32 and pass precision='16-mixed' or "
            f"'bf16-mixed', or pass an eps that {low[0]} holds in optimizer_kwargs."
        )
    elif low:
        hint = (
            f" The model's weights are {low[0]}: keep them in float32 and pass "
            "precision='16-mixed' or 'bf16-mixed'."
        )
    return (
        f"every burst's weights became non-finite before step {step} whatever its LR (peaks "
        f"{lrs}): the optimizer's update overflows at any LR, so neither the LR nor the data "
        f"of that step is the cause.{hint} The trace is in error.trace"
    )


def _trained_structure(model: nn.Module) -> tuple[set[str], set[str]]:
    # The names of the model's submodules and parameters.
    modules = {name for name, _ in model.named_modules(remove_duplicate=False)}
    return modules, {name for name, _ in model.named_parameters(remove_duplicate=False)}


def _class_name(cls: type) -> str:
    # torch.optim.AdamW, not torch.optim.adamw.AdamW: the name a user writes
    if getattr(torch.optim, cls.__name__, None) is cls:
        return f"torch.optim.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_optimizer_cls(optimizer_cls: object) -> None:
    if isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer):
        return
    # the two other ways an optimizer is commonly handed over, each with what to pass instead
    if isinstance(optimizer_cls, torch.optim.Optimizer):
        raise TypeError(
            "optimizer_cls must be an optimizer class, not an optimizer: pass "
            f"optimizer_cls={_class_name(type(optimizer_cls))} and its settings as "
            "optimizer_kwargs (suggest() builds its own optimizer for every burst, and your "
            "optimizer is left as it is)"
        )
    if (
        isinstance(optimizer_cls, functools.partial)
        and isinstance(optimizer_cls.func, type)
        and issubclass(optimizer_cls.func, torch.optim.Optimizer)
    ):
        settings = {k: v for k, v in optimizer_cls.keywords.items() if k != "lr"}
        raise TypeError(
            "optimizer_cls must be an optimizer class, not a functools.partial: pass "
            f"optimizer_cls={_class_name(optimizer_cls.func)}, optimizer_kwargs={settings!r}"
            + (" (no lr: the probe chooses it)" if "lr" in optimizer_cls.keywords else "")
        )
    raise TypeError(
        "optimizer_cls must be a torch.optim.Optimizer subclass such as torch.optim.AdamW, "
        f"but got {optimizer_cls!r}"
    )


# autocast's device types; one a torch build does not know is skipped
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu", "mtia")


def _refuse_ambient_autocast() -> None:
    # autocast keeps the casts of the weights it made until its outermost block ends: inside
    # the caller's block, every probe forward would see the weights as they were at the first
    # one (the model would look untrainable), and a probe precision= would nest in it.
    active = []
    for device_type in _AUTOCAST_DEVICES:
        try:
            on = torch.is_autocast_enabled(device_type)
        except TypeError:  # torch before 2.4 takes no device: CUDA's, and CPU's own function
            legacy = {"cuda": "is_autocast_enabled", "cpu": "is_autocast_cpu_enabled"}
            name = legacy.get(device_type)
            on = bool(getattr(torch, name)()) if name and hasattr(torch, name) else False
        except RuntimeError:  # a device type this build does not know
            on = False
        if on:
            active.append(device_type)
    if active:
        raise RuntimeError(
            f"suggest() was called inside a torch.autocast block ({', '.join(active)}), "
            "whose cached casts of the weights would hide the probe's training from its "
            "forwards: call it outside the block, and pass precision='bf16-mixed' or "
            "'16-mixed' to probe under mixed precision as your run trains"
        )


def _refuse_step_in_backward(model: nn.Module) -> None:
    # PyTorch's optimizer-in-backward recipe: a hook on each parameter steps an optimizer of
    # the user's as soon as its gradient is ready, and clears it, in every backward pass
    hooked = [
        name
        for name, p in model.named_parameters()
        if getattr(p, "_post_accumulate_grad_hooks", None)
    ]
    if hooked:
        raise ValueError(
            f"the model's parameters have post-accumulate-grad hooks ({', '.join(hooked[:3])}"
            f"{', ...' if len(hooked) > 3 else ''}), as in an optimizer stepped in backward: "
            "the probe's backward passes would step your optimizers and take the gradients "
            "its own optimizer needs. Remove them for the probe (handle.remove() on what "
            "register_post_accumulate_grad_hook returned) and register them again after"
        )


def _first_loss(
    model: nn.Module, batch: Any, loss_fn: LossFn, amp: MixedPrecision | None, *, grad: bool
) -> tuple[list[torch.Tensor], Any]:
    # The loss of the first batch, detached, and (with `grad`) the trainable tensors outside
    # the model that its graph reaches; the graph is dropped on return.
    with torch.set_grad_enabled(grad), autocast_of(amp):
        loss = loss_fn(model, batch)
        outside = _leaves_outside(loss, model)
    return outside, loss.detach() if isinstance(loss, torch.Tensor) else loss


def _leaves_outside(loss: object, model: nn.Module) -> list[torch.Tensor]:
    # The leaf tensors that requires grad and a backward of `loss` reaches, which are not
    # the model's parameters: each is where an AccumulateGrad node of the graph writes. One
    # used only inside a reentrant torch.utils.checkpoint is not in this graph (that segment's
    # graph is built during the backward) and is missed.
    node = getattr(loss, "grad_fn", None)
    own = {id(p) for p in model.parameters()}
    found: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    stack = [node] if node is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor) and id(variable) not in own:
            found.setdefault(id(variable), variable)
        stack.extend(n for n, _ in getattr(node, "next_functions", ()) if n is not None)
    return list(found.values())


def _refuse_added_in_forward(model: nn.Module, before: tuple[set[str], set[str]]) -> None:
    # A forward that builds a submodule or registers a parameter from the first batch it sees
    # (a head sized from the input, a data-dependent init): every burst's optimizer is built
    # before its first forward, so those weights would never train, and the snapshot takes
    # them away again between bursts (every burst would look untrainable).
    modules, params = _trained_structure(model)
    added = sorted((modules - before[0]) | (params - before[1]))
    if added:
        raise ValueError(
            f"the model's forward added {', '.join(added[:4])}{', ...' if len(added) > 4 else ''} "
            "on the first batch: an optimizer built before that forward (the probe's, and "
            "your run's) would never train them; run one forward pass on a batch first "
            "(with torch.no_grad(): model(inputs)), so that they exist, then probe"
        )


def _batches_of_step(runner: ProbeRunner, step: int) -> tuple[str, str]:
    # The batches update `step` of a burst trains on, in words: the batches step * k ..
    # step * k + k - 1 drawn since the restart (k = accumulation_steps); and "it" for them.
    k = runner.accumulation_steps
    found = [runner.stream.position_of_step(step * k + j) for j in range(k)]
    positions = [p for p in found if p is not None]
    if len(positions) < k:
        which = "the batch at that step" if k == 1 else "the batches of that step"
    elif k == 1:
        which = (
            f"the batch at that step (batch {positions[0]} of the data as it is yielded, "
            "counting from 0)"
        )
    else:
        which = (
            f"the {k} batches of that step (batches {', '.join(map(str, positions))} of the "
            "data as it is yielded, counting from 0)"
        )
    return which, "that batch" if k == 1 else "those batches"


# a step's loss this many times the median of the steps before it is one batch's, not the LR's
_OUTLIER_FACTOR = 5.0


def _same_blowup_step(
    bursts: list[list[dict[str, Any]]], sweep: list[dict[str, Any]]
) -> tuple[int, float, float] | None:
    # Every burst (two or more) stopped at the same step, on a finite loss that jumped far
    # above the losses before it, and the range test (`sweep`: the same batches at the same
    # steps, at LRs too small there to blow anything up) jumped at that step too: the batch
    # at that step, not the schedule. Bursts that share a short ramp can blow up together
    # at one step from their LR; the sweep tells the two apart. The step, the mean loss there
    # over the bursts, and the median loss of the steps before it.
    if len(bursts) < 2 or any(not rows for rows in bursts):
        return None
    stops = {int(rows[-1]["step"]) for rows in bursts}
    if len(stops) != 1:
        return None
    step = stops.pop()
    at = [float(rows[-1]["loss"]) for rows in bursts]
    before = [float(r["loss"]) for rows in bursts for r in rows[:-1]]
    before = [x for x in before if math.isfinite(x)]
    if not before or not all(math.isfinite(x) for x in at):
        return None
    loss = statistics.fmean(at)
    swept = {int(r["step"]): float(r["loss"]) for r in sweep}
    earlier = [x for s, x in swept.items() if s < step and math.isfinite(x)]
    if not (_far_above(loss, before) and _far_above(swept.get(step, math.nan), earlier)):
        return None
    return step, loss, statistics.median(before)


def _far_above(loss: float, before: list[float]) -> bool:
    # `loss` more than _OUTLIER_FACTOR times the median of the (finite) losses `before` it
    return bool(before) and loss > _OUTLIER_FACTOR * abs(statistics.median(before))


def _same_nonfinite_step(bursts: list[list[dict[str, Any]]]) -> int | None:
    # The step at which every burst (two or more, at different LRs) first had a non-finite
    # loss, when it is the same one: the data at that step, not the schedule.
    firsts = set()
    for rows in bursts:
        bad = [r["step"] for r in rows if not math.isfinite(r["loss"])]
        if not bad:
            return None
        firsts.add(int(bad[0]))
    return firsts.pop() if len(bursts) >= 2 and len(firsts) == 1 else None


def _verdict_word(v: Any) -> str:
    # "stable" means no rule fired; a burst whose loss still ended above where it started
    # (a rise under the catapult rule's noise bar) is not what a reader calls stable
    if not v.stable:
        return "unstable"
    if v.signals.net_decrease < 0:
        return "stable by the rules, though its loss ended above its start"
    return "stable"


def _rationale(
    o: ProbeOutcome, probe_steps: int, budget: int, total: int, accumulation_steps: int = 1
) -> str:
    rt = o.range_test
    parts = [
        f"Range test: smoothed loss fell fastest at lr {rt.steepest_lr:.3g}, was lowest at "
        f"{rt.min_loss_lr:.3g} (leaving out its first points and "
        f"{'the last one before divergence' if rt.diverged else 'its last one'})"
        + (f" and diverged at {rt.diverge_lr:.3g}." if rt.diverged else " and never diverged."),
        o.notes[0][0].upper() + o.notes[0][1:] + ".",
    ]
    bursts = [
        f"W={v.burst.warmup_steps} at {v.burst.peak_lr:.3g}: {_verdict_word(v)} "
        f"({v.signals.reason})"
        for v in o.verdicts
    ]
    if bursts:
        parts.append("Bursts (a W-step ramp, then the peak): " + "; ".join(bursts) + ".")
    if o.settling is not None:
        st = o.settling
        n = _ceil_updates(st.settling_step)
        if st.settled:
            how = f"settled after {n} updates"
        elif not st.extrapolated:
            how = "gave no settling step, so it set no least warmup"
        elif st.at_floor:
            how = (
                f"had not settled by update {n}, the last the bursts observed, which is "
                "therefore a lower bound"
            )
        elif st.lower_bound:
            how = (
                f"is extrapolated to settle after at least {n} updates (a lower bound: "
                f"{st.not_extrapolated} cannot be extrapolated)"
            )
        else:
            how = f"is extrapolated to settle after {n} updates"
        parts.append(f"Adam's second moment {how} ({st.reason}).")
    if o.warmup_why is not None:
        parts.append(o.warmup_why[0].upper() + o.warmup_why[1:] + ".")
    decided = (
        "no signal asked for one"
        if o.deciding_signal == "none needed"
        else f"decided by the {o.deciding_signal}"
    )
    if o.deciding_signal == "second moment" and o.warmup_from_bursts == 0:
        # the no-ramp burst did as well: the reader would otherwise see no reason for a ramp
        decided += (
            " (the loss trained without a ramp in the bursts; the warmup covers Adam's "
            "second moment until its estimate settles"
        )
        unramped = [v.signals.n_steps for v in o.verdicts if v.burst.warmup_steps == 0]
        if unramped and max(unramped) < o.warmup_steps:
            decided += ", a precaution the bursts are too short to test"
        decided += ")"
    parts.append(
        f"Warmup {o.warmup_steps} steps ({o.warmup_steps / total:.1%} of {total}), {decided}; "
        f"peak LR {o.peak_lr:.3g}."
    )
    parts += [n[0].upper() + n[1:] + "." for n in o.notes[1:]]
    if accumulation_steps > 1:
        parts.append(
            f"The probe took {probe_steps} of its {budget} budgeted steps, each of "
            f"{accumulation_steps} accumulated batches ({probe_steps * accumulation_steps} "
            "batches)."
        )
    else:
        parts.append(f"The probe took {probe_steps} of its {budget} budgeted steps.")
    if o.reasons:
        parts.append("Low confidence: " + "; ".join(o.reasons) + ".")
    return " ".join(parts)


def _passes_note(
    dataloader: Iterable[Any], total: int, accumulation_steps: int, runner: ProbeRunner
) -> str | None:
    """What the bursts cannot have measured when the run goes over the data several times
    (``None`` for a single pass, or data without a length): overfitting in the later passes
    (``reports/benchmark/heldout_finetune``: 32 passes over a small set, peaks 7.5-24x the
    best)."""
    try:
        n = len(dataloader)  # type: ignore[arg-type]
    except Exception:  # an iterator, an IterableDataset's loader: no length to go by
        return None
    if not isinstance(n, int) or n <= 0:
        return None
    passes = total * accumulation_steps / n
    if passes < 2:
        return None
    longest = max((b.steps for b in runner.bursts), default=0) * accumulation_steps
    seen = (
        f"a burst (at most {longest} batches) is under one pass, so the bursts scored batches "
        "they had not trained on"
        if longest <= n
        else f"the bursts went over it at most {longest / n:.2g} times"
    )
    return (
        f"The run goes {passes:.3g} times over the data's {n} batches; {seen}, and cannot "
        "show overfitting in the later passes: on a small set, check the peak on a "
        "validation loss over runs of the full length (autowarm tune with val_data and "
        "--trial-steps of the run)."
    )


def _ceil_updates(steps: float) -> int | str:
    # The settling step as the warmup takes it (rounded up), or "?" when unknown.
    return math.ceil(steps) if math.isfinite(steps) else "?"


def _suggestion(
    o: ProbeOutcome,
    runner: ProbeRunner,
    trace: pd.DataFrame,
    total: int,
    decay: str,
    wall: float,
    *,
    preface: str | None = None,
    training: Mapping[str, Any] | None = None,
    passes_note: str | None = None,
) -> Suggestion:
    schedule = ScheduleConfig(
        peak_lr=o.peak_lr,
        total_steps=total,
        warmup_steps=min(o.warmup_steps, total),
        decay=decay,
    )
    steps = runner.budget.used
    signals = pd.DataFrame(outcome_signals(o), columns=["name", "value", "unit", "description"])
    signals["value"] = signals["value"].astype(float)
    rationale = _rationale(o, steps, runner.budget.total, total, runner.accumulation_steps)
    skipped = int(trace["skipped"].sum()) if "skipped" in trace else 0
    if skipped:
        rationale += (
            f" The loss scaler skipped {skipped} of the {steps} updates (float16 overflow of "
            "the scaled gradients, then a lower scale; not divergence)."
        )
    if passes_note:
        rationale += f" {passes_note}"
    if preface:
        rationale = f"{preface} {rationale}"
    _log.info(
        "autowarm: warmup %d steps, peak lr %.3g (%s)",
        schedule.warmup_steps,
        schedule.peak_lr,
        o.confidence,
    )
    return Suggestion(
        warmup_steps=schedule.warmup_steps,
        peak_lr=schedule.peak_lr,
        schedule=schedule,
        probe_steps=steps,
        rationale=rationale,
        trace=trace,
        signals=signals,
        confidence=o.confidence,
        low_confidence_reasons=tuple(o.reasons),
        deciding_signal=o.deciding_signal,
        wall_seconds=wall if math.isfinite(wall) else 0.0,
        training=dict(training or {}),
    )
