"""Mixed precision (``precision="bf16-mixed"`` / ``"16-mixed"``) in the training step, the
probe and the study's trials: autocast around the loss, and float16's loss scaler, whose
overflow-skipped updates are not divergence."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autowarm
from autowarm._train import MixedPrecision, train_step
from autowarm.schedules import ScheduleConfig
from autowarm.study._trial import train_trial
from tests._tiny import cls_batches, mlp, one_thread  # noqa: F401 (one_thread: autouse)

TOTAL = 500
BUDGET = 50
_batches = functools.partial(cls_batches, n_batches=6, bs=16)
_mlp = functools.partial(mlp, hidden=32)
CPU = torch.device("cpu")


def test_an_overflow_under_the_loss_scaler_skips_the_update_and_lowers_the_scale() -> None:
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    amp = MixedPrecision("16-mixed", CPU)
    assert amp.scaler is not None
    amp.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # certain to overflow
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = _batches()[0]

    def loss(m: nn.Module, b: Any) -> torch.Tensor:
        return F.cross_entropy(m(b[0]), b[1])

    res = train_step(model, opt, batch, loss, amp=amp)
    assert res.skipped and res.finite and res.loss > 0
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))
    assert opt.state == {} or all(s.get("step", 0) == 0 for s in opt.state.values())
    assert amp.scaler.get_scale() < 2.0**60
    while res.skipped:  # the scale comes down until the update goes through
        res = train_step(model, opt, batch, loss, amp=amp)
    assert res.finite and not res.skipped
    assert not all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


def test_a_step_reaching_no_optimizer_parameter_is_no_error_under_the_scaler() -> None:
    # The optimizer holds the head only and the loss reaches the body only: the scaler has no
    # gradient to unscale, and its step() raised "No inf checks were recorded".
    model = _mlp()
    amp = MixedPrecision("16-mixed", CPU)
    head = list(model.parameters())[-1]
    opt = torch.optim.AdamW([head], lr=1e-2)
    batch = _batches()[0]

    def body_only(m: nn.Module, b: Any) -> torch.Tensor:
        return m[0](b[0]).pow(2).mean()

    for _ in range(2):  # and the next step is no "unscale_() already called"
        res = train_step(model, opt, batch, body_only, amp=amp)
        assert res.finite and not res.skipped and res.grad_norm == 0.0


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-mixed", torch.bfloat16),
                                                  ("16-mixed", torch.float16)])  # fmt: skip
def test_the_probe_computes_the_loss_under_autocast(precision: str, dtype: torch.dtype) -> None:
    seen: list[tuple[bool, torch.dtype]] = []

    def loss(m: nn.Module, b: Any) -> torch.Tensor:
        out = m(b[0])
        seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return F.cross_entropy(out.float(), b[1])

    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    s = autowarm.suggest(model, _batches(), loss_fn=loss, total_steps=TOTAL, budget_steps=BUDGET,
                         precision=precision, progress=False)  # fmt: skip
    assert seen and all(on and d == dtype for on, d in seen)
    assert "skipped" in s.trace.columns
    assert all(torch.equal(p, q) and q.dtype == torch.float32
               for p, q in zip(before, model.parameters(), strict=True))  # fmt: skip
    assert not torch.is_autocast_enabled("cpu")


def test_skipped_updates_are_not_divergence() -> None:
    # A loss multiplied by 1e4 (the gradients with it) overflows float16 at the scaler's
    # starting scale, 65536, and the scale must come down several times.
    def loss(m: nn.Module, b: Any) -> torch.Tensor:
        return 1e4 * F.cross_entropy(m(b[0]).float(), b[1])

    s = autowarm.suggest(_mlp(), _batches(), loss_fn=loss, total_steps=TOTAL,
                         budget_steps=BUDGET, precision="16-mixed", progress=False)  # fmt: skip
    skipped = int(s.trace["skipped"].sum())
    assert skipped >= 2
    assert f"skipped {skipped} of the" in s.rationale
    assert s.trace["finite"].all()
    # the skipped rows carry no second-moment reading (no update happened)
    assert s.trace.loc[s.trace["skipped"], "vhat_mean"].isna().all()


def test_precision_is_checked_before_any_step() -> None:
    with pytest.raises(ValueError, match=r"precision must be one of \('32-true', '16-mixed'"):
        autowarm.suggest(_mlp(), _batches(), criterion=F.cross_entropy, total_steps=TOTAL,
                         precision="fp16", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"'0.weight' \(and 3 more\) is float16"):
        autowarm.suggest(_mlp().half(), _batches(), criterion=F.cross_entropy,
                         total_steps=TOTAL, budget_steps=BUDGET, precision="16-mixed",
                         progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="precision must be one of"):
        autowarm.Task(make_model=lambda s: _mlp(), train_data=_batches(),
                      criterion=F.cross_entropy, total_steps=5, precision="16")  # fmt: skip


def test_float16_off_cuda_on_a_torch_without_torch_amp_grad_scaler_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # torch 2.1 and 2.2 (which pyproject allows) have only torch.cuda.amp.GradScaler.
    monkeypatch.delattr(torch.amp, "GradScaler")
    with pytest.raises(ValueError, match=r"'16-mixed' on cpu needs torch >= 2.3"):
        autowarm.suggest(_mlp(), _batches(), criterion=F.cross_entropy, total_steps=TOTAL,
                         budget_steps=BUDGET, precision="16-mixed", progress=False)  # fmt: skip


def test_a_task_trial_runs_through_skipped_updates() -> None:
    def loss(m: nn.Module, b: Any) -> torch.Tensor:
        return 1e4 * F.cross_entropy(m(b[0]).float(), b[1])

    task = autowarm.Task(make_model=lambda s: _mlp(), train_data=_batches(), loss_fn=loss,
                         total_steps=20, precision="16-mixed")  # fmt: skip
    schedule = ScheduleConfig(peak_lr=1e-3, total_steps=20, warmup_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's scheduler-order warning included
        out = train_trial(task, schedule, seed=0)
    assert out.steps == 20 and out.diverged_at is None and out.value < float("inf")


def test_gradients_that_overflow_at_every_scale_are_divergence_under_the_scaler() -> None:
    # A finite loss whose gradient is NaN (d sqrt(x)/dx at x = 0 is inf, times 0): the scaler
    # skipped every update, lowering its scale by half each time, and the trial ended with the
    # untrained loss as its value instead of counting as diverged.
    def loss(m: nn.Module, b: Any) -> torch.Tensor:
        w = m[0].weight
        return F.cross_entropy(m(b[0]).float(), b[1]) + torch.sqrt(0 * w).sum()

    task = autowarm.Task(make_model=lambda s: _mlp(), train_data=_batches(), loss_fn=loss,
                         total_steps=100, precision="16-mixed")  # fmt: skip
    schedule = ScheduleConfig(peak_lr=1e-3, total_steps=100, warmup_steps=2)
    out = train_trial(task, schedule, seed=0)
    assert out.value == float("inf") and out.diverged_at is not None
    # the default scale, 2**16, falls below 2**-48 on the 65th skip in a row
    assert out.diverged_at == 64


def test_large_gradients_that_need_a_scale_below_one_are_not_divergence() -> None:
    # a sum-reduced loss over a large batch: its float16 gradients overflow at scale 1, and
    # torch's loss scaler trains it at scale 0.5; it must not count as diverged
    x = torch.randn(4096, 16)
    data = [(x, 100 * (x @ torch.randn(16, 1)))]

    def loss(m: nn.Module, b: Any) -> torch.Tensor:
        return F.mse_loss(m(b[0]).float(), b[1], reduction="sum")

    task = autowarm.Task(make_model=lambda s: nn.Linear(16, 1), train_data=data, loss_fn=loss,
                         total_steps=40, precision="16-mixed")  # fmt: skip
    schedule = ScheduleConfig(peak_lr=1e-3, total_steps=40, warmup_steps=2)
    out = train_trial(task, schedule, seed=0)
    assert out.diverged_at is None and out.value < float("inf")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_on_cuda(precision: str) -> None:
    model = _mlp().cuda()
    before = [p.detach().clone() for p in model.parameters()]
    s = autowarm.suggest(model, _batches(), criterion=F.cross_entropy, total_steps=TOTAL,
                         budget_steps=BUDGET, precision=precision, progress=False)  # fmt: skip
    assert s.peak_lr > 0 and "skipped" in s.trace.columns
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


def test_finite_gradients_whose_norm_overflows_float32_are_divergence_under_the_scaler() -> None:
    # every gradient finite (1e20) but their squared norm beyond float32: no scale helps, the
    # scaler sees no inf and keeps its scale, and every update was skipped as an "overflow"
    # while the trial ended with a finite value; without the scaler it is divergence
    class Big(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.w * x).sum()

    x = torch.full((4,), 1e20)
    amp = MixedPrecision("16-mixed", CPU)
    model = Big()
    res = train_step(model, torch.optim.SGD(model.parameters(), lr=1e-3), (x,),
                     lambda m, b: m(b[0]), amp=amp)  # fmt: skip
    assert not res.finite and not res.skipped
