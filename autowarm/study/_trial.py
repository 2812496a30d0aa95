"""One trial: the whole schedule compressed into ``trial_steps``, trained from a fresh model.

A trial never truncates a long schedule (that favours low peak LRs, because the run stops
before the decay): it squeezes warmup, peak and decay into ``trial_steps`` optimizer steps.
How a full-run warmup maps into the short run is the *warmup transfer* rule:

``"fraction"`` (default)
    The trial warms up for the same fraction of its length as the real run:
    ``round(warmup_steps * trial_steps / total_steps)``.
``"absolute"``
    The trial warms up for the same number of steps (capped below ``trial_steps``): Adam's
    second moment settles in a number of steps, not a fraction of the run.

``autowarm bench tune`` measures which rule ranks schedules more like full-length runs.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from autowarm._checks import is_int
from autowarm._train import mixed_precision, model_device, seeded_stream, train_step
from autowarm.probe._state import loss_modules, preserved, seeded_rngs
from autowarm.schedules import Decay, ScheduleConfig
from autowarm.study._space import longest_warmup
from autowarm.study._task import Task

__all__ = ["TRANSFERS", "TrialOutcome", "compress", "train_trial"]

WarmupTransfer = Literal["fraction", "absolute"]
TRANSFERS: tuple[str, ...] = ("fraction", "absolute")

EVALS_PER_TRIAL = 8
"""Validation points of a trial (for pruning), the last one at its final step."""
SMOOTHING = 0.5
"""Weight of the previous smoothed value in the reported validation loss (debiased EMA)."""

OnEval = Callable[[int, float], None]


def compress(
    schedule: ScheduleConfig, trial_steps: int, transfer: WarmupTransfer = "fraction"
) -> ScheduleConfig:
    """``schedule`` squeezed into ``trial_steps`` steps, its warmup (and an ``inverse_sqrt``
    decay's time scale) mapped by ``transfer``, and at most the longest the trial holds
    (:func:`~autowarm.study._space.longest_warmup`: one update at the peak, and room for a
    ``warmup_stable_decay`` schedule's final decay).

    Raises:
        ValueError: For an unknown ``transfer`` or ``trial_steps < 2``.
    """
    if transfer not in TRANSFERS:
        raise ValueError(f"warmup transfer must be one of {TRANSFERS}, but got {transfer!r}")
    if not is_int(trial_steps) or trial_steps < 2:
        raise ValueError(f"trial_steps must be an int >= 2, but got trial_steps={trial_steps!r}")
    if transfer == "fraction":
        warmup = round(schedule.warmup_steps * trial_steps / schedule.total_steps)
    else:
        warmup = schedule.warmup_steps
    short = schedule.replace(total_steps=trial_steps, warmup_steps=0)
    if schedule.decay is Decay.INVERSE_SQRT:
        # its decay runs on a time scale in steps (by default the warmup's, or 10000 without
        # one): mapped like the warmup, and always set, so a warmup that rounds to 0 in the
        # trial does not fall back to 10000 steps, under which a short trial barely decays
        timescale = schedule.effective_timescale
        if transfer == "fraction":
            timescale = max(1, round(timescale * trial_steps / schedule.total_steps))
        short = short.replace(timescale=timescale)
    # at most what the trial holds (an absolute warmup may be longer than the whole trial)
    return short.replace(warmup_steps=min(warmup, longest_warmup(short)))


@dataclass(frozen=True)
class TrialOutcome:
    """What :func:`train_trial` measured.

    Attributes:
        value:
            Final validation loss (or the training-loss tail without validation); ``inf``
            when the run diverged.
        diverged_at:
            The step whose loss or gradient was not finite, or after which the validation
            loss was not; ``None`` when the trial ran to its end.
        steps:
            Training steps run: ``total_steps`` for a finished trial; for one stopped early,
            up to and including the step whose loss or gradient was not finite (which made
            no update), or the updates before a validation that was not.
        seconds:
            Wall time of the whole trial, evaluation included.
        in_validation:
            Whether it was the validation loss that was not finite (the training loss was).
    """

    value: float
    diverged_at: int | None
    steps: int
    seconds: float
    in_validation: bool = False


def eval_steps(trial_steps: int, n_evals: int = EVALS_PER_TRIAL) -> list[int]:
    """The steps (number of updates done) after which a trial evaluates, ending at the last."""
    n = max(1, min(n_evals, trial_steps))
    return sorted({round(trial_steps * (i + 1) / n) for i in range(n)})


def train_trial(
    task: Task,
    schedule: ScheduleConfig,
    seed: int,
    *,
    on_eval: OnEval | None = None,
    n_evals: int = EVALS_PER_TRIAL,
    should_stop: Callable[[], bool] | None = None,
) -> TrialOutcome:
    """Train a fresh ``task`` model for ``schedule.total_steps`` steps along ``schedule``.

    Torch's, numpy's and python's global generators are seeded with ``seed`` for the trial and
    restored afterwards, so a trial is a function of ``(task, schedule, seed)`` on one machine.

    Args:
        task:
            The task.
        schedule:
            The (compressed) schedule; its ``total_steps`` is the trial's length.
        seed:
            Seeds the model and the data order.
        on_eval:
            ``on_eval(step, smoothed_loss)`` after each evaluation, ``step`` being the number of
            updates done; it may raise (``optuna.TrialPruned``) to end the trial.
        n_evals:
            Evaluations over the trial (without validation data, none but the final value).
        should_stop:
            Checked before every step; when it returns true the trial raises
            ``KeyboardInterrupt`` there (a stop requested by a signal, at a safe point).

    Returns:
        The :class:`TrialOutcome`. A non-finite loss or gradient ends the trial early with
        ``value = inf``.
    """
    start = time.perf_counter()
    with seeded_rngs(seed), contextlib.ExitStack() as loss_state:
        model = task.build_model(seed)
        for module in loss_modules(task.loss_fn, task.criterion, model=model):
            # a criterion with weights or buffers of its own is shared by every trial: each
            # trial starts from it as it was, so trials stay independent of their order
            loss_state.enter_context(preserved(module))
        optimizer = task.make_optimizer(model, schedule.peak_lr)
        scheduler = schedule.lambda_lr(optimizer)  # each group at its lr_scale
        loss_fn = task.resolved_loss_fn()
        amp = mixed_precision(task.precision, model, model_device(model))
        # A loader with its own generator is seeded like the global RNG (seeded_stream).
        with seeded_stream(task.data(seed), model_device(model), seed) as stream:
            checkpoints = (
                set(eval_steps(schedule.total_steps, n_evals)) if task.has_validation else set()
            )
            tail_start = schedule.total_steps - max(1, schedule.total_steps // 10)
            tail: list[float] = []
            smoothed, weight = 0.0, 0.0
            value = math.nan
            for step in range(schedule.total_steps):
                if should_stop is not None and should_stop():
                    raise KeyboardInterrupt("stop requested")
                batch = stream.next_update(task.accumulation_steps)
                result = train_step(
                    model, optimizer, batch, loss_fn, grad_clip=task.grad_clip, amp=amp
                )
                if not result.finite:
                    seconds = time.perf_counter() - start
                    return TrialOutcome(math.inf, step, step + 1, seconds)
                if result.skipped:
                    # The schedule advances per iteration, as in torch's AMP recipe; a first
                    # update skipped by the loss scaler is not the misuse torch warns of.
                    with warnings.catch_warnings():
                        warnings.filterwarnings(
                            "ignore",
                            message="Detected call of `lr_scheduler.step",
                            category=UserWarning,
                        )
                        scheduler.step()
                else:
                    scheduler.step()
                if step >= tail_start:
                    tail.append(result.loss)
                done = step + 1
                if done in checkpoints:
                    value = task.evaluate(model)
                    if not math.isfinite(value):
                        seconds = time.perf_counter() - start
                        return TrialOutcome(math.inf, step, done, seconds, in_validation=True)
                    smoothed = SMOOTHING * smoothed + (1 - SMOOTHING) * value
                    weight = SMOOTHING * weight + (1 - SMOOTHING)
                    if on_eval is not None:
                        on_eval(done, smoothed / weight)
            if not task.has_validation:
                value = sum(tail) / len(tail)
                if on_eval is not None:
                    on_eval(schedule.total_steps, value)
    return TrialOutcome(value, None, schedule.total_steps, time.perf_counter() - start)
