"""Running probe bursts: short training runs from the snapshot, recorded step by step.

A burst restores the initial weights, re-seeds torch, numpy and ``random``, restarts the data
from the same batch, builds a fresh optimizer, and trains for a given list of per-step LRs,
recording one trace row per optimizer step. The training step is
``autowarm._train.train_step``, the same one the study and the benchmark use. Every step counts
against the probe's budget.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from autowarm._groups import GroupSpec
from autowarm._train import (
    BatchStream,
    LossFn,
    MicroBatches,
    MixedPrecision,
    add_note,
    describe_batch,
    nan_in_batch,
    train_step,
)
from autowarm.probe._moments import SecondMomentMonitor, has_second_moment
from autowarm.probe._state import ModelSnapshot
from autowarm.schedules import lr_scale_keys

_log = logging.getLogger("autowarm")

# Moment statistics copied into the trace (None when the optimizer has no second moment).
MOMENT_COLUMNS = (
    "beta2",
    "vhat_mean",
    "g2_mean",
    "drift",
    "vhat_change",
    "kappa",
    "n_eff",
    "rel_error",
)


class BudgetExhausted(Exception):
    """Internal: the probe's step budget ran out in the middle of a burst."""


@dataclass
class Budget:
    """Optimizer steps (forward + backward passes) the probe may still take."""

    total: int
    used: int = 0
    on_step: Callable[[], None] | None = None

    @property
    def left(self) -> int:
        return self.total - self.used

    def take(self) -> None:
        if self.used >= self.total:
            raise BudgetExhausted
        self.used += 1
        if self.on_step is not None:
            self.on_step()


class _DivergenceWatch:
    """Bias-corrected EMA of the loss and the early-stop rule of a burst.

    Sweep (range test): stop when the smoothed loss exceeds ``factor`` times its minimum, as
    LR finders do (for a minimum at or below 0, when it rises above the minimum by
    ``factor - 1`` times the larger of the first loss's size and the descent from it). The
    minimum is taken from the third step on, once the smoothed loss averages a few batches, so
    one easy first batch does not set it. Burst at a schedule: stop when the smoothed loss
    exceeds ``factor / 2`` times the starting loss (for a starting loss of any sign: rises
    above it by ``factor / 2 - 1`` times its size), a blow-up no later step can undo; milder
    instability is judged afterwards on the whole trace. The starting loss is ``start`` (the
    probe passes the median loss of the first batches at the initial weights), else the first
    loss. A non-finite loss stops a burst at a schedule; in a sweep, two in a row do (one bad
    batch leaves the weights as they were: its step is skipped).
    """

    def __init__(
        self, factor: float, *, sweep: bool, beta: float = 0.9, start: float | None = None
    ) -> None:
        self.factor, self.sweep, self.beta = factor, sweep, beta
        self.avg = 0.0
        self.n = 0
        self.best = math.inf
        self.start = start
        self.first = math.nan if start is None else start
        self.blown = False
        self.last_nonfinite = False

    def update(self, loss: float, finite: bool) -> float:
        if not finite or not math.isfinite(loss):
            # In a sweep one bad batch is not divergence (the step was skipped, the weights
            # are unchanged); two in a row are.
            self.blown = not self.sweep or self.last_nonfinite
            self.last_nonfinite = True
            return math.nan
        self.last_nonfinite = False
        self.n += 1
        self.avg = self.beta * self.avg + (1.0 - self.beta) * loss
        smooth = self.avg / (1.0 - self.beta**self.n)
        if self.n == 1 and self.start is None:
            self.first = loss
        if self.sweep:
            if self.n >= 3:
                self.best = min(self.best, smooth)
            if self.best > 0:
                self.blown = self.n > 3 and smooth > self.factor * self.best
            else:
                # A loss that goes negative (a log-likelihood, a loss plus a constant) has no
                # ratio to its minimum: the rise above the minimum is measured against the
                # distance travelled from the first loss, or the first loss's size.
                span = max(abs(self.first), self.first - self.best)
                self.blown = self.n > 3 and smooth - self.best > (self.factor - 1.0) * span
        else:
            # factor / 2 times a positive start; for any sign, a rise above the start of
            # factor / 2 - 1 times its size (a negative start is no easier to leave behind)
            rise = (0.5 * self.factor - 1.0) * abs(self.first)
            self.blown = smooth > self.first + rise and smooth > self.first
        return smooth


@dataclass
class BurstResult:
    """What one burst did: its rows, whether it diverged, and how many steps it took."""

    phase: str
    burst: int
    rows: list[dict[str, Any]]
    diverged: bool
    truncated: bool  # stopped early by the budget, not by the plan
    peak_lr: float
    warmup_steps: int

    @property
    def losses(self) -> list[float]:
        return [float(r["loss"]) for r in self.rows]

    @property
    def lrs(self) -> list[float]:
        return [float(r["lr"]) for r in self.rows]

    @property
    def steps(self) -> int:
        return len(self.rows)


def _step_note(where: str, optimizer: torch.optim.Optimizer, batch: Any) -> str:
    return (
        f"autowarm: raised in a training step of the probe ({where}, "
        f"{type(optimizer).__name__}); the batch was {describe_batch(batch)}"
    )


@dataclass
class ProbeRunner:
    """Everything a burst needs, built once per ``suggest()`` call."""

    model: nn.Module
    stream: BatchStream
    loss_fn: LossFn
    optimizer_cls: type[torch.optim.Optimizer]
    optimizer_kwargs: dict[str, Any]
    snapshot: ModelSnapshot
    budget: Budget
    seed: int
    monitor_coords: int = 16384  # overhead under 5% of a 10M-parameter CPU step
    diverge_factor: float = 4.0
    bursts: list[BurstResult] = field(default_factory=list)
    has_second_moment: bool | None = None
    # Why an optimizer that keeps exp_avg_sq still gave no readings (sparse gradients), for
    # the warning; None otherwise.
    second_moment_note: str | None = None
    # The loss at the initial weights, from several batches (set after the range test): the
    # reference of every later burst's blow-up rule.
    start_loss: float | None = None
    # The real run's parameter groups (suggest(param_groups=...)); None: one group of every
    # trainable parameter. Group i trains at its lr_scale x the burst's LR.
    param_groups: list[GroupSpec] | None = None
    # Batches whose gradients add up before each optimizer step (gradient accumulation).
    accumulation_steps: int = 1
    # Mixed precision (suggest(precision=...)); its loss scaler carries over between bursts.
    amp: MixedPrecision | None = None
    # The real run's gradient-norm clipping (suggest(grad_clip=...)), or None.
    grad_clip: float | None = None
    # (burst, step) of each non-finite loss computed with weights that were already
    # non-finite: an earlier update overflowed, whatever the batch of that step.
    nonfinite_weights: set[tuple[int, int]] = field(default_factory=set)

    def _set_train_modes(self) -> None:
        # The modes the bursts train in. A model handed over in train mode keeps its
        # submodules' modes (a BatchNorm frozen in eval mode for fine-tuning stays so, as in
        # the user's own loop); one in eval mode (just loaded) is put in train mode.
        if self.snapshot.was_training:
            self.snapshot.restore_modes()
        else:
            self.model.train()

    def _fresh_optimizer(self, lr: float) -> torch.optim.Optimizer:
        if self.param_groups is not None:
            groups = [g.as_group() for g in self.param_groups]
            return self.optimizer_cls(groups, lr=lr, **self.optimizer_kwargs)  # type: ignore[call-arg]
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                "the model has no parameter with requires_grad=True; unfreeze what should train"
            )
        return self.optimizer_cls(params, lr=lr, **self.optimizer_kwargs)  # type: ignore[call-arg]

    def _nan_position(self, batch: Any) -> int | None:
        # Where in the data the batch with the NaN sits (the first such micro-batch).
        if isinstance(batch, MicroBatches):
            return next(
                pos
                for b, pos in zip(batch.batches, batch.positions, strict=True)
                if nan_in_batch(b)
            )
        return self.stream.last_position

    def _group_scales(self, optimizer: torch.optim.Optimizer) -> list[float]:
        # The LR ratio of each group the optimizer holds. Without param_groups an optimizer may
        # still split the parameters itself (1-D tensors without weight decay, say): each of its
        # groups trains at its own "lr_scale" key, else 1, as ScheduleConfig.lambda_lr then
        # drives them in the real run (it sets every group's LR, so a group LR the optimizer
        # set itself is not kept there, nor here).
        n = len(optimizer.param_groups)
        if self.param_groups is None:
            return lr_scale_keys(optimizer)
        if n != len(self.param_groups):
            raise ValueError(
                f"{self.optimizer_cls.__name__} made {n} parameter groups from the "
                f"{len(self.param_groups)} passed as param_groups, so the probe cannot tell "
                "which lr_scale each of them trains at; pass param_groups that the optimizer "
                "keeps as given, or none (the optimizer then groups the parameters itself)"
            )
        return [g.lr_scale for g in self.param_groups]

    def run(
        self,
        lrs: Sequence[float],
        *,
        phase: str,
        peak_lr: float,
        warmup_steps: int,
        stop_on_divergence: bool = True,
        smooth_beta: float = 0.9,
    ) -> BurstResult:
        """Train from the snapshot with ``lrs[i]`` at step ``i``; stop early on divergence.

        Divergence is a non-finite loss or gradient (two in a row in a range test), or a
        smoothed loss above
        ``diverge_factor`` times the sweep's lowest (a range test), or above
        ``diverge_factor / 2`` times :attr:`start_loss` (another burst; its first loss while
        that is unset). The loss is smoothed by an EMA of factor ``smooth_beta``. Running out
        of budget ends the burst with ``truncated=True``.
        """
        burst_id = len(self.bursts)
        self.snapshot.restore_weights()
        # Every generator a data pipeline may draw from (torch's, numpy's and python's global
        # ones, the loader's own), so every burst sees the same batches; suggest() puts them
        # all back afterwards.
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        random.seed(self.seed)
        self.stream.restart(seed=self.seed)
        self._set_train_modes()
        # Each step sets its own LR below; the constructor gets a positive one, since some
        # optimizers (SparseAdam) refuse lr=0, where a ramp starts.
        optimizer = self._fresh_optimizer(next((float(x) for x in lrs if x > 0), 1e-3))
        scales = self._group_scales(optimizer)
        monitor = self._monitor(optimizer)
        rows: list[dict[str, Any]] = []
        diverged = truncated = False
        sweep = phase == "range_test"
        watch = _DivergenceWatch(
            self.diverge_factor,
            sweep=sweep,
            beta=smooth_beta,
            start=None if sweep else self.start_loss,
        )
        try:
            for i, lr in enumerate(lrs):
                try:
                    self.budget.take()
                except BudgetExhausted:
                    truncated = True
                    break
                for group, scale in zip(optimizer.param_groups, scales, strict=True):
                    group["lr"] = float(lr) * scale
                t0 = time.perf_counter()
                batch = self.stream.next_update(self.accumulation_steps)
                try:
                    res = train_step(
                        self.model,
                        optimizer,
                        batch,
                        self.loss_fn,
                        grad_clip=self.grad_clip,
                        amp=self.amp,
                    )
                except Exception as exc:
                    where = f"{phase} burst {burst_id}, step {i}, lr {float(lr):.3g}"
                    add_note(exc, functools.partial(_step_note, where, optimizer, batch))
                    raise
                if not res.finite and nan_in_batch(batch):
                    # A NaN in the data is non-finite at any LR: the data's fault, not the
                    # schedule's. (An inf is not blamed: it may be an additive attention mask.)
                    raise ValueError(
                        f"the batch at step {i} of a probe burst (batch "
                        f"{self._nan_position(batch)} of the data as it is yielded, counting "
                        "from 0) holds a NaN: clean the data (e.g. check torch.isnan on each "
                        "batch's tensors) and probe again"
                    )
                if not res.finite and not _weights_finite(self.model):
                    self.nonfinite_weights.add((burst_id, i))
                stepped = res.finite and not res.skipped
                stats = monitor.update() if (monitor is not None and stepped) else None
                row: dict[str, Any] = {
                    "phase": phase,
                    "burst": burst_id,
                    "step": i,
                    "lr": float(lr),
                    "loss": res.loss,
                    "loss_smoothed": watch.update(res.loss, res.finite),
                    "grad_norm": res.grad_norm,
                    "finite": res.finite,
                    "skipped": res.skipped,
                    "seconds": time.perf_counter() - t0,
                }
                for col in MOMENT_COLUMNS:
                    row[col] = float(getattr(stats, col)) if stats is not None else math.nan
                rows.append(row)
                if watch.blown:
                    diverged = True
                    if stop_on_divergence:
                        break
            if self.has_second_moment is None:
                self.has_second_moment = has_second_moment(optimizer)
                if self.has_second_moment and _only_sparse_grads(optimizer, rows):
                    # SparseAdam: exp_avg_sq is there, but the monitor reads dense gradients
                    self.has_second_moment = False
                    self.second_moment_note = "its gradients are sparse"
        finally:
            del optimizer, monitor  # the monitor holds the optimizer, and so Adam's state
        result = BurstResult(phase, burst_id, rows, diverged, truncated, peak_lr, warmup_steps)
        self.bursts.append(result)
        _log.debug(
            "burst %d (%s): peak %.3g warmup %d, %d steps, diverged=%s",
            burst_id,
            phase,
            peak_lr,
            warmup_steps,
            len(rows),
            diverged,
        )
        return result

    def _monitor(self, optimizer: torch.optim.Optimizer) -> SecondMomentMonitor | None:
        if self.has_second_moment is False:
            return None
        from autowarm.probe._search import active_settings  # _search imports this module

        return SecondMomentMonitor(
            optimizer,
            max_coords=self.monitor_coords,
            seed=self.seed,
            dense_kappa=active_settings().dense_kappa,
        )

    def trace_rows(self) -> list[dict[str, Any]]:
        """All bursts' rows in order."""
        return [row for burst in self.bursts for row in burst.rows]


def _only_sparse_grads(optimizer: torch.optim.Optimizer, rows: list[dict[str, Any]]) -> bool:
    # No row of the burst has second-moment readings, and the gradients are sparse.
    if any(math.isfinite(row.get("vhat_mean", math.nan)) for row in rows):
        return False
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return bool(grads) and any(grad.is_sparse for grad in grads)


def _weights_finite(model: nn.Module) -> bool:
    # One pass over the weights, run only after a non-finite loss.
    with torch.no_grad():
        return all(
            bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point()
        )
