"""``autowarm.tune``: an optuna study around the probe's estimate, resumable and distributed.

The flow of one call:

1. Open the storage (:mod:`autowarm.study._storage`) and create or load the study. Under a
   lock, a new study gets its records (task, versions, seed, the probe's evidence) and its
   first trials: the probe's estimate and the reference schedules. A resumed study keeps its
   own records; a mismatch (another task, another run length) is an error, not a mix. An
   edited task file, or the task's file at another path, is warned about: fixing a task and
   resuming is the way on after a trial's error.
2. Run workers (this process, or ``n_workers`` spawned processes). Each loops: fail trials
   whose worker died, stop when the study holds ``n_trials`` trials or the time is up, else run
   one trial with ``study.optimize(n_trials=1)`` so optuna's heartbeat and bookkeeping apply.
3. Confirm: train the ``confirm`` best trials once more at full length (a companion study,
   :mod:`autowarm.study._confirm`); ``best`` is the best of those.
4. Return a :class:`TuneResult` over the study as stored.

``n_trials`` is the study's total: trials that completed, were pruned, are running or are
queued count; failed ones do not (a retry takes their place). An ``n_trials`` below the four
first trials queues only as many of them (the probe's first); the others are queued when the
study is resumed with a larger one.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import platform
import re
import shlex
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial, TrialState

import autowarm
from autowarm._checks import check_seed, error_line, is_int, is_real
from autowarm._groups import second_moment_beta
from autowarm._train import structure_fingerprint
from autowarm.schedules import ScheduleConfig
from autowarm.study import _attrs, _storage
from autowarm.study._confirm import (
    candidates,
    confirm_study,
    confirmed,
    confirmed_best,
    diverged_at_full_length,
    run_confirmations,
    unconfirmed,
)
from autowarm.study._space import SearchSpace, longest_warmup
from autowarm.study._task import (
    Task,
    canonical_spec,
    changed_since_loaded,
    code_fingerprint,
    load_task,
    spec_file,
)
from autowarm.study._trial import TRANSFERS, WarmupTransfer, compress, train_trial

if TYPE_CHECKING:
    from autowarm._suggest import Suggestion

__all__ = ["NoFinishedTrialError", "TuneResult", "best_schedule", "trials_frame", "tune"]

_logger = logging.getLogger("autowarm")

FULL_RUN_BUDGET = 6.0
"""Default total cost of a study, probe included, in full-run equivalents (optimizer steps)."""
MAX_CONSECUTIVE_ERRORS = 3
"""A worker stops after this many trials in a row failed with an error of the task's code."""

_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class NoFinishedTrialError(ValueError):
    """The study has no completed trial yet, so it has no best schedule."""


class _Surplus(Exception):
    """A trial started by a race after the study already held ``n_trials`` trials."""


# ---------------------------------------------------------------------------------------------
# results


def check_minimises_one_value(study: optuna.Study) -> None:
    """Refuse a study that is not minimising one value, as ``autowarm tune`` makes them: one
    created elsewhere with ``direction="maximize"`` or with several objectives.

    Raises:
        ValueError: naming the study's directions, and what to pass instead.
    """
    directions = [d.name.lower() for d in study.directions]
    if directions != ["minimize"]:
        raise ValueError(
            f"study {study.study_name!r} has direction{'s' if len(directions) > 1 else ''} "
            f"{', '.join(directions)}, but autowarm studies minimise one value (a loss): it "
            "was not made by `autowarm tune`; pass another --study-name"
        )


def best_schedule(study: optuna.Study) -> ScheduleConfig:
    """The full-run schedule of ``study``'s best completed trial.

    When the study confirmed its best trials at full length (``tune(confirm=k)``), the
    confirmed schedule with the lowest full-length value wins instead.

    Raises:
        NoFinishedTrialError: If no trial has completed (with the count of each state).
        ValueError: If the best trial carries no autowarm schedule, or the study does not
            minimise one value (not an autowarm study).
    """
    check_minimises_one_value(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = [t for t in done if t.value is not None and math.isfinite(t.value)]
    if not done:
        counts = pd.Series([t.state.name for t in study.get_trials(deepcopy=False)]).value_counts()
        seen = ", ".join(f"{n} {str(s).lower()}" for s, n in counts.items()) or "no trials"
        name = study.study_name
        probe_diverged = [
            t.number
            for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
            if t.user_attrs.get(_attrs.ROLE) == _attrs.ROLE_PROBE
            and str(t.user_attrs.get(_attrs.REASON, "")).startswith("diverged")
        ]
        if not isinstance(study.user_attrs.get(_attrs.SUGGESTION), Mapping):
            raise NoFinishedTrialError(
                f"study {name!r} has no completed trial yet ({seen}) and holds no probe "
                "suggestion: its probe did not finish (interrupted, or it failed), or the "
                "study was not made by `autowarm tune`; run `autowarm tune` again with the "
                "same storage to start it"
            )
        instead = (
            f"but the probe's own schedule diverged in trial {probe_diverged[0]} too, so "
            "exporting it is no answer either"
            if probe_diverged
            else "or export the probe's suggestion instead: `autowarm export --storage STORAGE "
            f"--study-name={shlex.quote(name)} --probe`"
        )
        under_way = study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)
        )
        if under_way:
            raise NoFinishedTrialError(
                f"study {name!r} has no completed trial yet ({seen}): wait for one to "
                "complete while `autowarm tune` runs, or, if no worker runs it any more "
                "(stopped, killed), resume it with the same command; "
                f"{instead.removeprefix('or ')}"
            )
        finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        # The probe's and the reference trials all run at the probe's peak: only sampled
        # trials below it, diverged as well, say that the space as a whole is too hot.
        probe_peaks = [
            t.user_attrs[_attrs.PEAK_LR]
            for t in finished
            if t.user_attrs.get(_attrs.ROLE) == _attrs.ROLE_PROBE
            and _attrs.PEAK_LR in t.user_attrs
        ]
        cooler = [
            t
            for t in finished
            if t.user_attrs.get(_attrs.ROLE) == _attrs.ROLE_SEARCH
            and (not probe_peaks or t.user_attrs.get(_attrs.PEAK_LR, math.inf) < min(probe_peaks))
        ]
        all_diverged = bool(cooler) and all(
            str(t.user_attrs.get(_attrs.REASON, "")).startswith("diverged") for t in finished
        )
        if all_diverged:
            # more trials in the same space (pinned around the probe's peak) diverge as well
            raise NoFinishedTrialError(
                f"study {name!r} has no completed trial: all {len(finished)} of its trials "
                "diverged, so its search space, around the probe's peak LR, is too hot and "
                "more trials will diverge too; start a new study (another --study-name) from "
                "a probe with another --budget-steps or seed, or a --suggestion with a lower "
                f"peak (`autowarm report --storage STORAGE --study-name={shlex.quote(name)} "
                "-o report` shows each trial)"
            )
        raise NoFinishedTrialError(
            f"study {name!r} has no completed trial yet ({seen}); resume it with a larger "
            "--n-trials (or a --timeout) until one completes (`autowarm report --storage "
            f"STORAGE --study-name={shlex.quote(name)} -o report` says why each trial ended), "
            f"{instead}"
        )
    full = confirmed_best(study)
    missing = unconfirmed(study)
    if missing:
        which = "the best of those confirmed so far" if full else "the best compressed trial"
        target = study.user_attrs.get(_attrs.N_TRIALS)
        ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        n_ended = len(study.get_trials(deepcopy=False, states=ended))
        if isinstance(target, int) and n_ended < target:
            why = (
                f"its search has ended {n_ended} of {target} trials, and the confirmations "
                "come after it"
            )
            todo = "let `autowarm tune` finish (or resume it)"
        else:
            why = "the study was stopped before or during them, or is running them now"
            todo = "resume `autowarm tune` to finish them, if it is not running"
        warnings.warn(
            f"the full-length confirmations of trials {missing} have not run ({why}): this "
            f"is {which}, which they may still beat; {todo}",
            UserWarning,
            stacklevel=2,
        )
    if full is not None:
        return full
    diverged = diverged_at_full_length(study)
    failed = [study.trials[n].user_attrs.get(_attrs.SCHEDULE) for n in diverged]
    rest = [t for t in done if t.user_attrs.get(_attrs.SCHEDULE) not in failed] if failed else done
    if not rest:
        raise NoFinishedTrialError(
            f"every completed schedule of study {study.study_name!r} diverged at full length "
            f"in its confirmation (trials {diverged}): start a new study with a smaller "
            "--lr-factor (the search is centred on the probe's peak), or use the probe's "
            "suggestion instead"
        )
    best = min(rest, key=lambda t: (t.value, t.number))
    if diverged:
        warnings.warn(
            f"trials {diverged} diverged at full length in their confirmation; the best is "
            f"trial {best.number}, the best completed trial with another schedule, which was "
            "not confirmed at full length",
            UserWarning,
            stacklevel=2,
        )
    data = best.user_attrs.get(_attrs.SCHEDULE)
    if not isinstance(data, Mapping):
        raise ValueError(
            f"trial {best.number} of study {study.study_name!r} has no {_attrs.SCHEDULE!r} "
            "attribute: the study was not written by autowarm.tune"
        )
    return ScheduleConfig.from_dict(data)


TRIAL_COLUMNS = (
    "number",
    "state",
    "value",
    "role",
    "peak_lr",
    "warmup_steps",
    "decay",
    "min_lr",
    "trial_steps",
    "trial_warmup_steps",
    "duration_s",
    "reason",
    "retry_of",
    "worker",
    "full_value",
    "also_roles",
)


_TRIAL_DTYPES = {
    **dict.fromkeys(TRIAL_COLUMNS, "int64"),
    **dict.fromkeys(("state", "role", "decay", "reason", "worker", "also_roles"), "str"),
    **dict.fromkeys(("value", "peak_lr", "min_lr", "duration_s", "full_value"), "float64"),
}


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with plain columns (see :data:`TRIAL_COLUMNS`).

    ``value`` is the final validation loss (NaN unless completed), ``warmup_steps`` and
    ``peak_lr`` describe the full-run schedule the trial stands for, ``trial_warmup_steps``
    what the compressed trial actually used, ``reason`` why it was pruned or failed,
    ``full_value`` the full-length value of a confirmed trial (NaN otherwise),
    ``also_roles`` the other first-trial roles the trial stands for, comma-separated (``""``
    when none: see :data:`autowarm.study._attrs.ALSO_ROLES`).
    """
    full = confirmed(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        sched = t.user_attrs.get(_attrs.SCHEDULE) or {}
        short = t.user_attrs.get(_attrs.TRIAL_SCHEDULE) or {}
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete is not None and t.datetime_start is not None
            else math.nan
        )
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": (
                    float(t.value)
                    if t.state == TrialState.COMPLETE and t.value is not None
                    else math.nan
                ),
                "role": str(t.user_attrs.get(_attrs.ROLE, "")),
                "peak_lr": float(sched.get("peak_lr", math.nan)),
                "warmup_steps": int(sched["warmup_steps"]) if "warmup_steps" in sched else -1,
                "decay": str(sched.get("decay", "")),
                "min_lr": float(sched.get("min_lr", math.nan)),
                "trial_steps": int(short.get("total_steps", -1)),
                "trial_warmup_steps": int(short.get("warmup_steps", -1)),
                "duration_s": duration,
                "reason": str(t.user_attrs.get(_attrs.REASON, "")),
                "retry_of": int(t.user_attrs.get(_attrs.RETRY_OF, -1)),
                "worker": str(t.user_attrs.get(_attrs.WORKER, "")),
                "full_value": full.get(t.number, math.nan),
                "also_roles": ",".join(roles_of(t)[1:]),
            }
        )
    frame = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    return frame.astype(_TRIAL_DTYPES) if frame.empty else frame


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` returns: the study as stored, and views of it.

    Attributes:
        study: the :class:`optuna.Study` (load it again with ``storage`` and its name).
        storage: the storage URL, as ``optuna-dashboard`` takes it.

    A run stopped by SIGINT/SIGTERM returns none: :func:`tune` raises ``KeyboardInterrupt``
    once every finished trial is stored.
    """

    study: optuna.Study
    storage: str

    @property
    def best(self) -> ScheduleConfig:
        """The full-run schedule to train with (:func:`best_schedule`): among the trials
        confirmed at full length (``confirm``), the one with the lowest full-length value; in
        a study with no confirmations, the best completed trial's.

        Raises:
            NoFinishedTrialError: If no trial has completed yet.
        """
        return best_schedule(self.study)

    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial, plain columns: ``number``, ``state`` (lower case), ``value``
        (the compressed trial's final validation loss; NaN unless completed), ``role``
        (``probe``, a reference, ``search``), ``peak_lr``, ``warmup_steps``, ``decay`` and
        ``min_lr`` of the full-run schedule the trial stands for, ``trial_steps`` and
        ``trial_warmup_steps`` of what it trained, ``duration_s``, ``reason`` (why it was
        pruned or failed), ``retry_of`` (-1: none), ``worker``, ``full_value`` (its
        full-length value when confirmed, else NaN) and ``also_roles``. An unknown int is
        -1, an unknown float NaN."""
        return trials_frame(self.study)


# ---------------------------------------------------------------------------------------------
# setup


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything a worker needs besides the task; pickles into worker processes."""

    storage: str
    study_name: str
    n_trials: int | None
    deadline: float | None
    trial_steps: int
    seed: int
    pruner: str
    transfer: WarmupTransfer
    space: SearchSpace
    center: ScheduleConfig
    progress: bool
    heartbeat_interval: int | None
    log_level: int
    confirm: int = 0
    total_steps: int = 0


def _default_trial_steps(total_steps: int) -> int:
    return max(min(total_steps, 100), total_steps // 4)


def _default_study_name(task: Task) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task.identity).strip("-")
    return f"autowarm-{slug[-80:] or 'task'}"


def _earlier_default_name(task: Task, url: str) -> str | None:
    """The default name an earlier autowarm gave this task's study, when only that one exists.

    Before file tasks were recorded by their file name, the default study name kept the path
    of the spec (``autowarm-examples-task.py-task``); the same command resumes that study
    instead of starting a new one beside it.
    """
    if task.source is None or task.name != canonical_spec(task.source):
        return None
    earlier = _default_study_name(dataclasses.replace(task, name=task.source))
    now = _default_study_name(task)
    if earlier == now:
        return None
    try:
        names = optuna.get_all_study_names(_storage.open_storage(url, heartbeat_interval=None))
    except ValueError:
        return None
    if earlier in names and now not in names:
        _logger.info(
            "resuming study %r (named from the task's path by an earlier autowarm)", earlier
        )
        return earlier
    return None


def _versions() -> dict[str, str]:
    return {
        "autowarm": autowarm.__version__,
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
    }


def _probe_cost(suggestion: Any, total_steps: int) -> float:
    return float(suggestion.probe_steps) / total_steps


def _suggestion_record(suggestion: Any) -> dict[str, Any]:
    record: dict[str, Any] = dict(suggestion.to_dict())
    record["trace"] = suggestion.trace.to_dict(orient="records")
    record["signals"] = suggestion.signals.to_dict(orient="records")
    return record


def suggestion_from_study(study: optuna.Study) -> Any | None:
    """The probe's :class:`~autowarm.Suggestion` stored in ``study``, with its tables."""
    from autowarm._suggest import Suggestion

    record = study.user_attrs.get(_attrs.SUGGESTION)
    if not isinstance(record, Mapping):
        return None
    data = dict(record)
    trace = pd.DataFrame.from_records(data.pop("trace", None) or [])
    signals = pd.DataFrame.from_records(data.pop("signals", None) or [])
    return Suggestion.from_dict(data, trace=trace, signals=signals)


def _metric(task: Task) -> str:
    # What a trial's value is, in words (the report quotes it).
    if task.has_validation:
        return "validation loss at the end of the compressed trial"
    return "mean training loss over the last tenth of the compressed trial"


def _task_file(task: Task) -> str | None:
    # The absolute path of the file a task was loaded from, or None (a task built in Python).
    where = spec_file(task.source or "")
    return None if where is None else str(Path(where).expanduser().resolve())


def _task_code(task: Task) -> str | None:
    path = _task_file(task)
    return None if path is None else code_fingerprint(Path(path))


def _warn_task_file_changes(study: optuna.Study, task: Task) -> None:
    # A study is named after its task file's name alone, so hosts that mount one file at other
    # paths share it; two experiments' files of one name (expA/task.py, expB/task.py) with the
    # same settings would share it too. Said, not refused: the paths may be one file.
    then, now = study.user_attrs.get(_attrs.TASK_FILE), _task_file(task)
    if isinstance(then, str) and now is not None and then != now:
        warnings.warn(
            f"study {study.study_name!r} was started from the task file {then}; this run "
            f"loads {now}. If that is another experiment rather than the same file seen from "
            "another host or path, stop and pass --study-name NAME for a study of its own",
            UserWarning,
            stacklevel=4,
        )
    # An edited task file: said, not refused ("fix the task and resume" is the way on after
    # a trial's error), but its trials and the earlier ones are ranked as one experiment.
    code_then, code_now = study.user_attrs.get(_attrs.TASK_CODE), _task_code(task)
    if isinstance(code_then, str) and code_now is not None and code_then != code_now:
        warnings.warn(
            f"the task file {now} has changed since study {study.study_name!r} started (its "
            "code, comments and blank lines aside): the trials of this run are ranked with "
            "the earlier ones as one experiment. If the change alters what a trial measures "
            "(the model, the data, the loss or the validation), stop and pass --study-name "
            "NAME for a study of its own",
            UserWarning,
            stacklevel=4,
        )


def _check_resumable(study: optuna.Study, expected: Mapping[str, Any]) -> None:
    attrs = study.user_attrs
    if attrs.get(_attrs.FORMAT) is None:
        if study.get_trials(deepcopy=False):
            raise ValueError(
                f"study {study.study_name!r} already exists and was not created by autowarm; "
                "pass another --study-name"
            )
        return
    for key, want in expected.items():
        if key not in attrs:
            continue  # a study made before autowarm recorded this setting
        have = attrs[key]
        if key == _attrs.TASK and isinstance(have, str) and isinstance(want, str):
            have, want = canonical_spec(have), canonical_spec(want)  # older studies: full path
        if have != want:
            raise ValueError(
                f"study {study.study_name!r} was created with {key}={have!r}, but this run has "
                f"{key}={want!r}; rerun with the same settings to resume it, or pass another "
                "--study-name for a new study"
            )


def _reference_schedules(center: ScheduleConfig, task: Task) -> dict[str, ScheduleConfig]:
    # beta2 as the probe reads it: the task's betas, else its optimizer's default; an
    # optimizer without betas (SGD) has no 2/(1-beta2) reference, as the probe's report has none
    return reference_schedules(
        center, second_moment_beta(task.optimizer_cls, task.optimizer_kwargs or {})
    )


def reference_schedules(center: ScheduleConfig, beta2: float | None) -> dict[str, ScheduleConfig]:
    """The reference schedules a study queues beside the probe's, keyed by role: no warmup,
    ``2 / (1 - beta2)`` warmup steps (left out when ``beta2`` is ``None``, unknown) and 10% of
    the run, at the centre's peak LR and at most :func:`longest_warmup` long. A trial trains
    each clipped into the study's search space (``space.params_of`` when it is queued)."""
    last = longest_warmup(center)
    refs = {_attrs.ROLE_NO_WARMUP: center.replace(warmup_steps=0)}
    if beta2 is not None:
        untuned = round(2.0 / (1.0 - beta2)) if beta2 < 1 else last
        refs[_attrs.ROLE_UNTUNED] = center.replace(warmup_steps=min(untuned, last))
    refs[_attrs.ROLE_TEN_PERCENT] = center.replace(
        warmup_steps=min(round(0.1 * center.total_steps), last)
    )
    return refs


def roles_of(trial: optuna.trial.FrozenTrial) -> list[str]:
    """The roles ``trial`` stands for: its ``autowarm.role``, then its ``autowarm.also_roles``
    (empty for a trial without a role)."""
    role = trial.user_attrs.get(_attrs.ROLE)
    also = trial.user_attrs.get(_attrs.ALSO_ROLES) or []
    return ([str(role)] if role is not None else []) + [str(r) for r in also]


def _enqueue_first_trials(
    study: optuna.Study,
    task: Task,
    center: ScheduleConfig,
    space: SearchSpace,
    n_trials: int | None,
) -> None:
    # Queued once; a role whose every attempt failed (a task fixed between runs) is queued
    # again on the next start, so the comparison with the probe and references is never lost.
    # No more than n_trials leaves room for (probe first): the rest wait for a resume with a
    # larger n_trials, instead of being queued and then failed as surplus.
    trials = study.get_trials(deepcopy=False)
    live = {role for t in trials if t.state in _COUNTED for role in roles_of(t)}
    last_try = {role: t.number for t in trials if t.state.is_finished() for role in roles_of(t)}
    firsts = {_attrs.ROLE_PROBE: center, **_reference_schedules(center, task)}
    room = None if n_trials is None else n_trials - sum(t.state in _COUNTED for t in trials)
    # Roles whose schedules coincide once placed in the space (2/(1-beta2) steps that are 10%
    # of the run, a probe warmup of 0) share one trial: the first role names it, the others
    # ride along in ALSO_ROLES, so the comparison keeps a row for each without training one
    # schedule twice.
    groups: dict[str, list[str]] = {}
    params: dict[str, dict[str, Any]] = {}
    by_number = {t.number: t for t in trials}
    for role, schedule in firsts.items():
        if role in live:
            continue
        last = by_number[last_try[role]] if role in last_try else None
        if last is not None and _storage.given_up(last):
            reason = str(last.user_attrs.get(_attrs.REASON, ""))
            # its worker died on each of its runs (a segfault, the out-of-memory killer)
            _logger.warning(
                "the first trial %s is not queued again: %s; the study goes on without it "
                "(start a new study, --study-name, once the cause is fixed)",
                role,
                reason,
            )
            continue
        these = space.params_of(schedule, center)
        twin = next((r for r, p in params.items() if p == these), None)
        if twin is not None:
            groups[twin].append(role)
        else:
            groups[role], params[role] = [role], these
    queued: list[str] = []  # roles
    left_out: list[str] = []
    n_queued = 0  # trials: a shared one takes one place of n_trials, whatever it stands for
    for role, members in groups.items():
        if room is not None and n_queued >= room:
            left_out.extend(members)
            continue
        attrs: dict[str, Any] = {_attrs.ROLE: role}
        if len(members) > 1:
            attrs[_attrs.ALSO_ROLES] = members[1:]
            _logger.info(
                "the first trial %s stands for %s too: the same schedule",
                role,
                ", ".join(members[1:]),
            )
        if role in last_try:  # not live, so each of its attempts failed
            attrs[_attrs.RETRY_OF] = last_try[role]
        study.enqueue_trial(params[role], user_attrs=attrs, skip_if_exists=False)
        queued.extend(members)
        n_queued += 1
    if len(queued) == len(firsts):
        _logger.info(
            "queued the probe's schedule and %d references (no warmup, 2/(1-beta2), 10%%)",
            len(firsts) - 1,
        )
    elif queued:
        again = [role for role in queued if role in last_try]
        first = [role for role in queued if role not in last_try]
        if first:
            _logger.info("queued the first trials %s", ", ".join(first))
        if again:
            _logger.info("queued again the first trials that failed: %s", ", ".join(again))
    if left_out:
        _logger.warning(
            "n_trials=%d leaves no room for the first trials %s; resume the study with a larger "
            "n_trials to run them",
            n_trials,
            ", ".join(left_out),
        )


_PRUNERS: Final = ("median", "hyperband", "none")


def _make_pruner(name: str, trial_steps: int) -> optuna.pruners.BasePruner:
    # warmup trains slowly at first; compare trials only after the longest compressed
    # warmup of the default space (half the run, by fraction) is over. A trial is never
    # pruned in its own warmup either (the objective's on_eval), whatever the space.
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=trial_steps // 2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, trial_steps // 4), max_resource=trial_steps
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be one of {_PRUNERS}, but got {name!r}")


def _make_sampler(
    seed: int, worker: int, distributed: bool, start: int = 0, salt: int = 0
) -> optuna.samplers.BaseSampler:
    # The sampler's seed also takes the number of trials the study held when this worker
    # started, so a resumed study does not draw its first start's random trials again; and a
    # salt (the pid) where other workers were already running, since every host's worker is
    # worker 0 and would draw theirs.
    with _storage.quiet_experimental():
        return optuna.samplers.TPESampler(
            seed=(seed + 7919 * worker + 104729 * start + salt) % 2**32,
            n_startup_trials=6,
            multivariate=True,
            constant_liar=distributed,
        )


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """In the main thread, turn SIGTERM into KeyboardInterrupt (Ctrl-C's path)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _StopFlag:
    """Set by SIGINT/SIGTERM while trials run; the trial stops at its next step.

    Raising from a signal handler can land anywhere, even in a garbage-collection callback
    that swallows it; a flag checked between optimizer steps cannot be lost. A second signal
    stops at once (``hard_on_second``), as a second Ctrl-C does elsewhere.
    """

    def __init__(self, *, hard_on_second: bool = True) -> None:
        self.received: int | None = None
        self.hard_on_second = hard_on_second

    def __call__(self, signum: int, frame: Any) -> None:
        if self.received is not None and self.hard_on_second:
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name} (second)")
        self.received = signum

    def is_set(self) -> bool:
        return self.received is not None

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a stop was requested."""
        if self.received is not None:
            raise KeyboardInterrupt(f"signal {signal.Signals(self.received).name}")

    @contextlib.contextmanager
    def installed(self) -> Iterator[_StopFlag]:
        """Catch SIGINT and SIGTERM into this flag (main thread only; restored after)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


# ---------------------------------------------------------------------------------------------
# the public entry point


def tune(
    task: Task,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | os.PathLike[str] | None = None,
    study_name: str | None = None,
    trial_steps: int | None = None,
    suggestion: Suggestion | None = None,
    search_space: SearchSpace | None = None,
    pruner: str | None = None,
    seed: int | None = None,
    n_workers: int = 1,
    progress: bool = True,
    warmup_transfer: WarmupTransfer | None = None,
    budget_steps: int | None = None,
    confirm: int = 2,
) -> TuneResult:
    """Refine the probe's warmup and peak LR with an optuna study of compressed trials.

    The study starts from the probe's estimate (run here unless ``suggestion`` is given or
    stored in the study) and the reference schedules (no warmup, ``2/(1-beta2)`` steps, 10%),
    then a TPE sampler searches around it (see :class:`SearchSpace`). Each trial trains a fresh
    model from ``seed`` with the whole schedule compressed into ``trial_steps`` and reports a
    smoothed validation loss for pruning. Rerunning the same call resumes the same study.

    Args:
        task:
            The :class:`Task`.
        n_trials:
            The study's total number of trials (not "this many more"), probe and references
            included. Default: as many as fit, with the probe, into six full runs
            (``FULL_RUN_BUDGET``), or on a resume the total stored by the last run; with a
            ``timeout`` and no ``n_trials``, no total: trials run until the time is up.
        timeout:
            Seconds after which no new trial starts (running ones finish).
        storage:
            An optuna storage URL or a file path; default: whichever of ``autowarm.db``
            (SQLite) and ``autowarm.journal.log`` (optuna's journal file) already exists in
            the working directory, else the first for one worker and the second for several.
            A path ending in ``.db``/``.sqlite``/``.sqlite3`` is SQLite, one ending in
            ``.log``/``.journal``/``.jsonl`` a journal file.
        study_name:
            Default ``autowarm-<task identity>``.
        trial_steps:
            Optimizer steps of one trial; default the resumed study's, else a quarter of
            ``total_steps`` (at least ``min(total_steps, 100)``).
        suggestion:
            A :class:`~autowarm.Suggestion` to start from instead of running the probe.
        search_space:
            Default :class:`SearchSpace()`: peak LR within a factor 4, warmup up to four times
            the estimate (at least 10% of the run), zero included. A resumed study searches
            the space it was created with: pass ``None`` or that same space (another one is
            an error).
        pruner:
            ``"median"``, ``"hyperband"`` or ``"none"``; default the resumed study's, else
            ``"median"``.
        seed:
            Seeds the probe, every trial's model and data, and the sampler; default the
            resumed study's, else 0.
        n_workers:
            Worker processes on this host (each gets ``cpu_count // n_workers`` torch threads).
            With more than one, the task must pickle or come from
            :func:`autowarm.load_task`.
        progress:
            Log one line per finished trial and show a bar on a terminal.
        warmup_transfer:
            How a full-run warmup maps into a trial: ``"fraction"`` or ``"absolute"``;
            default the resumed study's, else ``"fraction"``.
        budget_steps:
            The probe's budget (see :func:`autowarm.suggest`).
        confirm:
            Once the search is done, train the ``confirm`` best trials again at full length
            and name the best of those (see :mod:`autowarm.study._confirm`); ``0`` runs no
            confirmation (a study confirmed by an earlier run keeps naming the best of its
            full-length runs). The default ``n_trials`` leaves room for them in the
            six-run budget; with a ``timeout``, the search stops early enough for them
            (estimated from the trials' durations).

    Returns:
        The :class:`TuneResult`; ``result.best`` is the full-run schedule to train with.

    Raises:
        TypeError: For an argument of the wrong kind (a ``task`` that is not a
            :class:`Task`, a ``suggestion`` that is not a :class:`~autowarm.Suggestion`).
        ValueError: For bad arguments, a study created with other settings, or an unusable
            storage.
        KeyboardInterrupt: After SIGINT or SIGTERM, once every finished trial is stored and the
            interrupted one is queued again.
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be an autowarm.Task, but got {type(task).__name__}")
    if n_trials is not None and (not is_int(n_trials) or n_trials < 1):
        raise ValueError(f"n_trials must be a positive int or None, but got n_trials={n_trials!r}")
    if timeout is not None and (not is_real(timeout) or not timeout > 0):
        raise ValueError(
            "timeout must be positive seconds (a number, e.g. 8 * 3600) or None, but got "
            f"timeout={timeout!r}"
        )
    _check_start(suggestion, search_space)
    if not is_int(confirm) or confirm < 0:
        raise ValueError(f"confirm must be an int >= 0, but got confirm={confirm!r}")
    if not is_int(n_workers) or n_workers < 1:
        raise ValueError(f"n_workers must be a positive int, but got n_workers={n_workers!r}")
    if warmup_transfer is not None and warmup_transfer not in TRANSFERS:
        raise ValueError(
            f"warmup_transfer must be one of {TRANSFERS}, but got "
            f"warmup_transfer={warmup_transfer!r}"
        )
    if pruner is not None:
        _make_pruner(pruner, 4)  # validates the name before anything runs
    total = task.total_steps
    # the probe's own checks, before a storage or a study exists (they left an empty study)
    from autowarm._suggest import _resolve_budget

    if budget_steps is not None:
        _resolve_budget(budget_steps, total)
    if seed is not None:
        check_seed(seed, "the probe, the trials and the sampler")
    # left out: the stored trial length on a resume (_set_up), else the default
    if trial_steps is not None and (not is_int(trial_steps) or not 2 <= trial_steps <= total):
        raise ValueError(
            f"trial_steps must be an int in [2, total_steps={total}], but got "
            f"trial_steps={trial_steps!r}"
        )
    # pickling the task may take a while (its data): after the cheap checks, before the probe
    worker_task = _worker_task(task) if n_workers > 1 else task
    # claimed now that the arguments are checked, so a refused call leaves no empty file
    url = _storage.normalize_url(storage or _storage.default_storage_url(n_workers, claim=True))
    if n_workers > 1 and url.startswith("sqlite"):
        _logger.warning(
            "several workers on one SQLite file contend for its lock; a journal file "
            "(--storage study.log) or PostgreSQL scales better"
        )
    name = study_name or _default_study_name(task)
    if study_name is None:
        name = _earlier_default_name(task, url) or name
    started = time.monotonic()
    verbosity = optuna.logging.get_verbosity()
    # autowarm logs one line per trial with its reason; optuna's own lines (a traceback per
    # failed trial) would repeat them
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with contextlib.ExitStack() as restore:
        restore.callback(optuna.logging.set_verbosity, verbosity)
        restore.enter_context(_sigterm_as_interrupt())
        study, center, space, n_trials, trial_steps, pruner, warmup_transfer, seed = _set_up(
            task,
            url,
            name,
            n_trials,
            trial_steps,
            suggestion,
            search_space,
            seed,
            progress,
            warmup_transfer,
            budget_steps,
            timeout is not None,
            confirm,
            pruner,
        )
        plan = _Plan(
            storage=url,
            study_name=name,
            n_trials=n_trials,
            deadline=None
            if timeout is None
            else time.time() + timeout - (time.monotonic() - started),
            trial_steps=trial_steps,
            seed=seed,
            pruner=pruner,
            transfer=warmup_transfer,
            space=space,
            center=center,
            progress=progress,
            heartbeat_interval=_storage.HEARTBEAT_INTERVAL,
            log_level=_logger.getEffectiveLevel(),
            confirm=confirm,
            total_steps=task.total_steps,
        )
        try:
            if n_workers == 1:
                with _StopFlag().installed() as flag:
                    _work(
                        task,
                        plan,
                        study,
                        worker=0,
                        distributed=not url.startswith("sqlite"),
                        flag=flag,
                    )
            else:
                _run_processes(worker_task, plan, n_workers)
            if confirm and (plan.deadline is None or time.time() < plan.deadline):
                with _StopFlag().installed() as flag:
                    # Other processes on this storage may still be finishing trials that
                    # belong among the candidates: confirming without them names another best.
                    wait_for_running_trials(study, plan.deadline, flag.is_set)
                    if plan.deadline is None or time.time() < plan.deadline:
                        run_confirmations(
                            task,
                            study,
                            confirm,
                            seed=seed,
                            storage_url=url,
                            should_stop=flag.is_set,
                        )
                        # confirmations another process claimed: their results decide the
                        # best this process reports, so it waits for them as for trials
                        conf = confirm_study(study)
                        if conf is not None:
                            wait_for_running_trials(
                                conf, plan.deadline, flag.is_set, confirmations=True
                            )
            if not confirm:
                _warn_better_unconfirmed(study)
        except KeyboardInterrupt:
            kept = len(
                study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            )
            _logger.warning(
                "stopped: %d finished trials are kept in %s (study %r); run the same command "
                "again to resume",
                kept,
                _storage.redact(url),
                name,
            )
            raise
    return TuneResult(study=study, storage=url)


def _warn_better_unconfirmed(study: optuna.Study) -> None:
    # With confirm=0, a study confirmed by an earlier run still names the best of its
    # full-length runs: a better trial found since is not it, and would go unseen.
    done = {n for n, v in confirmed(study).items() if math.isfinite(v)}
    best = candidates(study, 1)
    if done and best and best[0].number not in done:
        warnings.warn(
            f"trial {best[0].number} is the best at the compressed length, but the study's "
            "best schedule stays the best one an earlier run confirmed at full length (this "
            "run confirmed none): resume with --confirm 1 or more to confirm it",
            UserWarning,
            stacklevel=3,
        )


def wait_for_running_trials(
    study: optuna.Study,
    deadline: float | None,
    should_stop: Callable[[], bool],
    *,
    poll_seconds: float = 1.0,
    confirmations: bool = False,
) -> None:
    """Return once no trial of ``study`` is running, or at ``deadline`` (``time.time()``).

    ``confirmations``: ``study`` is a study's full-length confirmations, whose dead runs are
    failed but not queued again (the next ``tune`` claims them anew).

    A trial still running here belongs to another process on the same storage (another
    ``autowarm tune`` on this host or another); one whose worker died is failed and queued
    again on the way (on this host by its process id, elsewhere by optuna's heartbeat where
    the storage has one), so it does not hold the wait. Logs once a minute while waiting.

    Raises:
        KeyboardInterrupt: ``should_stop()`` turned true (Ctrl-C, SIGTERM).
    """
    logged = -math.inf
    what = "the full-length confirmations" if confirmations else "trials"
    after = "before reporting the best" if confirmations else "before the confirmations"
    while True:
        _storage.fail_dead_trials(study, requeue_them=not confirmations)
        with _storage.quiet_experimental():
            optuna.storages.fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running or (deadline is not None and time.time() >= deadline):
            return
        if should_stop():
            raise KeyboardInterrupt("stop requested")
        if time.monotonic() - logged >= 60.0:
            logged = time.monotonic()
            _logger.info(
                "waiting for %s %s, running in other processes, %s",
                what,
                [t.number for t in running],
                after,
            )
        time.sleep(poll_seconds)


def _check_start(suggestion: Any | None, search_space: Any | None) -> None:
    # Before anything runs (the probe can take minutes), so a wrong type fails at once.
    from autowarm._suggest import Suggestion

    if suggestion is not None and not isinstance(suggestion, Suggestion):
        raise TypeError(
            "suggestion must be an autowarm.Suggestion (from autowarm.suggest, or "
            f"Suggestion.load(path) for a saved one), but got {type(suggestion).__name__}"
        )
    if search_space is not None and not isinstance(search_space, SearchSpace):
        raise TypeError(
            "search_space must be an autowarm.SearchSpace (e.g. SearchSpace(lr_factor=2.0)), "
            f"but got {type(search_space).__name__}"
        )


def _set_up(
    task: Task,
    url: str,
    name: str,
    n_trials: int | None,
    trial_steps: int | None,
    suggestion: Any | None,
    search_space: SearchSpace | None,
    seed: int | None,
    progress: bool,
    transfer: WarmupTransfer | None,
    budget_steps: int | None,
    has_timeout: bool,
    confirm: int,
    pruner: str | None,
) -> tuple[optuna.Study, ScheduleConfig, SearchSpace, int | None, int, str, WarmupTransfer, int]:
    storage = _storage.open_storage(url)
    with _storage.setup_lock(url, name), _storage.quiet_experimental():
        study = optuna.create_study(
            storage=storage, study_name=name, direction="minimize", load_if_exists=True
        )
        check_minimises_one_value(study)  # an existing study of another kind: before any write
        # The format record is written last: without it the records are absent or the
        # set-up was cut short (Ctrl-C during it), and whatever was written is not read.
        complete = study.user_attrs.get(_attrs.FORMAT) is not None
        recorded = study.user_attrs if complete else {}
        # a resume that leaves --trial-steps, --pruner, --warmup-transfer or --seed out keeps
        # the study's, as it keeps its search space
        total = task.total_steps
        pruner_name: str = _kept(pruner, recorded, _attrs.PRUNER, _PRUNERS.__contains__, "median")
        transfer_rule: WarmupTransfer = _kept(
            transfer, recorded, _attrs.WARMUP_TRANSFER, TRANSFERS.__contains__, "fraction"
        )
        pruner, transfer = pruner_name, transfer_rule
        seed = int(_kept(seed, recorded, _attrs.SEED, is_int, 0))
        trial_steps = int(
            _kept(
                trial_steps,
                recorded,
                _attrs.TRIAL_STEPS,
                lambda v: is_int(v) and 2 <= v <= total,
                _default_trial_steps(total),
            )
        )
        built = task._seeded_model(seed)  # one build for the model's and its groups' records
        expected = {
            _attrs.TASK: task.identity,
            _attrs.TOTAL_STEPS: task.total_steps,
            _attrs.TRIAL_STEPS: trial_steps,
            _attrs.SEED: seed,
            _attrs.WARMUP_TRANSFER: transfer,
            _attrs.PRUNER: pruner,
            # trials of another batch regime or precision would be another run's
            _attrs.ACCUMULATION_STEPS: task.accumulation_steps,
            _attrs.PRECISION: task.precision,
            # nor would trials of another optimizer, clipping or metric
            _attrs.OPTIMIZER: task.optimizer_identity(),
            _attrs.PARAM_GROUPS: task.groups_identity_of(built),
            _attrs.GRAD_CLIP: task.grad_clip,
            _attrs.METRIC: _metric(task),
            # nor trials on a subset or superset of the data (its content is not compared)
            _attrs.DATA: task.data_sizes(seed),
        }
        _check_resumable(study, expected)
        model = structure_fingerprint(built)
        training = task_training(task, built)  # its groups resolved on the model
        del built
        if recorded.get(_attrs.MODEL, model) != model:
            raise ValueError(
                f"study {name!r} was created for another model (its parameters' names, shapes "
                f"or dtypes differ: fingerprint {study.user_attrs[_attrs.MODEL]} there, {model} "
                "here) under the same task name; pass another --study-name, or give the task "
                "a name of its own (Task(name=...))"
            )
        given_suggestion = suggestion is not None
        stored = recorded.get(_attrs.BASE_SCHEDULE)
        if suggestion is not None and isinstance(stored, Mapping):
            given = _centre_of(suggestion, task).to_dict()
            if given != dict(stored):
                changed = sorted(k for k in given if given.get(k) != stored.get(k))
                raise ValueError(
                    f"study {name!r} was created from another suggestion (its schedule differs "
                    f"in {', '.join(changed)}: {_pick(stored, changed)} stored, "
                    f"{_pick(given, changed)} given); leave out --suggestion to resume it with "
                    "its own, or pass another --study-name for a new study"
                )
        # Every check of a resume comes before anything is run or written.
        stored_space = recorded.get(_attrs.SEARCH_SPACE)
        space = search_space or SearchSpace()
        if isinstance(stored_space, Mapping):
            space = SearchSpace.from_dict(stored_space)
            if search_space is not None and not search_space.same_search(space):
                raise ValueError(
                    f"study {name!r} was created with the search space {space.to_dict()}, but "
                    f"this run has {search_space.to_dict()}; pass no search space (no "
                    "--lr-factor, --warmup-factor, --max-warmup-fraction, --decays or --floors) "
                    "or the same one to resume it, or pass another --study-name for a new study"
                )
        if suggestion is None and complete:
            suggestion = suggestion_from_study(study)
        if suggestion is None:
            suggestion = probe_task(task, seed=seed, budget_steps=budget_steps, progress=progress)
        elif budget_steps is not None:
            # a budget is the probe's alone: said, not dropped without a word
            _logger.warning(
                "budget_steps=%d (--budget-steps) is not used: no probe runs, as the study "
                "starts from %s (a probe of %d steps); pass another --study-name for a new "
                "study with a new probe",
                budget_steps,
                "the given suggestion" if given_suggestion else "its stored probe",
                suggestion.probe_steps,
            )
        suggestion_schedule = _centre_of(suggestion, task)
        if not complete:
            _warn_other_training(suggestion, training)
        if n_trials is None and not has_timeout:
            # A resume without either keeps the stored total, a new study takes what fits;
            # with a timeout alone, trials run until the time is up (else a study at its
            # total would run nothing).
            target = recorded.get(_attrs.N_TRIALS)
            if isinstance(target, int):
                n_trials = target
            elif complete and _attrs.N_TRIALS in recorded:
                # the last run searched until its timeout (stored total None): keep what it
                # reached, rather than a default total that has nothing to do with it
                n_trials = max(1, sum(_counts(study)))
                _logger.info(
                    "the last run of study %r searched until its timeout: this one keeps its "
                    "%d trials (pass --n-trials or --timeout to search more)",
                    name,
                    n_trials,
                )
            else:
                spare = FULL_RUN_BUDGET - _probe_cost(suggestion, task.total_steps) - confirm
                n_trials = max(5, int(spare * task.total_steps / trial_steps))
        if not complete:
            records: dict[str, Any] = {
                **expected,
                _attrs.MODEL: model,
                _attrs.VERSIONS: _versions(),
                _attrs.BASE_SCHEDULE: suggestion_schedule.to_dict(),
                _attrs.SUGGESTION: _suggestion_record(suggestion),
                _attrs.TRAINING: training,
                _attrs.SEARCH_SPACE: space.to_dict(),
                _attrs.TASK_FILE: _task_file(task),
                _attrs.TASK_CODE: _task_code(task),
                # last: their presence says every record above was written
                _attrs.FORMAT_VERSION: _attrs.STUDY_FORMAT_VERSION,
                _attrs.FORMAT: _attrs.STUDY_FORMAT,
            }
            for key, value in records.items():
                study.set_user_attr(key, value)
        else:
            _warn_task_file_changes(study, task)
            if _attrs.TRAINING not in study.user_attrs:  # a study from before the record
                study.set_user_attr(_attrs.TRAINING, training)
        study.set_user_attr(_attrs.N_TRIALS, n_trials)
        study.set_user_attr(_attrs.CONFIRM, confirm)  # the report counts them against it
        center = ScheduleConfig.from_dict(study.user_attrs[_attrs.BASE_SCHEDULE])
        _enqueue_first_trials(study, task, center, space, n_trials)
    ended = collections.Counter(
        t.state.name.lower() for t in study.get_trials(deepcopy=False) if t.state.is_finished()
    )
    so_far = ", ".join(f"{n} {state}" for state, n in sorted(ended.items())) or "none ended"
    _logger.info(
        # new or resumed, said first: a mistyped storage path starts a new study, not an error
        "%s study %r in %s: %s trials of %d steps (%s warmup transfer); search %s",
        f"resuming ({so_far}) the" if complete else "a new",
        name,
        _storage.redact(url),
        "unlimited" if n_trials is None else n_trials,
        trial_steps,
        transfer,
        space.describe(center),
    )
    return study, center, space, n_trials, trial_steps, pruner_name, transfer_rule, seed


def _kept(given: Any, recorded: Mapping[str, Any], key: str, valid: Any, default: Any) -> Any:
    # An option left out (None): the resumed study's record of it where that is valid, else
    # the default; one given is used as given (_check_resumable compares it with the record).
    if given is not None:
        return given
    stored = recorded.get(key)
    return stored if valid(stored) else default


def task_training(task: Task, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """The settings ``task``'s trials train under, as :attr:`Suggestion.training` records a
    probe's (stored in the study: ``autowarm export --format trainer`` carries them); its
    parameter groups, when it has any, as resolved on ``model`` (one built by the task)."""
    from autowarm._suggest import training_record

    groups = None
    if task.param_groups is not None and model is not None:
        groups = task._resolved_groups(model)
    return training_record(
        task.optimizer_cls,
        dict(task.optimizer_kwargs or {}),
        task.grad_clip,
        task.accumulation_steps,
        task.precision,
        groups,
    )


def study_training(study: optuna.Study) -> dict[str, Any] | None:
    """The settings the study's trials trained under (:func:`task_training`), or, for a study
    from before that record, its probe's; ``None`` when it holds neither."""
    recorded = study.user_attrs.get(_attrs.TRAINING)
    if isinstance(recorded, dict):
        return recorded
    stored = suggestion_from_study(study)
    return None if stored is None else dict(stored.training)


def _warn_other_training(suggestion: Any, training: Mapping[str, Any]) -> None:
    # A suggestion probed under other optimizer settings (another task's, say) is a poor
    # centre: the warmup follows Adam's beta2, and the peak the optimizer and clipping.
    probed = dict(getattr(suggestion, "training", {}) or {})
    if not probed:
        return
    differ = [
        k for k in training if k in probed and _plain_json(probed[k]) != _plain_json(training[k])
    ]
    if differ:
        shown = "; ".join(f"{k}: probed {probed[k]!r}, task {training[k]!r}" for k in differ)
        warnings.warn(
            f"the suggestion was probed under other settings than the task trains with "
            f"({shown}): its warmup and peak LR centre the search for another run; leave out "
            "the suggestion to probe the task itself",
            UserWarning,
            stacklevel=4,
        )


def _plain_json(value: Any) -> Any:
    # tuples and lists alike, as a record read back from JSON has them
    return json.loads(json.dumps(value, default=str))


def _centre_of(suggestion: Any, task: Task) -> ScheduleConfig:
    """The suggestion's schedule for the task's run length: the centre of the search."""
    schedule: ScheduleConfig = suggestion.schedule
    if schedule.total_steps == task.total_steps:
        return schedule
    resized = schedule.replace(total_steps=task.total_steps, warmup_steps=0)
    return resized.replace(warmup_steps=min(schedule.warmup_steps, longest_warmup(resized)))


def _pick(mapping: Mapping[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={mapping.get(k)!r}" for k in keys)


def probe_task(
    task: Task,
    *,
    seed: int = 0,
    budget_steps: int | None = None,
    progress: bool = True,
    decay: str = "cosine",
) -> Any:
    """:func:`autowarm.suggest` on a fresh model of ``task`` (built from ``seed``)."""
    from autowarm._suggest import suggest

    _logger.info("running the probe on a fresh model (seed %d)", seed)
    return suggest(
        task.build_model(seed),
        task.data(seed),
        task.optimizer_cls,  # type: ignore[arg-type]
        optimizer_kwargs=task.optimizer_kwargs,
        loss_fn=task.loss_fn,
        criterion=task.criterion,
        total_steps=task.total_steps,
        budget_steps=budget_steps,
        decay=decay,
        seed=seed,
        progress=progress,
        param_groups=task.param_groups,
        accumulation_steps=task.accumulation_steps,
        precision=task.precision,
        grad_clip=task.grad_clip,
    )


# ---------------------------------------------------------------------------------------------
# workers


def _counts(study: optuna.Study) -> tuple[int, int]:
    """(trials that count toward ``n_trials`` but are not waiting, waiting trials)."""
    trials = study.get_trials(deepcopy=False, states=_COUNTED)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    return len(trials) - waiting, waiting


def _reserve(study: optuna.Study, plan: _Plan) -> float:
    """Seconds to keep free before the deadline for the full-length confirmations: ``confirm``
    full runs, each estimated from the median completed trial's duration."""
    if not plan.confirm:
        return 0.0
    durations = sorted(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.datetime_complete is not None and t.datetime_start is not None
    )
    if not durations:
        return 0.0
    median = durations[len(durations) // 2]
    return plan.confirm * median * plan.total_steps / plan.trial_steps


def _work(
    task: Task,
    plan: _Plan,
    study: optuna.Study,
    *,
    worker: int,
    distributed: bool,
    flag: _StopFlag | None = None,
) -> None:
    """One worker's loop; see the module docstring."""
    trials = study.get_trials(deepcopy=False)
    others = any(t.state == TrialState.RUNNING for t in trials)
    study.sampler = _make_sampler(
        plan.seed, worker, distributed, start=len(trials), salt=os.getpid() if others else 0
    )
    study.pruner = _make_pruner(plan.pruner, plan.trial_steps)
    flag = flag or _StopFlag()
    objective = _Objective(task, plan, flag)
    bar = _progress_bar(plan, study) if worker == 0 else None
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [_TrialLogger(plan, bar)]
    errors = 0
    try:
        while True:
            flag.check()
            _storage.fail_dead_trials(study)
            active, waiting = _counts(study)
            if plan.n_trials is not None and active >= plan.n_trials and not waiting:
                break
            kept = _reserve(study, plan) if plan.deadline is not None else 0.0
            if plan.deadline is not None and time.time() + kept >= plan.deadline:
                _logger.info(
                    "time is up: no new trial starts%s",
                    f" (the last {kept:.0f} s of the timeout are kept for {plan.confirm} "
                    "full-length confirmation runs, each estimated from the trials' median "
                    "duration)"
                    if kept
                    else "",
                )
                break
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
            except (AssertionError, ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
                if not _told_too_late(exc):
                    raise
                _logger.warning(
                    "trial %s was finished by another worker while this one ran it (its "
                    "heartbeat went stale: a suspended or overloaded machine? or both took it "
                    "from the queue at once); this run of it is dropped",
                    objective.last_trial,
                )
                objective.take_error()  # this run's, if any: not the next trial's
                continue
            error = objective.take_error()
            if error is None:
                errors = 0
                continue
            errors += 1
            if errors >= MAX_CONSECUTIVE_ERRORS:
                raise RuntimeError(
                    f"{errors} trials in a row failed with an error from the task's code; the "
                    f"last: {error}. Fix the task and run the same command to "
                    "resume (finished trials are kept)"
                )
    finally:
        if bar is not None:
            bar.close()


def _told_too_late(exc: BaseException) -> bool:
    # optuna refuses to tell a trial that another process already finished ("Cannot tell a
    # FAIL trial"), and its optimize loop then fails an assertion; or its storage refuses the
    # update (two processes on one SQLite file can both claim a queued trial: its check and
    # its claim are not one transaction there)
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ValueError) and str(seen).startswith("Cannot tell a "):
            return True
        if isinstance(seen, optuna.exceptions.UpdateFinishedTrialError):
            return True
        seen = seen.__context__
    return False


class _Objective:
    """The trial function: sample, compress, train, report, prune."""

    def __init__(self, task: Task, plan: _Plan, flag: _StopFlag) -> None:
        self.task = task
        self.plan = plan
        self.flag = flag
        self.worker = _storage.worker_id()
        self.last_error: str | None = None
        self.last_trial: int | None = None

    def take_error(self) -> str | None:
        """The error of the task's code in the last trial, if any (and forget it)."""
        error, self.last_error = self.last_error, None
        return error

    def __call__(self, trial: optuna.Trial) -> float:
        plan = self.plan
        self.last_trial = trial.number
        trial.set_user_attr(_attrs.WORKER, self.worker)
        if _attrs.ROLE not in trial.user_attrs:
            trial.set_user_attr(_attrs.ROLE, _attrs.ROLE_SEARCH)
        if plan.n_trials is not None:
            earlier = [
                t
                for t in trial.study.get_trials(deepcopy=False)
                if t.number < trial.number and t.state != TrialState.FAIL
            ]
            if len(earlier) >= plan.n_trials:
                trial.set_user_attr(
                    _attrs.REASON, f"surplus: the study already held {plan.n_trials} trials"
                )
                raise _Surplus(f"the study already holds {plan.n_trials} trials")
        try:
            schedule = plan.space.sample(trial, plan.center)
            short = compress(schedule, plan.trial_steps, plan.transfer)
        except Exception as exc:  # a schedule that cannot be built: say why in the study
            self.last_error = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(_attrs.REASON, self.last_error)
            raise
        trial.set_user_attr(_attrs.SCHEDULE, schedule.to_dict())
        trial.set_user_attr(_attrs.TRIAL_SCHEDULE, short.to_dict())
        trial.set_user_attr(_attrs.PEAK_LR, schedule.peak_lr)
        trial.set_user_attr(_attrs.WARMUP_STEPS, schedule.warmup_steps)

        # The probe's and the reference schedules are what the report compares the result
        # with: they run to the end. Nor is a trial pruned at its last report, which saves no
        # step and would throw its finished value away, nor in its own warmup, where a long
        # one trains slowly by design (the search would be biased against the warmups it
        # tunes: with --max-warmup-fraction above 0.5, or an absolute transfer).
        prunable = trial.user_attrs.get(_attrs.ROLE) == _attrs.ROLE_SEARCH

        def on_eval(step: int, smoothed: float) -> None:
            trial.report(smoothed, step)
            judged = short.warmup_steps < step < plan.trial_steps
            if prunable and judged and trial.should_prune():
                reason = (
                    f"pruned at step {step}/{plan.trial_steps}: smoothed validation loss "
                    f"{smoothed:.4g} is worse than the median of earlier trials there"
                )
                trial.set_user_attr(_attrs.REASON, reason)
                raise optuna.TrialPruned(reason)

        try:
            with _storage.keep_alive(trial.study, trial._trial_id, heartbeat=False):
                outcome = train_trial(
                    self.task, short, plan.seed, on_eval=on_eval, should_stop=self.flag.is_set
                )
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(_attrs.REASON, "interrupted (SIGINT/SIGTERM); queued again")
            _storage.requeue(trial.study, trial.study._storage.get_trial(trial._trial_id))
            raise
        except torch.cuda.OutOfMemoryError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
            self.last_error = f"out of memory: {first}"
            if _attrs.RETRY_OF not in trial.user_attrs:  # may be transient: once more, later
                self.last_error += "; queued again once"
                _storage.requeue(trial.study, trial.study._storage.get_trial(trial._trial_id))
            trial.set_user_attr(_attrs.REASON, self.last_error)
            if torch.cuda.is_available():
                # the traceback's frames hold the trial's model, optimizer and batch: let them
                # go first, or the cache has nothing to give back
                traceback.clear_frames(exc.__traceback__)
                torch.cuda.empty_cache()
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(_attrs.REASON, self.last_error)
            raise
        if outcome.diverged_at is not None:
            reason = (
                f"diverged: validation loss not finite after step {outcome.steps} (the training "
                "loss was finite: if every trial ends so, check the task's eval_fn or val_data)"
                if outcome.in_validation
                else f"diverged: loss or gradient not finite at step {outcome.diverged_at}"
            )
            trial.set_user_attr(_attrs.REASON, reason)
            raise optuna.TrialPruned(reason)
        return outcome.value


class _TrialLogger:
    """One log line per finished trial, and the bar's tick."""

    def __init__(self, plan: _Plan, bar: Any) -> None:
        self.plan = plan
        self.bar = bar

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.bar is not None:
            self.bar.update(1)
        if not self.plan.progress:
            return
        role = trial.user_attrs.get(_attrs.ROLE, "?")
        peak = trial.user_attrs.get(_attrs.PEAK_LR)
        warmup = trial.user_attrs.get(_attrs.WARMUP_STEPS)
        what = (
            f"value {trial.value:.5g}"
            if trial.state == TrialState.COMPLETE and trial.value is not None
            else f"{trial.state.name.lower()} ({trial.user_attrs.get(_attrs.REASON, '')})"
        )
        try:
            best = study.best_trial
            best_text = f"best {best.value:.5g} (trial {best.number})"
        except ValueError:
            best_text = "no best yet"
        params = (
            f"peak_lr {peak:.3g}, warmup {warmup}"
            if peak is not None and warmup is not None
            else "-"
        )
        _logger.info("trial %d [%s]: %s; %s | %s", trial.number, role, what, params, best_text)


def _progress_bar(plan: _Plan, study: optuna.Study) -> Any:
    if not plan.progress or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    return tqdm(total=plan.n_trials, initial=done, desc="autowarm tune", unit="trial")


def _worker_task(task: Task) -> Task | str:
    # What worker processes get: the spec to load the task from, or the task itself pickled.
    # Checked before anything runs (the probe can take minutes; a study would be written).
    changed = changed_since_loaded(task)
    if task.source and not changed:
        return task.source
    if task.source and spec_file(task.source) is not None:
        # a task file's functions reach a worker only by its loading the file again, which
        # would drop the change (a module spec's pickle, below, imports its module instead)
        raise ValueError(
            f"with n_workers > 1 each worker loads the task again from {task.source}, but "
            f"this one was changed since it was loaded from there ({', '.join(changed)}; "
            "dataclasses.replace?): make the change in the task file, or run with n_workers=1"
        )
    import pickle

    try:
        pickle.dumps(task)
    except Exception as exc:
        raise ValueError(
            "with n_workers > 1 the task must pickle (module-level functions, no lambdas) "
            "or be loaded with autowarm.load_task('file.py:task') / `autowarm tune "
            "file.py:task`; "
            f"pickling failed: {exc}"
        ) from None
    return task


def _run_processes(ref: Task | str, plan: _Plan, n_workers: int) -> None:
    """Run ``n_workers`` spawned worker processes (``ref`` from :func:`_worker_task`) and wait
    for them."""
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(ref, plan, i, threads, os.getpid()),
            name=f"autowarm-worker-{i}",
        )
        for i in range(n_workers)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=60)
        raise
    ended = [p for p in procs if p.exitcode not in (0, None)]
    # A worker stopped by a signal sent to it alone (the parent ignoring SIGINT, as under
    # nohup or a background job) exits 130 after re-queueing its trial: a stop, not an error.
    stopped = (130, -signal.SIGINT, -signal.SIGTERM)
    if ended and all(p.exitcode in stopped for p in ended):
        raise KeyboardInterrupt(f"worker processes {[p.name for p in ended]} were stopped")
    if ended:
        raise RuntimeError(
            f"worker processes {', '.join(_how_ended(p) for p in ended)}; finished trials "
            "are kept, run the same command to resume"
        )


def _how_ended(process: Any) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{process.name} (killed by {name})"
    return f"{process.name} (exit status {code}: see its log lines above)"


def _stop_when_orphaned(flag: _StopFlag, parent: int, interval: float = 1.0) -> None:
    """Stop this worker, as SIGTERM would, once the process that started it is gone.

    A worker outlives a ``tune`` process killed by SIGKILL (the OOM killer, a scheduler's
    preemption, ``kill -9``): no signal reaches it, and it would go on running trials beside
    the workers of the command run again to resume. It is then a child of another process,
    which is how it notices (``parent``: the pid the tune process passed, so a parent that died
    while this worker was still starting counts too); its running trial is queued again as on a
    stop.
    """

    def watch() -> None:
        while flag.received is None:
            if os.getppid() != parent:
                _logger.warning(
                    "the autowarm tune process that started this worker is gone: stopping at "
                    "the next step (its trial is queued again)"
                )
                flag.received = signal.SIGTERM
                return
            time.sleep(interval)

    threading.Thread(target=watch, name="autowarm-parent-watch", daemon=True).start()


def _worker_main(ref: Task | str, plan: _Plan, index: int, threads: int, parent: int) -> None:
    logging.basicConfig(level=plan.log_level, format=f"%(asctime)s worker {index} %(message)s")
    logging.getLogger("autowarm").setLevel(plan.log_level)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    torch.set_num_threads(threads)
    # Ctrl-C reaches every process of the group and the parent forwards SIGTERM as well: both
    # only ask this worker to stop at its next step.
    with _StopFlag(hard_on_second=False).installed() as flag:
        _stop_when_orphaned(flag, parent)  # before the task loads, which can take a while
        task = load_task(ref) if isinstance(ref, str) else ref
        if flag.is_set():
            sys.exit(130)
        try:
            storage = _storage.open_storage(
                plan.storage, heartbeat_interval=plan.heartbeat_interval
            )
            study = optuna.load_study(study_name=plan.study_name, storage=storage)
            _work(task, plan, study, worker=index, distributed=True, flag=flag)
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as exc:
            # One line, as the CLI prints errors; the traceback with `autowarm --debug` (which
            # sets AUTOWARM_DEBUG for the workers) or at DEBUG log level.
            debug = os.environ.get("AUTOWARM_DEBUG") == "1" or plan.log_level <= logging.DEBUG
            _logger.error("error: %s", error_line(exc), exc_info=debug)
            sys.exit(1)
