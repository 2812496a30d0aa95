"""Acceptance tests of ``autowarm.suggest()``: the contract a user relies on.

Covered: restoration of everything the probe touches (after a return, an exception and a
``KeyboardInterrupt`` injected mid-probe), batch formats, data sources, divergence handling,
optimizers without a second moment, determinism, the ``Suggestion`` object, argument checks
before any training, and the warmup search on a model that provably needs warmup.

Everything runs on tiny models with small budgets and one torch thread.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import json
import math
import os
import random
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autowarm
from autowarm._train import BatchStream, resolve_loss_fn
from autowarm.probe import _search as search_plan
from autowarm.probe._bursts import MOMENT_COLUMNS, Budget, ProbeRunner
from autowarm.probe._search import SearchSettings, _judge, _warmup_search, ramp_lrs, run_search
from autowarm.probe._state import loss_modules, preserved
from autowarm.schedules import ScheduleConfig
from tests._tiny import (
    ClsDataset,
    DecayRateAdam,
    PerTensorSecondMoment,
    one_thread,  # noqa: F401 (autouse)
)
from tests._tiny import cls_batches as _cls_batches
from tests._tiny import mlp as _mlp

suggest = autowarm.suggest
Suggestion = autowarm.Suggestion
ProbeDivergedError = autowarm.ProbeDivergedError

TOTAL = 500
BUDGET = 50
TRACE_COLUMNS = ("phase", "burst", "step", "lr", "loss", "loss_smoothed", "grad_norm", "finite")


# --------------------------------------------------------------------------------------------
# Models, data and spies
# --------------------------------------------------------------------------------------------


class _Net(nn.Module):
    """BatchNorm (running stats change in train mode), Dropout (draws from the RNG), a layer
    to freeze and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.bn(self.frozen(x)))))


def _net(seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    net = _Net()
    net.frozen.requires_grad_(False)
    # Mixed modes: the probe's model.train() changes most of them.
    net.eval()
    net.bn.train()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1.0, 1.0)
        net.bn.running_var.uniform_(0.5, 2.0)
    # Gradients left over from the user's own loop, on some parameters only.
    net.head.weight.grad = torch.randn_like(net.head.weight)
    net.bn.weight.grad = torch.randn_like(net.bn.weight)
    return net


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.device == b.device
        and torch.equal(_bits(a), _bits(b))
    )


@dataclass
class _ModelState:
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    objects: list[torch.Tensor]
    requires_grad: dict[str, bool]
    grads: dict[str, torch.Tensor | None]
    training: dict[str, bool]
    hooks: dict[str, tuple[int, ...]]


def _hook_counts(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {
        name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    }


def _capture(model: nn.Module) -> _ModelState:
    # Clones, never a bare state_dict(): its tensors alias the live parameters.
    return _ModelState(
        params={n: p.detach().clone() for n, p in model.named_parameters()},
        buffers={n: b.detach().clone() for n, b in model.named_buffers()},
        objects=[*model.parameters(), *model.buffers()],
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        grads={
            n: None if p.grad is None else p.grad.detach().clone()
            for n, p in model.named_parameters()
        },
        training={n: m.training for n, m in model.named_modules()},
        hooks=_hook_counts(model),
    )


def _assert_restored(model: nn.Module, before: _ModelState) -> None:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert params.keys() == before.params.keys()
    assert buffers.keys() == before.buffers.keys()
    for name, saved in before.params.items():
        assert _bitwise_equal(params[name], saved), f"parameter {name} changed"
    for name, saved in before.buffers.items():
        assert _bitwise_equal(buffers[name], saved), f"buffer {name} changed"
    now = [*model.parameters(), *model.buffers()]
    assert len(now) == len(before.objects)
    assert all(a is b for a, b in zip(now, before.objects, strict=True)), "tensor objects replaced"
    assert {n: p.requires_grad for n, p in params.items()} == before.requires_grad
    for name, saved_grad in before.grads.items():
        grad = params[name].grad
        if saved_grad is None:
            assert grad is None, f"{name}.grad appeared"
        else:
            assert grad is not None and _bitwise_equal(grad, saved_grad), f"{name}.grad changed"
    assert {n: m.training for n, m in model.named_modules()} == before.training
    assert _hook_counts(model) == before.hooks


@dataclass
class _Rng:
    torch_state: torch.Tensor
    numpy_state: Any
    python_state: Any

    @classmethod
    def capture(cls) -> _Rng:
        return cls(torch.get_rng_state(), np.random.get_state(), random.getstate())

    def restore(self) -> None:
        torch.set_rng_state(self.torch_state)
        np.random.set_state(self.numpy_state)
        random.setstate(self.python_state)


def _draws() -> tuple[torch.Tensor, np.ndarray, list[float]]:
    return torch.rand(6), np.random.rand(6), [random.random() for _ in range(6)]


def _assert_rng_restored(saved: _Rng) -> None:
    after = _draws()  # what the user's next draws are ...
    saved.restore()
    expected = _draws()  # ... and what they would have been without the probe
    assert torch.equal(after[0], expected[0]), "torch CPU RNG not restored"
    np.testing.assert_array_equal(after[1], expected[1], err_msg="numpy RNG not restored")
    assert after[2] == expected[2], "python RNG not restored"


class _LossSpy:
    """``loss_fn(model, batch)`` for (x, y) batches that counts its calls, records whether the
    probe really trained the model, draws from every RNG, and can fail on a given call."""

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        fail_on: int | None = None,
        exc: BaseException | None = None,
        nan_on: tuple[int, ...] = (),
    ) -> None:
        self.calls = 0
        self.grad_calls = 0
        self.fail_on, self.exc, self.nan_on = fail_on, exc, nan_on
        self._watch = (
            []
            if model is None
            else [
                (t, t.detach().clone())
                for t in [*model.parameters(), *model.buffers()]
                if t.is_floating_point()
            ]
        )
        self.saw_changed_weights = False

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self.calls += 1
        self.grad_calls += int(torch.is_grad_enabled())
        if self.calls == self.fail_on:
            assert self.exc is not None
            raise self.exc
        np.random.rand()  # the user's code may draw from any generator
        random.random()
        if not self.saw_changed_weights:
            self.saw_changed_weights = any(not torch.equal(t, s) for t, s in self._watch)
        x, y = batch
        loss = F.cross_entropy(model(x), y)
        return loss * math.nan if self.calls in self.nan_on else loss


def _counting_optimizer(
    base: type[torch.optim.Optimizer] = torch.optim.AdamW, fail_after_step: int | None = None
) -> type[torch.optim.Optimizer]:
    """A subclass of ``base`` counting instances and steps; optionally raising right after its
    ``fail_after_step``-th step (the weights are then already changed)."""

    class Counting(base):  # type: ignore[misc, valid-type]
        inits = 0
        steps = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            type(self).inits += 1
            super().__init__(*args, **kwargs)

        def step(self, closure: Any = None) -> Any:
            out = super().step(closure)
            type(self).steps += 1
            if type(self).steps == fail_after_step:
                raise RuntimeError("injected failure after an optimizer step")
            return out

    Counting.__name__ = f"Counting{base.__name__}"
    return Counting


class _Untouched:
    """Asserts that a call did no training: no optimizer step, no backward, weights intact."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.before = _capture(model)
        self.backwards = 0
        self.handles = [
            p.register_hook(self._on_grad) for p in model.parameters() if p.requires_grad
        ]

    def _on_grad(self, grad: torch.Tensor) -> None:
        self.backwards += 1

    def check(self, optimizer_cls: Any = None) -> None:
        for h in self.handles:
            h.remove()
        assert self.backwards == 0, "a backward pass ran"
        if optimizer_cls is not None:
            # one may be built, with no state, to check its settings before any forward pass
            assert optimizer_cls.inits <= 1 and optimizer_cls.steps == 0, "an optimizer stepped"
        _assert_restored(self.model, self.before)


def _run(model: nn.Module, data: Any, *args: Any, **kwargs: Any) -> Suggestion:
    kwargs.setdefault("total_steps", TOTAL)
    kwargs.setdefault("budget_steps", BUDGET)
    kwargs.setdefault("progress", False)
    return suggest(model, data, *args, **kwargs)


def _assert_valid(s: Suggestion, budget: int = BUDGET) -> None:
    assert isinstance(s, Suggestion)
    assert isinstance(s.warmup_steps, int) and 0 <= s.warmup_steps <= TOTAL
    assert math.isfinite(s.peak_lr) and s.peak_lr > 0
    assert 0 < s.probe_steps <= budget
    assert len(s.trace) == s.probe_steps


# --------------------------------------------------------------------------------------------
# 1. Restoration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ending", ["returns", "exception_in_loss_fn", "keyboard_interrupt", "exception_after_step"]
)
def test_restores_everything(ending: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _net()
    data = _cls_batches()
    before = _capture(model)
    # torch creates its inductor cache dir (``<tmp>/torchinductor_<user>``) on the first
    # optimizer step of a process; take that step before watching the temp dir.
    _warm = nn.Linear(2, 1)
    _warm(torch.ones(1, 2)).sum().backward()
    torch.optim.AdamW(_warm.parameters()).step()
    # Where a temporary file would go: a private temp dir and cwd, both empty, and the real
    # temp dir's listing.
    real_tmp = tempfile.gettempdir()
    real_listing = set(os.listdir(real_tmp))
    private_tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    private_tmp.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.chdir(cwd)

    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    saved_rng = _Rng.capture()

    fail_on: int | None = None
    exc: BaseException | None = None
    fail_after_step: int | None = None
    if ending == "exception_in_loss_fn":
        fail_on, exc = 20, RuntimeError("injected failure in loss_fn")
    elif ending == "keyboard_interrupt":
        fail_on, exc = 20, KeyboardInterrupt()
    elif ending == "exception_after_step":
        fail_after_step = 15
    spy = _LossSpy(model, fail_on=fail_on, exc=exc)
    opt_cls = _counting_optimizer(fail_after_step=fail_after_step)

    if ending == "returns":
        s = _run(model, data, loss_fn=spy, optimizer_cls=opt_cls)
        _assert_valid(s)
    else:
        expected: type[BaseException] = (
            KeyboardInterrupt if ending == "keyboard_interrupt" else RuntimeError
        )
        with pytest.raises(expected, match=None if expected is KeyboardInterrupt else "injected"):
            _run(model, data, loss_fn=spy, optimizer_cls=opt_cls)
        if fail_on is not None:
            assert spy.calls == fail_on
        else:
            assert opt_cls.steps == fail_after_step

    # The probe really trained (so the checks below are not vacuous) ...
    assert opt_cls.steps > 0
    assert spy.saw_changed_weights
    # ... and everything is back.
    _assert_restored(model, before)
    _assert_rng_restored(saved_rng)
    assert os.listdir(private_tmp) == []
    assert os.listdir(cwd) == []
    new_in_real_tmp = set(os.listdir(real_tmp)) - real_listing
    assert not [
        n for n in new_in_real_tmp if "autowarm" in n.lower() or n.endswith((".pt", ".ckpt"))
    ]


def test_restores_model_moved_by_device_argument() -> None:
    # device="cpu" for a CPU model is a no-op move; the model must still come back intact.
    model = _net()
    before = _capture(model)
    _run(model, _cls_batches(), criterion=F.cross_entropy, device="cpu")
    _assert_restored(model, before)


def test_attributes_the_forward_sets_come_back() -> None:
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp()
            self.calls = 0
            self.last: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            self.last = self.body(x)
            self.shape_seen = tuple(x.shape)
            return self.last

    model = Counting()
    before = _capture(model)
    _run(model, _cls_batches(), criterion=F.cross_entropy)
    _assert_restored(model, before)
    assert model.calls == 0 and model.last is None and not hasattr(model, "shape_seen")


# --------------------------------------------------------------------------------------------
# 2. Batch formats
# --------------------------------------------------------------------------------------------


def test_tuple_batches_with_criterion() -> None:
    model = _mlp()
    before = _capture(model)
    s = _run(model, _cls_batches(), criterion=F.cross_entropy)
    _assert_valid(s)
    assert s.trace["finite"].all()
    # The first range-test loss is the loss of the first batch at the initial weights.
    x, y = _cls_batches()[0]
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x), y))
    assert s.trace["loss"].iloc[0] == pytest.approx(expected, rel=1e-6)
    _assert_restored(model, before)


@dataclass
class _Output:
    loss: torch.Tensor
    logits: torch.Tensor


class _KwargsModel(nn.Module):
    """``model(**batch)`` with ``x`` and ``labels``; returns ``_Output`` or a dict."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> Any:
        logits = self.net(x)
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits} if self.as_dict else _Output(loss, logits)


@pytest.mark.parametrize("as_dict", [False, True], ids=["output_with_loss_attr", "dict_output"])
def test_dict_batches_with_model_computed_loss(as_dict: bool) -> None:
    model = _KwargsModel(as_dict)
    data = [{"x": x, "labels": y} for x, y in _cls_batches()]
    before = _capture(model)
    s = _run(model, data)
    _assert_valid(s)
    with torch.no_grad():
        expected = float(F.cross_entropy(model.net(data[0]["x"]), data[0]["labels"]))
    assert s.trace["loss"].iloc[0] == pytest.approx(expected, rel=1e-6)
    _assert_restored(model, before)


def test_tiny_gpt2_with_input_ids_and_labels() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        vocab_size=32,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (4, 8, 16), generator=g)
    data = [{"input_ids": b, "labels": b.clone()} for b in ids]
    model.eval()  # as loaded by from_pretrained
    before = _capture(model)
    s = _run(model, data, budget_steps=40)
    _assert_valid(s, budget=40)
    # Loss of a random 32-way LM at init is about ln(32).
    assert s.trace["loss"].iloc[0] == pytest.approx(math.log(32), rel=0.1)
    _assert_restored(model, before)


def test_custom_loss_fn_for_any_batch_format() -> None:
    # Batches no default handling knows: a triple with per-sample weights.
    batches = [(x, y, torch.full((x.shape[0],), 0.5)) for x, y in _cls_batches()]
    seen: list[type] = []

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        seen.append(type(batch))
        x, y, w = batch
        return (F.cross_entropy(model(x), y, reduction="none") * w).sum() / w.sum()

    s = _run(_mlp(), batches, loss_fn=loss_fn)
    _assert_valid(s)
    assert set(seen) == {tuple}


def test_tuple_batch_without_criterion_raises_before_training() -> None:
    model = _mlp()
    guard = _Untouched(model)
    opt_cls = _counting_optimizer()
    with pytest.raises((TypeError, ValueError), match="criterion") as info:
        _run(model, _cls_batches(), optimizer_cls=opt_cls)
    assert "loss_fn" in str(info.value)
    guard.check(opt_cls)


# --------------------------------------------------------------------------------------------
# 3. Data sources
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "dataloader"])
def test_loader_shorter_than_probe_is_cycled(kind: str) -> None:
    batches = _cls_batches(n_batches=3)
    if kind == "list":
        data: Any = batches
    else:
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        data = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
        assert len(data) == 3
    s = _run(_mlp(), data, criterion=F.cross_entropy, budget_steps=60)
    _assert_valid(s, budget=60)
    assert s.probe_steps > 3
    # At least one burst ran past the end of the data: its 4th step saw the first batch again.
    longest = s.trace.groupby("burst").size().max()
    assert longest > 3
    # Each burst restarts the data, so every burst's step 0 sees the same first batch; at the
    # range test's tiny first LR its loss equals the loss of batch 0 at the initial weights.
    rt = s.trace[s.trace["phase"] == "range_test"]
    if len(rt) > 3:
        first_again = rt["loss"].iloc[3]
        assert first_again == pytest.approx(rt["loss"].iloc[0], rel=1e-3)


def test_generator_is_consumed_only_as_far_as_needed() -> None:
    batches = _cls_batches()
    yielded = 0

    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        nonlocal yielded
        for i in itertools.count():
            yielded += 1
            yield batches[i % len(batches)]

    gen = stream()
    s = _run(_mlp(), gen, criterion=F.cross_entropy)
    _assert_valid(s)
    assert 0 < yielded <= s.probe_steps + 1
    # Bursts replay the kept batches rather than drawing new ones: no more than the longest
    # burst (plus the pre-check's look at the first batch) was drawn.
    assert yielded <= int(s.trace.groupby("burst").size().max()) + 1


def test_generator_without_total_steps_asks_for_it() -> None:
    model = _mlp()
    guard = _Untouched(model)
    with pytest.raises(ValueError, match="total_steps"):
        suggest(model, (b for b in _cls_batches()), criterion=F.cross_entropy, progress=False)
    guard.check()


@pytest.mark.parametrize("kind", ["list", "dataloader", "generator"])
def test_empty_data_raises_before_training(kind: str) -> None:
    empty: Any
    if kind == "list":
        empty = []
    elif kind == "dataloader":
        empty = DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0).long()), batch_size=4)
    else:
        empty = iter(())
    model = _mlp()
    guard = _Untouched(model)
    opt_cls = _counting_optimizer()
    spy = _LossSpy()
    with pytest.raises(ValueError, match="no batches"):
        _run(model, empty, loss_fn=spy, optimizer_cls=opt_cls)
    assert spy.calls == 0
    guard.check(opt_cls)


def test_empty_data_without_total_steps_is_called_empty() -> None:
    # Not "total_steps=1 is too short to probe" from a run length read off len() == 0.
    loader = DataLoader(TensorDataset(torch.zeros(10, 8)), batch_size=32, drop_last=True)
    with pytest.raises(ValueError, match=r"no batches.*drop_last=True"):
        suggest(_mlp(), loader, criterion=F.cross_entropy, progress=False)


def test_an_uncalled_generator_function_is_named_as_such() -> None:
    def batches() -> Iterator[Any]:
        yield from _cls_batches()

    for total in (None, TOTAL):
        with pytest.raises(TypeError, match=r"call it: pass batches\(...\), not batches"):
            suggest(_mlp(), batches, criterion=F.cross_entropy, total_steps=total, budget_steps=40)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# 4. Divergence
# --------------------------------------------------------------------------------------------


def test_nan_mid_probe_is_recorded_and_the_call_returns() -> None:
    # Call 1 is the pre-check; calls 12 and 40 are training steps.
    spy = _LossSpy(nan_on=(12, 40))
    s = _run(_mlp(), _cls_batches(), loss_fn=spy, budget_steps=60)
    _assert_valid(s, budget=60)
    bad = s.trace[~s.trace["finite"].astype(bool)]
    assert len(bad) >= 1
    assert not np.isfinite(bad["loss"].to_numpy(dtype=float)).any()
    assert bad["grad_norm"].isna().all()  # no backward pass for a non-finite loss
    # The non-finite row is the 11th training step (call 12): the range test's step 10.
    assert s.trace.iloc[10]["phase"] == "range_test"
    assert not bool(s.trace.iloc[10]["finite"])


def test_nan_loss_at_initial_weights_raises_before_training() -> None:
    model = _mlp()
    guard = _Untouched(model)
    opt_cls = _counting_optimizer()

    def always_nan(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y) * math.nan

    with pytest.raises(ValueError, match="initial weights"):
        _run(model, _cls_batches(), loss_fn=always_nan, optimizer_cls=opt_cls)
    guard.check(opt_cls)


def _nan_once_moved(model: nn.Module, delta: float) -> Callable[[nn.Module, Any], torch.Tensor]:
    """A loss that is finite near the initial weights and NaN once any weight has moved by
    more than ``delta``: a model that diverges at every LR large enough to do anything."""
    init = [p.detach().clone() for p in model.parameters()]

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(m(x), y)
        with torch.no_grad():
            moved = max(
                float((p - q).abs().max()) for p, q in zip(m.parameters(), init, strict=True)
            )
        return loss * math.nan if moved > delta else loss

    return loss_fn


def test_probe_diverged_error_carries_the_trace() -> None:
    # Weights may move by at most 0.05: the sweep diverges before any LR lowers the loss.
    model = _mlp()
    before = _capture(model)
    with pytest.raises(ProbeDivergedError, match="diverged") as info:
        _run(model, _cls_batches(), loss_fn=_nan_once_moved(model, 0.05), budget_steps=40)
    trace = info.value.trace
    assert isinstance(trace, pd.DataFrame)
    assert set(TRACE_COLUMNS) <= set(trace.columns)
    assert 0 < len(trace) <= 40
    assert (~trace["finite"].astype(bool)).any()
    # The sweep diverges before the loss falls, so the probe stops after the range test.
    assert "range_test" in set(trace["phase"])
    assert isinstance(info.value, RuntimeError)
    _assert_restored(model, before)


def test_every_lr_diverging_raises_probe_diverged_error() -> None:
    model = _mlp()
    before = _capture(model)
    try:
        with pytest.raises(ProbeDivergedError) as info:
            _run(model, _cls_batches(), loss_fn=_nan_once_moved(model, 0.0))
        assert (~info.value.trace["finite"].astype(bool)).any()
    finally:
        _assert_restored(model, before)


# --------------------------------------------------------------------------------------------
# 5. Optimizers without a second moment
# --------------------------------------------------------------------------------------------


def test_sgd_warns_and_still_suggests() -> None:
    with pytest.warns(UserWarning, match="second moment"):
        s = _run(
            _mlp(), _cls_batches(), torch.optim.SGD, criterion=F.cross_entropy, budget_steps=60
        )
    _assert_valid(s, budget=60)
    assert len(MOMENT_COLUMNS) > 0 and "vhat_mean" in MOMENT_COLUMNS
    for col in MOMENT_COLUMNS:
        assert col in s.trace.columns
        assert s.trace[col].isna().all(), col
    assert s.deciding_signal != "second moment"


def test_an_adaptive_optimizer_without_exp_avg_sq_is_not_told_warmup_matters_little() -> None:
    with pytest.warns(UserWarning, match="RMSprop keeps no second moment the probe can") as got:
        s = _run(
            _mlp(), _cls_batches(), torch.optim.RMSprop, criterion=F.cross_entropy, budget_steps=60
        )
    assert not any("matters little" in str(w.message) for w in got)
    _assert_valid(s, budget=60)


def test_sparse_adam_says_its_second_moment_was_not_read() -> None:
    # SparseAdam keeps a dense exp_avg_sq, but its gradients are sparse, which the monitor
    # does not read: the warning says so, instead of a silent "no signal asked for one"
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(50, 3, sparse=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.embed(x).mean(1)

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (256, 6), generator=g)
    data = [(tokens[i : i + 32], tokens[i : i + 32, 0] % 3) for i in range(0, 256, 32)]
    with pytest.warns(UserWarning, match=r"SparseAdam keeps Adam's second moment, but the probe "
                      r"cannot read it here \(its gradients are sparse"):  # fmt: skip
        s = _run(Bag(), data, torch.optim.SparseAdam, criterion=F.cross_entropy, budget_steps=60)
    assert s.trace["vhat_mean"].isna().all() and s.deciding_signal != "second moment"


@pytest.mark.parametrize("cls", [PerTensorSecondMoment, DecayRateAdam])
def test_an_exp_avg_sq_the_probe_cannot_read_falls_back_on_the_loss(cls: type) -> None:
    # One second moment per tensor (NovoGrad-style), or Adam's moment in a group without
    # betas (transformers' Adafactor): the probe used to fail with an IndexError or KeyError.
    with pytest.warns(UserWarning, match=f"{cls.__name__} keeps no second moment the probe"):
        s = _run(_mlp(), _cls_batches(), cls, criterion=F.cross_entropy, budget_steps=60)
    _assert_valid(s, budget=60)
    assert s.trace["vhat_mean"].isna().all()
    assert s.deciding_signal != "second moment"


def test_transformers_adafactor_with_an_external_schedule() -> None:
    optimization = pytest.importorskip("transformers.optimization")
    kwargs = {"scale_parameter": False, "relative_step": False, "warmup_init": False}
    with pytest.warns(UserWarning, match="Adafactor keeps no second moment the probe"):
        s = _run(
            _mlp(),
            _cls_batches(),
            optimization.Adafactor,
            optimizer_kwargs=kwargs,
            criterion=F.cross_entropy,
            budget_steps=60,
        )
    _assert_valid(s, budget=60)


def test_adamw_fills_second_moment_columns_and_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # a budget the ladder fits in: a low-confidence answer warns
        # (test_a_flat_range_test_warns_low_confidence_with_its_descent_and_both_causes)
        s = _run(_mlp(), _cls_batches(), criterion=F.cross_entropy, budget_steps=60)
    finite = s.trace[s.trace["finite"].astype(bool)]
    assert finite["vhat_mean"].notna().all()
    assert (finite["vhat_mean"] > 0).all()


# --------------------------------------------------------------------------------------------
# 6. Determinism
# --------------------------------------------------------------------------------------------


def _shuffled_loader() -> DataLoader:
    batches = _cls_batches(n_batches=6)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)


@pytest.mark.parametrize("where", ["loader", "sampler"])
def test_loader_with_its_own_generator(where: str) -> None:
    # A shuffling loader with its own torch.Generator (the documented way to make a loader
    # reproducible) draws its order from that generator, not from torch's global RNG. The
    # probe seeds it for every burst, so bursts see the same batches and the same seed gives
    # the same answer, and puts its state back, so the user's real run shuffles as it would
    # have without the probe.
    model = _net()
    base = _shuffled_loader()
    gen = torch.Generator().manual_seed(5)
    if where == "loader":
        loader = DataLoader(base.dataset, batch_size=16, shuffle=True, generator=gen)
    else:
        sampler = torch.utils.data.RandomSampler(base.dataset, generator=gen)
        loader = DataLoader(base.dataset, batch_size=16, sampler=sampler)
    state = gen.get_state().clone()
    a = _run(model, loader, criterion=F.cross_entropy, seed=0)
    assert torch.equal(gen.get_state(), state), "the loader's generator was left advanced"
    first_losses = a.trace.loc[a.trace["step"] == 0, "loss"].to_numpy()
    assert len(first_losses) >= 2 and (first_losses == first_losses[0]).all()
    b = _run(model, loader, criterion=F.cross_entropy, seed=0)
    assert a == b
    np.testing.assert_array_equal(a.trace["loss"].to_numpy(), b.trace["loss"].to_numpy())
    assert torch.equal(gen.get_state(), state)


def test_loader_generator_restored_after_an_error() -> None:
    gen = torch.Generator().manual_seed(5)
    base = _shuffled_loader()
    loader = DataLoader(base.dataset, batch_size=16, shuffle=True, generator=gen)
    state = gen.get_state().clone()
    calls = {"n": 0}

    def failing(model: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 10:
            raise RuntimeError("boom")
        return F.cross_entropy(model(batch[0]), batch[1])

    with pytest.raises(RuntimeError, match="boom"):
        _run(_net(), loader, loss_fn=failing)
    assert torch.equal(gen.get_state(), state)


def test_same_seed_same_suggestion() -> None:
    # Shuffled data and Dropout: the probe must seed both, whatever the global RNG state.
    model = _net()
    loader = _shuffled_loader()
    torch.manual_seed(1)
    a = _run(model, loader, criterion=F.cross_entropy, seed=0)
    torch.manual_seed(2)
    _ = torch.rand(100)
    b = _run(model, loader, criterion=F.cross_entropy, seed=0)
    assert a.warmup_steps == b.warmup_steps
    assert a.peak_lr == b.peak_lr
    assert a.probe_steps == b.probe_steps
    # The same answer compares equal: the probe's wall time is evidence, not the answer.
    assert a == b and hash(a) == hash(b)
    np.testing.assert_array_equal(a.trace["loss"].to_numpy(), b.trace["loss"].to_numpy())
    np.testing.assert_array_equal(a.trace["lr"].to_numpy(), b.trace["lr"].to_numpy())
    # Every burst starts from the same weights, batch and dropout mask: step 0 (the loss before
    # the first update) is the same number in every burst.
    first_losses = a.trace.loc[a.trace["step"] == 0, "loss"].to_numpy()
    assert len(first_losses) >= 2
    assert (first_losses == first_losses[0]).all()
    # And the seed is really used: another seed sees other batches and dropout masks.
    c = _run(model, loader, criterion=F.cross_entropy, seed=1)
    assert c.trace["loss"].iloc[0] != a.trace["loss"].iloc[0]


def test_a_probe_variant_runs_only_inside_use_settings() -> None:
    # The benchmark's probe variants (autowarm bench eval --probe-setting) reach suggest()
    # through use_settings: here a 12-step range test starting at 1e-4.
    model, loader = _net(), _shuffled_loader()
    variant = SearchSettings(range_test_min_steps=12, range_test_max_steps=12, lr_min=1e-4)
    with search_plan.use_settings(variant):
        a = _run(model, loader, criterion=F.cross_entropy)
    rt = a.trace[a.trace["phase"] == "range_test"]["lr"].to_numpy()
    assert len(rt) == 12 and rt[0] == pytest.approx(1e-4)
    b = _run(model, loader, criterion=F.cross_entropy)  # the block is over: the defaults
    rt = b.trace[b.trace["phase"] == "range_test"]["lr"].to_numpy()
    assert rt[0] == pytest.approx(SearchSettings().lr_min) and len(rt) != 12


# --------------------------------------------------------------------------------------------
# 7. The Suggestion
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probed() -> tuple[Suggestion, _LossSpy]:
    spy = _LossSpy()
    s = _run(_mlp(), _cls_batches(), loss_fn=spy, decay="linear", budget_steps=60)
    return s, spy


def test_suggestion_schedule(probed: tuple[Suggestion, _LossSpy]) -> None:
    s, _ = probed
    assert isinstance(s.schedule, ScheduleConfig)
    assert s.schedule.warmup_steps == s.warmup_steps
    assert s.schedule.peak_lr == s.peak_lr
    assert s.schedule.total_steps == TOTAL
    assert s.schedule.decay == "linear"
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=s.peak_lr)
    sched = s.schedule.lambda_lr(opt)
    lrs = []
    for _ in range(s.warmup_steps + 2):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if s.warmup_steps > 0:
        assert lrs[0] == 0.0
        assert lrs[1] == pytest.approx(s.peak_lr / s.warmup_steps)
    assert lrs[s.warmup_steps] == pytest.approx(s.peak_lr)
    assert lrs[s.warmup_steps + 1] < s.peak_lr


def test_probe_steps_count_optimizer_steps(probed: tuple[Suggestion, _LossSpy]) -> None:
    s, spy = probed
    # One forward checks the first batch before training (the pre-check; with its graph, to
    # see which tensors outside the model a backward would reach, but no backward); every
    # other call is one optimizer step, one trace row.
    assert spy.calls == s.probe_steps + 1
    assert spy.grad_calls == s.probe_steps + 1
    assert len(s.trace) == s.probe_steps <= 60


def test_suggestion_tables_and_rationale(probed: tuple[Suggestion, _LossSpy]) -> None:
    s, _ = probed
    assert set(TRACE_COLUMNS) <= set(s.trace.columns)
    assert set(MOMENT_COLUMNS) <= set(s.trace.columns)
    assert s.trace["phase"].iloc[0] == "range_test"
    assert set(s.trace["phase"]) <= {"range_test", "peak_ladder", "warmup", "warmup_bisect"}
    # Steps count from 0 within each burst, and bursts are numbered in order.
    for _, rows in s.trace.groupby("burst"):
        assert rows["step"].tolist() == list(range(len(rows)))
    assert s.trace["burst"].is_monotonic_increasing
    # The range test sweeps the LR up geometrically; each later burst is a linear ramp from 0
    # to its peak, then holds it.
    rt = s.trace[s.trace["phase"] == "range_test"]["lr"].to_numpy()
    assert (np.diff(rt) > 0).all()
    ratios = rt[1:] / rt[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    for _, rows in s.trace[s.trace["phase"] != "range_test"].groupby("burst"):
        lrs = rows["lr"].to_numpy()
        peak = lrs.max()
        w = int((lrs < peak).sum())
        np.testing.assert_allclose(lrs, ramp_lrs(peak, w, len(lrs) - w)[: len(lrs)], rtol=1e-12)
    assert list(s.signals.columns) == ["name", "value", "unit", "description"]
    assert len(s.signals) > 0
    values = dict(zip(s.signals["name"], s.signals["value"], strict=True))
    assert values["decision.warmup_steps"] == s.warmup_steps
    assert values["decision.peak_lr"] == pytest.approx(s.peak_lr)
    assert isinstance(s.rationale, str) and s.rationale.strip()
    assert f"{s.probe_steps} of its 60" in s.rationale
    assert s.confidence in {"high", "low"}
    assert s.low_confidence == (s.confidence != "high")
    assert s.wall_seconds > 0


def test_suggestion_save_load_round_trip(
    probed: tuple[Suggestion, _LossSpy], tmp_path: Any
) -> None:
    s, _ = probed
    path = s.save(tmp_path / "sub" / "s.json")
    assert path.exists()
    assert (tmp_path / "sub" / "s.trace.csv").exists()
    assert (tmp_path / "sub" / "s.signals.csv").exists()
    t = Suggestion.load(path)
    assert t.warmup_steps == s.warmup_steps
    assert t.peak_lr == s.peak_lr
    assert t.schedule == s.schedule
    assert t.probe_steps == s.probe_steps
    assert t.rationale == s.rationale
    assert t.confidence == s.confidence
    assert t.low_confidence_reasons == s.low_confidence_reasons
    assert t.deciding_signal == s.deciding_signal
    assert t.wall_seconds == s.wall_seconds
    assert t.training == s.training and s.training["optimizer"] == "torch.optim.AdamW"
    pd.testing.assert_frame_equal(
        t.trace, s.trace, check_dtype=False, check_exact=False, rtol=1e-12
    )
    pd.testing.assert_frame_equal(
        t.signals, s.signals, check_dtype=False, check_exact=False, rtol=1e-12
    )
    with pytest.raises(ValueError, match=r"\.json"):
        s.save(tmp_path / "s.txt")
    # equality and hashing compare the answer, not the evidence tables
    assert t == s and hash(t) == hash(s) and t in [s]
    assert t != Suggestion.from_dict({**s.to_dict(), "rationale": "other"})
    assert t == Suggestion.from_dict({**s.to_dict(), "wall_seconds": s.wall_seconds + 1.0})
    # a suggestion without its tables (rebuilt from to_dict) saves and loads again
    bare = Suggestion.from_dict(s.to_dict())
    again = Suggestion.load(bare.save(tmp_path / "bare.json"))
    assert again == s and again.trace.empty and again.signals.empty


def test_a_suggestions_tables_are_its_own(
    probed: tuple[Suggestion, _LossSpy], tmp_path: Any
) -> None:
    s, _ = probed
    path = s.save(tmp_path / "s.json")
    other = Suggestion.from_dict(s.to_dict(), trace=s.trace.head(3), signals=s.signals)
    other.save(tmp_path / "o.json")
    # another suggestion's trace beside this JSON (copied, or a save cut between its files)
    (tmp_path / "s.trace.csv").write_bytes((tmp_path / "o.trace.csv").read_bytes())
    with pytest.raises(ValueError, match=r"s\.trace\.csv is not the table s\.json was saved"):
        Suggestion.load(path)
    (tmp_path / "s.trace.csv").unlink()  # the documented way out: load without it
    assert Suggestion.load(path).trace.empty
    # a broken table is named, not blamed on the JSON (a JSON saved before the fingerprints)
    (tmp_path / "o.json").write_text(json.dumps(other.to_dict()), encoding="utf-8")
    (tmp_path / "o.signals.csv").write_bytes(b'a,b\n"1,2\n')
    with pytest.raises(ValueError, match=r"o\.signals\.csv: not a table written by"):
        Suggestion.load(tmp_path / "o.json")
    # a byte order mark (an editor's) is not part of the JSON
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(s.to_dict()).encode())
    assert Suggestion.load(bom) == s
    # where it cannot be written, nothing is: a folder at the path, a file as a parent
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ValueError, match=r"d\.json is a folder"):
        s.save(tmp_path / "d.json")
    assert not (tmp_path / "d.trace.csv").exists()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"f is a file, not a folder"):
        s.save(tmp_path / "f" / "s.json")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"schedule": None}, "missing field 'schedule'"),
        ({"rationale": None}, "missing field 'rationale'"),
        ({"probe_steps": "x"}, "field 'probe_steps' must be an int >= 0, but got 'x'"),
        ({"schedule": [1]}, "field 'schedule' must be a mapping"),
        ({"schedule": {"peak_lr": -1}}, "field 'schedule': missing required field"),
        ({"rationale": 3}, "field 'rationale' must be a str"),
        ({"format_version": 2}, "format_version=2 was written by a newer autowarm"),
        ({"format_version": "garbage"}, "format_version must be an int >= 1"),
        (
            {"wall_seconds": "x"},
            "field 'wall_seconds' must be a number of seconds >= 0, but got 'x'",
        ),
        ({"wall_seconds": True}, "field 'wall_seconds' must be a number of seconds >= 0"),
        ({"wall_seconds": -1.0}, "field 'wall_seconds' must be a number of seconds >= 0"),
        (
            {"low_confidence_reasons": "abc"},
            "field 'low_confidence_reasons' must be a list of str, but got 'abc'",
        ),
        (
            {"low_confidence_reasons": ["ok", 3]},
            "field 'low_confidence_reasons' must be a list of str",
        ),
        (
            {"low_confidence_reasons": {"a": 1}},
            "field 'low_confidence_reasons' must be a list of str",
        ),
        ({"confidence": 0.5}, "field 'confidence' must be a str, but got 0.5"),
        ({"deciding_signal": ["x"]}, r"field 'deciding_signal' must be a str, but got \['x'\]"),
        ({"probe_steps": 2.0}, "field 'probe_steps' must be an int >= 0, but got 2.0"),
        # edited beside the schedule, which is what loads: an error, not ignored
        ({"peak_lr": 123.0}, "field 'peak_lr' is 123.0, but the schedule's is"),
        ({"warmup_steps": -5}, "field 'warmup_steps' is -5, but the schedule's is"),
        ({"confidence": "maybe"}, "field 'confidence' must be 'high' or 'low', but got 'maybe'"),
    ],
)
def test_a_malformed_suggestion_file_names_the_file_and_the_field(
    probed: tuple[Suggestion, _LossSpy], tmp_path: Any, change: dict[str, Any], match: str
) -> None:
    data = {**probed[0].to_dict(), **change}
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=f"bad.json: {match}"):
        Suggestion.load(path)


def test_optional_fields_of_a_suggestion_are_type_checked_too(
    probed: tuple[Suggestion, _LossSpy],
) -> None:
    good = probed[0].to_dict()
    for field, value in [
        ("deciding_signal", None),  # was read as the text "None"
        ("confidence", None),
        ("low_confidence_reasons", None),
        ("wall_seconds", None),
        ("wall_seconds", math.inf),
        ("wall_seconds", math.nan),
    ]:
        with pytest.raises(ValueError, match=f"field '{field}' must be "):
            Suggestion.from_dict({**good, field: value})
    with pytest.raises(ValueError, match=r"a suggestion must be a mapping .* got list"):
        Suggestion.from_dict([good])  # type: ignore[arg-type]
    # what to_dict writes, and files without the optional fields, still load
    bare = {k: good[k] for k in ("format", "schedule", "probe_steps", "rationale")}
    loaded = Suggestion.from_dict(bare)
    assert (loaded.confidence, loaded.low_confidence_reasons) == ("high", ())
    assert (loaded.deciding_signal, loaded.wall_seconds) == ("", 0.0)
    kept = Suggestion.from_dict(
        {**good, "low_confidence_reasons": ["a", "b"], "wall_seconds": 3, "confidence": "low"}
    )
    assert kept.low_confidence_reasons == ("a", "b") and kept.wall_seconds == 3.0
    assert isinstance(kept.wall_seconds, float) and kept.low_confidence


_LEFT_OUT = object()


def _with_training(good: dict[str, Any], **change: Any) -> dict[str, Any]:
    # a suggestion's dict with its training record changed (to _LEFT_OUT: the key left out)
    training = {**good["training"], **change}
    return {**good, "training": {k: v for k, v in training.items() if v is not _LEFT_OUT}}


def _with_settings(good: dict[str, Any], **change: Any) -> dict[str, Any]:
    settings = {**good["training"]["optimizer_settings"], **change}
    return _with_training(good, optimizer_settings=settings)


# A training record's field set to a bad value (or an optimizer setting: "settings."), and
# the message: each would reach the Trainer's arguments, or fail there without a word of why.
_BAD_TRAINING: dict[str, tuple[dict[str, Any], str]] = {
    # the export would give no bf16 flag, 2 or 0 batches, clipping at -1.0, the token NaN
    "precision_typo": (
        {"precision": "bf16"},
        r"precision must be one of \('32-true', '16-mixed', 'bf16-mixed'\) \(Lightning's "
        r"names\), but got precision='bf16'",
    ),
    "accumulation_fraction": (
        {"accumulation_steps": 2.5},
        r"accumulation_steps must be an int >= 1 \(batches per optimizer update\), but got "
        r"accumulation_steps=2\.5",
    ),
    "accumulation_0": ({"accumulation_steps": 0}, r"accumulation_steps must be an int >= 1"),
    "accumulation_bool": ({"accumulation_steps": True}, r"accumulation_steps must be an int"),
    "clip_negative": (
        {"grad_clip": -1},
        r"grad_clip must be a positive finite number \(the max gradient norm the probe "
        r"clipped to\) or null \(no clipping\), but got grad_clip=-1",
    ),
    "clip_0": ({"grad_clip": 0}, r"grad_clip must be a positive finite number .*=0$"),
    "clip_nan": ({"grad_clip": math.nan}, r"grad_clip must be a positive .*=nan$"),
    "clip_inf": ({"grad_clip": math.inf}, r"grad_clip must be a positive .*=inf$"),
    "clip_str": ({"grad_clip": "1.0"}, r"grad_clip must be a positive .*='1\.0'$"),
    "optimizer_int": (
        {"optimizer": 3},
        r"optimizer must be the optimizer class's qualified name \(a str such as "
        r"'torch\.optim\.AdamW'\), but got optimizer=3",
    ),
    "optimizer_empty": ({"optimizer": ""}, r"optimizer must be .* but got optimizer=''"),
    "settings_list": (
        {"optimizer_settings": [1]},
        r"optimizer_settings must be a mapping of the optimizer's settings \(its keyword "
        r"arguments: betas, eps, weight_decay\.\.\.\), but got \[1\]",
    ),
    # the export read betas[1]: "list index out of range"
    "betas_one": (
        {"settings.betas": [0.9]},
        r"optimizer_settings: betas must be a pair \[beta1, beta2\] of numbers in \[0, 1\), "
        r"but got betas=\[0\.9\]",
    ),
    "betas_1": (
        {"settings.betas": [0.9, 1.0]},
        r"optimizer_settings: betas must be a pair .*=\[0\.9, 1\.0\]$",
    ),
    "betas_nan": (
        {"settings.betas": [0.9, math.nan]},
        r"optimizer_settings: betas must be a pair .*nan\]$",
    ),
    "betas_negative": (
        {"settings.betas": [-0.1, 0.9]},
        r"optimizer_settings: betas must be a pair .*-0\.1",
    ),
    "betas_str": (
        {"settings.betas": "ab"},
        r"optimizer_settings: betas must be a pair .* but got betas='ab'$",
    ),
    "amsgrad_str": (  # "false" would have read as true: a warning for a flag never set
        {"settings.amsgrad": "false"},
        r"optimizer_settings: amsgrad must be true or false, but got amsgrad='false'",
    ),
    "decoupled_int": (
        {"settings.decoupled_weight_decay": 1},
        r"optimizer_settings: decoupled_weight_decay must be true or false, but got "
        r"decoupled_weight_decay=1",
    ),
    "eps_str": (
        {"settings.eps": "x"},
        r"optimizer_settings: eps must be a finite number >= 0, but got eps='x'",
    ),
    "weight_decay_nan": (
        {"settings.weight_decay": math.nan},
        r"optimizer_settings: weight_decay must be a finite number >= 0, but got "
        r"weight_decay=nan",
    ),
    # a misspelt or missing field would be read as its default without a word
    "unknown_field": (
        {"grad_clipp": 1.0},
        r"unknown field\(s\) 'grad_clipp' in training \('grad_clipp': did you mean "
        r"'grad_clip'\?\); valid fields are optimizer, "
        r"optimizer_settings, grad_clip, accumulation_steps, precision \(and param_groups\)$",
    ),
    "missing_field": (
        {"grad_clip": _LEFT_OUT},
        r"missing field 'grad_clip' \(a training record has optimizer, optimizer_settings, "
        r"grad_clip, accumulation_steps, precision, as suggest\(\) records them; an empty "
        r"one, \{\}, records none\)",
    ),
}


@pytest.mark.parametrize("case", list(_BAD_TRAINING))
def test_a_malformed_training_record_is_refused_with_the_field_and_what_to_pass(
    probed: tuple[Suggestion, _LossSpy], tmp_path: Any, case: str
) -> None:
    change, match = _BAD_TRAINING[case]
    data = json.loads(json.dumps(probed[0].to_dict()))
    for key, value in change.items():
        if key.startswith("settings."):
            data = _with_settings(data, **{key.removeprefix("settings."): value})
        else:
            data = _with_training(data, **{key: value})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=f"bad\\.json: field 'training': {match}") as info:
        Suggestion.load(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=f"^field 'training': {match}"):
        Suggestion.from_dict(data)
    # nor does a suggestion built with it export it
    built = dataclasses.replace(probed[0], training=data["training"])
    with pytest.raises(ValueError, match=f"^field 'training': {match}"):
        built.to_trainer_args()


def test_the_training_records_that_suggest_writes_load(
    probed: tuple[Suggestion, _LossSpy],
) -> None:
    s = probed[0]
    good = json.loads(json.dumps(s.to_dict()))
    assert Suggestion.from_dict(good).training == good["training"]
    assert Suggestion.from_dict(s.to_dict()).training == s.training  # before JSON (tuples)
    # other optimizers keep their own settings, not read by the exports: not checked as Adam's
    for name, settings in [
        ("torch.optim.sgd.SGD", {"momentum": 0.9, "nesterov": False, "foreach": None}),
        ("adan.Adan", {"betas": [0.98, 0.92, 0.99], "eps": 1e-8}),
        ("lion_pytorch.Lion", {"betas": [0.9, 0.99], "weight_decay": 0.0}),
    ]:
        data = _with_training(good, optimizer=name, optimizer_settings=settings)
        assert Suggestion.from_dict(data).training["optimizer_settings"] == settings
    # every precision, clipping and accumulation suggest() takes
    for precision, clip, steps in [("bf16-mixed", 0.5, 4), ("16-mixed", 1, 1)]:
        data = _with_training(good, precision=precision, grad_clip=clip, accumulation_steps=steps)
        assert Suggestion.from_dict(data).training["precision"] == precision
    # a suggestion saved before the record: none, as before (and to_trainer_args says so)
    old = {k: v for k, v in good.items() if k != "training"}
    assert Suggestion.from_dict(old).training == {}
    assert Suggestion.from_dict({**good, "training": {}}).training == {}
    with pytest.raises(ValueError, match=r"^field 'training' must be a mapping, but got \[\]"):
        Suggestion.from_dict({**good, "training": []})


def test_unknown_fields_of_a_suggestion_are_refused_with_the_valid_ones(
    probed: tuple[Suggestion, _LossSpy], tmp_path: Any
) -> None:
    good = probed[0].to_dict()
    valid = (
        r"valid fields are warmup_steps, peak_lr, probe_steps, confidence, "
        r"low_confidence_reasons, deciding_signal, wall_seconds, rationale, schedule, "
        r"training, tables \(and format, format_version\)"
    )
    for extra, named in [
        # loaded as confidence 'high' if it were not refused
        (
            {"confidance": "low"},
            r"'confidance' in suggestion \('confidance': did you mean "
            r"'confidence'\?\)",
        ),
        ({"foo": 1}, "'foo' in suggestion"),
        ({"foo": 1, "bar": 2}, "'bar', 'foo' in suggestion"),
    ]:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({**good, **extra}), encoding="utf-8")
        with pytest.raises(
            ValueError, match=f"bad\\.json: unknown field\\(s\\) {named}; {valid}$"
        ):
            Suggestion.load(path)
    # what save writes beside to_dict (the tables' fingerprints) is a field
    path = probed[0].save(tmp_path / "s.json")
    assert "tables" in json.loads(path.read_text()) and Suggestion.load(path) == probed[0]
    # a field given twice is refused, as in a schedule config, not the last one taken
    text = json.dumps(good)
    twice = text[:-1] + ', "confidence": "high"}'
    path = tmp_path / "twice.json"
    path.write_text(twice, encoding="utf-8")
    with pytest.raises(ValueError, match=r"twice\.json: field 'confidence' is given twice"):
        Suggestion.load(path)
    # a newer file's fields are its version's: that is what is said
    with pytest.raises(ValueError, match="format_version=2 was written by a newer autowarm"):
        Suggestion.from_dict({**good, "format_version": 2, "new_field": 1})


def test_a_study_storage_passed_as_a_suggestion_says_to_pass_it_as_storage(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    from autowarm.cli import main

    db = tmp_path / "autowarm.db"
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO studies VALUES (1, 'autowarm-tiny')")
        con.commit()
    with pytest.raises(
        ValueError,
        match=r"autowarm\.db is a SQLite database \(a study's storage\?\), not a suggestion "
        r"JSON: pass it as --storage .*autowarm\.db instead",
    ):
        Suggestion.load(db)
    journal = tmp_path / "autowarm.journal.log"
    journal.write_text('{"op_code": 0, "worker_id": "w"}\n{"op_code": 1}\n')
    with pytest.raises(ValueError, match=r"journal\.log is an optuna journal file .* --storage"):
        Suggestion.load(journal)
    other = tmp_path / "weights.json"  # binary, but no storage: named, and what to pass said
    other.write_bytes(b"\x80\x04\x95 not text")
    with pytest.raises(
        ValueError,
        match=r"weights\.json is not a suggestion JSON file \(not UTF-8 text: .*byte 0x80.*\): "
        r"pass the JSON written by Suggestion\.save\(\)",
    ):
        Suggestion.load(other)
    # what `autowarm tune --suggestion autowarm.db` prints
    monkeypatch.chdir(tmp_path)
    task = os.path.join(os.path.dirname(__file__), "study", "tiny_task.py") + ":task"
    assert main(["tune", task, "--suggestion", str(db), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "autowarm.db is a SQLite database (a study's storage?)" in err
    assert f"--storage {db} instead" in err


# --------------------------------------------------------------------------------------------
# 8. Bad input, rejected before any training
# --------------------------------------------------------------------------------------------


def test_the_default_budget_floor_is_said_on_a_short_run() -> None:
    with pytest.warns(UserWarning, match="takes 60 steps, 20% of this 300-step run"):
        s = autowarm.suggest(
            _mlp(), _cls_batches(), criterion=F.cross_entropy, total_steps=300, progress=False
        )
    assert s.probe_steps <= 60


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"optimizer_kwargs": {"lr": 1}}, ValueError, "lr"),
        ({"optimizer_kwargs": {"params": []}}, ValueError, "'params'.*pass param_groups="),
        ({"total_steps": 0}, ValueError, "total_steps"),
        ({"total_steps": -5}, ValueError, "total_steps"),
        ({"total_steps": 10.5}, ValueError, "total_steps"),
        ({"budget_steps": 10}, ValueError, "budget_steps"),
        ({"budget_steps": 501}, ValueError, "budget_steps=501 is more than the whole run"),
        ({"decay": "nope"}, ValueError, "decay.*'linear'.*'cosine'|decay.*'cosine'.*'linear'"),
        ({"optimizer_cls": "adamw"}, TypeError, "optimizer_cls"),
        ({"criterion": F.cross_entropy}, ValueError, "either loss_fn= or criterion="),
    ],
    ids=[
        "lr_in_kwargs",
        "params_in_kwargs",
        "total_0",
        "total_negative",
        "total_float",
        "budget_small",
        "budget_above_the_run",
        "decay",
        "optimizer_cls",
        "loss_fn_and_criterion",
    ],
)
def test_bad_arguments_raise_before_training(
    kwargs: dict[str, Any], exc: type, match: str
) -> None:
    model = _mlp()
    guard = _Untouched(model)
    spy = _LossSpy()
    opt_cls = _counting_optimizer()
    call = {"optimizer_cls": opt_cls, "loss_fn": spy, **kwargs}
    with pytest.raises(exc, match=match):
        _run(model, _cls_batches(), **call)
    assert spy.calls == 0
    guard.check(opt_cls)


def test_not_a_module_raises_type_error() -> None:
    spy = _LossSpy()
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        _run(lambda x: x, _cls_batches(), loss_fn=spy)
    assert spy.calls == 0


def test_decay_error_lists_every_valid_name() -> None:
    with pytest.raises(ValueError) as info:
        _run(_mlp(), _cls_batches(), criterion=F.cross_entropy, decay="nope")
    for name in ("constant", "linear", "cosine"):
        assert repr(name) in str(info.value)


def test_model_without_trainable_parameters_is_restored() -> None:
    model = _mlp().requires_grad_(False)
    before = _capture(model)
    with pytest.raises(ValueError, match="requires_grad"):
        _run(model, _cls_batches(), criterion=F.cross_entropy)
    _assert_restored(model, before)


# --------------------------------------------------------------------------------------------
# 9. The warmup search on a model that provably needs warmup
# --------------------------------------------------------------------------------------------
#
# ``suggest``'s warmup is the larger of the burst answer and the step at which Adam's second
# moment settles; the latter is ~sqrt-law in the gradient noise and gives every Adam model some
# tens of steps, so "0 for a control model" cannot be asserted through ``suggest``. The burst
# part is tested here at a fixed peak through ``_warmup_search``, the function ``suggest`` uses.

PEAK = 0.1  # Adam, fixed
HOLD = 12


def _deep_relu_mlp(seed: int = 0, depth: int = 3, width: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _regression_batch(width: int = 32, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, width, generator=g)
    return x, torch.sin(x[:, :3].sum(1, keepdim=True))


def _adam_by_hand(model: nn.Module, peak: float, warmup: int, hold: int) -> list[float]:
    """Full-batch Adam with a linear ramp 0 -> peak over ``warmup`` steps, then ``hold`` steps
    at the peak; written independently of autowarm. Returns the loss before each update."""
    model = copy.deepcopy(model)
    x, y = _regression_batch()
    opt = torch.optim.Adam(model.parameters(), lr=peak)
    losses = []
    for step in range(warmup + hold):
        for group in opt.param_groups:
            group["lr"] = peak * step / warmup if step < warmup else peak
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        losses.append(loss.item())
        loss.backward()
        opt.step()
    return losses


def _runner(model: nn.Module, snapshot: Any, budget: int = 80) -> ProbeRunner:
    # Full-batch Adam on the regression batch, as _adam_by_hand trains it.
    return ProbeRunner(
        model=model,
        stream=BatchStream([_regression_batch()], torch.device("cpu")),
        loss_fn=resolve_loss_fn(criterion=F.mse_loss),
        optimizer_cls=torch.optim.Adam,
        optimizer_kwargs={},
        snapshot=snapshot,
        budget=Budget(total=budget),
        seed=0,
    )


def _search(model: nn.Module, peak: float) -> tuple[list[Any], int | None, int, float]:
    with preserved(model) as snapshot:
        return _warmup_search(_runner(model, snapshot), peak, HOLD, [])


@pytest.fixture(scope="module")
def hard_model() -> nn.Module:
    model = _deep_relu_mlp()
    # Checked by hand: at PEAK without warmup the loss blows up ...
    cold = _adam_by_hand(model, PEAK, 0, HOLD)
    assert max(cold) > 5 * cold[0]
    # ... with a 24-step linear ramp it never rises above the start and trains.
    warm = _adam_by_hand(model, PEAK, 24, HOLD)
    assert max(warm) <= warm[0] * (1 + 1e-6)
    assert warm[-1] < 0.1 * warm[0]
    return model


def test_warmup_search_finds_warmup_where_it_is_needed(hard_model: nn.Module) -> None:
    verdicts, stable_w, reductions, peak = _search(hard_model, PEAK)
    first = verdicts[0]
    assert first.burst.warmup_steps == 0 and not first.stable
    assert stable_w is not None and stable_w > 0
    assert reductions == 0 and peak == PEAK  # solved by warmup, not by lowering the peak
    chosen = [v for v in verdicts if v.burst.warmup_steps == stable_w]
    assert chosen and chosen[-1].stable


def test_warmup_search_finds_none_where_none_is_needed(hard_model: nn.Module) -> None:
    # Control: the same model at a tenth of the peak trains without warmup.
    control_peak = PEAK / 10
    cold = _adam_by_hand(hard_model, control_peak, 0, HOLD)
    assert max(cold) <= cold[0] * 1.05 and cold[-1] < 0.5 * cold[0]
    verdicts, stable_w, reductions, peak = _search(hard_model, control_peak)
    assert stable_w == 0
    assert len(verdicts) == 1 and verdicts[0].stable
    assert reductions == 0 and peak == control_peak


def test_suggest_on_the_hard_model_keeps_its_peak_trainable(hard_model: nn.Module) -> None:
    # End to end: whatever peak suggest chooses, its own schedule must train the model
    # without blowing up (checked by hand with the suggested warmup and peak).
    x, y = _regression_batch()
    model = copy.deepcopy(hard_model)
    s = _run(
        model, [(x, y)], torch.optim.Adam, criterion=F.mse_loss, budget_steps=80, total_steps=1000
    )
    losses = _adam_by_hand(model, s.peak_lr, s.warmup_steps, HOLD)
    assert all(math.isfinite(v) for v in losses)
    assert max(losses) < 2 * losses[0]
    assert losses[-1] < losses[0]


def _search_with_ladder_pick(
    model: nn.Module, peak: float, total_steps: int, monkeypatch: pytest.MonkeyPatch
) -> search_plan.ProbeOutcome:
    """``run_search`` on the hard model with the ladder's pick fixed at ``peak``.

    The ladder is replaced by one real ramped burst at ``peak`` (its ramp and length as the
    plan sets them); the range test, the no-ramp burst and the decision run for real.
    """
    settings = SearchSettings()
    budget = 80
    length = max(settings.ladder_min_steps, round(settings.ladder_share * budget))
    ramp = int(length * settings.ladder_ramp_fraction)

    def one_rung(runner: ProbeRunner, *args: Any, **kwargs: Any) -> Any:
        burst = runner.run(
            ramp_lrs(peak, ramp, length - ramp),
            phase="peak_ladder",
            peak_lr=peak,
            warmup_steps=ramp,
        )
        verdict = _judge(burst)
        return [verdict], verdict

    monkeypatch.setattr(search_plan, "_peak_ladder", one_rung)
    with preserved(model) as snapshot:
        runner = _runner(model, snapshot, budget)
        return run_search(runner, total_steps=total_steps, settings=settings, beta2=0.999)


def test_a_needed_ramp_carries_to_the_run_as_a_fraction(
    hard_model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At PEAK the no-ramp burst blows up, so the ladder's ramp (4 of 16 steps: 25%) is needed
    # and becomes 25% of the run, whatever the run's length.
    for total in (1000, 4000):
        o = _search_with_ladder_pick(hard_model, PEAK, total, monkeypatch)
        no_ramp = [v for v in o.verdicts if v.burst.phase == "warmup"]
        assert len(no_ramp) == 1 and no_ramp[0].burst.warmup_steps == 0
        assert o.warmup_from_bursts == total // 4
        assert o.warmup_steps == total // 4 and o.deciding_signal == "loss bursts"
        assert o.warmup_why is not None and "carries to the run as" in o.warmup_why


def test_an_unneeded_ramp_leaves_the_warmup_to_the_second_moment(
    hard_model: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    o = _search_with_ladder_pick(hard_model, PEAK / 10, 1000, monkeypatch)
    assert o.warmup_from_bursts == 0
    assert o.deciding_signal in ("second moment", "none needed")
    assert o.warmup_steps < 1000 // 4
    assert o.warmup_why is not None and "trains without a ramp" in o.warmup_why
    # the steps it names are the trace's (from 0): the no-ramp burst's last quarter
    (no_ramp,) = [v.burst for v in o.verdicts if v.burst.phase == "warmup"]
    n = len(no_ramp.losses)
    assert f"over steps {n - max(5, n // 4)}-{n - 1} was" in o.warmup_why
    assert max(row["step"] for row in no_ramp.rows) == n - 1


def test_the_rationale_says_what_the_settling_step_is() -> None:
    from autowarm._suggest import _rationale
    from autowarm.probe.signals import settling_step

    # never settles (vhat_change stays large); rel_error alone would settle at t ~ 8 < 20
    frame = pd.DataFrame(
        {
            "step": np.arange(1.0, 21.0),
            "drift": 1.0,
            "vhat_change": 0.5,
            "kappa": 2.0,
            "n_eff": np.arange(1.0, 21.0),
            "rel_error": np.sqrt(2.0 / np.arange(1.0, 21.0)),
        }
    )
    st = settling_step(frame, rel_error_tol=0.5, beta2=0.999)
    assert not st.settled and st.extrapolated and st.last_step == 20.0
    assert st.settling_step == 20.0 and "not settled by update 20" in st.reason
    outcome = _outcome_with(settling=st, warmup_steps=20, deciding_signal="second moment")
    text = _rationale(outcome, 10, 10, 1000)
    assert "had not settled by update 20, the last the bursts observed" in text
    assert "decided by the second moment" in text
    assert "the loss trained without a ramp" not in text  # no burst said so here
    # the no-ramp burst did as well as the ramped one: the text says why a ramp anyway (a
    # reader saw "trains without a ramp", then "Warmup 99 steps", and no link between them)
    no_ramp = _outcome_with(
        settling=st, warmup_steps=20, deciding_signal="second moment", warmup_from_bursts=0
    )
    text = _rationale(no_ramp, 10, 10, 1000)
    assert "(the loss trained without a ramp in the bursts; the warmup covers Adam's" in text
    assert "too short to test" not in text  # no no-ramp burst shorter than the warmup here
    from types import SimpleNamespace

    short = SimpleNamespace(
        burst=SimpleNamespace(warmup_steps=0, peak_lr=0.01),
        signals=SimpleNamespace(n_steps=15, net_decrease=0.3, reason="ok"),
        stable=True,
    )
    for n_steps, said in ((15, True), (30, False)):
        short.signals.n_steps = n_steps
        text = _rationale(dataclasses.replace(no_ramp, verdicts=[short]), 10, 10, 1000)
        assert ("a precaution the bursts are too short to test" in text) == said
    drifting = settling_step(frame.assign(drift=3.0, vhat_change=0.0), beta2=0.999)
    assert drifting.lower_bound and not drifting.at_floor and drifting.settling_step > 20
    text = _rationale(_outcome_with(settling=drifting), 10, 10, 1000)
    assert (
        f"extrapolated to settle after at least {math.ceil(drifting.settling_step)} updates "
        "(a lower bound: drift cannot be extrapolated)"
    ) in text
    unknown = settling_step(frame.iloc[:0], rel_error_tol=0.5, beta2=0.999)  # no update read
    assert not unknown.extrapolated and math.isnan(unknown.settling_step)
    text = _rationale(_outcome_with(settling=unknown), 10, 10, 1000)
    assert "second moment gave no settling step, so it set no least warmup" in text
    assert "extrapolated" not in text and "?" not in text
    from autowarm.probe._search import outcome_signals

    row = next(
        r
        for r in outcome_signals(_outcome_with(settling=unknown))
        if r["name"] == "second_moment.settling_step"
    )
    assert row["description"] == "no settling step could be read (nan)"
    none = _outcome_with(settling=None, warmup_steps=0, deciding_signal="none needed")
    text = _rationale(none, 10, 10, 1000)
    assert "Warmup 0 steps (0.0% of 1000), no signal asked for one" in text


def _outcome_with(**fields: Any) -> Any:
    # A ProbeOutcome with a real range test and the given fields, for the rationale's text.
    from autowarm.probe._search import ProbeOutcome
    from autowarm.probe.signals import range_test

    lrs = np.geomspace(1e-5, 1.0, 40)
    rt = range_test(lrs, 2.0 - 0.5 * np.tanh(np.log10(lrs) + 3))
    base: dict[str, Any] = dict(
        peak_lr=0.01, warmup_steps=0, deciding_signal="none needed", confidence="high",
        reasons=[], range_test=rt, verdicts=[], settling=None, peak_reductions=0,
        warmup_from_bursts=None, notes=["peak = 0.01: a test"], warmup_why=None,
    )  # fmt: skip
    base.update(fields)
    names = {f.name for f in dataclasses.fields(ProbeOutcome)}
    return ProbeOutcome(**{k: v for k, v in base.items() if k in names})


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def test_public_name_suggest_is_the_function() -> None:
    # Regression: a lazily imported submodule named ``suggest`` used to shadow the function.
    _ = autowarm.Suggestion  # any use of the lazy names, as a user's first call does
    assert callable(autowarm.suggest)
    assert autowarm.suggest is suggest


def test_every_public_name_is_listed_and_a_wrong_one_is_an_attribute_error() -> None:
    # dir() lists the lazily imported names (completion in IPython), each resolves, and a
    # misspelt name is an AttributeError, not Any
    assert set(autowarm.__all__) <= set(dir(autowarm))
    assert not {"Any", "TYPE_CHECKING", "annotations"} & set(dir(autowarm))
    assert all(getattr(autowarm, name) is not None for name in autowarm.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'sugest'"):
        autowarm.sugest  # type: ignore[attr-defined]  # noqa: B018


def test_ddp_wrapped_model_is_refused_before_training(tmp_path: Any) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = _mlp()
        before = _capture(model)
        wrapped = nn.parallel.DistributedDataParallel(model)
        with pytest.raises(ValueError, match=r"model\.module"):
            suggest(wrapped, _cls_batches(), criterion=F.cross_entropy, total_steps=TOTAL)
        # torch.compile(DDP(model)), the order torch's docs use, is the same DDP inside
        compiled = torch.compile(wrapped, backend="eager")
        with pytest.raises(ValueError, match=r"model\._orig_mod\.module"):
            suggest(compiled, _cls_batches(), criterion=F.cross_entropy, total_steps=TOTAL)
        _assert_restored(model, before)
        # FSDP2 (fully_shard: DTensor parameters) collects at every forward and backward too
        fsdp = pytest.importorskip("torch.distributed.fsdp")
        from torch.distributed.device_mesh import init_device_mesh

        sharded = _mlp()
        fsdp.fully_shard(sharded, mesh=init_device_mesh("cpu", (1,)))
        with pytest.raises(ValueError, match=r"the model is distributed \(DDP, FSDP"):
            suggest(sharded, _cls_batches(), criterion=F.cross_entropy, total_steps=TOTAL)
    finally:
        dist.destroy_process_group()


def test_a_call_in_a_process_group_of_several_warns_that_ranks_answer_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # suggest() on every rank of a 2-rank gloo job (the model not yet wrapped) gave
    # peak 0.0546 on rank 0 and 0.0455 on rank 1, silently (a reviewer's run)
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    with pytest.warns(UserWarning, match=r"in rank 1 of a process group of 2: if it runs on"):
        _run(_mlp(), _cls_batches(), criterion=F.cross_entropy)
    with pytest.warns(UserWarning) as caught:  # the run's own accumulation, times the ranks
        _run(_mlp(), _cls_batches(), criterion=F.cross_entropy, accumulation_steps=3)
    (record,) = [w for w in caught if "rank 1 of" in str(w.message)]
    assert "broadcast_object_list" in str(record.message)
    assert "accumulation_steps=6 (2 ranks x the run's own 3)" in str(record.message)
    assert record.filename == __file__  # points at the call, not into autowarm
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(_mlp(), _cls_batches(), criterion=F.cross_entropy, budget_steps=60)  # one process


# --------------------------------------------------------------------------------------------
# Inputs a user's own loop accepts (found by a review as a new user)
# --------------------------------------------------------------------------------------------


class _Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 3, sparse=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x).mean(1)


@pytest.mark.parametrize("opt", [torch.optim.SGD, torch.optim.SparseAdam])
def test_sparse_gradients(opt: type[torch.optim.Optimizer]) -> None:
    # nn.Embedding(sparse=True) trains with SGD or SparseAdam in plain PyTorch; the probe's
    # gradient norm must read sparse gradients too.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(0, 50, (16, 4), generator=g), torch.randint(0, 3, (16,), generator=g))
        for _ in range(8)
    ]
    model = _Bag()
    before = model.emb.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = _run(model, batches, opt, criterion=F.cross_entropy)
    _assert_valid(s)
    assert torch.equal(model.emb.weight, before)


class _Jitter(ClsDataset):
    # Augmentation with numpy and python's random, as augmentation libraries do.
    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = np.random.normal(0.0, 0.5, self.x.shape[1]).astype("float32")
        return self.x[i] * (1.0 + random.random()) + torch.from_numpy(noise), self.y[i]


def test_numpy_and_random_augmentation_is_seeded_per_burst() -> None:
    loader = DataLoader(_Jitter(), batch_size=16)
    np.random.seed(0)
    random.seed(0)
    a = _run(_net(), loader, criterion=F.cross_entropy, seed=0)
    first_losses = a.trace.loc[a.trace["step"] == 0, "loss"].to_numpy()
    assert len(first_losses) >= 2 and (first_losses == first_losses[0]).all()
    np.random.seed(1)
    random.seed(1)
    b = _run(_net(), loader, criterion=F.cross_entropy, seed=0)
    assert a == b


@pytest.mark.parametrize("seed", [None, -1, 1.5, 2**70, True])
def test_bad_seed_is_named(seed: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=r"seed must be an int in \[0, 2\*\*32\)"):
        _run(_net(), _cls_batches(), criterion=F.cross_entropy, seed=seed)


def test_maximize_is_refused() -> None:
    with pytest.raises(ValueError, match=r"maximize=True.*negat"):
        _run(
            _net(),
            _cls_batches(),
            criterion=F.cross_entropy,
            optimizer_kwargs={"maximize": True},
        )


def test_default_budget_never_exceeds_a_short_run() -> None:
    with pytest.raises(ValueError, match=r"total_steps=30 is too short"):
        suggest_ = autowarm.suggest
        suggest_(_net(), _cls_batches(), criterion=F.cross_entropy, total_steps=30, progress=False)
    with pytest.warns(UserWarning, match="the probe takes"):
        s = autowarm.suggest(
            _net(), _cls_batches(), criterion=F.cross_entropy, total_steps=50, progress=False
        )
    assert s.probe_steps <= 50


def test_loss_that_needs_autograd_inside() -> None:
    # A loss with an input-gradient penalty (physics-informed nets, WGAN-GP) builds a graph
    # inside loss_fn; the first-batch check must not run it under no_grad.
    def penalised(model: nn.Module, batch: Any) -> torch.Tensor:
        x = batch[0].clone().requires_grad_(True)
        out = model(x)
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return F.cross_entropy(out, batch[1]) + 0.01 * gx.pow(2).mean()

    s = _run(_net(), _cls_batches(), loss_fn=penalised)
    _assert_valid(s)


def test_negative_loss_sweeps_like_its_positive_twin() -> None:
    # A constant added to a loss changes no gradient. A loss that goes negative (a Gaussian
    # log-likelihood, a loss plus a negative constant) stopped the range test after 4 steps
    # (smoothed > 4 x a negative minimum always holds) and got a peak of lr_min.
    batches = _cls_batches(n_batches=8)
    answers = []
    for offset in (0.0, -10.0):

        def shifted(model: nn.Module, batch: Any, c: float = offset) -> torch.Tensor:
            return F.cross_entropy(model(batch[0]), batch[1]) + c

        s = _run(_net(), batches, loss_fn=shifted, budget_steps=60)
        answers.append((s.peak_lr, s.warmup_steps, int((s.trace["phase"] == "range_test").sum())))
    assert answers[1] == answers[0]
    assert answers[1][2] > 10


def test_submodule_modes_of_a_training_model_are_kept() -> None:
    # Fine-tuning with a frozen BatchNorm: the model is in train mode, the BatchNorm in eval
    # mode. The probe trains as the user's loop does (batch size 1 works), then restores.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    model.train()
    model[1].eval()
    seen: list[bool] = []
    model[1].register_forward_hook(lambda mod, i, o: seen.append(mod.training))
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(1, 8, generator=g), torch.randint(0, 3, (1,), generator=g)) for _ in range(20)
    ]
    s = _run(model, batches, criterion=F.cross_entropy)
    _assert_valid(s)
    assert seen and not any(seen)
    assert model.training and not model[1].training


def test_a_model_in_eval_mode_is_probed_in_train_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 3))
    model.eval()
    seen: list[bool] = []
    model[1].register_forward_hook(lambda mod, i, o: seen.append(mod.training))
    _run(model, _cls_batches(), criterion=F.cross_entropy)
    assert seen[-1] is True
    assert not model.training and not model[1].training


def test_a_nan_in_the_data_is_named_not_blamed_on_the_lr() -> None:
    batches = _cls_batches(n_batches=8)
    batches[3][0][5, 2] = float("nan")
    model = _net()
    with pytest.raises(ValueError, match=r"batch 3 of the data.*holds a NaN"):
        _run(model, batches, criterion=F.cross_entropy)


def test_a_loss_that_fails_on_one_batch_is_named() -> None:
    # The data is finite, but the loss on batch 3 is not, at any LR.
    batches = _cls_batches(n_batches=8)
    marker = batches[3][0]

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        loss = F.cross_entropy(model(batch[0]), batch[1])
        return loss * math.inf if torch.equal(batch[0], marker) else loss

    with pytest.raises(ProbeDivergedError, match=r"non-finite at step 3 whatever its LR"):
        _run(_net(), batches, loss_fn=loss_fn)


def test_an_update_that_overflows_at_any_lr_is_not_blamed_on_the_data() -> None:
    # float16 weights with AdamW's eps=1e-8 (0 in float16): one update at lr 1e-8 makes the
    # weights NaN. Every burst's loss is then non-finite at step 1, but batch 1 is fine.
    torch.manual_seed(0)
    model = _mlp().half()
    data = [(x.half(), y) for x, y in _cls_batches()]
    with pytest.raises(ProbeDivergedError, match="weights became non-finite before step 1") as e:
        _run(model, data, criterion=F.cross_entropy, budget_steps=40)
    message = str(e.value)
    assert "eps=1e-08 is 0" in message and "precision='16-mixed'" in message
    assert "batch 1" not in message


def test_radam_is_probed_as_adam_with_a_warning() -> None:
    # RAdam rectifies its first ~2/(1-b2) steps (its step is ~0.1x at step 20), so short bursts
    # with RAdam itself read a peak many times too large. The probe measures with Adam of the
    # same settings and says so.
    kwargs = {"betas": (0.9, 0.99), "weight_decay": 0.01, "decoupled_weight_decay": True}

    def probe(opt: type[torch.optim.Optimizer]) -> Suggestion:
        return _run(
            _net(), _cls_batches(), opt, optimizer_kwargs=kwargs, criterion=F.cross_entropy
        )

    with pytest.warns(UserWarning, match=r"RAdam.*rectif.*Adam"):
        r = probe(torch.optim.RAdam)
    a = probe(torch.optim.Adam)
    assert (r.peak_lr, r.warmup_steps) == (a.peak_lr, a.warmup_steps)
    assert "RAdam" in r.rationale


def test_pruned_and_weight_normed_weights_come_back() -> None:
    # prune and the legacy weight_norm keep module.weight as a plain attribute that a forward
    # pre-hook rebuilds from parameters; it must not keep the probe's last trained value.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # weight_norm is deprecated for parametrizations
        torch.nn.utils.weight_norm(model[2])
    before = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    _run(model, _cls_batches(), criterion=F.cross_entropy)
    assert _bitwise_equal(model[0].weight.detach(), before[0])
    assert _bitwise_equal(model[2].weight.detach(), before[1])


@pytest.mark.parametrize("forwarded", ["never", "train", "eval"])
def test_spectral_normed_weight_comes_back(forwarded: str) -> None:
    # The legacy spectral_norm keeps module.weight as a plain attribute too: weight_orig's own
    # data until the first forward, then weight_orig / sigma from the power iteration's u, v.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    torch.nn.utils.spectral_norm(model[2])
    if forwarded != "never":
        model.train(forwarded == "train")
        model(torch.randn(4, 8))
    layer = model[2]
    before = layer.weight.detach().clone()
    aliased = layer.weight.data_ptr() == layer.weight_orig.data_ptr()
    _run(model, _cls_batches(), criterion=F.cross_entropy)
    assert _bitwise_equal(layer.weight.detach(), before)
    assert (layer.weight.data_ptr() == layer.weight_orig.data_ptr()) == aliased


def test_a_budget_too_small_for_the_ladder_lowers_the_confidence() -> None:
    # 40 steps: the range test and two 12-step ladder bursts, no room for the third peak, so
    # the pick may sit at the edge of what was searched; 60 runs the whole ladder.
    short = _run(_net(), _cls_batches(), criterion=F.cross_entropy, budget_steps=40)
    assert short.confidence != "high"
    (reason,) = [r for r in short.low_confidence_reasons if "ladder" in r]
    assert "budget_steps of at least 52" in reason
    full = _run(_net(), _cls_batches(), criterion=F.cross_entropy, budget_steps=60)
    assert not any("ladder could try" in r for r in full.low_confidence_reasons)


def test_trainer_args_carry_the_settings_the_probe_trained_under() -> None:
    s = _run(_mlp(), _cls_batches(), criterion=F.cross_entropy, total_steps=TOTAL,
             budget_steps=BUDGET, grad_clip=0.5, accumulation_steps=2,
             optimizer_kwargs={"betas": (0.9, 0.95), "weight_decay": 0.1})  # fmt: skip
    args = s.to_trainer_args()
    assert args == {
        **s.schedule.to_trainer_args(),
        "adam_beta1": 0.9, "adam_beta2": 0.95, "adam_epsilon": 1e-8, "weight_decay": 0.1,
        "max_grad_norm": 0.5, "gradient_accumulation_steps": 2,
    }  # fmt: skip
    # saved and loaded, the record is the same; no clipping in the probe: none in the Trainer
    # (which otherwise clips at 1.0)
    loaded = Suggestion.from_dict(json.loads(json.dumps(s.to_dict())))
    assert loaded.to_trainer_args() == args
    unclipped = Suggestion.from_dict(
        {**s.to_dict(), "training": {**s.training, "grad_clip": None}}
    )
    assert unclipped.to_trainer_args()["max_grad_norm"] == 0.0
    # a suggestion saved before the record: the schedule's fields, and a warning
    old = {k: v for k, v in s.to_dict().items() if k != "training"}
    with pytest.warns(UserWarning, match="records no training settings"):
        assert Suggestion.from_dict(old).to_trainer_args() == s.schedule.to_trainer_args()
    sgd = Suggestion.from_dict({**s.to_dict(), "training": {**s.training,
                                "optimizer": "torch.optim.sgd.SGD"}})  # fmt: skip
    with pytest.warns(UserWarning, match=r"Trainer\(optimizers="):
        assert "adam_beta2" not in sgd.to_trainer_args()
    transformers = pytest.importorskip("transformers", reason="transformers not installed")
    targs = transformers.TrainingArguments(output_dir="unused", report_to="none", **args)
    assert (targs.adam_beta2, targs.max_grad_norm, targs.weight_decay) == (0.95, 0.5, 0.1)


def test_the_global_rng_is_given_back_after_a_shuffling_loader() -> None:
    # iter() of a shuffling DataLoader draws from torch's global generator: the state must be
    # captured before the probe's first iter(), or the user's next draw differs
    from torch.utils.data import DataLoader

    x, y = _cls_batches(n_batches=1, bs=64)[0]
    loader = DataLoader(list(zip(x, y, strict=True)), batch_size=16, shuffle=True)
    torch.manual_seed(1234)
    _run(_mlp(), loader, criterion=F.cross_entropy)
    after = torch.rand(3)
    torch.manual_seed(1234)
    _mlp()  # the model above was built after the seed too
    assert torch.equal(after, torch.rand(3))


def test_a_suggestion_built_by_hand_is_checked_as_a_loaded_one(
    probed: tuple[Suggestion, _LossSpy], tmp_path: Any
) -> None:
    # dataclasses.replace(s, schedule=...) kept the old top-level warmup: save() wrote a
    # file that load() refused
    s = probed[0]
    longer = s.schedule.replace(warmup_steps=s.warmup_steps + 1)
    with pytest.raises(ValueError, match=r"warmup_steps=\d+, but the schedule's is \d+"):
        dataclasses.replace(s, schedule=longer)
    both = dataclasses.replace(s, schedule=longer, warmup_steps=longer.warmup_steps)
    assert Suggestion.load(both.save(tmp_path / "s.json")) == both
    with pytest.raises(ValueError, match="'confidence' must be 'high' or 'low', but got 'maybe'"):
        dataclasses.replace(s, confidence="maybe")
    listed = dataclasses.replace(s, confidence="low", low_confidence_reasons=["short"])
    assert listed.low_confidence_reasons == ("short",) and hash(listed) == hash(listed)


def test_a_criterion_with_weights_and_buffers_of_its_own_comes_back_as_it_was() -> None:
    # a learned temperature with a running statistic: the probe's training left it a .grad
    # (added into the user's first real step) and a moved buffer
    class LearnedTemperature(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_t = nn.Parameter(torch.zeros(()))
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return F.cross_entropy(out * self.log_t.exp(), y)

    criterion = LearnedTemperature()
    before = _capture(criterion)
    autowarm.suggest(_mlp(), _cls_batches(), criterion=criterion, total_steps=600, progress=False)
    _assert_restored(criterion, before)
    # a bound method and a partial holding such a module are found too; the model is not
    model = _mlp()
    found = loss_modules(criterion.forward, functools.partial(F.cross_entropy), model=model)
    assert found == [criterion]
    assert loss_modules(model.forward, model, model=model) == []


_GLOBAL_HEAD = nn.BatchNorm1d(2)  # a module a loss_fn reads by name from its module


def test_modules_a_loss_fn_captures_reads_or_holds_come_back_as_they_were() -> None:
    # a closure's module, a module-level one read by name, an attribute of a callable object,
    # and a criterion with no tensors but a counter (KL annealing): the probe's training
    # moved their running statistics and counters
    captured = nn.BatchNorm1d(2)

    class Loss:
        def __init__(self) -> None:
            self.norm = nn.BatchNorm1d(2)

        def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
            return F.cross_entropy(self.norm(model(batch[0])), batch[1])

    class Annealed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.step = 0

        def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            self.step += 1
            return F.cross_entropy(out, y)

    def closure(model: nn.Module, batch: Any) -> torch.Tensor:
        return F.cross_entropy(captured(model(batch[0])), batch[1])

    def by_name(model: nn.Module, batch: Any) -> torch.Tensor:
        return F.cross_entropy(_GLOBAL_HEAD(model(batch[0])), batch[1])

    held = Loss()
    for loss_fn, module in ((closure, captured), (by_name, _GLOBAL_HEAD), (held, held.norm)):
        before = _capture(module)
        autowarm.suggest(_mlp(), _cls_batches(), loss_fn=loss_fn, total_steps=600, progress=False)
        _assert_restored(module, before)
    annealed = Annealed()
    autowarm.suggest(_mlp(), _cls_batches(), criterion=annealed, total_steps=600, progress=False)
    assert annealed.step == 0


def test_a_generator_the_model_keeps_comes_back_and_the_same_seed_gives_the_same_answer() -> None:
    # a noise source seeded with the model (stochastic depth, noise injection): the probe drew
    # from it, left it advanced, and a second call with the same seed saw other noise
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp()
            self.gen = torch.Generator().manual_seed(1234)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.body(x)
            return out + 0.5 * torch.randn(out.shape, generator=self.gen) if self.training else out

    model = Noisy()
    state = model.gen.get_state().clone()
    first = autowarm.suggest(model, _cls_batches(), criterion=F.cross_entropy, total_steps=600)
    assert torch.equal(model.gen.get_state(), state)
    again = autowarm.suggest(model, _cls_batches(), criterion=F.cross_entropy, total_steps=600)
    assert first.trace["loss"].tolist() == again.trace["loss"].tolist()
    assert (first.peak_lr, first.warmup_steps) == (again.peak_lr, again.warmup_steps)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a CUDA device")
def test_a_cuda_device_without_cuda_is_refused_before_any_training() -> None:
    model = _mlp()
    before = _capture(model)
    with pytest.raises(ValueError, match=r"no CUDA device to use .* pass device=None"):
        autowarm.suggest(model, _cls_batches(), criterion=F.cross_entropy, device="cuda")
    _assert_restored(model, before)


def test_suggest_under_no_grad_trains_and_under_inference_mode_is_refused() -> None:
    model = _mlp()
    with torch.no_grad():
        s = autowarm.suggest(model, _cls_batches(), criterion=F.cross_entropy, total_steps=600)
        assert not torch.is_grad_enabled()
    assert s.peak_lr > 0
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside that block"):
        autowarm.suggest(model, _cls_batches(), criterion=F.cross_entropy, total_steps=600)


def test_a_loss_class_passed_instead_of_an_instance_is_refused_with_the_fix() -> None:
    with pytest.raises(TypeError, match=r"criterion=CrossEntropyLoss\(\)"):
        autowarm.suggest(_mlp(), _cls_batches(), criterion=nn.CrossEntropyLoss, total_steps=600)


def test_one_batch_passed_as_the_data_is_named_before_the_run_length() -> None:
    x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
    for data in ((x, y), {"x": x}, x):
        with pytest.raises(TypeError, match=r"wrap it in a list \(\[batch\]\)"):
            autowarm.suggest(_mlp(), data, criterion=F.cross_entropy, progress=False)


def test_a_criterion_module_the_snapshot_refuses_is_named_as_such() -> None:
    with torch.inference_mode():
        weight = torch.ones(3)
    criterion = nn.CrossEntropyLoss(weight=weight)
    with pytest.raises(ValueError, match=r"a module the loss uses \(CrossEntropyLoss\) holds"):
        autowarm.suggest(_mlp(), _cls_batches(), criterion=criterion, total_steps=600)


def test_a_forward_that_adds_a_submodule_is_refused_and_the_model_comes_back() -> None:
    # a head sized from the first batch: every burst's optimizer, built before the forward,
    # never trained it, and the probe called every LR divergent
    class HeadFromData(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(8, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.body(x))
            if not hasattr(self, "head"):
                self.head = nn.Linear(h.shape[-1], 2)
            return self.head(h)

    model = HeadFromData()
    before = _capture(model)
    with pytest.raises(ValueError, match=r"forward added head.*run one forward pass on a batch"):
        autowarm.suggest(
            model, _cls_batches(), criterion=F.cross_entropy, total_steps=600, progress=False
        )
    assert not hasattr(model, "head")
    _assert_restored(model, before)


def test_a_loader_whose_iter_raises_keeps_its_generator() -> None:
    class MissingShards(torch.utils.data.IterableDataset[torch.Tensor]):
        def __iter__(self) -> Iterator[torch.Tensor]:
            raise FileNotFoundError("shard-0000.tar")

    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    loader = DataLoader(MissingShards(), batch_size=4, generator=g)
    with pytest.raises(FileNotFoundError, match="shard-0000"):
        autowarm.suggest(
            _mlp(), loader, criterion=F.cross_entropy, total_steps=600, progress=False
        )
    assert torch.equal(g.get_state(), state)


def test_lazy_buffers_are_refused_with_the_advice() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.LazyBatchNorm1d(affine=False), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"lazy parameters or buffers .*run one forward pass"):
        autowarm.suggest(
            model, _cls_batches(), criterion=F.cross_entropy, total_steps=600, progress=False
        )


def test_one_outlier_batch_that_stops_every_burst_is_named_not_the_lr() -> None:
    # Student-t targets: one batch's loss ~15x the others at every LR (at 1e-7 too), so the
    # range test and every burst "diverged" there, and the error blamed the LR and the model.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 1, generator=g)
    batches = []
    for i in range(20):
        x = torch.randn(32, 8, generator=g)
        y = x @ w + 0.1 * torch.randn(32, 1, generator=g)
        if i == 6:
            y[0] += 400.0  # one heavy-tailed draw
        batches.append((x, y))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    with pytest.raises(ProbeDivergedError) as caught:
        _run(model, batches, criterion=F.mse_loss, budget_steps=60)
    message = str(caught.value)
    assert "every burst blew up at the same step, 6, whatever its LR" in message
    assert "(batch 6 of the data as it is yielded" in message and "HuberLoss" in message


def test_a_stable_burst_whose_loss_ended_above_its_start_is_not_just_called_stable() -> None:
    # "stable (rise_above_start=22.9%, net_decrease=-2.4%)" read as a burst that trained
    from types import SimpleNamespace

    from autowarm._suggest import _verdict_word

    def verdict(stable: bool, net: float) -> Any:
        return SimpleNamespace(stable=stable, signals=SimpleNamespace(net_decrease=net))

    assert _verdict_word(verdict(True, 0.3)) == "stable"
    assert _verdict_word(verdict(True, -0.024)) == (
        "stable by the rules, though its loss ended above its start"
    )
    assert _verdict_word(verdict(False, -0.5)) == "unstable"


def test_bursts_that_blow_up_together_from_their_lr_are_not_blamed_on_a_batch() -> None:
    # two ladder bursts sharing a short ramp can both blow up at one step from their LR; the
    # range test, on the same batches at a tiny LR there, tells that from an outlier batch
    from autowarm._suggest import _same_blowup_step

    def rows(*losses: float) -> list[dict[str, Any]]:
        return [{"step": i, "loss": x} for i, x in enumerate(losses)]

    bursts = [rows(2.30, 2.31, 40.0), rows(2.30, 2.31, 900.0)]
    assert _same_blowup_step(bursts, rows(2.30, 2.30, 2.29, 2.29)) is None
    assert _same_blowup_step(bursts, rows(2.30, 2.30, 60.0)) == (2, 470.0, pytest.approx(2.305))
    assert _same_blowup_step(bursts, []) is None  # no sweep to tell: no blame on the data


@pytest.mark.parametrize(
    ("progress", "env", "expected"),
    [
        (True, None, {"disable": None}),  # on terminals only
        (False, None, {"disable": True}),
        (True, "1", {}),  # TQDM_DISABLE decides: tqdm reads it only for an argument left out
        (False, "0", {"disable": True}),
    ],
)
def test_the_progress_bar_shows_on_terminals_and_honours_tqdm_disable(
    monkeypatch: pytest.MonkeyPatch, progress: bool, env: str | None, expected: dict[str, Any]
) -> None:
    import tqdm.auto

    seen: list[dict[str, Any]] = []

    class Bar(tqdm.auto.tqdm):  # type: ignore[misc, name-defined, type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.append({k: v for k, v in kwargs.items() if k == "disable"})
            super().__init__(*args, **{**kwargs, "disable": True})

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    _run(_mlp(), _cls_batches(), criterion=F.cross_entropy, budget_steps=60, progress=progress)
    assert seen == [expected]


def test_a_flat_range_test_warns_low_confidence_with_its_descent_and_both_causes() -> None:
    # the reason said "an already trained model?" of a fresh LSTM whose loss fell 2.5% in
    # the sweep (a reviewer's run); a slow starter is the likelier cause
    def offset_loss(model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return 1000.0 + F.cross_entropy(model(x), y)  # any descent is tiny against 1000

    with pytest.warns(UserWarning, match="the probe's answer has low confidence") as caught:
        s = _run(_mlp(), _cls_batches(), loss_fn=offset_loss, budget_steps=60)
    assert s.low_confidence
    (reason,) = [r for r in s.low_confidence_reasons if "hardly moved" in r]
    assert re.search(r"range test \(down \d+\.\d% at most\): a model that learns little", reason)
    assert "or one already trained" in reason
    (record,) = [w for w in caught if "low confidence" in str(w.message)]
    assert reason in str(record.message) and record.filename == __file__


def test_the_rationale_says_what_bursts_under_one_pass_cannot_show() -> None:
    # A run that goes over a small set many times can overfit at the peak the bursts prefer
    # (reports/benchmark/heldout_finetune: 139% regret at high confidence); the rationale says
    # the bursts could not have seen it, with the passes and the data's size.
    def rationale(data: Any, total_steps: int) -> str:
        crit = nn.CrossEntropyLoss()
        kw = {"criterion": crit, "total_steps": total_steps, "budget_steps": 60}
        return suggest(_mlp(), data, progress=False, **kw).rationale

    many = rationale(_cls_batches(200), 1000)
    assert "The run goes 5 times over the data's 200 batches; a burst (at most " in many
    assert "cannot show overfitting in the later passes" in many
    # bursts longer than a pass: said as such
    small = rationale(_cls_batches(8), 1000)
    assert re.search(
        r"125 times over the data's 8 batches; the bursts went over it at most", small
    )
    # one pass, or data without a length: nothing to say
    assert "times over the data" not in rationale(_cls_batches(200), 300)
    assert "times over the data" not in rationale(iter(_cls_batches(200)), 1000)
