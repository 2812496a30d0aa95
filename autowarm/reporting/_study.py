"""Reading an optuna study written by ``autowarm tune`` (see :mod:`autowarm.study._attrs`).

Opening it by storage URL and name, its status (complete, still running, or stopped short), the
trials table, and the probe's suggestion stored in it.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import optuna
import pandas as pd

from autowarm.study import _attrs as A

EXTRA_COLUMNS = (
    "warmup_frac",
    "datetime_start",
    "datetime_complete",
    "last_step",
    "last_intermediate_value",
)
"""The report's columns after those of :func:`autowarm.study._tune.trials_frame`."""


def open_study(storage: str, study_name: str | None) -> optuna.Study:
    """Load ``study_name`` from ``storage`` (a URL or a file), without creating anything.

    Raises:
        ValueError: a storage file that does not exist, or no such study (the message lists
            the studies the storage has).
    """
    from autowarm.study._storage import load_study

    return load_study(storage, study_name)


def is_autowarm_study(study: optuna.Study) -> bool:
    """True when the study carries autowarm's format attribute."""
    return bool(study.user_attrs.get(A.FORMAT) == A.STUDY_FORMAT)


def study_status(study: optuna.Study, now: dt.datetime | None = None) -> tuple[str, str]:
    """``(status, sentence)``: ``complete``, ``running``, ``incomplete`` or ``no_result``
    (every trial finished, none with a value: all diverged, pruned or failed), in words.

    A trial whose process died stays ``RUNNING`` in the storage, so ``running`` means "still
    running, or interrupted"; the sentence gives the age of the oldest running trial. Trials
    count toward the study's ``n_trials`` as ``autowarm tune`` counts them: completed and
    pruned ones, not failed ones (tune runs another in their place).

    Once the search is complete, its full-length confirmations (the ``<name>.confirm`` study,
    see :func:`confirmation_progress`) must be finished too for ``complete``: one marked
    ``RUNNING`` makes the study ``running``, one failed or never started ``incomplete``.
    """
    now = now or dt.datetime.now()
    status, sentence, done = _search_status(study, now)
    progress = confirmation_progress(study) if status == "complete" else None
    if progress is None:
        return status, sentence
    expected, finished, running, exact = progress
    missing = [n for n in expected if n not in finished]
    missing += sorted(n for n in running if n not in expected)
    if not missing:
        return status, sentence
    of = "of" if exact else "of at least"
    counts = f"{len(finished)} {of} {len(expected)} full-length confirmation runs finished"
    n_ok = sum(math.isfinite(v) for v in finished.values())
    shown = (
        f"the best of the {n_ok} confirmed so far, which {_numbered(missing)} may still beat "
        "at full length"
        if n_ok
        else "the compressed trials' best, not one confirmed at full length"
    )
    if running:
        starts = [d for d in running.values() if d is not None]
        oldest = "started" if len(running) == 1 else "the oldest started"
        age = f", {oldest} {_ago(now - min(starts))} ago" if starts else ""
        return "running", (
            f"Still running, or interrupted: the full-length confirmation of "
            f"{_numbered(sorted(running))} is marked RUNNING{age} (a run whose worker died "
            f"stays RUNNING); {done}, and {counts}. The best schedule "
            f"shown is {shown}, until they finish (resume `autowarm tune` if they were "
            "interrupted). This report is a snapshot."
        )
    return "incomplete", (
        f"Confirmations stopped: {done}, but {counts} "
        f"({_numbered(missing)} not confirmed). The best schedule shown is {shown}, until "
        "`autowarm tune` is resumed to finish them."
    )


def confirmation_progress(
    study: optuna.Study,
) -> tuple[list[int], dict[int, float], dict[int, dt.datetime | None], bool] | None:
    """How far the study's full-length confirmations got (:mod:`autowarm.study._confirm`):
    ``(expected, finished, running, exact)``, or ``None`` when none was started or the last
    ``tune`` run planned none (``confirm=0``).

    ``expected``: the study trials to be confirmed, best first:
    :func:`~autowarm.study._confirm.candidates` for the ``k`` of ``tune(confirm=k)``, stored
    in the study (``autowarm.confirm``; ``exact`` is then ``True``). Studies written before
    autowarm stored it: confirmations run best first and stop at an interrupted one, so as
    many trials as the confirmations reached (at least one: the ``.confirm`` study is made
    only for ``k >= 1``), a lower bound of ``k`` (``exact`` ``False``). A better trial
    completed after they ran is among them.

    ``finished``: ``{trial number: full-length value}`` of those whose confirmation completed
    (:func:`~autowarm.study._confirm.confirmed`; infinite: diverged). ``running``: ``{trial
    number: start}`` of confirmations still marked ``RUNNING`` and not finished.
    """
    from autowarm.study._confirm import (
        candidates,
        confirm_study,
        confirmed,
        planned_confirmations,
        trial_confirmed_by,
    )

    conf = confirm_study(study)
    if conf is None:
        return None
    trials = study.get_trials(deepcopy=False)
    runs = [
        (t, n)
        for t in conf.get_trials(deepcopy=False)
        if (n := trial_confirmed_by(t, trials)) is not None
    ]
    planned = planned_confirmations(study)
    if planned == 0:
        return None  # the last run trusted the compressed trials alone
    exact = planned is not None
    k = planned if planned is not None else max(len({n for _, n in runs}), 1)
    expected = [t.number for t in candidates(study, k)]
    done = confirmed(study)
    finished = {n: done[n] for n in expected if n in done}
    running = {n: t.datetime_start for t, n in runs if t.state.name == "RUNNING" and n not in done}
    return expected, finished, running, exact


def _numbered(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"trial {numbers[0]}"
    return f"trials {', '.join(map(str, numbers))}"


def _search_status(study: optuna.Study, now: dt.datetime) -> tuple[str, str, str]:
    """``study_status`` of the search trials alone, and how many finished in words."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    finished = sum(s in ("COMPLETE", "PRUNED") for s in states)
    n_failed = states.count("FAIL")
    running = [t for t in trials if t.state.name == "RUNNING"]
    waiting = states.count("WAITING")
    target = study.user_attrs.get(A.N_TRIALS)
    of = f" of {target}" if isinstance(target, int) else ""
    asked = ""
    if isinstance(target, int) and finished > target:
        # resumed with a smaller n_trials than it already held
        of, asked = "", f" (the last run asked for {target})"
    done = f"{finished}{of} trials finished{asked}" + (
        f" ({n_failed} more failed, which do not count)" if n_failed else ""
    )
    if running:
        starts = [t.datetime_start for t in running if t.datetime_start is not None]
        age = f", the oldest started {_ago(now - min(starts))} ago" if starts else ""
        return (
            "running",
            (
                f"Still running, or interrupted: {len(running)} trial(s) marked RUNNING{age} (a "
                f"trial whose worker died stays RUNNING); {done}. This report is a snapshot."
            ),
            done,
        )
    if waiting or (isinstance(target, int) and finished < target):
        return (
            "incomplete",
            (
                f"Stopped short: {done}"
                + (f", {waiting} queued but never started" if waiting else "")
                + ". Resume the study to finish it; this report covers what ran."
            ),
            done,
        )
    with_value = sum(
        t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value)
        for t in trials
    )
    if not trials:
        return (
            "no_result",
            "No result: the study holds no trial (its setup, or the probe before it, stopped "
            "before the first trial ran). Run tune again to start it.",
            done,
        )
    if not with_value:
        n_pruned = states.count("PRUNED")
        why = (
            f"{n_pruned} pruned: diverged or cut off by the pruner"
            if finished
            else "every trial failed"
        )
        return (
            "no_result",
            (
                f"No result: {done}, none with a value ({why}). The schedule shown is the "
                "probe's, which no trial confirmed; the trials table says why each ended."
            ),
            done,
        )
    return "complete", f"Complete: {done}.", done


def _ago(delta: dt.timedelta) -> str:
    s = max(delta.total_seconds(), 0.0)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: the columns of ``autowarm.study._tune.TRIAL_COLUMNS`` (states in
    lower case, -1 for an unknown int), then :data:`EXTRA_COLUMNS`, then ``param_<name>``."""
    from autowarm.study._tune import trials_frame

    base = trials_frame(study)
    trials = study.get_trials(deepcopy=False)
    total = study.user_attrs.get(A.TOTAL_STEPS)
    # a study not written by tune: read peak_lr and warmup_steps from its params
    base["peak_lr"] = [
        p if math.isfinite(p) else _num(t.params.get("peak_lr"))
        for p, t in zip(base["peak_lr"].tolist(), trials, strict=True)
    ]
    base["warmup_steps"] = [
        w
        if w >= 0 or not _num(t.params.get("warmup_steps")) >= 0
        else int(t.params["warmup_steps"])
        for w, t in zip(base["warmup_steps"].tolist(), trials, strict=True)
    ]
    base["reason"] = [
        r or _fallback_reason(t) for r, t in zip(base["reason"].tolist(), trials, strict=True)
    ]
    rows = [_extra_row(t) for t in trials]
    params = sorted({k for r in rows for k in r if k.startswith("param_")})
    extra = pd.DataFrame(rows, columns=[*EXTRA_COLUMNS, *params], index=base.index)
    warmup = base["warmup_steps"].astype(float)
    if isinstance(total, int) and not isinstance(total, bool) and total > 0:
        extra["warmup_frac"] = (warmup / total).where(warmup >= 0)
    extra["warmup_frac"] = extra["warmup_frac"].astype(float)
    extra["last_step"] = extra["last_step"].astype(int)
    extra["last_intermediate_value"] = extra["last_intermediate_value"].astype(float)
    frame = pd.concat([base, extra], axis=1)
    # an empty study gives object columns: pin the types a program reads
    floats = ("value", "peak_lr", "min_lr", "duration_s")
    ints = ("number", "warmup_steps", "trial_steps", "trial_warmup_steps", "retry_of")
    types: dict[str, type] = {c: float for c in floats} | {c: int for c in ints}
    if frame.empty:
        types = {c: str for c in frame.columns if frame[c].dtype == object} | types
    return frame.astype({c: t for c, t in types.items() if c in frame.columns})


def _fallback_reason(t: optuna.trial.FrozenTrial) -> str:
    if t.state.name == "FAIL":
        return str(t.system_attrs.get("fail_reason", ""))
    if t.state.name == "PRUNED":
        steps = sorted(t.intermediate_values)
        return f"pruned after step {steps[-1]}" if steps else "pruned"
    return ""


def _extra_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    steps = sorted(t.intermediate_values)
    row: dict[str, Any] = {
        "warmup_frac": math.nan,
        "datetime_start": _iso(t.datetime_start),
        "datetime_complete": _iso(t.datetime_complete),
        "last_step": steps[-1] if steps else -1,
        "last_intermediate_value": t.intermediate_values[steps[-1]] if steps else math.nan,
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


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    """The rows of completed trials with a finite value."""
    done: pd.DataFrame = trials[(trials["state"] == "complete") & np.isfinite(trials["value"])]
    return done


def diverged_at_full_length(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials whose full-length confirmation diverged (an infinite ``full_value``)."""
    if "full_value" not in trials.columns:
        return trials.iloc[:0]
    out: pd.DataFrame = trials[np.isinf(trials["full_value"].to_numpy(dtype=float))]
    return out


def maximizes(study: optuna.Study) -> bool:
    """True when ``study`` maximises its value (``direction="maximize"``; ``autowarm tune``
    minimises a loss).

    Raises:
        ValueError: a multi-objective study, which has no single best trial to report.
    """
    directions = [d.name.lower() for d in study.directions]
    if len(directions) > 1:
        raise ValueError(
            f"study {study.study_name!r} has {len(directions)} objectives "
            f"({', '.join(directions)}): a report reads single-objective studies (one value "
            "per trial, minimised as `autowarm tune` does or maximised); pass a study with "
            "one objective"
        )
    return directions == ["maximize"]


def best_row(trials: pd.DataFrame, maximize: bool = False) -> pd.Series | None:
    """The study's best trial, or ``None``: among trials confirmed at full length (a finite
    ``full_value``) the lowest of those, else the completed trial with the lowest value
    (``maximize``: the highest) whose schedule did not diverge in a confirmation (as
    :func:`autowarm.study.best_schedule`)."""
    if "full_value" in trials.columns:
        full = trials[np.isfinite(trials["full_value"].to_numpy(dtype=float))]
        if not full.empty:
            confirmed: pd.Series = full.iloc[int(np.argmin(full["full_value"].to_numpy()))]
            return confirmed
    done = usable(trials)
    if done.empty:
        return None
    values = done["value"].to_numpy()
    best: pd.Series = done.iloc[int(np.argmax(values) if maximize else np.argmin(values))]
    return best


def usable(trials: pd.DataFrame) -> pd.DataFrame:
    """The completed trials whose schedule did not diverge when confirmed at full length
    (a trial of that schedule is no candidate, whatever its compressed value)."""
    done = completed(trials)
    diverged = diverged_at_full_length(trials)
    if diverged.empty:
        return done
    shape = ["peak_lr", "warmup_steps", "decay", "min_lr"]
    failed = {tuple(r) for r in diverged[shape].itertuples(index=False)}
    keep = [tuple(r) not in failed for r in done[shape].itertuples(index=False)]
    kept: pd.DataFrame = done[keep]
    return kept


def best_value(trials: pd.DataFrame, maximize: bool = False) -> float:
    """The lowest value of a usable completed trial (:func:`usable`; ``maximize``: the
    highest; NaN when there is none): the anchor of everything on the compressed trials'
    scale (``vs_best``, the near-best range). The chosen trial (:func:`best_row`) can be
    another one, when a full-length confirmation ranked the schedules differently."""
    values = usable(trials)["value"].to_numpy(dtype=float)
    if not values.size:
        return math.nan
    return float(values.max() if maximize else values.min())


def near_best_range(
    trials: pd.DataFrame, tolerance: float, maximize: bool = False
) -> dict[str, Any]:
    """Warmup and peak LR spanned by usable completed trials (:func:`usable`) within
    ``tolerance`` of the best value
    (:func:`best_value`), relative to its magnitude (``value <= best + tolerance * |best|``,
    or ``>= best - tolerance * |best|`` with ``maximize``, so a negative best works too);
    ``{}`` when no trial has completed or the best value is 0, where no relative tolerance
    spans anything."""
    best = best_value(trials, maximize)
    if not math.isfinite(best) or best == 0:
        return {}
    done = usable(trials)
    if maximize:
        near = done[done["value"] >= best - tolerance * abs(best)]
    else:
        # a positive best keeps best * (1 + tolerance), the same bits as before
        limit = best * (1 + tolerance) if best > 0 else best - tolerance * best
        near = done[done["value"] <= limit]
    return {
        "warmup_steps_low": int(near["warmup_steps"].min()),
        "warmup_steps_high": int(near["warmup_steps"].max()),
        "peak_lr_low": float(near["peak_lr"].min()),
        "peak_lr_high": float(near["peak_lr"].max()),
    }


def stored_suggestion(study: optuna.Study) -> Any:
    """The probe's :class:`~autowarm.Suggestion` kept in the study, or ``None``."""
    from autowarm.study._tune import suggestion_from_study

    return suggestion_from_study(study)
