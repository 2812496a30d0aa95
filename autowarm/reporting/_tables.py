"""The report's tables: plain pandas frames with float, int and str columns.

``summary`` (one row) and ``comparison`` are built here for a probe alone and for a study; the
study's ``trials`` table is in :mod:`autowarm.reporting._study` and ``regret`` in
:mod:`autowarm.reporting._regret`. Column names are documented in :func:`autowarm.report`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from autowarm.reporting._study import best_row, best_value
from autowarm.schedules import Decay, ScheduleConfig
from autowarm.study import _attrs as A

if TYPE_CHECKING:
    from autowarm._suggest import Suggestion

SUMMARY_COLUMNS = (
    "source",
    "name",
    "status",
    "chosen_by",
    "chosen_trial",
    "warmup_steps",
    "warmup_frac",
    "peak_lr",
    "decay",
    "min_lr",
    "total_steps",
    "probe_steps",
    "probe_wall_seconds",
    "deciding_signal",
    "confidence",
    "low_confidence_reasons",
    "warmup_steps_low",
    "warmup_steps_high",
    "peak_lr_low",
    "peak_lr_high",
    "range_rule",
    "n_trials",
    "n_complete",
    "n_pruned",
    "n_failed",
    "n_running",
    "n_waiting",
    "best_value",
    "chosen_full_value",
    "metric",
)
COMPARISON_COLUMNS = (
    "label",
    "description",
    "trial",
    "state",
    "peak_lr",
    "warmup_steps",
    "warmup_frac",
    "value",
    "vs_best",
)
DESCRIPTIONS = {
    A.ROLE_PROBE: "the probe's estimate",
    A.ROLE_NO_WARMUP: "reference: no warmup at the probe's peak LR",
    A.ROLE_UNTUNED: (
        "reference: 2/(1-beta2) warmup steps at the probe's peak LR (at most the longest "
        "warmup the search space allows)"
    ),
    A.ROLE_TEN_PERCENT: "reference: 10% of the run as warmup at the probe's peak LR",
    "best": "the study's best trial (the best confirmed at full length, when confirmed)",
}


def summary_row(
    *,
    source: str,
    name: str,
    status: str,
    chosen_by: str,
    schedule: ScheduleConfig | None,
    suggestion: Suggestion | None,
    **extra: Any,
) -> pd.DataFrame:
    """The one-row ``summary`` table; ``extra`` fills the study columns (counts, range)."""
    row: dict[str, Any] = {
        "source": source,
        "name": name,
        "status": status,
        "chosen_by": chosen_by,
        "chosen_trial": -1,
        "warmup_steps": -1,
        "warmup_frac": math.nan,
        "peak_lr": math.nan,
        "decay": "",
        "min_lr": math.nan,
        "total_steps": -1,
        "probe_steps": -1,
        "probe_wall_seconds": math.nan,
        "deciding_signal": "",
        "confidence": "",
        "low_confidence_reasons": "",
        "warmup_steps_low": -1,
        "warmup_steps_high": -1,
        "peak_lr_low": math.nan,
        "peak_lr_high": math.nan,
        "range_rule": "",
        "n_trials": 0,
        "n_complete": 0,
        "n_pruned": 0,
        "n_failed": 0,
        "n_running": 0,
        "n_waiting": 0,
        "best_value": math.nan,
        "chosen_full_value": math.nan,
        "metric": "",
    }
    if schedule is not None:
        row.update(
            warmup_steps=schedule.warmup_steps,
            warmup_frac=schedule.warmup_fraction,
            peak_lr=schedule.peak_lr,
            decay=Decay(schedule.decay).value,
            min_lr=schedule.min_lr,
            total_steps=schedule.total_steps,
        )
    if suggestion is not None:
        row.update(
            probe_steps=suggestion.probe_steps,
            probe_wall_seconds=float(suggestion.wall_seconds),
            deciding_signal=suggestion.deciding_signal,
            confidence=suggestion.confidence,
            low_confidence_reasons="; ".join(suggestion.low_confidence_reasons),
        )
    unknown = set(extra) - set(row)
    if unknown:
        raise KeyError(f"not summary columns: {sorted(unknown)}")
    row.update(extra)
    return pd.DataFrame([row], columns=list(SUMMARY_COLUMNS))


def infer_beta2(trace: pd.DataFrame) -> float:
    """Adam's ``beta2`` solved from the trace's ``n_eff`` column (``nan`` when it cannot be)."""
    from autowarm.probe.signals import _infer_beta2

    if trace.empty or "n_eff" not in trace:
        return math.nan
    rows = trace[(trace["phase"] != "range_test") & np.isfinite(trace["n_eff"])]
    if rows.empty:
        return math.nan
    # the longest burst gives the most leverage; statistics follow update number step + 1
    g = rows[rows["burst"] == rows.groupby("burst").size().idxmax()]
    return _infer_beta2(g["step"].to_numpy(float) + 1.0, g["n_eff"].to_numpy(float))


def reference_schedules(cfg: ScheduleConfig, beta2: float) -> dict[str, ScheduleConfig]:
    """The probe's schedule and the references ``autowarm tune`` would train beside it at
    its peak LR, keyed by role: tune's reference schedules clipped into its default search
    space, as a queued trial is (no 2/(1-beta2) one when ``beta2`` is not in ``[0, 1)``)."""
    from autowarm.study._space import SearchSpace
    from autowarm.study._tune import reference_schedules as tune_references

    known = math.isfinite(beta2) and 0.0 <= beta2 < 1.0
    space = SearchSpace()
    refs = tune_references(cfg, beta2 if known else None)
    # what a trial trains: the parameters queued for a schedule, sampled back into one
    trained = {role: space.schedule(space.params_of(r, cfg), cfg) for role, r in refs.items()}
    return {A.ROLE_PROBE: cfg, **trained}


def probe_comparison(cfg: ScheduleConfig, beta2: float) -> pd.DataFrame:
    """``comparison`` for a probe alone: the schedules, none of them trained yet."""
    rows = [
        {
            "label": role,
            "description": DESCRIPTIONS[role],
            "trial": -1,
            "state": "not trained",
            "peak_lr": s.peak_lr,
            "warmup_steps": s.warmup_steps,
            "warmup_frac": s.warmup_fraction,
            "value": math.nan,
            "vs_best": math.nan,
        }
        for role, s in reference_schedules(cfg, beta2).items()
    ]
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def study_comparison(trials: pd.DataFrame, maximize: bool = False) -> pd.DataFrame:
    """``comparison`` for a study: the probe's and reference trials beside the chosen one
    (``best``); ``vs_best`` is relative to the best value of a completed trial, the scale
    every trial's ``value`` is on, so the chosen trial's own is above 0 when a full-length
    confirmation chose another trial than the lowest compressed one. ``maximize``: higher
    values are better (a study with ``direction="maximize"``)."""
    rows = []
    best = best_row(trials, maximize)  # the chosen trial: by its full-length value, if any
    anchor = best_value(trials, maximize)  # vs_best is on the compressed trials' scale
    for role in (A.ROLE_PROBE, *A.REFERENCE_ROLES):
        hit = trials[trials["role"] == role]
        if hit.empty and "also_roles" in trials:  # a trial that stands for this role too
            also = trials["also_roles"].fillna("").astype(str).str.split(",")
            hit = trials[[role in rs for rs in also]]
        if hit.empty:
            continue
        # a retried trial: the latest attempt of the role speaks for it
        done_hit = hit[hit["state"] == "complete"]
        rows.append(
            _comparison_row(role, (done_hit if len(done_hit) else hit).iloc[-1], anchor, maximize)
        )
    if best is not None:
        rows.append(_comparison_row("best", best, anchor, maximize))
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def relative_to_best(value: float, best_value: float, maximize: bool = False) -> float:
    """How much worse ``value`` is than ``best_value``, relative to the best's magnitude:
    ``(value - best) / |best|`` (``0.01``: 1% worse), any sign; with ``maximize`` (higher is
    better) ``(best - value) / |best|``. NaN when either is not finite or the best is 0,
    where no relative figure means anything."""
    if not (math.isfinite(value) and math.isfinite(best_value)) or best_value == 0:
        return math.nan
    if maximize:
        return (best_value - value) / abs(best_value)
    if best_value > 0:
        return value / best_value - 1.0
    return (value - best_value) / -best_value


def _comparison_row(label: str, t: pd.Series, best_value: float, maximize: bool) -> dict[str, Any]:
    value = float(t["value"])
    vs = relative_to_best(value, best_value, maximize)
    return {
        "label": label,
        "description": DESCRIPTIONS[label],
        "trial": int(t["number"]),
        "state": str(t["state"]),
        "peak_lr": float(t["peak_lr"]),
        "warmup_steps": int(t["warmup_steps"]),
        "warmup_frac": float(t["warmup_frac"]),
        "value": value,
        "vs_best": vs,
    }
