"""Gradient accumulation: a step is one optimizer update of ``accumulation_steps`` batches, in
the training step, the probe and the study's trials."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autowarm
from autowarm._train import BatchStream, MicroBatches, train_step
from autowarm.schedules import ScheduleConfig
from autowarm.study._trial import train_trial
from tests._tiny import cls_batches, mlp, one_thread  # noqa: F401 (one_thread: autouse)

TOTAL = 500
BUDGET = 50
_batches = functools.partial(cls_batches, n_batches=6, bs=8)
_mlp = mlp


def _ce(model: nn.Module, batch: Any) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


class _Steps(torch.optim.AdamW):
    count: ClassVar[int] = 0

    def step(self, closure: Any = None) -> Any:
        _Steps.count += 1
        return super().step(closure)


def test_accumulated_micro_batches_step_as_one_batch_of_all_of_them() -> None:
    batches = _batches(n_batches=3)
    whole = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    a, b = _mlp(), _mlp()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.5)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.5)
    res_a = train_step(a, opt_a, MicroBatches(tuple(batches), (0, 1, 2)), _ce)
    res_b = train_step(b, opt_b, whole, _ce)
    assert res_a.finite and res_a.loss == pytest.approx(res_b.loss, rel=1e-6)
    assert res_a.grad_norm == pytest.approx(res_b.grad_norm, rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_non_finite_micro_batch_skips_the_whole_update() -> None:
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    calls: list[int] = []

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        calls.append(1)
        out = _ce(m, batch)
        return out * math.inf if len(calls) == 2 else out

    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    res = train_step(model, opt, MicroBatches(tuple(_batches(n_batches=3)), (0, 1, 2)), loss)
    assert not res.finite and math.isinf(res.loss) and math.isnan(res.grad_norm)
    assert len(calls) == 3
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_the_stream_hands_out_consecutive_batches_per_update() -> None:
    stream = BatchStream(_batches(n_batches=5), torch.device("cpu"))
    first = stream.next_update(3)
    second = stream.next_update(3)
    assert isinstance(first, MicroBatches) and first.positions == (0, 1, 2)
    assert second.positions == (3, 4, 0)  # cycled
    assert not isinstance(stream.next_update(1), MicroBatches)
    assert stream.batches_drawn == 7


def test_the_probe_counts_updates_and_runs_accumulation_steps_batches_each() -> None:
    calls: list[bool] = []

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return _ce(m, batch)

    _Steps.count = 0
    s = autowarm.suggest(
        _mlp(), _batches(), _Steps, loss_fn=loss, total_steps=TOTAL, budget_steps=BUDGET,
        accumulation_steps=3, progress=False,
    )  # fmt: skip
    assert s.probe_steps == len(s.trace) <= BUDGET
    assert len(calls) == 1 + 3 * s.probe_steps  # the first batch's check, then 3 per update
    assert _Steps.count == int(s.trace["finite"].sum())
    assert f"{s.probe_steps * 3} batches" in s.rationale


def test_one_accumulation_step_is_the_plain_probe() -> None:
    plain = autowarm.suggest(_mlp(), _batches(), criterion=F.cross_entropy,
                             total_steps=TOTAL, budget_steps=BUDGET, progress=False)  # fmt: skip
    one = autowarm.suggest(_mlp(), _batches(), criterion=F.cross_entropy, total_steps=TOTAL,
                           budget_steps=BUDGET, progress=False, accumulation_steps=1)  # fmt: skip
    assert one.trace["loss"].tolist() == plain.trace["loss"].tolist()
    assert (one.peak_lr, one.warmup_steps) == (plain.peak_lr, plain.warmup_steps)


def test_the_default_run_length_counts_updates() -> None:
    data = _batches(n_batches=1200, bs=2)
    with pytest.warns(UserWarning, match=r"one pass over the data \(400 steps of 3 batches"):
        s = autowarm.suggest(_mlp(), data, criterion=F.cross_entropy, accumulation_steps=3,
                             budget_steps=BUDGET, progress=False)  # fmt: skip
    assert s.schedule.total_steps == 400


def test_a_nan_in_one_micro_batch_names_that_batch() -> None:
    batches = _batches(n_batches=8)
    batches[4][0][1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"step 1 of a probe burst \(batch 4 of the data"):
        autowarm.suggest(_mlp(), batches, criterion=F.cross_entropy, total_steps=TOTAL,
                         budget_steps=BUDGET, accumulation_steps=3, progress=False)  # fmt: skip


def test_a_loss_non_finite_at_one_update_names_the_batches_of_that_update() -> None:
    # An inf (not blamed as bad data, it may be a mask) in batch 4 makes the loss non-finite
    # at update 2 of every burst: that update trains on batches 4 and 5, not on batch 2.
    batches = _batches(n_batches=6)
    batches[4][0][1, 1] = float("inf")
    with pytest.raises(autowarm.ProbeDivergedError, match=r"at step 2 whatever") as info:
        autowarm.suggest(_mlp(), batches, criterion=F.cross_entropy, total_steps=TOTAL,
                         budget_steps=BUDGET, accumulation_steps=2, progress=False)  # fmt: skip
    assert "(batches 4, 5 of the data as it is yielded" in str(info.value)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_accumulation_steps_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ValueError, match="accumulation_steps must be an int >= 1"):
        autowarm.suggest(_mlp(), _batches(), criterion=F.cross_entropy, total_steps=TOTAL,
                         accumulation_steps=bad, progress=False)  # fmt: skip


def test_a_task_trial_accumulates_too() -> None:
    calls: list[int] = []

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        if m.training:
            calls.append(1)
        return _ce(m, batch)

    task = autowarm.Task(
        make_model=lambda seed: _mlp(), train_data=_batches(), loss_fn=loss,
        total_steps=12, optimizer_cls=_Steps, accumulation_steps=2,
    )  # fmt: skip
    _Steps.count = 0
    train_trial(task, ScheduleConfig(peak_lr=1e-2, total_steps=12, warmup_steps=3), seed=0)
    assert (_Steps.count, len(calls)) == (12, 24)
    with pytest.raises(ValueError, match="accumulation_steps must be an int >= 1"):
        dataclasses.replace(task, accumulation_steps=0)


class _ClipLog(torch.optim.AdamW):
    """AdamW that records the total gradient norm it is asked to step with."""

    norms: ClassVar[list[float]] = []

    def step(self, closure: Any = None) -> Any:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        _ClipLog.norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))  # fmt: skip
        return super().step(closure)


def test_the_probe_clips_as_the_real_run_does() -> None:
    # suggest() had no grad_clip: a run that clips was probed unclipped, and tune's probe
    # (trial 0's schedule) ignored Task.grad_clip while every later trial clipped.
    _ClipLog.norms = []
    kw: dict[str, Any] = dict(loss_fn=_ce, total_steps=TOTAL, budget_steps=BUDGET, progress=False)
    autowarm.suggest(_mlp(), _batches(), _ClipLog, **kw)
    assert max(_ClipLog.norms) > 0.05  # unclipped, the norms are larger than the clip below
    _ClipLog.norms = []
    autowarm.suggest(_mlp(), _batches(), _ClipLog, grad_clip=0.05, **kw)
    assert _ClipLog.norms and max(_ClipLog.norms) <= 0.05 * (1 + 1e-5)
    for bad in (0.0, -1.0, math.inf, math.nan, "1"):
        with pytest.raises(ValueError, match="grad_clip must be a positive finite number"):
            autowarm.suggest(_mlp(), _batches(), grad_clip=bad, **kw)
    from autowarm.study._tune import probe_task

    _ClipLog.norms = []
    task = autowarm.Task(
        make_model=lambda seed: _mlp(), train_data=_batches(), loss_fn=_ce,
        total_steps=TOTAL, optimizer_cls=_ClipLog, grad_clip=0.05,
    )  # fmt: skip
    probe_task(task, budget_steps=BUDGET, progress=False)
    assert _ClipLog.norms and max(_ClipLog.norms) <= 0.05 * (1 + 1e-5)


def test_float16_micro_batch_losses_are_summed_in_float32() -> None:
    # eight finite float16 losses of ~11k sum past float16's largest value (65504): the
    # update was reported as diverged (loss inf) though no micro-batch was
    torch.manual_seed(0)
    model = nn.Linear(16, 4).half()
    x = torch.randn(32, 16).half() * 200

    def loss(m: nn.Module, b: Any) -> torch.Tensor:
        return m(b).abs().sum()

    one = float(loss(model, x))
    assert math.isfinite(one) and one * 8 > torch.finfo(torch.float16).max
    res = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0),
                     MicroBatches((x,) * 8, (0,) * 8), loss)  # fmt: skip
    assert res.finite and res.loss == pytest.approx(one, rel=1e-3)
