"""Assembling a :class:`~autowarm.reporting.Report` from a suggestion or a study."""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from autowarm._suggest import Suggestion, read_suggestion_record, trained_in_groups
from autowarm.probe._search import SearchSettings
from autowarm.probe.signals import untuned_warmup_steps
from autowarm.reporting import _figures as F
from autowarm.reporting import _study as S
from autowarm.reporting import _tables as T
from autowarm.reporting._figures import FigureData
from autowarm.reporting._regret import Placed, bench_task_name, regret_table
from autowarm.reporting._render import fmt, texts_apart
from autowarm.reporting._report import Report
from autowarm.reporting._study_figures import history_figure, scatter_figure
from autowarm.schedules import ScheduleConfig
from autowarm.study import _attrs as A

NEAR_BEST = 0.01  # trials within 1% of the best value make the summary's range
STUDY_VALUE = "the study's value"  # the metric of a study that does not name its own


_TO_TRAIN = "the schedule to train with"


def load_suggestion(path: Path) -> Suggestion:
    """:meth:`Suggestion.load`, with messages for the usual wrong files (a study's storage is
    told how to get its report)."""
    if not path.is_file():
        raise FileNotFoundError(f"no such suggestion file: {path}")
    data = read_suggestion_record(
        path,
        storage_advice=f"for a study's report pass --storage {path} --study-name NAME (in "
        "Python: report((storage, study_name)))",
    )
    return Suggestion._from_record(path, data)


def probe_figures(
    s: Suggestion, notes: list[str], who: str = "chosen"
) -> dict[str, FigureData | None]:
    if s.trace.empty:
        notes.append(
            "The suggestion has no trace (its .trace.csv was not found beside the JSON): the "
            "probe's figures are left out."
        )
        return {}
    if trained_in_groups(s.rationale):
        notes.append(
            "The probe trained parameter groups at their lr_scale times each LR: the LRs in "
            "the figures and the trace are those of a group at scale 1 (the peak LR's group)."
        )
    tol = SearchSettings().rel_error_tol
    moment = F.second_moment_figure(s.trace, s.signals, s.warmup_steps, tol, who)
    if moment is None:
        notes.append(
            "No second-moment statistics in the trace (an optimizer without exp_avg_sq): the "
            "warmup came from the loss bursts alone."
        )
    return {
        "range_test": F.range_test_figure(s.trace, s.peak_lr, who, s.signals),
        "second_moment": moment,
        "second_moment_change": F.second_moment_change_figure(
            s.trace, s.signals, s.warmup_steps, who
        ),
        "bursts": F.bursts_figure(s.trace, s.signals),
    }


def _grid_lengths(benchmark: str | os.PathLike[str], task: str) -> list[int]:
    # The run lengths of a task's rows in the benchmark's grid (empty if none can be read).
    from autowarm.bench._oracle import load_grid
    from autowarm.reporting._regret import grid_path

    try:
        grid = load_grid(grid_path(benchmark))
    except (OSError, ValueError):
        return []
    return sorted(int(n) for n in grid.loc[grid["task"] == task, "total_steps"].unique())


def _evidence(s: Suggestion | None) -> dict[str, pd.DataFrame]:
    if s is None:
        return {}
    return {k: v for k, v in (("trace", s.trace), ("signals", s.signals)) if not v.empty}


def _add_regret(tables: dict[str, pd.DataFrame], notes: list[str], table: pd.DataFrame) -> None:
    tables["regret"] = table
    far = table.loc[table["grid_distance_decades"] > 0.25, "label"]
    if len(far):
        notes.append(
            f"Off the oracle grid by more than a quarter decade of peak LR: {', '.join(far)}; "
            "their grid_regret is that of the nearest cell, not of the schedule."
        )


def _kept(figures: dict[str, FigureData | None]) -> dict[str, FigureData]:
    return {k: v for k, v in figures.items() if v is not None}


def probe_report(
    s: Suggestion,
    *,
    name: str,
    benchmark: str | os.PathLike[str] | None,
    task: str | None,
) -> Report:
    notes: list[str] = []
    if s.low_confidence:
        # first, where the morning reader looks: the answer is not one to train with as is
        reasons = "; ".join(s.low_confidence_reasons) or "no reason recorded"
        notes.append(
            f"LOW CONFIDENCE: the probe could not decide firmly ({reasons}). Check the "
            "rationale before training with this schedule, or probe with a larger budget."
        )
    settings = training_note(s.training, "the probe trained")
    if settings:
        notes.append(settings)
    beta2 = T.infer_beta2(s.trace)
    if not math.isfinite(beta2):
        beta2 = _recorded_beta2(s)  # a suggestion loaded without its trace
    if not math.isfinite(beta2):
        notes.append(
            "Adam's beta2 could not be read from the trace or the suggestion's training "
            "record: no 2/(1-beta2) reference."
        )
    comparison = T.probe_comparison(s.schedule, beta2)
    untuned = comparison.loc[comparison["label"] == A.ROLE_UNTUNED, "warmup_steps"]
    if len(untuned) and int(untuned.iloc[0]) < untuned_warmup_steps(beta2):
        notes.append(
            f"2/(1-beta2) is {untuned_warmup_steps(beta2)} steps at beta2={beta2:.4g}; the "
            f"reference row has {int(untuned.iloc[0])}, the longest warmup `autowarm tune`'s "
            "default search space allows for this run, as tune would train it."
        )
    tables = {
        "summary": T.summary_row(
            source="probe",
            name=name,
            status="probe",
            chosen_by="probe",
            schedule=s.schedule,
            suggestion=s,
        ),
        "comparison": comparison,
        **_evidence(s),
    }
    if benchmark is not None:
        if task is None:
            raise ValueError("a regret table needs the benchmark task: pass task=NAME (--task)")
        placed = [
            Placed(str(r["label"]), float(r["peak_lr"]), float(r["warmup_frac"]))
            for r in comparison.to_dict("records")
        ]
        bench_task = bench_task_name(task) or task
        _add_regret(tables, notes, regret_table(benchmark, bench_task, placed))
        grid_steps = _grid_lengths(benchmark, bench_task)
        if grid_steps and s.schedule.total_steps not in grid_steps:
            notes.append(
                f"The suggestion is for a run of {s.schedule.total_steps} steps, and the grid of "
                f"{bench_task!r} ran {', '.join(map(str, grid_steps))}: its schedules are placed "
                "on the grid by warmup fraction and peak LR, which means something only for a "
                f"probe of {bench_task!r} itself (`autowarm demo` probes postln_lm)."
            )
    figures = {
        **probe_figures(s, notes),
        "schedule": F.schedule_figure(s.schedule, what=_TO_TRAIN),
    }
    return Report(
        title=f"autowarm report: probe ({name})",
        status="probe",
        status_text=("A probe with LOW confidence (see the notes). " if s.low_confidence else "")
        + "A probe alone: no schedule here has been trained yet (`autowarm tune` measures "
        "them against each other).",
        tables=tables,
        figures=_kept(figures),
        notes=tuple(notes),
        rationale=s.rationale,
    )


# The optimizer settings a reader needs to train as measured (the others are the defaults).
_SHOWN_SETTINGS = ("betas", "eps", "weight_decay", "momentum", "nesterov")


def training_note(training: Mapping[str, Any] | None, who: str) -> str | None:
    """One sentence on the settings ``who`` trained under (a ``Suggestion.training`` record),
    which the real run should share, or ``None`` without a record."""
    if not training:
        return None
    settings = training.get("optimizer_settings") or {}
    shown = ", ".join(f"{k}={settings[k]}" for k in _SHOWN_SETTINGS if k in settings)
    clip = training.get("grad_clip")
    return (
        f"Settings: {who} with {training.get('optimizer')}({shown}), "
        f"{'gradient clipping at ' + str(clip) if clip is not None else 'no gradient clipping'}"
        f", {training.get('accumulation_steps')} micro-batch(es) per update, precision "
        f"{training.get('precision')}. Train the real run with the same (the warmup follows "
        "Adam's beta2, the peak LR the optimizer and the clipping); `autowarm export ... "
        "--format trainer` carries them into TrainingArguments."
    )


def _recorded_beta2(s: Suggestion) -> float:
    """beta2 from the suggestion's record of the optimizer settings, or NaN."""
    settings = s.training.get("optimizer_settings") if s.training else None
    betas = settings.get("betas") if isinstance(settings, Mapping) else None
    try:
        value = float(betas[1])  # type: ignore[index]
    except (TypeError, IndexError, ValueError):
        return math.nan
    return value if 0.0 <= value < 1.0 else math.nan


def _chosen(study: optuna.Study, best: pd.Series | None, s: Suggestion | None) -> Any:
    if best is not None:
        attrs = study.trials[int(best["number"])].user_attrs
        if isinstance(attrs.get(A.SCHEDULE), dict):
            return ScheduleConfig.from_dict(attrs[A.SCHEDULE])
        base = study.user_attrs.get(A.BASE_SCHEDULE)
        if isinstance(base, dict) and int(best["warmup_steps"]) >= 0:
            d = {**base, "peak_lr": float(best["peak_lr"])}
            d["warmup_steps"] = int(best["warmup_steps"])
            return ScheduleConfig.from_dict(d)
        return None
    return s.schedule if s is not None else None


def _scales_note(trials: pd.DataFrame, chosen: pd.Series, best_value: float) -> list[str]:
    # A confirmation chose another trial than the lowest compressed one: say which number is
    # on which scale, as the summary mixes both.
    if float(chosen["value"]) == best_value:
        return []
    lowest = S.completed(trials)
    lowest = lowest[lowest["value"] == best_value]
    best_text, chosen_text = texts_apart([best_value, float(chosen["value"])])
    return [
        f"Trial {int(chosen['number'])} is chosen by its full-length value "
        f"({fmt(float(chosen['full_value']))}), the best of those confirmed at full length; "
        f"among the compressed trials trial {int(lowest['number'].iloc[0])} is lowest "
        f"({best_text} against {chosen_text}). best_value, vs_best, "
        "the near-best range and the history's best so far are on the compressed trials' "
        "scale; chosen_full_value is on the full run's."
    ]


def _where_note(study: optuna.Study) -> str:
    # the morning reader's next commands: where the study lives, how to export and resume it
    from autowarm.study._storage import url_of

    url = url_of(study)
    if url is None or not S.is_autowarm_study(study):  # export reads autowarm's studies only
        return ""
    name = study.study_name
    hidden = " (with the password, shown here as ***, filled in)" if "***" in url else ""
    # --study-name=NAME: a name that starts with "-" is not taken for an option
    return (
        f"The study {name!r} is stored in {url}: `autowarm export --storage {shlex.quote(url)} "
        f"--study-name={shlex.quote(name)} -o schedule.yaml`{hidden} writes the chosen "
        "schedule, and the `autowarm tune` command that made it, run again, resumes it (a "
        "larger --n-trials for more trials)."
    )


def study_report(
    study: optuna.Study,
    *,
    benchmark: str | os.PathLike[str] | None,
    task: str | None,
) -> Report:
    maximize = S.maximizes(study)  # first: a multi-objective study is refused here
    notes: list[str] = []
    if not S.is_autowarm_study(study):
        notes.append(
            "Not written by autowarm tune (no autowarm.format attribute): roles, reference "
            "schedules and the probe are unknown; peak_lr/warmup_steps come from the params."
        )
    where = _where_note(study)
    if where:
        notes.append(where)
    trials = S.trials_table(study)
    status, status_text = S.study_status(study)
    s = S.stored_suggestion(study)
    recorded = study.user_attrs.get(A.TRAINING)
    settings = training_note(
        recorded if isinstance(recorded, Mapping) else (s.training if s is not None else None),
        "the trials trained",
    )
    if settings:
        notes.append(settings)
    best = S.best_row(trials, maximize)
    schedule = _chosen(study, best, s)
    counts = trials["state"].value_counts()
    n_full = (
        int(np.isfinite(trials["full_value"].to_numpy(dtype=float)).sum())
        if "full_value" in trials.columns
        else 0
    )
    chosen_by = (
        f"study: trial {int(best['number'])}, the best of {n_full} confirmed at full length"
        if best is not None and n_full
        else f"study: trial {int(best['number'])}, the best of "
        f"{int(counts.get('complete', 0))} completed"
        if best is not None
        else "probe (no trial has completed yet)"
        if status != "no_result"
        else "probe (no trial completed: see the trials table for why each ended)"
    )
    diverged = sorted(int(n) for n in S.diverged_at_full_length(trials)["number"])
    if diverged:
        chosen_by += f"; {len(diverged)} diverged at full length and are left out"
        notes.append(
            f"{len(diverged)} of the schedules confirmed at full length diverged there (trials "
            f"{diverged}); they "
            "trained in compressed trials only, so they are not candidates for the best."
        )
    best_value = S.best_value(trials, maximize)
    metric = str(study.user_attrs.get(A.METRIC, ""))
    # the axis says what the values are: the study's metric, or its objective's value
    value_label = (
        f"trial value: {metric} (task units)" if metric else "trial value (the study's objective)"
    )
    chosen_full = math.nan if best is None else float(best.get("full_value", math.nan))
    if best is not None and math.isfinite(chosen_full):
        notes.extend(_scales_note(trials, best, best_value))
        metric = (
            f"best_value and the trials' values: {metric or STUDY_VALUE}; "
            "chosen_full_value: the same at the end of a full-length run (the chosen trial's "
            "confirmation)"
        )
    if maximize:
        metric = f"{metric or STUDY_VALUE} (maximised: higher is better)"
        notes.append(
            "The study maximises its value: the best trial is the highest, and vs_best is "
            "how far below the best value a trial's lies, relative to its magnitude."
        )
    range_rule = f"completed trials within {NEAR_BEST:.0%} of the best value"
    if not math.isfinite(best_value):
        range_rule = ""  # no completed trial: no best, no range around it
    elif best_value < 0:
        range_rule += " (of its magnitude: the best value is negative)"
    elif best_value == 0:
        range_rule = ""
        notes.append(
            "The best value is exactly 0, so no trial is a relative distance from it: the "
            "summary has no near-best range and the comparison's vs_best is left empty."
        )
    summary = T.summary_row(
        source="study",
        name=study.study_name,
        status=status,
        chosen_by=chosen_by if best is not None or s is not None else "nothing yet",
        chosen_trial=-1 if best is None else int(best["number"]),
        schedule=schedule,
        suggestion=s,
        n_trials=len(trials),
        n_complete=int(counts.get("complete", 0)),
        n_pruned=int(counts.get("pruned", 0)),
        n_failed=int(counts.get("fail", 0)),
        n_running=int(counts.get("running", 0)),
        n_waiting=int(counts.get("waiting", 0)),
        best_value=best_value,
        chosen_full_value=chosen_full,
        metric=metric,
        range_rule=range_rule,
        **S.near_best_range(trials, NEAR_BEST, maximize),
    )
    if schedule is None and best is not None:
        # a study not written by tune: its best trial's own peak LR and warmup (from its
        # params, see S.trials_table), which the headline shows as for any study
        if math.isfinite(float(best["peak_lr"])):
            summary["peak_lr"] = float(best["peak_lr"])
        if int(best["warmup_steps"]) >= 0:
            summary["warmup_steps"] = int(best["warmup_steps"])
    comparison = T.study_comparison(trials, maximize)
    tables = {"summary": summary, "comparison": comparison, "trials": trials, **_evidence(s)}
    bench_task = task or bench_task_name(str(study.user_attrs.get(A.TASK, "")))
    if benchmark is not None:
        if bench_task is None:
            raise ValueError(
                f"study {study.study_name!r} is not on a benchmark task (autowarm.task="
                f"{study.user_attrs.get(A.TASK)!r}): pass task=NAME (--task) for a regret table"
            )
        steps = study.user_attrs.get(A.TRIAL_STEPS)
        placed = [
            Placed(
                str(r["label"]),
                float(r["peak_lr"]),
                float(r["warmup_frac"]),
                float(r["value"]),
                steps if isinstance(steps, int) else 0,
            )
            for r in comparison.to_dict("records")
            if math.isfinite(float(r["peak_lr"])) and math.isfinite(float(r["warmup_frac"]))
        ]
        _add_regret(tables, notes, regret_table(benchmark, bench_task, placed))
    elif bench_task is not None:
        notes.append(
            f"The study ran on the benchmark task {bench_task!r}: pass benchmark=... "
            "(--benchmark reports/benchmark) to add the regret against its oracle grid."
        )
    if s is None:
        notes.append("The study holds no probe suggestion: the probe's figures are left out.")
    figures: dict[str, FigureData | None] = {
        "history": history_figure(trials, maximize, value_label),
        "trials_scatter": scatter_figure(trials, maximize, value_label),
        # the probe's evidence says where the study started, not why its choice won: titled so
        **{
            name: None
            if f is None
            else dataclasses.replace(f, title=f"The probe (where the study started): {f.title}")
            for name, f in (probe_figures(s, notes, "probe's") if s is not None else {}).items()
        },
    }
    if schedule is not None:
        figures["schedule"] = F.schedule_figure(schedule, what=_TO_TRAIN)
    if best is None:
        notes.append("No trial has completed yet: no history or scatter figure.")
    return Report(
        title=f"autowarm report: study {study.study_name}",
        status=status,
        status_text=status_text,
        tables=tables,
        figures=_kept(figures),
        notes=tuple(notes),
        rationale=s.rationale if s is not None else "",
        rationale_title="Why the probe suggested its schedule (where the study started)",
    )
