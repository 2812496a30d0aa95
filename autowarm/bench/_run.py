"""One full training run of a benchmark task under a schedule: the unit the oracle grid repeats.

The update itself is :func:`autowarm._train.train_step`, the same function the probe and the
study use, so the benchmark measures the schedule and nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autowarm._train import (
    LossFn,
    StepResult,
    mean_loss,
    model_device,
    seeded_stream,
    train_step,
)
from autowarm.bench.tasks import BenchTask
from autowarm.probe._state import seeded_rngs
from autowarm.schedules import ScheduleConfig

__all__ = ["DIVERGENCE_FACTOR", "RunResult", "evaluate", "run_schedule"]

DIVERGENCE_FACTOR = 10.0
"""A run whose final validation loss is at least this multiple of the initial one diverged."""

OnStep = Callable[[int, float, StepResult], None]


@dataclass(frozen=True)
class RunResult:
    """The outcome of :func:`run_schedule`.

    Attributes:
        final_val_loss:
            Mean validation loss after the last step (``inf`` when the run diverged).
        diverged:
            A training loss was not finite (the run stopped there), or the final validation
            loss was not finite or at least ``divergence_factor`` times the initial one.
        seconds:
            Wall time of the training steps (validation excluded).
        steps:
            Training steps run (fewer than ``total_steps`` when the run stopped early; the
            last one is then the step whose loss or gradient was not finite, which made no
            update but took its time).
        seconds_per_step:
            ``seconds / steps``.
        initial_val_loss:
            Mean validation loss of the freshly built model.
    """

    final_val_loss: float
    diverged: bool
    seconds: float
    steps: int
    seconds_per_step: float
    initial_val_loss: float


def evaluate(model: nn.Module, batches: Iterable[Any], loss_fn: LossFn) -> float:
    """Mean loss over ``batches`` in eval mode without gradients; the mode is restored. Each
    batch's loss counts for its samples (:func:`~autowarm._train.sample_mean`)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return mean_loss(
                model,
                batches,
                loss_fn,
                empty="the validation data yielded no batches; pass at least one batch",
            )
    finally:
        model.train(was_training)


def _positive(task: BenchTask, value: float, when: str) -> float:
    # Regret (and the divergence test) are ratios of losses: a metric at or below 0 would
    # read as diverged or flip the sign of every regret.
    if math.isfinite(value) and value <= 0:
        raise ValueError(
            f"task {task.name!r}: the benchmark compares validation losses by their ratio "
            f"(regret = loss / best - 1), so they must be > 0, but it is {value:.4g} {when}; "
            "give the task a validation loss > 0 for the benchmark (e.g. val_data scored by "
            "its loss instead of an eval_fn that can be 0 or negative)"
        )
    return value


def _initial_loss(task: BenchTask, model: nn.Module) -> float:
    # The validation loss at the initial weights: finite and > 0, or the task is broken (a
    # NaN in its validation data, an eval_fn that cannot score), not the schedule.
    value = task.validation_loss(model)
    if not math.isfinite(value):
        raise ValueError(
            f"task {task.name!r}: the validation loss at the initial weights is {value}, "
            "before any training: check the validation data (a NaN in it?) or the eval_fn"
        )
    return _positive(task, value, "at the initial weights")


def check_runnable(task: BenchTask) -> None:
    """Score ``task`` once before its runs: its validation at the initial weights (finite and
    above 0) and one training step on its first batch (at LR 0, on a throwaway model), so a
    mistake in a task stops the command with one error instead of failing every run.

    Raises:
        ValueError, TypeError: what the task got wrong, as a run would raise it.
    """
    with seeded_rngs(0):
        try:
            model = task.make_model(0)
            _initial_loss(task, model)
            optimizer = task.make_optimizer(model.parameters(), 0.0)
            with seeded_stream(task.train_data(0), model_device(model), 0) as stream:
                result = train_step(model, optimizer, stream.next(), task.resolved_loss_fn())
        except Exception as exc:
            if str(exc).startswith(f"task {task.name!r}"):
                raise  # already says whose
            # the task's own code raised ("KeyError: 1" alone names neither task nor file)
            said = (
                f"task {task.name!r} fails when scored once before its runs (its validation "
                f"and one training step at the initial weights): {type(exc).__name__}: {exc}"
            )
            try:
                again = type(exc)(said)
            except Exception:
                again = RuntimeError(said)
            raise again from exc
        if not result.finite:
            raise ValueError(
                f"task {task.name!r}: the training loss of its first batch at the initial "
                f"weights is {result.loss}: check the training data (a NaN in it?) and the loss"
            )


def run_schedule(
    task: BenchTask,
    schedule: ScheduleConfig,
    seed: int,
    *,
    optimizer_cls: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
    on_step: OnStep | None = None,
    divergence_factor: float = DIVERGENCE_FACTOR,
) -> RunResult:
    """Train ``task`` from scratch for ``schedule.total_steps`` steps along ``schedule``.

    A fresh model is built from ``seed``, the task's optimizer is driven by
    ``schedule.lambda_lr``, and each update is one :func:`autowarm._train.train_step` on the
    next batch of the task's seeded stream (with the task's ``grad_clip``). Torch's, numpy's
    and python's global generators are seeded for the run and restored afterwards, so a run is
    a deterministic function of ``(task, schedule, seed)`` on one machine.

    Args:
        task:
            The benchmark task.
        schedule:
            The LR schedule; its ``total_steps`` sets the run length (normally the task's).
        seed:
            Seeds the model initialisation and the training data stream.
        optimizer_cls:
            Optimizer class taking ``lr`` and the task's ``optimizer_kwargs``.
        on_step:
            Called after each update as ``on_step(step, lr, result)`` with the step index
            (from 0), the LR used and the :class:`~autowarm._train.StepResult`.
        divergence_factor:
            Final/initial validation loss ratio from which the run counts as diverged.

    Returns:
        The :class:`RunResult`.

    Raises:
        ValueError: If ``divergence_factor`` is not above 1.
    """
    if not divergence_factor > 1.0:
        raise ValueError(
            "divergence_factor must be a float > 1, but got "
            f"divergence_factor={divergence_factor!r}"
        )
    with seeded_rngs(seed):
        return _run(task, schedule, seed, optimizer_cls, on_step, divergence_factor)


def _run(
    task: BenchTask,
    schedule: ScheduleConfig,
    seed: int,
    optimizer_cls: Callable[..., torch.optim.Optimizer],
    on_step: OnStep | None,
    divergence_factor: float,
) -> RunResult:
    model = task.make_model(seed)
    loss_fn = task.resolved_loss_fn()
    initial = _initial_loss(task, model)
    optimizer = task.make_optimizer(model.parameters(), schedule.peak_lr, optimizer_cls)
    scheduler = schedule.lambda_lr(optimizer)
    diverged, steps = False, 0
    start = time.perf_counter()
    with seeded_stream(task.train_data(seed), model_device(model), seed) as stream:
        for step in range(schedule.total_steps):
            lr = float(optimizer.param_groups[0]["lr"])
            batch = stream.next()
            result = train_step(model, optimizer, batch, loss_fn, grad_clip=task.grad_clip)
            steps += 1
            if on_step is not None:
                on_step(step, lr, result)
            if not result.finite:
                diverged = True
                break
            scheduler.step()
    seconds = time.perf_counter() - start
    final = math.inf if diverged else _positive(task, task.validation_loss(model), "after the run")
    if not math.isfinite(final) or final >= divergence_factor * initial:
        diverged, final = True, math.inf
    return RunResult(
        final_val_loss=final,
        diverged=diverged,
        seconds=seconds,
        steps=steps,
        seconds_per_step=seconds / max(steps, 1),
        initial_val_loss=initial,
    )
