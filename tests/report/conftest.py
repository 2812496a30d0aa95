"""Fixtures of the report tests: a real probe on a tiny model, and hand-built studies.

The studies are written with plain optuna and the attribute names of ``autowarm.study._attrs``
(the contract ``autowarm tune`` writes), covering every trial state a report meets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autowarm
from autowarm.study import _attrs as A

TOTAL = 400
TRIAL_STEPS = 100


@pytest.fixture(scope="session")
def suggestion() -> Iterator[autowarm.Suggestion]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    s = autowarm.suggest(
        model,
        batches,
        criterion=F.cross_entropy,
        total_steps=TOTAL,
        budget_steps=60,
        progress=False,
    )
    torch.set_num_threads(before)
    yield s


def _schedule(s: autowarm.Suggestion, warmup: int, peak: float | None = None) -> dict[str, Any]:
    d = s.schedule.to_dict()
    d.update(warmup_steps=warmup, peak_lr=peak if peak is not None else s.peak_lr)
    return d


def _trial(
    s: autowarm.Suggestion,
    role: str,
    warmup: int,
    peak: float | None = None,
    *,
    state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE,
    value: float | None = None,
    reason: str | None = None,
    minutes: float = 2.0,
) -> optuna.trial.FrozenTrial:
    peak = s.peak_lr if peak is None else peak
    attrs: dict[str, Any] = {
        A.ROLE: role,
        A.SCHEDULE: _schedule(s, warmup, peak),
        A.PEAK_LR: peak,
        A.WARMUP_STEPS: warmup,
        A.WORKER: "host:1:0",
    }
    if reason is not None:
        attrs[A.REASON] = reason
    running = state == optuna.trial.TrialState.RUNNING
    start = dt.datetime(2026, 1, 1, 2, 0)
    trial = optuna.trial.create_trial(
        state=state,
        value=value,
        params={"warmup_frac": warmup / TOTAL, "peak_lr": peak},
        distributions={
            "warmup_frac": optuna.distributions.FloatDistribution(0.0, 1.0),
            "peak_lr": optuna.distributions.FloatDistribution(1e-6, 100.0, log=True),
        },
        user_attrs=attrs,
        intermediate_values={25: 1.0, 50: 0.8}
        if state != optuna.trial.TrialState.COMPLETE
        else {25: 1.0, 50: 0.7, 100: value or 0.6},
    )
    trial.datetime_start = start
    trial.datetime_complete = None if running else start + dt.timedelta(minutes=minutes)
    return trial


def make_study(
    s: autowarm.Suggestion, *, running: bool = False, n_trials: int | None = None
) -> optuna.Study:
    """An ``autowarm tune``-shaped study: the probe, three references, search trials, one
    pruned and one failed trial, and (``running``) one still running."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="night", direction="minimize")
    ua = {
        A.FORMAT: A.STUDY_FORMAT,
        A.FORMAT_VERSION: A.STUDY_FORMAT_VERSION,
        A.TASK: "bench:postln_lm",
        A.SEED: 0,
        A.TOTAL_STEPS: TOTAL,
        A.TRIAL_STEPS: TRIAL_STEPS,
        A.N_TRIALS: n_trials,
        A.BASE_SCHEDULE: s.schedule.to_dict(),
        A.SUGGESTION: {
            **s.to_dict(),
            "trace": s.trace.to_dict("records"),
            "signals": s.signals.to_dict("records"),
        },
        A.METRIC: "final validation loss of a 100-step trial",
    }
    for k, v in ua.items():
        study.set_user_attr(k, v)
    T = optuna.trial.TrialState
    trials = [
        _trial(s, A.ROLE_PROBE, s.warmup_steps, value=0.52),
        _trial(s, A.ROLE_NO_WARMUP, 0, value=0.61),
        _trial(s, A.ROLE_UNTUNED, 400, value=0.58),
        _trial(s, A.ROLE_TEN_PERCENT, 40, value=0.53),
        _trial(s, A.ROLE_SEARCH, 20, s.peak_lr * 2, value=0.515),
        _trial(s, A.ROLE_SEARCH, 60, s.peak_lr / 2, value=0.55),
        _trial(s, A.ROLE_SEARCH, 5, s.peak_lr * 8, state=T.PRUNED, reason="pruned at step 50"),
        _trial(s, A.ROLE_SEARCH, 100, s.peak_lr * 20, state=T.FAIL, reason="loss is nan"),
    ]
    if running:
        trials.append(_trial(s, A.ROLE_SEARCH, 30, s.peak_lr, state=T.RUNNING))
    for t in trials:
        study.add_trial(t)
    return study


@pytest.fixture
def study(suggestion: autowarm.Suggestion) -> optuna.Study:
    return make_study(suggestion)
