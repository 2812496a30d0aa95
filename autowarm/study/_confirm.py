"""Confirmation: the study's best compressed trials, re-run once at full length.

Compressed trials rank schedules well on the whole, but not perfectly: a peak LR that trains in a
short run can fail late in a long one (``reports/benchmark/ranks_summary.md``). With
``tune(confirm=k)``, once the search is done the ``k`` best completed trials (distinct schedules)
are trained once more at the real run's length, and :func:`best_schedule` names the one with the
lowest full-length validation loss.

The full-length runs live in a second study in the same storage, named ``<study>.confirm``, so
their values (on another scale than the compressed trials') never reach the sampler or the
pruner. Each is claimed under the study's setup lock, so several workers or hosts never run the
same confirmation twice; an interrupted one is failed and run again on the next start, as is one
whose process on this host was killed. A running confirmation records optuna's heartbeat in an
RDB storage and a liveness stamp in a journal file (:func:`autowarm.study._storage.keep_alive`),
so one claimed by a host that died is failed once that is older than the grace period and
claimed again by the next worker that gets there.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from autowarm.schedules import ScheduleConfig
from autowarm.study import _attrs, _storage
from autowarm.study._task import Task
from autowarm.study._trial import train_trial

__all__ = [
    "CONFIRM_SUFFIX",
    "candidates",
    "confirm_study",
    "confirmed",
    "confirmed_best",
    "diverged_at_full_length",
    "planned_confirmations",
    "run_confirmations",
    "trial_confirmed_by",
    "unconfirmed",
]

_logger = logging.getLogger("autowarm")

CONFIRM_SUFFIX = ".confirm"
ROLE_CONFIRM = "confirm"
CONFIRMS = _attrs.CONFIRMS
"""Trial user attribute of a confirmation: the number of the study trial it re-runs."""


def _confirm_study(study: optuna.Study, *, create: bool) -> optuna.Study | None:
    name = study.study_name + CONFIRM_SUFFIX
    if create:
        return optuna.create_study(
            storage=study._storage, study_name=name, direction="minimize", load_if_exists=True
        )
    try:
        return optuna.load_study(study_name=name, storage=study._storage)
    except KeyError:
        return None


def candidates(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best completed trials with distinct full-run schedules, best first."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value) and _attrs.SCHEDULE in t.user_attrs
    ]
    chosen: list[FrozenTrial] = []
    seen: list[Mapping[str, object]] = []
    for t in sorted(done, key=lambda t: (t.value, t.number)):
        schedule = t.user_attrs[_attrs.SCHEDULE]
        if schedule in seen:
            continue
        seen.append(schedule)
        chosen.append(t)
        if len(chosen) == k:
            break
    return chosen


def trial_confirmed_by(conf_trial: FrozenTrial, trials: list[FrozenTrial]) -> int | None:
    """The number of the study trial (in ``trials``, the study's) that a confirmation re-ran,
    or ``None`` when it is not that trial's: it trained another schedule, or it started
    before that trial finished. Both mark a confirmation left in ``<name>.confirm`` by a
    deleted study of the same name, whose trial numbers now name other trials."""
    number = conf_trial.user_attrs.get(CONFIRMS)
    if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < len(trials):
        return None
    trial = trials[number]
    schedule = trial.user_attrs.get(_attrs.SCHEDULE)
    if schedule is None or conf_trial.user_attrs.get(_attrs.SCHEDULE) != schedule:
        return None
    started, done = conf_trial.datetime_start, trial.datetime_complete
    if started is not None and done is not None and started < done:
        return None
    return number


def confirmed(study: optuna.Study) -> dict[int, float]:
    """Full-length values of the confirmed trials: ``{study trial number: value}``.

    A confirmation counts only for the trial whose schedule it trained (see
    :func:`trial_confirmed_by`)."""
    conf = _confirm_study(study, create=False)
    if conf is None:
        return {}
    trials = study.get_trials(deepcopy=False)
    out: dict[int, float] = {}
    for t in conf.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        number = trial_confirmed_by(t, trials)
        if number is not None and t.value is not None:
            out[number] = float(t.value)
    return out


def confirm_study(study: optuna.Study) -> optuna.Study | None:
    """The companion study holding ``study``'s full-length confirmations, if it has one."""
    return _confirm_study(study, create=False)


def planned_confirmations(study: optuna.Study) -> int | None:
    """How many confirmations the last ``tune`` run planned (``autowarm.confirm``), or
    ``None`` for a study written before autowarm stored it."""
    planned = study.user_attrs.get(_attrs.CONFIRM)
    if not isinstance(planned, int) or isinstance(planned, bool):
        return None
    return planned


def unconfirmed(study: optuna.Study) -> list[int]:
    """Study trials the last ``tune`` run planned to confirm whose confirmation has not
    finished (the study was stopped before or during them, or is still running), best
    first; ``[]`` when it planned none or the study does not say how many
    (:func:`planned_confirmations`)."""
    planned = planned_confirmations(study)
    if not planned:
        return []
    done = confirmed(study)
    return [t.number for t in candidates(study, planned) if t.number not in done]


def diverged_at_full_length(study: optuna.Study) -> list[int]:
    """Study trials whose confirmation diverged (a non-finite full-length value), ascending.

    Their schedules train at the compressed length but not over the real run, so neither they
    nor another trial with the same schedule may be named the best.
    """
    return sorted(n for n, v in confirmed(study).items() if not math.isfinite(v))


def confirmed_best(study: optuna.Study) -> ScheduleConfig | None:
    """The confirmed schedule with the lowest finite full-length value, if any."""
    values = {n: v for n, v in confirmed(study).items() if math.isfinite(v)}
    if not values:
        return None
    number = min(values, key=lambda n: (values[n], n))
    data = study.trials[number].user_attrs[_attrs.SCHEDULE]
    return ScheduleConfig.from_dict(data)


def run_confirmations(
    task: Task,
    study: optuna.Study,
    k: int,
    *,
    seed: int,
    storage_url: str,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Train each of the ``k`` best trials' schedules at full length (once per study)."""
    conf = _confirm_study(study, create=True)
    assert conf is not None
    for cand in candidates(study, k):
        with _storage.setup_lock(storage_url, conf.study_name):
            # a confirmation whose process died here, or whose heartbeat stopped (another host),
            # is failed, so it is claimed anew
            with _storage.quiet_experimental():
                optuna.storages.fail_stale_trials(conf)
            _storage.fail_dead_trials(conf, requeue_them=False)
            trials = study.get_trials(deepcopy=False)
            claimed = {
                trial_confirmed_by(t, trials)
                for t in conf.get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)
                )
            }
            if cand.number in claimed:
                continue
            with warnings.catch_warnings():
                # optuna warns that heartbeats belong to optimize(); this one beats in keep_alive
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = conf.ask()
            trial.set_user_attr(_attrs.ROLE, ROLE_CONFIRM)
            trial.set_user_attr(CONFIRMS, cand.number)
            trial.set_user_attr(_attrs.SCHEDULE, cand.user_attrs[_attrs.SCHEDULE])
            trial.set_user_attr(_attrs.WORKER, _storage.worker_id())
        schedule = ScheduleConfig.from_dict(cand.user_attrs[_attrs.SCHEDULE])
        _logger.info(
            "confirming trial %d at full length (%d steps): peak_lr %.3g, warmup %d",
            cand.number,
            schedule.total_steps,
            schedule.peak_lr,
            schedule.warmup_steps,
        )
        try:
            with _storage.keep_alive(conf, trial._trial_id, heartbeat=True):
                outcome = train_trial(task, schedule, seed, should_stop=should_stop)
        except BaseException as exc:
            if not _finished_elsewhere(conf, trial._trial_id):
                # the reason, as a search trial's: a stop is run again by the next resume
                reason = (
                    "interrupted (SIGINT/SIGTERM); confirmed again on resume"
                    if isinstance(exc, KeyboardInterrupt)
                    else f"{type(exc).__name__}: {exc}"
                )
                trial.set_user_attr(_attrs.REASON, reason)
                conf.tell(trial, state=TrialState.FAIL)
            raise
        if _finished_elsewhere(conf, trial._trial_id):
            # its heartbeat went stale (a suspended machine?) and another worker failed it,
            # to claim it again: keep that worker's run, drop this one
            _logger.warning(
                "the confirmation of trial %d was finished by another worker while this one "
                "ran it; its result is dropped",
                cand.number,
            )
            continue
        conf.tell(trial, outcome.value)
        _logger.info(
            "trial %d at full length: value %.5g (compressed %.5g)",
            cand.number,
            outcome.value,
            cand.value,
        )


def _finished_elsewhere(study: optuna.Study, trial_id: int) -> bool:
    return study._storage.get_trial(trial_id).state.is_finished()
