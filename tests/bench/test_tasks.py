from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from autowarm.bench import TASKS, BenchTask, get_task, run_schedule
from autowarm.bench._run import evaluate
from autowarm.schedules import ScheduleConfig

ALL = sorted(TASKS)


def _task(name: str, steps: int = 20) -> BenchTask:
    task = get_task(name)
    if not task.is_available():
        pytest.skip(f"{name} needs {task.requires}")
    return dataclasses.replace(task, total_steps=steps, val_batches=2)


def _flat(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, dict):
        return [batch[k] for k in sorted(batch)]
    return list(batch)


def test_registry_has_the_five_kinds() -> None:
    assert {"postln_lm", "hf_gpt2", "deep_mlp", "convnet", "control_convex"} <= set(TASKS)


def test_get_task_lists_valid_names() -> None:
    with pytest.raises(KeyError, match=r"valid names: .*postln_lm"):
        get_task("nope")


@pytest.mark.parametrize("name", ALL)
def test_grid_spans_what_the_benchmark_asks(name: str) -> None:
    task = get_task(name)
    assert task.total_steps >= 2000
    assert 6 <= len(task.lr_grid) <= 8
    assert list(task.lr_grid) == sorted(task.lr_grid)
    assert task.warmup_grid[0] == 0
    assert task.warmup_grid[-1] >= 0.6 * task.total_steps
    assert {0.01, 0.03, 0.1, 0.25} <= set(task.warmup_fracs)


@pytest.mark.parametrize("name", ALL)
def test_data_shapes_and_determinism(name: str) -> None:
    task = _task(name)
    train = task.train_data(seed=3)
    first = list(train)
    assert len(first) == task.total_steps
    again = list(train)  # re-iterable: same batches
    for a, b in zip(first, again, strict=True):
        for x, y in zip(_flat(a), _flat(b), strict=True):
            assert torch.equal(x, y)
    other = next(iter(task.train_data(seed=4)))
    assert not all(torch.equal(x, y) for x, y in zip(_flat(first[0]), _flat(other), strict=True))
    # no batch repeats inside a stream
    assert not torch.equal(_flat(first[0])[0], _flat(first[1])[0])
    val = task.val_data()
    assert len(val) == 2
    for x, y in zip(_flat(val[0]), _flat(first[0]), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype


@pytest.mark.parametrize("name", ALL)
def test_model_is_deterministic_by_seed(name: str) -> None:
    task = _task(name)
    state = torch.random.get_rng_state()
    a, b, c = task.make_model(0), task.make_model(0), task.make_model(1)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)
    loss = evaluate(a, task.val_data(), task.resolved_loss_fn())
    assert loss > 0 and torch.isfinite(torch.tensor(loss))


@pytest.mark.parametrize("name", ALL)
def test_twenty_steps_run_and_repeat_exactly(name: str) -> None:
    task = _task(name)
    schedule = ScheduleConfig(peak_lr=task.lr_grid[2], total_steps=20, warmup_steps=5)
    lrs: list[float] = []
    first = run_schedule(task, schedule, seed=0, on_step=lambda s, lr, r: lrs.append(lr))
    second = run_schedule(task, schedule, seed=0)
    assert first.steps == 20 and not first.diverged
    assert first.final_val_loss == second.final_val_loss
    assert lrs == pytest.approx([schedule.lr_at(s) for s in range(20)])
    assert first.seconds_per_step == pytest.approx(first.seconds / 20)


def test_divergence_is_reported() -> None:
    task = _task("deep_mlp", steps=30)
    schedule = ScheduleConfig(peak_lr=1e4, total_steps=30, warmup_steps=0)
    result = run_schedule(task, schedule, seed=0)
    assert result.diverged
    assert result.final_val_loss == float("inf")


def test_optimizer_kwargs_that_do_not_fit_are_named() -> None:
    task = get_task("hf_gpt2")
    with pytest.raises(TypeError, match="betas"):
        task.make_optimizer([torch.nn.Parameter(torch.zeros(2))], 0.1, torch.optim.SGD)


def test_bad_task_fields_say_what_to_pass() -> None:
    with pytest.raises(ValueError, match="total_steps must be a positive integer"):
        dataclasses.replace(get_task("convnet"), total_steps=0)


def _scaled_linear(d_in: int, n_classes: int) -> torch.nn.Module:
    from autowarm.bench import _models

    model = _models.linear_classifier(d_in=d_in, n_classes=n_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10.0)
    return model


def test_a_built_in_task_with_other_data_or_weights_does_not_resume_its_rows(
    tmp_path: Any,
) -> None:
    # The record held the model's structure but neither its data generator nor its initial
    # weights: a task whose data or initialisation changed resumed on the old rows.
    import functools
    import json

    from autowarm.bench import oracle_grid
    from autowarm.bench._grid import definitions_path

    task = dataclasses.replace(get_task("control_convex"), total_steps=10, val_batches=1)
    csv_path = tmp_path / "grid.csv"
    kw: dict[str, Any] = dict(csv_path=csv_path, lrs=[1e-2], warmups=[0], seeds=1, workers=0)
    oracle_grid(task, **kw)
    noisier = dataclasses.replace(task, chunks=dataclasses.replace(task.chunks, noise=0.5))
    hotter = dataclasses.replace(
        task, model_factory=functools.partial(_scaled_linear, d_in=32, n_classes=10)
    )
    for changed, part in ((noisier, "data"), (hotter, "weights")):
        with pytest.raises(ValueError, match=f"has changed since its rows .*its {part}:"):
            oracle_grid(changed, **kw)
    # a record written before these parts existed lacks them: resumed, and they are added
    record = definitions_path(csv_path)
    old = {"control_convex": {**json.loads(record.read_text())["control_convex"]}}
    del old["control_convex"]["data"], old["control_convex"]["weights"]
    record.write_text(json.dumps(old))
    assert oracle_grid(noisier, **kw).skipped == 1
    assert json.loads(record.read_text())["control_convex"]["data"] == repr(noisier.chunks)
