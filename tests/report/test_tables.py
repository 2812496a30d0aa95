"""The report's tables: names, plain column types, and the numbers they must carry."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

import autowarm
from autowarm.reporting._regret import REGRET_COLUMNS
from autowarm.reporting._study import EXTRA_COLUMNS
from autowarm.reporting._tables import COMPARISON_COLUMNS, SUMMARY_COLUMNS, relative_to_best
from autowarm.study import _attrs as A
from autowarm.study._space import SearchSpace
from autowarm.study._tune import TRIAL_COLUMNS

from .conftest import TOTAL, TRIAL_STEPS, make_study


def assert_plain(frame: pd.DataFrame) -> None:
    for col in frame.columns:
        kind = frame[col].dtype.kind
        ok = kind in "fiub" or pd.api.types.is_string_dtype(frame[col])
        assert ok, f"column {col!r} has dtype {frame[col].dtype}, not float/int/str"
        if kind == "O":
            assert all(isinstance(v, str) for v in frame[col]), col


# ---------------------------------------------------------------------------- probe alone
def test_probe_report_tables(suggestion: autowarm.Suggestion) -> None:
    rep = suggestion.report()
    assert list(rep.tables) == ["summary", "comparison", "trace", "signals"]
    assert rep.status == "probe" and not rep.running
    for frame in rep.tables.values():
        assert_plain(frame)
    summary = rep.tables["summary"]
    assert list(summary.columns) == list(SUMMARY_COLUMNS) and len(summary) == 1
    row = rep.summary
    assert row["warmup_steps"] == suggestion.warmup_steps
    assert row["peak_lr"] == suggestion.peak_lr
    assert row["total_steps"] == TOTAL
    assert row["decay"] == "cosine" and row["min_lr"] == 0.0
    assert row["probe_steps"] == suggestion.probe_steps
    assert row["probe_wall_seconds"] == pytest.approx(suggestion.wall_seconds)
    assert row["deciding_signal"] == suggestion.deciding_signal
    assert row["confidence"] == suggestion.confidence
    assert row["warmup_steps_low"] == -1  # no range is known for a probe alone
    assert math.isnan(row["peak_lr_low"])
    pd.testing.assert_frame_equal(rep.tables["trace"], suggestion.trace)


def test_probe_comparison_references(suggestion: autowarm.Suggestion) -> None:
    comp = autowarm.report(suggestion).tables["comparison"]
    assert list(comp.columns) == list(COMPARISON_COLUMNS)
    by = comp.set_index("label")
    assert list(by.index) == [
        A.ROLE_PROBE,
        A.ROLE_NO_WARMUP,
        A.ROLE_UNTUNED,
        A.ROLE_TEN_PERCENT,
    ]
    assert by.loc[A.ROLE_PROBE, "warmup_steps"] == suggestion.warmup_steps
    assert by.loc[A.ROLE_NO_WARMUP, "warmup_steps"] == 0
    assert by.loc[A.ROLE_TEN_PERCENT, "warmup_steps"] == TOTAL // 10
    # AdamW's beta2 = 0.999, read back from the trace: 2000 steps, clipped as tune clips it
    assert by.loc[A.ROLE_UNTUNED, "warmup_steps"] == SearchSpace().warmup_max(suggestion.schedule)
    assert by.loc[A.ROLE_UNTUNED, "warmup_steps"] <= TOTAL // 2  # not the whole run
    assert (by["peak_lr"] == suggestion.peak_lr).all()
    assert by["value"].isna().all() and (by["state"] == "not trained").all()


def test_probe_references_are_the_schedules_tune_would_train(
    suggestion: autowarm.Suggestion,
) -> None:
    from types import SimpleNamespace

    from autowarm.study._tune import _enqueue_first_trials

    # what `autowarm tune` queues first for this probe and its search space, asked back as
    # its trials ask them (the task's optimizer: AdamW's default betas)
    center, space = suggestion.schedule, SearchSpace()
    study = optuna.create_study()
    task: Any = SimpleNamespace(optimizer_cls=torch.optim.AdamW, optimizer_kwargs={})
    _enqueue_first_trials(study, task, center, space, None)
    trained = {}
    for _ in range(4):
        trial = study.ask()
        trained[trial.user_attrs[A.ROLE]] = space.sample(trial, center)
    rep = autowarm.report(suggestion)
    comp = rep.tables["comparison"].set_index("label")
    for role, schedule in trained.items():
        assert comp.loc[role, "warmup_steps"] == schedule.warmup_steps, role
        assert comp.loc[role, "peak_lr"] == pytest.approx(schedule.peak_lr), role
    assert trained[A.ROLE_UNTUNED].warmup_steps < 2000  # clipped: the case at stake
    assert any(n.startswith("2/(1-beta2) is 2000 steps at beta2=0.999") for n in rep.notes)


def test_report_from_saved_json(suggestion: autowarm.Suggestion, tmp_path: Path) -> None:
    path = suggestion.save(tmp_path / "s.json")
    rep = autowarm.report(path)
    assert rep.summary["name"] == "s.json"
    assert rep.tables["trace"].shape == suggestion.trace.shape


# ---------------------------------------------------------------------------- study
def test_study_tables(study: optuna.Study) -> None:
    rep = autowarm.report(study)
    assert list(rep.tables) == ["summary", "comparison", "trials", "trace", "signals"]
    for frame in rep.tables.values():
        assert_plain(frame)
    trials = rep.tables["trials"]
    columns = [*TRIAL_COLUMNS, *EXTRA_COLUMNS]
    assert list(trials.columns)[: len(columns)] == columns
    assert {"param_peak_lr", "param_warmup_frac"} <= set(trials.columns)
    assert list(trials["state"]) == ["complete"] * 6 + ["pruned", "fail"]
    assert trials.loc[6, "reason"] == "pruned at step 50"
    assert trials.loc[7, "reason"] == "loss is nan"
    assert trials.loc[0, "duration_s"] == 120.0
    assert trials.loc[6, "last_step"] == 50 and trials.loc[6, "last_intermediate_value"] == 0.8
    assert trials["warmup_frac"].tolist() == pytest.approx(trials["warmup_steps"] / TOTAL)
    row = rep.summary
    assert rep.status == "complete"
    assert (row["n_trials"], row["n_complete"], row["n_pruned"], row["n_failed"]) == (8, 6, 1, 1)
    assert row["best_value"] == 0.515 and row["chosen_by"].startswith("study: trial 4")
    assert row["warmup_steps"] == 20  # the best trial's schedule
    # within 1% of 0.515: trials 4 (0.515) and 0 (0.52)
    assert (row["warmup_steps_low"], row["warmup_steps_high"]) == (
        20,
        study.trials[0].user_attrs[A.WARMUP_STEPS],
    )


def test_study_comparison_same_metric(study: optuna.Study) -> None:
    comp = autowarm.report(study).tables["comparison"].set_index("label")
    assert list(comp.index) == [
        A.ROLE_PROBE,
        A.ROLE_NO_WARMUP,
        A.ROLE_UNTUNED,
        A.ROLE_TEN_PERCENT,
        "best",
    ]
    assert comp.loc["best", "trial"] == 4 and comp.loc["best", "vs_best"] == 0.0
    assert comp.loc[A.ROLE_NO_WARMUP, "vs_best"] == pytest.approx(0.61 / 0.515 - 1)
    assert comp.loc[A.ROLE_PROBE, "value"] == 0.52


def test_running_study_says_so(suggestion: autowarm.Suggestion) -> None:
    rep = autowarm.report(make_study(suggestion, running=True, n_trials=20))
    assert rep.running and rep.status == "running"
    assert "Still running, or interrupted" in rep.status_text
    assert "7 of 20 trials finished (1 more failed, which do not count)" in rep.status_text
    assert rep.summary["n_running"] == 1
    assert "Still running, or interrupted" in rep.to_markdown()


def test_trial_counts_add_up_with_queued_trials(suggestion: autowarm.Suggestion) -> None:
    study = make_study(suggestion, running=True, n_trials=20)
    study.enqueue_trial({"peak_lr": suggestion.peak_lr, "warmup_frac": 0.1})
    study.enqueue_trial({"peak_lr": suggestion.peak_lr, "warmup_frac": 0.2})
    row = autowarm.report(study).summary
    counts = ("n_complete", "n_pruned", "n_failed", "n_running", "n_waiting")
    assert row["n_trials"] == sum(row.get(c, 0) for c in counts) == 11
    assert [row[c] for c in counts] == [6, 1, 1, 1, 2]
    assert "| queued, not started | 2 |" in autowarm.report(study).to_markdown()


def test_stopped_short_study(suggestion: autowarm.Suggestion) -> None:
    rep = autowarm.report(make_study(suggestion, n_trials=20))
    assert rep.status == "incomplete" and "7 of 20" in rep.status_text


def test_failed_trials_do_not_count_toward_the_target(suggestion: autowarm.Suggestion) -> None:
    # 6 complete, 1 pruned, 1 failed against a target of 8: tune would run one more trial
    rep = autowarm.report(make_study(suggestion, n_trials=8))
    assert rep.status == "incomplete"
    assert rep.status_text.startswith("Stopped short: 7 of 8 trials finished (1 more failed")
    assert autowarm.report(make_study(suggestion, n_trials=7)).status == "complete"


def test_study_without_completed_trials(suggestion: autowarm.Suggestion) -> None:
    study = optuna.create_study(direction="minimize")
    study.set_user_attr(A.FORMAT, A.STUDY_FORMAT)
    study.set_user_attr(
        A.SUGGESTION,
        {**suggestion.to_dict(), "trace": [], "signals": []},
    )
    rep = autowarm.report(study)
    assert rep.summary["chosen_by"].startswith("probe")
    assert rep.summary["warmup_steps"] == suggestion.warmup_steps
    assert "schedule" in rep.figures and "history" not in rep.figures
    assert any("No trial has completed" in n for n in rep.notes)


def test_no_completed_trial_states_no_near_best_rule(suggestion: autowarm.Suggestion) -> None:
    T = optuna.trial.TrialState
    study = make_study(suggestion)
    stopped = optuna.create_study(study_name="stopped", direction="minimize")
    for key, value in study.user_attrs.items():
        stopped.set_user_attr(key, value)
    for t in study.trials:
        if t.state != T.COMPLETE:  # the pruned and the failed trial alone
            stopped.add_trial(t)
    rep = autowarm.report(stopped)
    assert rep.summary["n_complete"] == 0 and math.isnan(rep.summary["best_value"])
    assert rep.summary["range_rule"] == ""
    assert "near-best" not in rep.to_markdown()
    # every trial ended, none with a value: not "Complete", and the probe's schedule shown is
    # said to be unconfirmed (it was called complete, in green, with a diverged schedule)
    assert rep.status == "no_result"
    assert (
        rep.status_text.startswith("No result: 1 trials finished")
        and "1 pruned" in rep.status_text
    )
    assert "no trial completed: see the trials table" in rep.summary["chosen_by"]
    assert 'class="status no_result"' in rep.to_html()


# ---------------------------------------------------------------------------- confirmations
def _confirm(
    study: optuna.Study,
    runs: dict[int, optuna.trial.TrialState],
    full: dict[int, float] | None = None,
) -> None:
    """What ``run_confirmations`` writes into ``<name>.confirm``: one run per study trial,
    in the given state (a completed one is worth ``full[number]``, else its compressed value
    plus 0.1)."""
    from autowarm.study._confirm import CONFIRM_SUFFIX, CONFIRMS, ROLE_CONFIRM

    conf = optuna.create_study(
        storage=study._storage, study_name=study.study_name + CONFIRM_SUFFIX
    )
    for number, state in runs.items():
        done = state == optuna.trial.TrialState.COMPLETE
        trial = optuna.trial.create_trial(
            state=state,
            value=(full or {}).get(number, (study.trials[number].value or 0.0) + 0.1)
            if done
            else None,
            user_attrs={
                A.ROLE: ROLE_CONFIRM,
                CONFIRMS: number,
                A.SCHEDULE: study.trials[number].user_attrs[A.SCHEDULE],
            },
        )
        if state == optuna.trial.TrialState.RUNNING:
            trial.datetime_complete = None
        conf.add_trial(trial)


def test_finished_confirmations_keep_the_study_complete(suggestion: autowarm.Suggestion) -> None:
    study = make_study(suggestion, n_trials=7)
    _confirm(study, {4: optuna.trial.TrialState.COMPLETE, 0: optuna.trial.TrialState.COMPLETE})
    rep = autowarm.report(study)
    assert rep.status == "complete"
    assert (
        rep.status_text == "Complete: 7 of 7 trials finished (1 more failed, which do not count)."
    )


def test_more_trials_than_the_last_run_asked_for_are_not_counted_as_n_of_fewer(
    suggestion: autowarm.Suggestion,
) -> None:
    study = make_study(suggestion, n_trials=7)
    study.set_user_attr(A.N_TRIALS, 3)  # resumed with --n-trials 3: it held 7 already
    rep = autowarm.report(study)
    assert rep.status == "complete"
    assert rep.status_text.startswith("Complete: 7 trials finished (the last run asked for 3)")


def test_interrupted_confirmations_are_not_complete(suggestion: autowarm.Suggestion) -> None:
    T = optuna.trial.TrialState
    # the best two trials (4, then 0) were to be confirmed; the second's run was interrupted
    study = make_study(suggestion, n_trials=7)
    _confirm(study, {4: T.COMPLETE, 0: T.FAIL})
    rep = autowarm.report(study)
    assert rep.status == "incomplete"
    assert rep.status_text.startswith(
        "Confirmations stopped: 7 of 7 trials finished (1 more failed, which do not count), "
        "but 1 of at least 2 full-length confirmation runs finished (trial 0 not confirmed)."
    )
    assert "the best of the 1 confirmed so far, which trial 0 may still beat" in rep.status_text
    assert "until `autowarm tune` is resumed" in rep.status_text
    assert "Confirmations stopped" in rep.to_markdown()
    # the very first confirmation was interrupted: the best is the compressed trials' best
    study = make_study(suggestion, n_trials=7)
    _confirm(study, {4: T.FAIL})
    rep = autowarm.report(study)
    assert rep.status == "incomplete"
    assert "0 of at least 1 full-length confirmation runs finished (trial 4 not" in (
        rep.status_text
    )
    assert "is the compressed trials' best, not one confirmed at full length" in rep.status_text
    assert rep.summary["chosen_by"] == "study: trial 4, the best of 6 completed"


def test_the_planned_number_of_confirmations_is_counted_against(
    suggestion: autowarm.Suggestion,
) -> None:
    T = optuna.trial.TrialState
    study = make_study(suggestion, n_trials=7)
    study.set_user_attr(A.CONFIRM, 3)  # what tune(confirm=3) stores
    _confirm(study, {4: T.COMPLETE})  # stopped before the second of three began
    rep = autowarm.report(study)
    assert rep.status == "incomplete"
    assert "but 1 of 3 full-length confirmation runs finished (trials 0, " in rep.status_text
    # export says so too: the schedule it writes may still be beaten
    from autowarm.study._tune import best_schedule

    stopped = r"confirmations of trials \[0, .*have not run \(the study was stopped"
    with pytest.warns(UserWarning, match=stopped):
        best_schedule(study)
    # while the search itself is still short of its total, the confirmations are still ahead
    total = study.user_attrs[A.N_TRIALS]
    study.set_user_attr(A.N_TRIALS, 100)
    with pytest.warns(UserWarning, match=r"its search has ended \d+ of 100 trials"):
        best_schedule(study)
    study.set_user_attr(A.N_TRIALS, total)
    # a later run with confirm=0 trusts the compressed trials: nothing is missing
    study.set_user_attr(A.CONFIRM, 0)
    assert autowarm.report(study).status == "complete"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        best_schedule(study)


def test_a_confirmation_left_running_is_not_complete(suggestion: autowarm.Suggestion) -> None:
    T = optuna.trial.TrialState
    study = make_study(suggestion, n_trials=7)
    _confirm(study, {4: T.RUNNING})
    rep = autowarm.report(study)
    assert rep.running and rep.status == "running"
    assert rep.status_text.startswith(
        "Still running, or interrupted: the full-length confirmation of trial 4 is marked "
        "RUNNING, started"
    )
    assert "0 of at least 1 full-length confirmation runs finished" in rep.status_text


def test_a_confirmation_choosing_another_trial_keeps_each_scale_apart(
    suggestion: autowarm.Suggestion,
) -> None:
    T = optuna.trial.TrialState
    study = make_study(suggestion, n_trials=7)
    study.set_user_attr(A.CONFIRM, 3)  # the best three: 4 (0.515), 0 (0.52), 3 (0.53)
    # at full length the third of them is best
    _confirm(study, {4: T.COMPLETE, 0: T.COMPLETE, 3: T.COMPLETE}, {4: 0.7, 0: 0.68, 3: 0.6})
    rep = autowarm.report(study)
    row = rep.summary
    assert row["chosen_by"].startswith("study: trial 3, the best of 3 confirmed at full length")
    assert row["warmup_steps"] == 40  # trial 3's schedule
    # everything on the compressed trials' scale is anchored at their lowest value, 0.515
    assert row["best_value"] == 0.515
    comp = rep.tables["comparison"].set_index("label")
    assert (comp["vs_best"] >= 0).all()  # no trial is better than the best
    assert comp.loc["best", "trial"] == 3
    assert comp.loc["best", "vs_best"] == pytest.approx(0.53 / 0.515 - 1)
    assert comp.loc[A.ROLE_NO_WARMUP, "vs_best"] == pytest.approx(0.61 / 0.515 - 1)
    # within 1% of 0.515: trials 4 (warmup 20) and 0, not 3 (0.53, warmup 40)
    assert (row["warmup_steps_low"], row["warmup_steps_high"]) == (20, suggestion.warmup_steps)
    # the chosen trial and its full-length value, on the full run's scale, labelled so
    assert row["chosen_trial"] == 3 and row["chosen_full_value"] == 0.6
    assert row["metric"] == (
        "best_value and the trials' values: final validation loss of a 100-step trial; "
        "chosen_full_value: the same at the end of a full-length run (the chosen trial's "
        "confirmation)"
    )
    history = rep.figures["history"]
    best_so_far = next(s for s in history.series if s.label == "best so far")
    assert min(best_so_far.y) == row["best_value"]
    assert "chosen trial 3" in history.caption
    assert any(n.startswith("Trial 3 is chosen by its full-length value (0.6)") for n in rep.notes)
    assert any("trial 4 is lowest (0.515 against 0.53)" in n for n in rep.notes)
    page = rep.to_markdown()
    assert "| best value (best of the completed trials) | 0.515 |" in page
    assert "| chosen trial's full-length value | 0.6 |" in page
    # a study whose confirmation kept the lowest compressed trial needs no such note
    study = make_study(suggestion, n_trials=7)
    _confirm(study, {4: T.COMPLETE, 0: T.COMPLETE})
    rep = autowarm.report(study)
    assert rep.summary["chosen_trial"] == 4 and rep.summary["best_value"] == 0.515
    assert rep.summary["chosen_full_value"] == pytest.approx(0.615)
    assert not any("chosen by its full-length value" in n for n in rep.notes)


# ---------------------------------------------------------------------------- value's sign
def _shifted(s: autowarm.Suggestion, offset: float) -> optuna.Study:
    """The study of :func:`make_study` with ``offset`` added to every value (same order)."""
    base = make_study(s)
    study = optuna.create_study(study_name=base.study_name, direction="minimize")
    for key, value in base.user_attrs.items():
        study.set_user_attr(key, value)
    for t in base.trials:
        if t.value is not None:
            t.value += offset
        study.add_trial(t)
    return study


def test_negative_values_compare_relative_to_the_best_magnitude(
    suggestion: autowarm.Suggestion,
) -> None:
    # lower is better, below zero (e.g. -1/(1 + mse)): best -0.585 (trial 4)
    rep = autowarm.report(_shifted(suggestion, -1.1))
    comp = rep.tables["comparison"].set_index("label")
    best = 0.515 - 1.1
    assert comp.loc["best", "trial"] == 4 and comp.loc["best", "vs_best"] == 0.0
    assert comp.loc[A.ROLE_NO_WARMUP, "vs_best"] == pytest.approx((0.61 - 1.1 - best) / -best)
    assert comp.loc[A.ROLE_PROBE, "vs_best"] > 0  # worse than the best: positive, any sign
    assert comp["vs_best"].notna().all()
    row = rep.summary
    # within 1% of |best| (0.00585): trials 4 (-0.585) and 0 (-0.58), not 3 (-0.57)
    assert (row["warmup_steps_low"], row["warmup_steps_high"]) == (20, suggestion.warmup_steps)
    assert row["peak_lr_low"] == suggestion.peak_lr
    assert row["range_rule"].startswith("completed trials within 1% of the best value")
    assert "magnitude" in row["range_rule"]


def test_a_best_value_of_zero_says_why_nothing_is_relative(
    suggestion: autowarm.Suggestion,
) -> None:
    rep = autowarm.report(_shifted(suggestion, -0.515))
    assert rep.summary["best_value"] == 0.0
    assert rep.tables["comparison"]["vs_best"].isna().all()
    assert rep.summary["range_rule"] == "" and rep.summary["warmup_steps_low"] == -1
    assert any("best value is exactly 0" in n for n in rep.notes)
    page = rep.to_markdown()
    assert "near-best rule" not in page and "best value is exactly 0" in page


# ---------------------------------------------------------------------------- plain studies
def _plain(direction: str, values: list[float]) -> optuna.Study:
    """A study made with optuna alone: peak_lr and warmup_steps as params, one value each."""
    study = optuna.create_study(study_name="plain", direction=direction)
    for i, value in enumerate(values):
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                params={"peak_lr": 10.0 ** -(i + 1), "warmup_steps": 10 * i},
                distributions={
                    "peak_lr": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True),
                    "warmup_steps": optuna.distributions.IntDistribution(0, 100),
                },
            )
        )
    return study


def test_a_maximized_study_reports_its_highest_trial_as_the_best() -> None:
    rep = autowarm.report(_plain("maximize", [0.2, 0.9, 0.895, 0.5]))
    row = rep.summary
    assert row["chosen_by"] == "study: trial 1, the best of 4 completed"
    assert row["best_value"] == 0.9 and row["chosen_trial"] == 1
    # within 1% of 0.9, below it: trials 1 and 2
    assert (row["warmup_steps_low"], row["warmup_steps_high"]) == (10, 20)
    assert row["peak_lr_low"] == pytest.approx(1e-3) and row["peak_lr_high"] == pytest.approx(0.01)
    assert "maximised" in row["metric"]
    comp = rep.tables["comparison"].set_index("label")
    assert comp.loc["best", "trial"] == 1 and comp.loc["best", "vs_best"] == 0.0
    best_so_far = next(s for s in rep.figures["history"].series if s.label == "best so far")
    assert best_so_far.y == (0.2, 0.9, 0.9, 0.9)
    assert rep.figures["history"].caption.startswith("Higher is better")
    chosen = next(s for s in rep.figures["trials_scatter"].series if s.label == "best")
    assert chosen.x == (10.0,)
    assert any("maximises" in n for n in rep.notes)
    assert relative_to_best(0.5, 0.9, maximize=True) == pytest.approx(0.4 / 0.9)
    assert relative_to_best(-1.5, -1.0, maximize=True) == pytest.approx(0.5)
    # a minimised plain study still takes its lowest
    assert autowarm.report(_plain("minimize", [0.2, 0.9, 0.5])).summary["chosen_trial"] == 0


def test_a_best_value_of_minus_one_is_shown_on_the_page() -> None:
    rep = autowarm.report(_plain("minimize", [0.5, -1.0]))
    assert rep.summary["best_value"] == -1.0
    label = "best value (best of the completed trials)"
    assert f"| {label} | -1 |" in rep.to_markdown()
    assert f"<tr><th>{label}</th><td>-1</td></tr>" in rep._html({})
    # the best trial's own peak LR and warmup, read from its params, head the page too
    assert rep.summary["warmup_steps"] == 10 and rep.summary["peak_lr"] == 1e-2
    assert "| warmup (steps) | 10 |" in rep.to_markdown()
    # the -1 of an unknown int stays off the page: a plain study without such params
    bare = optuna.create_study()
    bare.add_trial(optuna.trial.create_trial(value=1.0))
    assert "| warmup (steps) |" not in autowarm.report(bare).to_markdown()


def test_a_multi_objective_study_is_refused_with_what_is_supported(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'multi.db'}"
    study = optuna.create_study(
        study_name="multi", storage=url, directions=["minimize", "maximize"]
    )
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), 2)
    message = r"study 'multi' has 2 objectives \(minimize, maximize\): a report reads "
    with pytest.raises(ValueError, match=message + "single-objective studies"):
        autowarm.report(study)
    with pytest.raises(ValueError, match="pass a study with one objective"):
        autowarm.report((url, "multi"))


# ---------------------------------------------------------------------------- regret
def _grid(path: Path, total: int = 1000) -> Path:
    rows = []
    for lr, loss0 in ((0.001, 2.0), (0.01, 1.0), (0.1, 1.5)):
        for w, extra in ((0, 0.2), (100, 0.0)):
            for seed in (0, 1):
                rows.append(
                    {
                        "task": "toy",
                        "peak_lr": lr,
                        "warmup_steps": w,
                        "warmup_frac": w / total,
                        "total_steps": total,
                        "seed": seed,
                        "final_val_loss": loss0 + extra,
                        "diverged": False,
                    }
                )
    pd.DataFrame(rows).to_csv(path / "oracle_grid.csv", index=False)
    return path


def test_regret_for_a_probe(suggestion: autowarm.Suggestion, tmp_path: Path) -> None:
    rep = autowarm.report(suggestion, benchmark=_grid(tmp_path), task="toy")
    reg = rep.tables["regret"]
    assert list(reg.columns) == list(REGRET_COLUMNS)
    assert_plain(reg)
    no_warmup = reg.set_index("label").loc[A.ROLE_NO_WARMUP]
    lrs = np.array([0.001, 0.01, 0.1])
    nearest = lrs[np.argmin(abs(np.log(lrs) - math.log(suggestion.peak_lr)))]
    assert no_warmup["grid_peak_lr"] == nearest and no_warmup["grid_warmup_steps"] == 0
    assert no_warmup["oracle_best_loss"] == 1.0
    best_of_row = {0.001: 2.0, 0.01: 1.0, 0.1: 1.5}[float(nearest)]
    assert no_warmup["grid_regret"] == pytest.approx((best_of_row + 0.2) / 1.0 - 1)
    assert math.isnan(no_warmup["value_regret"])  # nothing was trained
    # the suggestion is for TOTAL (400) steps, the grid ran 1000: the page says what that means
    assert any("run of 400 steps, and the grid of 'toy' ran 1000" in n for n in rep.notes)
    same = autowarm.report(suggestion, benchmark=_grid(tmp_path, total=TOTAL), task="toy")
    assert not any("the grid of 'toy' ran" in n for n in same.notes)


def test_regret_for_a_study_needs_same_length_for_value(
    suggestion: autowarm.Suggestion, tmp_path: Path
) -> None:
    study = make_study(suggestion)
    study.set_user_attr(A.TASK, "bench:toy")
    reg = autowarm.report(study, benchmark=_grid(tmp_path)).tables["regret"]
    assert reg["value_regret"].isna().all()  # 100-step trials against a 1000-step grid
    _grid(tmp_path, total=TRIAL_STEPS)
    reg = autowarm.report(study, benchmark=tmp_path).tables["regret"].set_index("label")
    assert reg.loc["best", "value_regret"] == pytest.approx(0.515 / 1.0 - 1)


def test_regret_needs_a_task(suggestion: autowarm.Suggestion, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs the benchmark task"):
        autowarm.report(suggestion, benchmark=_grid(tmp_path))
    with pytest.raises(ValueError, match="no rows for task='other'"):
        autowarm.report(suggestion, benchmark=tmp_path, task="other")
    with pytest.raises(FileNotFoundError, match="no oracle grid"):
        autowarm.report(suggestion, benchmark=tmp_path / "missing", task="toy")


def test_a_benchmark_that_is_not_a_grid_csv_is_one_line_naming_it(
    suggestion: autowarm.Suggestion, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autowarm.cli import main

    path = suggestion.save(tmp_path / "s.json")
    out = tmp_path / "out"
    assert main(["report", str(path), "--benchmark", str(path), "--task", "toy", "-o", str(out)])
    err = capsys.readouterr().err
    assert err.startswith(f"autowarm: error: {path} is not an oracle grid CSV")
    assert "`autowarm bench grid`" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_broken_regret_csv_beside_the_grid_is_named(
    suggestion: autowarm.Suggestion, tmp_path: Path
) -> None:
    grid = _grid(tmp_path)
    regret_csv = grid.parent / "regret.csv" if grid.is_file() else grid / "regret.csv"
    for text, why in (
        ("task,method\ntoy,a\nb,c,d,e,f\n", "cannot be read as CSV"),
        ("", "it is empty"),
        ("task,value\ntoy,1\n", "lacks the columns"),
    ):
        regret_csv.write_text(text)
        with pytest.raises(
            ValueError, match="is not the regret table `autowarm bench regret`"
        ) as e:
            autowarm.report(suggestion, benchmark=grid, task="toy")
        assert why in str(e.value)


def test_task_without_a_benchmark_is_refused(
    suggestion: autowarm.Suggestion, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # --task names the rows of the benchmark's grid: alone, it was silently ignored
    from autowarm.cli import main

    path = suggestion.save(tmp_path / "s.json")
    out = tmp_path / "out"
    assert main(["report", str(path), "--task", "nosuch", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("autowarm: error: --task nosuch goes with --benchmark")
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.copy_study(
        from_study_name="night", from_storage=make_study(suggestion)._storage, to_storage=url
    )
    assert main(["report", "--storage", url, "--task", "toy", "-o", str(out)]) == 1
    assert "--task toy goes with --benchmark" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "with --benchmark" in " ".join(capsys.readouterr().out.split())


def test_report_in_python_refuses_a_task_without_a_benchmark(
    suggestion: autowarm.Suggestion, study: optuna.Study
) -> None:
    for source in (suggestion, study):
        with pytest.raises(ValueError, match=r"task='toy' goes with benchmark .* leave task out"):
            autowarm.report(source, task="toy")


def test_report_to_dash_is_refused_not_a_folder_named_dash(
    suggestion: autowarm.Suggestion,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from autowarm.cli import main

    path = suggestion.save(tmp_path / "s.json")
    monkeypatch.chdir(tmp_path)  # where a folder named "-" would be made
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["report", str(path), "-o", "-"]) == 1
    assert "a report is a folder of files" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---------------------------------------------------------------------------- wrong sources
def test_clear_errors_for_wrong_files(suggestion: autowarm.Suggestion, tmp_path: Path) -> None:
    sched = suggestion.schedule.save(tmp_path / "schedule.json")
    with pytest.raises(ValueError, match="is a schedule config, not a suggestion"):
        autowarm.report(sched)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something"}))
    with pytest.raises(ValueError, match=r"format must be 'autowarm\.suggestion'"):
        autowarm.report(other)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a suggestion JSON file"):
        autowarm.report(bad)
    with pytest.raises(FileNotFoundError, match="no such suggestion file"):
        autowarm.report(tmp_path / "nope.json")
    with pytest.raises(TypeError, match="source must be"):
        autowarm.report(42)


def test_a_suggestion_with_a_byte_order_mark_is_read(
    suggestion: autowarm.Suggestion, tmp_path: Path
) -> None:
    # Suggestion.load reads one (Windows editors write it); the report took it for YAML
    path = suggestion.save(tmp_path / "bom.json")
    path.write_text(path.read_text(encoding="utf-8"), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    rep = autowarm.report(path)
    assert rep.summary["warmup_steps"] == suggestion.warmup_steps
    assert "trace" in rep.tables  # its .trace.csv beside it was found
    sched = suggestion.schedule.save(tmp_path / "schedule.json")
    sched.write_text(sched.read_text(encoding="utf-8"), encoding="utf-8-sig")
    with pytest.raises(ValueError, match="is a schedule config, not a suggestion"):
        autowarm.report(sched)


def test_unknown_study_lists_studies(study: optuna.Study, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    for name in ("alpha", "beta"):
        optuna.create_study(study_name=name, storage=url)
    with pytest.raises(
        ValueError, match=r"no study 'gamma'.*the studies there: \['alpha', 'beta'\]"
    ):
        autowarm.report((url, "gamma"))
    empty = autowarm.report((url, "alpha"))  # no trial: not "complete" in a green box
    assert empty.status == "no_result" and "holds no trial" in empty.status_text


def test_missing_storage_file_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "typo.db"
    with pytest.raises(ValueError, match="does not exist"):
        autowarm.report((f"sqlite:///{db}", "night"))
    assert not db.exists()


def test_a_benchmark_method_without_a_schedule_is_listed_not_placed(tmp_path: Path) -> None:
    # `bench regret` rows of a method whose probe found no usable LR on a seed: no peak to
    # place on the grid; the row says so instead of failing the report
    from autowarm.bench._grid import COLUMNS as GRID_COLUMNS
    from autowarm.reporting._regret import regret_table

    grid = [
        {
            "task": "control_convex", "peak_lr": lr, "warmup_steps": w, "warmup_frac": w / 2000,
            "total_steps": 2000, "seed": s, "final_val_loss": 1.0 + lr + w / 1e4,
            "diverged": False, "seconds": 1.0, "seconds_per_step": 1e-3,
            "autowarm_version": "x", "torch_version": "y",
        }
        for lr in (0.001, 0.004, 0.016) for w in (0, 200) for s in (0, 1)
    ]  # fmt: skip
    pd.DataFrame(grid, columns=list(GRID_COLUMNS)).to_csv(tmp_path / "oracle_grid.csv")
    pd.DataFrame(
        [
            {
                "task": "control_convex",
                "method": "autowarm",
                "peak_lr": math.nan,
                "warmup_steps": math.nan,
                "mean_val_loss": math.inf,
            },
            {
                "task": "control_convex",
                "method": "hf_default",
                "peak_lr": 5e-5,
                "warmup_steps": 0.0,
                "mean_val_loss": 1.5,
            },
        ]
    ).to_csv(tmp_path / "regret.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = regret_table(tmp_path, "control_convex", [])
    assert list(table["label"]) == [
        "benchmark: autowarm (no schedule on some seed)",
        "benchmark: hf_default",
    ]
    assert math.isinf(table.loc[0, "value"]) and math.isnan(table.loc[0, "grid_peak_lr"])
    assert table.loc[1, "grid_peak_lr"] == 0.001


def test_a_best_that_diverged_at_full_length_is_no_anchor_and_not_called_confirmed(
    suggestion: autowarm.Suggestion,
) -> None:
    # The lowest compressed trial diverged when confirmed: the chosen trial is the best of the
    # others, unconfirmed; the caption said "chosen by its full-length confirmation run", and
    # best_value, vs_best and the near-best range were anchored on the diverged schedule.
    study = make_study(suggestion, n_trials=7)
    values = {t.number: t.value for t in study.trials if t.value is not None}
    lowest = min(values, key=lambda n: values[n])
    _confirm(study, {lowest: optuna.trial.TrialState.COMPLETE}, full={lowest: float("inf")})
    rep = autowarm.report(study)
    chosen = int(rep.summary["chosen_trial"])
    assert chosen != lowest and not np.isfinite(rep.summary["chosen_full_value"])
    assert rep.summary["best_value"] == values[chosen]
    history = rep.figures["history"]
    assert "full-length confirmation run" not in history.caption
    assert "did not diverge when confirmed at full length" in history.caption
    best = rep.tables["comparison"].set_index("label").loc["best"]
    assert best["vs_best"] == 0.0


def test_a_study_whose_every_trial_failed_has_no_result() -> None:
    # "Complete: 0 trials finished (1 more failed, which do not count)", in the green box
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    rep = autowarm.report(study)
    assert rep.status == "no_result" and "every trial failed" in rep.status_text


def test_the_value_axis_says_what_the_study_measures(suggestion: autowarm.Suggestion) -> None:
    # it said "final validation loss" for a task without validation data, and for a plain
    # study of accuracy
    study = make_study(suggestion)
    study.set_user_attr(A.METRIC, "mean training loss over the last tenth of the trial")
    rep = autowarm.report(study)
    assert rep.figures["history"].ylabel == (
        "trial value: mean training loss over the last tenth of the trial (task units)"
    )
    assert rep.figures["trials_scatter"].colorbar_label == rep.figures["history"].ylabel
    plain = _plain("maximize", [0.5, 0.7])
    assert autowarm.report(plain).figures["history"].ylabel == (
        "trial value (the study's objective)"
    )


def test_a_low_confidence_probe_is_said_first(suggestion: autowarm.Suggestion) -> None:
    low = dataclasses.replace(
        suggestion, confidence="low", low_confidence_reasons=("the budget was too short",)
    )
    rep = autowarm.report(low)
    assert rep.notes[0].startswith("LOW CONFIDENCE: the probe could not decide firmly (the "
                                   "budget was too short)")  # fmt: skip
    assert rep.status_text.startswith("A probe with LOW confidence")
    assert (
        not autowarm.report(suggestion).notes or "LOW" not in autowarm.report(suggestion).notes[0]
    )


def test_the_2_over_1_minus_beta2_reference_reads_the_training_record_without_a_trace(
    suggestion: autowarm.Suggestion,
) -> None:
    # a suggestion.json loaded without its CSVs dropped the reference row
    bare = dataclasses.replace(suggestion, trace=pd.DataFrame(), signals=pd.DataFrame())
    labels = set(autowarm.report(bare).tables["comparison"]["label"])
    assert A.ROLE_UNTUNED in labels


def test_one_far_pruned_value_does_not_squash_the_history(suggestion: autowarm.Suggestion) -> None:
    study = make_study(suggestion)
    trial = study.ask()
    trial.report(3e4, 10)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    history = autowarm.report(study).figures["history"]
    assert history.ylim is not None and history.ylim[1] < 1e3
    pruned = next(s for s in history.series if s.label.startswith("pruned"))
    assert max(pruned.y) == history.ylim[1] and "drawn at its edge" in history.caption
    # the legend no longer says the point is at its value
    assert pruned.label == "pruned/failed (last reported value; off-range ones at the edge)"
