"""Reading an optuna study written by ``autowarm tune`` (see :mod:`autowarm.study._attrs`).

Opening it by storage URL and name, its status (complete, still running, or stopped short), the
trials table, and the probe's suggestion stored in it.
"""

from __future__ import annotations

import datetime as dt
import importlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from autowarm.reporting._tables import whole_ints
from autowarm.study import _attrs as A

TRIAL_COLUMNS = (
    "number",
    "state",
    "role",
    "value",
    "peak_lr",
    "warmup_steps",
    "warmup_frac",
    "duration_seconds",
    "datetime_start",
    "datetime_complete",
    "last_step",
    "last_intermediate_value",
    "reason",
    "worker",
)
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def open_study(storage: str, study_name: str) -> optuna.Study:
    """Load ``study_name`` from ``storage`` (a URL or a journal file), without creating it.

    Raises:
        FileNotFoundError: an SQLite or journal file that does not exist.
        ValueError: no study of that name; the message lists the studies the storage has.
    """
    backend = _storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=backend)
    except KeyError:
        names = sorted(s.study_name for s in backend.get_all_studies())
        have = ", ".join(names) if names else "no studies at all"
        raise ValueError(f"no study named {study_name!r} in {storage}; it has: {have}") from None


def _storage(storage: str) -> optuna.storages.BaseStorage:
    try:  # the project's opener (bare paths, journal files, drivers), once it is installed
        mod: Any = importlib.import_module("autowarm.study._storage")
        url = str(mod.normalize_url(storage))
    except (ImportError, AttributeError):
        mod, url = None, storage
    # Opening a file storage creates the file: a typo must not leave an empty database behind.
    for prefix in ("sqlite:///", "journal:///"):
        if url.startswith(prefix) and not Path(url[len(prefix) - 1 :]).exists():
            raise FileNotFoundError(f"no such storage file: {url[len(prefix) - 1 :]}")
    if mod is not None:
        backend: optuna.storages.BaseStorage = mod.open_storage(url, heartbeat_interval=None)
        return backend
    if url.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal://")))
    return optuna.storages.RDBStorage(url)


def is_autowarm_study(study: optuna.Study) -> bool:
    """True when the study carries autowarm's format attribute."""
    return bool(study.user_attrs.get(A.FORMAT) == A.STUDY_FORMAT)


def study_status(study: optuna.Study, now: dt.datetime | None = None) -> tuple[str, str]:
    """``(status, sentence)``: ``complete``, ``running`` or ``incomplete``, said in words.

    A trial whose process died stays ``RUNNING`` in the storage, so ``running`` means "still
    running, or interrupted"; the sentence gives the age of the oldest running trial.
    """
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    finished = sum(s in FINISHED for s in states)
    running = [t for t in trials if t.state.name == "RUNNING"]
    waiting = states.count("WAITING")
    target = study.user_attrs.get(A.N_TRIALS)
    of = f" of {target}" if isinstance(target, int) else ""
    if running:
        now = now or dt.datetime.now()
        starts = [t.datetime_start for t in running if t.datetime_start is not None]
        age = f", the oldest started {_ago(now - min(starts))} ago" if starts else ""
        return "running", (
            f"Still running, or interrupted: {len(running)} trial(s) marked RUNNING{age} (a "
            f"trial whose worker died stays RUNNING); {finished}{of} trials finished. This "
            "report is a snapshot."
        )
    if waiting or (isinstance(target, int) and finished < target):
        return "incomplete", (
            f"Stopped short: {finished}{of} trials finished"
            + (f", {waiting} queued but never started" if waiting else "")
            + ". Resume the study to finish it; this report covers what ran."
        )
    return "complete", f"Complete: {finished} trials finished."


def _ago(delta: dt.timedelta) -> str:
    s = max(delta.total_seconds(), 0.0)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: the columns of :data:`TRIAL_COLUMNS`, then ``param_<name>``."""
    total = study.user_attrs.get(A.TOTAL_STEPS)
    rows = [_trial_row(t, total) for t in study.get_trials(deepcopy=False)]
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    frame = pd.DataFrame(rows, columns=[*TRIAL_COLUMNS, *params])
    for col in ("value", "peak_lr", "warmup_frac", "duration_seconds", "last_intermediate_value"):
        frame[col] = frame[col].astype(float)
    frame["number"] = frame["number"].astype(int)
    frame["last_step"] = frame["last_step"].astype(int)
    whole_ints(frame, "warmup_steps")
    for col in ("state", "role", "datetime_start", "datetime_complete", "reason", "worker"):
        frame[col] = frame[col].astype(str)
    return frame


def _trial_row(t: optuna.trial.FrozenTrial, total: object) -> dict[str, Any]:
    ua = t.user_attrs
    peak = _num(ua.get(A.PEAK_LR, t.params.get("peak_lr")))
    warmup = _num(ua.get(A.WARMUP_STEPS, t.params.get("warmup_steps")))
    steps = sorted(t.intermediate_values)
    last = steps[-1] if steps else -1
    reason = str(ua.get(A.REASON, "") or t.system_attrs.get("fail_reason", "") or "")
    if not reason and t.state.name == "PRUNED":
        reason = f"pruned after step {last}" if steps else "pruned"
    duration = t.duration.total_seconds() if t.duration is not None else math.nan
    row: dict[str, Any] = {
        "number": t.number,
        "state": t.state.name,
        "role": str(ua.get(A.ROLE, "")),
        "value": math.nan if t.value is None else float(t.value),
        "peak_lr": peak,
        "warmup_steps": warmup,
        "warmup_frac": warmup / total if isinstance(total, int) and total > 0 else math.nan,
        "duration_seconds": duration,
        "datetime_start": _iso(t.datetime_start),
        "datetime_complete": _iso(t.datetime_complete),
        "last_step": last,
        "last_intermediate_value": t.intermediate_values[last] if steps else math.nan,
        "reason": reason,
        "worker": str(ua.get(A.WORKER, "")),
    }
    for k, v in t.params.items():
        row[f"param_{k}"] = v
    return row


def _num(v: object) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return math.nan


def _iso(d: dt.datetime | None) -> str:
    return "" if d is None else d.isoformat(timespec="seconds")


def best_row(trials: pd.DataFrame) -> pd.Series | None:
    """The completed trial with the lowest finite value, or ``None``."""
    done = trials[(trials["state"] == "COMPLETE") & np.isfinite(trials["value"])]
    if done.empty:
        return None
    best: pd.Series = done.loc[done["value"].idxmin()]
    return best


def near_best_range(trials: pd.DataFrame, tolerance: float) -> dict[str, float]:
    """Warmup and peak LR spanned by completed trials within ``tolerance`` of the best value."""
    best = best_row(trials)
    out = dict.fromkeys(("warmup_steps_low", "warmup_steps_high", "peak_lr_low", "peak_lr_high"))
    if best is None or float(best["value"]) <= 0:
        return {k: math.nan for k in out}
    done = trials[(trials["state"] == "COMPLETE") & np.isfinite(trials["value"])]
    near = done[done["value"] <= float(best["value"]) * (1 + tolerance)]
    return {
        "warmup_steps_low": float(near["warmup_steps"].min()),
        "warmup_steps_high": float(near["warmup_steps"].max()),
        "peak_lr_low": float(near["peak_lr"].min()),
        "peak_lr_high": float(near["peak_lr"].max()),
    }


def stored_suggestion(study: optuna.Study) -> Any:
    """The probe's :class:`~autowarm.Suggestion` kept in the study, or ``None``."""
    from autowarm._suggest import Suggestion

    data = study.user_attrs.get(A.SUGGESTION)
    if not isinstance(data, Mapping):
        return None
    trace = data.get("trace")
    signals = data.get("signals")
    return Suggestion.from_dict(
        data,
        trace=pd.DataFrame(list(trace)) if isinstance(trace, Sequence) else None,
        signals=pd.DataFrame(list(signals)) if isinstance(signals, Sequence) else None,
    )
