"""autowarm.tune: seeding, search space, compressed trials, storage, resume, faults, workers."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

import autowarm
from autowarm.schedules import ScheduleConfig
from autowarm.study import _attrs, _storage
from autowarm.study._space import PEAK_LR, WARMUP, SearchSpace
from autowarm.study._task import Task, load_task
from autowarm.study._trial import compress, eval_steps, train_trial
from autowarm.study._tune import (
    NoFinishedTrialError,
    best_schedule,
    study_training,
    trials_frame,
)

HERE = Path(__file__).parent
SPEC = f"{HERE / 'tiny_task.py'}:task"
REPO = HERE.parent.parent


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task(SPEC)


@pytest.fixture(scope="module")
def suggestion(task: Task) -> Any:
    return autowarm.suggest(
        task.build_model(0),
        task.data(0),
        total_steps=task.total_steps,
        progress=False,
        loss_fn=task.loss_fn,
    )


def _tiny(loss_fn: Any, name: str) -> Task:
    """The tiny task from this module's import (so monkeypatched knobs apply) with ``loss_fn``."""
    import tests.study.tiny_task as tiny

    return Task(
        make_model=tiny.make_model,
        train_data=tiny.BATCHES,
        loss_fn=loss_fn,
        val_data=tiny.VAL,
        total_steps=200,
        name=name,
    )


def _tune_args(
    storage: object, name: str, n_trials: int, trial_steps: int, *more: str
) -> list[str]:
    """``autowarm tune`` of the tiny task; ``more`` adds options."""
    return [
        "tune",
        SPEC,
        "--storage",
        str(storage),
        "--study-name",
        name,
        "--n-trials",
        str(n_trials),
        "--trial-steps",
        str(trial_steps),
        *more,
    ]


def _cli(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "autowarm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=kw.get("cwd"),
    )


def _states(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ------------------------------------------------------------------------- space and trials


def test_search_space_is_centred_and_allows_zero_warmup() -> None:
    center = ScheduleConfig(peak_lr=1e-3, total_steps=1000, warmup_steps=50)
    space = SearchSpace()
    assert space.lr_bounds(center) == pytest.approx((2.5e-4, 4e-3))
    assert space.warmup_max(center) == 200  # max(4 * 50, 10% of 1000)
    dists = space.distributions(center)
    assert dists[WARMUP].low == 1 and dists[WARMUP].log  # type: ignore[attr-defined]
    params = space.params_of(center.replace(warmup_steps=0), center)
    assert space.schedule(params, center).warmup_steps == 0
    back = space.schedule(space.params_of(center, center), center)
    assert back == center
    # out-of-range schedules are clipped into the space
    far = space.params_of(center.replace(peak_lr=1.0, warmup_steps=900), center)
    assert far[PEAK_LR] == pytest.approx(4e-3) and far[WARMUP] == 201
    assert SearchSpace.from_dict(space.to_dict()) == space
    listed = SearchSpace(decays=["linear", "cosine"], min_lr_ratios=[0, 0.1])  # lists are kept
    assert listed.decays == ("linear", "cosine") and listed.min_lr_ratios == (0.0, 0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr_factor": 1.0},
        {"min_warmup_fraction": 0.6, "max_warmup_fraction": 0.5},
        {"decays": ("cosine", "zigzag")},
        {"min_lr_ratios": (2.0,)},
        {"decays": "linear"},  # a name, not a sequence of names
        {"lr_factor": float("inf")},  # refused only after the probe, in the distributions
        {"warmup_factor": float("nan")},
        {"max_warmup_fraction": "0.5"},  # a TypeError on comparison
    ],
)
def test_search_space_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SearchSpace(**kwargs)


def test_search_space_with_decay_and_floor(task: Task) -> None:
    center = ScheduleConfig(peak_lr=1e-2, total_steps=200, warmup_steps=10, min_lr=1e-3)
    space = SearchSpace(decays=("cosine", "linear"), min_lr_ratios=(0.0, 0.1))
    study = optuna.create_study()
    trial = study.ask()
    sched = space.sample(trial, center)
    assert sched.decay.value in ("cosine", "linear")
    assert sched.min_lr == pytest.approx(sched.peak_lr * trial.params["min_lr_ratio"])


def test_a_sampled_warmup_stable_decay_keeps_room_for_its_decay() -> None:
    # The warmup range is the cosine centre's (up to 95% of the run here); a trial that samples
    # warmup_stable_decay takes at most what its final decay leaves.
    center = ScheduleConfig(peak_lr=1e-2, total_steps=200, warmup_steps=100)
    space = SearchSpace(decays=("cosine", "warmup_stable_decay"), max_warmup_fraction=0.95)
    params = {PEAK_LR: 1e-2, WARMUP: 191, "decay": "warmup_stable_decay"}
    sched = space.schedule(params, center)
    assert sched.decay.value == "warmup_stable_decay"
    assert sched.warmup_steps == sched.warmup_limit == 160
    assert space.schedule({**params, "decay": "cosine"}, center).warmup_steps == 190


def test_compress_keeps_the_whole_schedule() -> None:
    full = ScheduleConfig(peak_lr=1e-3, total_steps=1000, warmup_steps=100)
    frac = compress(full, 250, "fraction")
    assert (frac.total_steps, frac.warmup_steps, frac.peak_lr) == (250, 25, 1e-3)
    assert frac.lr_at(250) == 0.0  # decays to the floor: never a truncated long run
    absolute = compress(full, 250, "absolute")
    assert absolute.warmup_steps == 100
    assert compress(full.replace(warmup_steps=900), 250, "absolute").warmup_steps == 249
    # warmup_stable_decay keeps room for its final decay (20% of the trial by default); the
    # trial used to fail with no reason recorded
    wsd = full.replace(decay="warmup_stable_decay", warmup_steps=700)
    assert compress(wsd, 100, "absolute").warmup_steps == 80
    assert compress(wsd, 250, "absolute").warmup_steps == 200
    with pytest.raises(ValueError, match="transfer"):
        compress(full, 250, "linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trial_steps"):
        compress(full, 1)


@pytest.mark.parametrize("timescale", [None, 100, 50])
@pytest.mark.parametrize("warmup", [0, 10, 100])
def test_compress_maps_the_inverse_sqrt_time_scale_with_the_warmup(
    warmup: int, timescale: int | None
) -> None:
    full = ScheduleConfig(
        peak_lr=1.0,
        total_steps=1000,
        warmup_steps=warmup,
        decay="inverse_sqrt",
        timescale=timescale,
    )
    frac = compress(full, 100, "fraction")
    # the trial follows the full run's LR at the same fraction of the run (to the rounding of
    # its warmup and time scale, a step each)
    for f in (0.25, 0.5, 1.0):
        assert frac.lr_at(round(100 * f)) == pytest.approx(full.lr_at(round(1000 * f)), rel=0.06)
    # absolute: the same time scale in steps, whatever the compressed warmup is
    absolute = compress(full, 100, "absolute")
    assert absolute.effective_timescale == full.effective_timescale


def test_eval_steps_end_at_the_last_step() -> None:
    assert eval_steps(100) == [12, 25, 38, 50, 62, 75, 88, 100]
    assert eval_steps(3) == [1, 2, 3]


def _dropout_task(val: Any) -> Task:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()

    def make(seed: int) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(16, 2)
        )

    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8,
                                        shuffle=True)  # fmt: skip
    return Task(make_model=make, train_data=train, val_data=val, total_steps=40,
                criterion=torch.nn.functional.cross_entropy)  # fmt: skip


def test_evaluations_during_a_trial_leave_its_training_run_as_it_was() -> None:
    # a shuffled validation loader draws from torch's RNG when iterated: the dropout masks and
    # training order after each evaluation depended on how many evaluations there were
    torch.manual_seed(1)
    vx = torch.randn(20, 8)
    val = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(vx, (vx[:, 0] > 0).long()), batch_size=8, shuffle=True
    )
    task = _dropout_task(val)
    schedule = ScheduleConfig(peak_lr=1e-2, total_steps=40, warmup_steps=4)
    values = {n: train_trial(task, schedule, seed=3, n_evals=n).value for n in (1, 8)}
    assert values[1] == values[8]


def test_a_trial_keeps_the_submodule_modes_make_model_set() -> None:
    # a BatchNorm frozen in eval mode for fine-tuning stays so in training, as in the probe;
    # a model made in eval mode (loaded, say) trains in train mode
    seen: list[tuple[bool, bool]] = []

    def make(frozen: bool) -> Callable[[int], torch.nn.Module]:
        def build(seed: int) -> torch.nn.Module:
            m = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
            if frozen:
                m[1].eval()  # the BatchNorm alone
            else:
                m.eval()  # the whole model
            return m

        return build

    def loss(m: torch.nn.Module, b: Any) -> torch.Tensor:
        if torch.is_grad_enabled():
            seen.append((m.training, m[1].training))
        return m(b[0]).pow(2).mean()

    batches = [(torch.randn(8, 8),)] * 2
    for frozen, want in ((True, (True, False)), (False, (True, True))):
        seen.clear()
        task = Task(make_model=make(frozen), train_data=batches, val_data=batches, loss_fn=loss,
                    total_steps=10)  # fmt: skip
        train_trial(task, ScheduleConfig(peak_lr=1e-3, total_steps=10, warmup_steps=0), seed=0)
        assert set(seen) == {want}, (frozen, set(seen))


def test_trials_sharing_a_criterion_with_state_of_its_own_stay_independent() -> None:
    # the task's criterion object serves every trial: its buffer moved by one trial changed
    # the next one's loss, so a trial's value depended on which trials ran before it
    class Drifting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return torch.nn.functional.mse_loss(out, y) * (1 + self.calls / 100)

    import tests.study.tiny_task as tiny

    criterion = Drifting()
    task = Task(make_model=lambda s: torch.nn.Linear(8, 1), train_data=tiny.BATCHES,
                criterion=criterion, total_steps=20)  # fmt: skip
    schedule = ScheduleConfig(peak_lr=1e-2, total_steps=20, warmup_steps=2)
    first, second = (train_trial(task, schedule, seed=0).value for _ in range(2))
    assert first == second and float(criterion.calls) == 0


# ------------------------------------------------------------------------- task


def test_task_validation() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        Task(make_model=lambda s: None, train_data=[], total_steps=0)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="'lr'"):
        Task(make_model=lambda s: None, train_data=[], total_steps=5, optimizer_kwargs={"lr": 1})  # type: ignore[arg-type,return-value]
    batches = [(torch.zeros(2, 8), torch.zeros(2, 1))]
    with pytest.raises(TypeError, match="train_data must be re-iterable"):
        Task(make_model=lambda s: None, train_data=iter(batches), total_steps=5)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="val_data must be re-iterable"):
        Task(
            make_model=lambda s: None,  # type: ignore[arg-type,return-value]
            train_data=batches,
            val_data=(b for b in batches),
            total_steps=5,
        )
    with pytest.raises(TypeError, match="make_model"):
        Task(make_model=3, train_data=[], total_steps=5)  # type: ignore[arg-type]
    for clip in ("1.0", math.inf, 0.0):
        with pytest.raises(ValueError, match="grad_clip must be a positive finite number"):
            Task(make_model=lambda s: None, train_data=batches, total_steps=5, grad_clip=clip)  # type: ignore[arg-type,return-value]


class _NumpyNoise(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Inputs with numpy noise drawn in ``__getitem__`` (in the main process: no workers)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import numpy as np

        x = torch.full((4,), float(i)) + torch.from_numpy(np.random.randn(4).astype("float32"))
        return x, x.sum(0, keepdim=True)


def test_a_trial_seeds_the_numpy_and_python_generators_and_puts_them_back() -> None:
    import random

    import numpy as np

    task = Task(
        make_model=lambda s: torch.nn.Linear(4, 1),
        train_data=torch.utils.data.DataLoader(_NumpyNoise(), batch_size=4),
        criterion=torch.nn.functional.mse_loss,
        total_steps=12,
    )
    sched = ScheduleConfig(peak_lr=1e-2, total_steps=12, warmup_steps=2)
    np.random.seed(1)
    random.seed(1)
    before = (np.random.get_state()[1].copy(), random.getstate())
    first = train_trial(task, sched, seed=3).value
    np.random.rand(5)  # the caller's generators move between the trials
    assert train_trial(task, sched, seed=3).value == first
    np.random.seed(1)
    train_trial(task, sched, seed=3)
    assert (np.random.get_state()[1] == before[0]).all() and random.getstate() == before[1]


def test_the_validation_loss_is_a_mean_over_samples() -> None:
    # 33 samples in batches of 32 and 1: the single sample used to weigh as much as 32
    x = torch.linspace(-1, 1, 33).unsqueeze(1)
    y = 3 * x
    loader = torch.utils.data.DataLoader(list(zip(x, y, strict=True)), batch_size=32)
    task = Task(
        make_model=lambda s: torch.nn.Linear(1, 1),
        train_data=loader,
        val_data=loader,
        criterion=torch.nn.functional.mse_loss,
        total_steps=5,
    )
    model = task.build_model(0)
    with torch.no_grad():
        expected = float(torch.nn.functional.mse_loss(model(x), y))
    assert task.evaluate(model) == pytest.approx(expected, rel=1e-6)
    from autowarm.bench._run import evaluate

    assert evaluate(model, loader, task.resolved_loss_fn()) == pytest.approx(expected, rel=1e-6)


def test_a_persistent_loader_is_not_iterated_by_the_task() -> None:
    # iter() on it would start its worker processes and keep them for every later trial
    loader = torch.utils.data.DataLoader(
        [(torch.zeros(4), torch.zeros(1))] * 4,
        batch_size=2,
        num_workers=1,
        persistent_workers=True,
    )
    Task(make_model=lambda s: torch.nn.Linear(4, 1), train_data=loader, total_steps=5)
    assert loader._iterator is None


class _GroupLog(torch.optim.AdamW):
    """AdamW recording every step's group LRs and weight decays."""

    steps: list[list[tuple[float, float]]] = []  # noqa: RUF012

    def step(self, closure: Any = None) -> Any:
        _GroupLog.steps.append([(g["lr"], g["weight_decay"]) for g in self.param_groups])
        return super().step(closure)


def test_a_task_with_param_groups_trains_them_at_their_scales(task: Task) -> None:
    def groups(model: torch.nn.Module) -> list[dict[str, Any]]:
        return [
            {"params": model[0].parameters(), "lr_scale": 0.25},
            {"params": model[2].parameters(), "weight_decay": 0.0},
        ]

    grouped = dataclasses.replace(task, optimizer_cls=_GroupLog, param_groups=groups)
    schedule = ScheduleConfig(peak_lr=1e-2, total_steps=20, warmup_steps=5)
    _GroupLog.steps = []
    train_trial(grouped, schedule, seed=0)
    assert len(_GroupLog.steps) == 20
    for i, ((lr0, wd0), (lr1, wd1)) in enumerate(_GroupLog.steps):
        assert lr1 == pytest.approx(schedule.lr_at(i), rel=1e-12, abs=1e-15)
        assert lr0 == pytest.approx(0.25 * lr1, rel=1e-12, abs=1e-15)
        assert (wd0, wd1) == (0.01, 0.0)
    with pytest.raises(TypeError, match="function of the model"):
        dataclasses.replace(task, param_groups=[{"params": []}])
    bad = dataclasses.replace(task, param_groups=lambda m: [{"params": m.parameters(), "lr": 1}])
    with pytest.raises(ValueError, match="lr_scale"):
        train_trial(bad, schedule, seed=0)


def test_a_loader_with_its_own_generator_gives_every_trial_one_order(task: Task) -> None:
    # DataLoader(generator=...) draws its order from that generator, not from the global RNG
    # a trial seeds: three trials of one schedule and seed saw three orders, and the user's
    # generator was left advanced.
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g)
    own = torch.Generator().manual_seed(123)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=own)
    shuffled = Task(
        make_model=lambda s: torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
        ),
        train_data=loader,
        criterion=torch.nn.functional.mse_loss,
        val_data=[(x[:64], y[:64])],
        total_steps=60,
    )
    schedule = ScheduleConfig(peak_lr=0.05, total_steps=30, warmup_steps=3)
    before = own.get_state().clone()
    values = [train_trial(shuffled, schedule, seed=0).value for _ in range(3)]
    assert values[0] == values[1] == values[2]
    assert torch.equal(own.get_state(), before)
    assert train_trial(shuffled, schedule, seed=1).value != values[0]


def test_a_trial_leaves_the_seed_queued_for_cuda_as_it_was(task: Task) -> None:
    # torch.manual_seed inside a trial also queues its seed for CUDA's first use (or seeds an
    # initialised CUDA): fork_rng(devices=[]) kept the CPU generator only.
    from autowarm.probe._state import _lazy_seed_queues

    torch.manual_seed(1234)
    before, cpu = _lazy_seed_queues(), torch.get_rng_state()
    train_trial(task, ScheduleConfig(peak_lr=1e-2, total_steps=5, warmup_steps=1), seed=7)
    assert _lazy_seed_queues() == before and torch.equal(torch.get_rng_state(), cpu)


def test_a_bad_validation_value_is_named_for_what_returned_it(task: Task) -> None:
    schedule = ScheduleConfig(peak_lr=1e-2, total_steps=20, warmup_steps=5)
    nan = dataclasses.replace(task, val_data=None, eval_fn=lambda m: float("nan"))
    outcome = train_trial(nan, schedule, seed=0)
    assert outcome.value == math.inf and outcome.in_validation  # not the training loss
    for returned, match in (("low", r"returned str"), (torch.ones(2), r"of shape \(2,\)")):
        bad = dataclasses.replace(task, val_data=None, eval_fn=lambda m, r=returned: r)
        with pytest.raises(TypeError, match=rf"eval_fn\(model\) must be a number.*{match}"):
            bad.evaluate(bad.build_model(0))
    assert (
        dataclasses.replace(task, val_data=None, eval_fn=lambda m: 2).evaluate(task.build_model(0))
        == 2.0
    )


def test_reading_a_database_before_its_tables_exist_is_a_clear_error(tmp_path: Path) -> None:
    # What a reader (report, export, a polling test) meets when a file has no tables and no
    # worker creates them within the wait: a ValueError naming the storage and what to do.
    db = tmp_path / "fresh.db"
    sqlite3.connect(db).close()
    with pytest.raises(ValueError, match=r"cannot open storage sqlite:///.*fresh\.db: it has no"):
        _storage.load_study(str(db), "s")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"budget_steps": 5}, "budget_steps must be an int >= 40"), ({"seed": -1}, "seed must be")],
)
def test_the_probes_arguments_are_checked_before_a_storage_exists(
    task: Task, tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    # they used to fail inside the probe, after the storage and an empty study were made
    db = tmp_path / "s.db"
    with pytest.raises(ValueError, match=match):
        autowarm.tune(task, storage=db, n_trials=2, progress=False, **kwargs)
    assert not db.exists()


def _open_at_once(path: str, create: bool, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        _storage.open_storage(path, heartbeat_interval=None, create=create)
        results.put("ok")
    except Exception as exc:
        results.put(repr(exc))


def test_workers_and_readers_opening_a_new_database_at_once(tmp_path: Path) -> None:
    # Two `autowarm tune` workers and two readers (report, a dashboard) start on the same new
    # SQLite file: all must open it. Without the retry, about half of such starts lost the
    # race ("UNIQUE constraint failed: alembic_version", "no such table: version_info").
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for attempt in range(6):
        db = str(tmp_path / f"new{attempt}.db")
        sqlite3.connect(db).close()  # the file exists, so readers do not stop at "no file"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [
            ctx.Process(target=_open_at_once, args=(db, create, barrier, results))
            for create in (True, False, True, False)
        ]
        for proc in procs:
            proc.start()
        seen = [results.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        assert seen == ["ok"] * 4, seen


def test_load_task_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"path/to/file\.py:task"):
        load_task("no_colon")
    with pytest.raises(ValueError, match="does not exist"):
        load_task(f"{tmp_path / 'missing.py'}:task")
    with pytest.raises(ValueError, match="Tasks defined there: \\['task'\\]"):
        load_task(f"{HERE / 'tiny_task.py'}:tsak")
    # a folder was "a task file that does not exist"; a package folder named without its
    # module says how to import it
    with pytest.raises(ValueError, match=r"is a folder: pass the file in it"):
        load_task(f"{tmp_path}/:task")
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(ValueError, match=r"the folder mypkg is here: .*PYTHONPATH=\."):
            load_task("mypkg:task")
        # a module that is found but misses a dependency of its own gets no such hint
        (tmp_path / "mypkg" / "tasks.py").write_text("import some_missing_dependency\n")
        sys.path.insert(0, str(tmp_path))
        importlib.invalidate_caches()
        try:
            with pytest.raises(ValueError, match="some_missing_dependency") as missing:
                load_task("mypkg.tasks:task")
        finally:
            sys.path.remove(str(tmp_path))
            for name in ("mypkg", "mypkg.tasks"):
                sys.modules.pop(name, None)
        assert "the folder mypkg is here" not in str(missing.value)
    finally:
        os.chdir(cwd)
    with pytest.raises(ValueError, match=r"not an autowarm\.Task"):
        load_task(f"{HERE / 'tiny_task.py'}:not_a_task")
    loaded = load_task(SPEC)
    assert loaded.name == "tiny_task.py:task" and loaded.source == SPEC
    by_module = load_task("tests.study.tiny_task:task")  # package.module:name
    assert by_module.total_steps == 200 and by_module.source == "tests.study.tiny_task:task"
    with pytest.raises(ValueError, match="cannot import module"):
        load_task("tests.study.no_such_module:task")
    # what goes wrong inside the task file is said to come from it
    bad = tmp_path / "raises.py"
    bad.write_text("raise RuntimeError('dataset path /data/x not found')\n")
    with pytest.raises(ValueError, match=r"importing task file .*raises\.py' raised "
                       r"RuntimeError: dataset path /data/x not found"):  # fmt: skip
        load_task(f"{bad}:task")
    quits = tmp_path / "quits.py"
    quits.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(ValueError, match=r"called sys\.exit\(3\) while it was imported"):
        load_task(f"{quits}:task")
    factory = tmp_path / "factory.py"
    factory.write_text("def make():\n    raise KeyError('boom')\n")
    with pytest.raises(ValueError, match=r"calling .*factory\.py:make to build the task raised"):
        load_task(f"{factory}:make")
    with pytest.raises(ValueError, match=r"more than one ':'.*'.*tiny_task\.py:NAME'"):
        load_task(f"{SPEC}:extra")


# ------------------------------------------------------------------------- tune


def test_tune_seeds_with_probe_and_references(tmp_path: Path, task: Task) -> None:
    db = tmp_path / "s.db"
    result = autowarm.tune(
        task,
        n_trials=6,
        storage=str(db),
        trial_steps=50,
        progress=False,
        pruner="none",
        confirm=0,
    )
    study = result.study
    trials = study.get_trials()
    assert len(trials) == 6
    roles = [t.user_attrs[_attrs.ROLE] for t in trials]
    assert roles[:4] == [
        _attrs.ROLE_PROBE,
        _attrs.ROLE_NO_WARMUP,
        _attrs.ROLE_UNTUNED,
        _attrs.ROLE_TEN_PERCENT,
    ]
    assert roles[4:] == [_attrs.ROLE_SEARCH] * 2
    probe = study.user_attrs[_attrs.SUGGESTION]
    assert trials[0].user_attrs[_attrs.SCHEDULE] == study.user_attrs[_attrs.BASE_SCHEDULE]
    assert probe["trace"] and probe["warmup_steps"] == trials[0].user_attrs[_attrs.WARMUP_STEPS]
    assert trials[1].user_attrs[_attrs.WARMUP_STEPS] == 0
    assert trials[3].user_attrs[_attrs.WARMUP_STEPS] == 20  # 10% of 200
    for t in trials:
        assert t.user_attrs[_attrs.TRIAL_SCHEDULE]["total_steps"] == 50
        assert len(t.intermediate_values) == 8  # smoothed validation loss at regular steps
    attrs = study.user_attrs
    assert attrs[_attrs.VERSIONS]["optuna"] == optuna.__version__
    assert attrs[_attrs.TASK] == "tiny_task.py:task" and attrs[_attrs.SEED] == 0
    assert len(attrs[_attrs.MODEL]) == 16  # the model's fingerprint
    best = result.best
    assert isinstance(best, ScheduleConfig) and best.total_steps == 200
    frame = result.trials
    assert list(frame.columns)[:4] == ["number", "state", "value", "role"]
    assert frame["state"].eq("complete").all()
    assert best.peak_lr == pytest.approx(frame.loc[frame["value"].idxmin(), "peak_lr"])


def test_references_with_one_schedule_train_once_and_each_keeps_its_row(
    tmp_path: Path, task: Task, suggestion: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # beta2=0.9 makes 2/(1-beta2) = 20 steps, 10% of the 200-step run, and a probe warmup of 0
    # is the no-warmup reference: each pair trained the same schedule twice (identical trials,
    # one of n_trials wasted). Now one trial stands for both roles, and the comparison still
    # has a row per role.
    twin_task = dataclasses.replace(task, optimizer_kwargs={"betas": (0.9, 0.9)})
    no_ramp = dataclasses.replace(
        suggestion, schedule=suggestion.schedule.replace(warmup_steps=0), warmup_steps=0
    )

    def run(n_trials: int, db: str, **more: Any) -> Any:
        return autowarm.tune(
            twin_task,
            n_trials=n_trials,
            storage=str(tmp_path / db),
            trial_steps=40,
            pruner="none",
            confirm=0,
            progress=False,
            **more,
        )

    with caplog.at_level("INFO", logger="autowarm"):
        result = run(4, "t.db", suggestion=no_ramp)
    assert "a new study" in caplog.text
    trials = result.study.get_trials()
    assert [t.user_attrs[_attrs.ROLE] for t in trials] == [
        _attrs.ROLE_PROBE,
        _attrs.ROLE_UNTUNED,
        _attrs.ROLE_SEARCH,
        _attrs.ROLE_SEARCH,
    ]
    assert trials[0].user_attrs[_attrs.ALSO_ROLES] == [_attrs.ROLE_NO_WARMUP]
    assert trials[1].user_attrs[_attrs.ALSO_ROLES] == [_attrs.ROLE_TEN_PERCENT]
    assert trials[1].user_attrs[_attrs.WARMUP_STEPS] == 20
    frame = result.trials
    assert frame["also_roles"].tolist() == ["no_warmup", "ten_percent", "", ""]
    from autowarm.reporting._tables import study_comparison

    rows = study_comparison(frame.assign(warmup_frac=frame["warmup_steps"] / 200))
    by = dict(zip(rows["label"], rows["trial"], strict=True))
    assert by == {
        _attrs.ROLE_PROBE: 0,
        _attrs.ROLE_NO_WARMUP: 0,
        _attrs.ROLE_UNTUNED: 1,
        _attrs.ROLE_TEN_PERCENT: 1,
        "best": int(frame.loc[frame["value"].idxmin(), "number"]),
    }
    # a shared trial takes one place of n_trials: two trials hold all four first roles
    two = run(2, "two.db", suggestion=no_ramp)
    assert [t.user_attrs[_attrs.ROLE] for t in two.study.get_trials()] == [
        _attrs.ROLE_PROBE,
        _attrs.ROLE_UNTUNED,
    ]
    # a resume queues none of them again, and says it resumes (a mistyped storage path
    # would say "a new study" instead)
    caplog.clear()
    with caplog.at_level("INFO", logger="autowarm"):
        again = run(5, "t.db")
    assert re.search(r"resuming \(\d+ complete(, \d+ pruned)?\) the study", caplog.text)
    roles = [t.user_attrs[_attrs.ROLE] for t in again.study.get_trials()]
    assert roles == [_attrs.ROLE_PROBE, _attrs.ROLE_UNTUNED, *[_attrs.ROLE_SEARCH] * 3]


def test_a_warmup_stable_decay_suggestion_tunes(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # The 2/(1-beta2) reference (2000 steps for beta2=0.999) is clipped to what the shape
    # allows: a WSD run of 200 steps keeps its last 40 for the decay, so at most 160 (it
    # was clipped to 199, and tune stopped on the ValueError at every start).
    wsd = dataclasses.replace(
        suggestion, schedule=suggestion.schedule.replace(decay="warmup_stable_decay")
    )  # the same warmup and peak
    assert wsd.schedule.warmup_limit == 160
    result = autowarm.tune(
        task,
        n_trials=5,
        storage=str(tmp_path / "w.db"),
        trial_steps=40,
        suggestion=wsd,
        confirm=0,
        progress=False,
    )
    frame = result.trials.set_index("role")
    assert 0 < frame.loc[_attrs.ROLE_UNTUNED, "warmup_steps"] <= 160
    assert result.best.decay == "warmup_stable_decay"


def test_same_seed_same_study(tmp_path: Path, task: Task, suggestion: Any) -> None:
    runs = []
    for name in ("a", "b"):
        r = autowarm.tune(
            task,
            n_trials=6,
            storage=str(tmp_path / f"{name}.db"),
            trial_steps=40,
            suggestion=suggestion,
            progress=False,
        )
        runs.append(r.trials[["peak_lr", "warmup_steps", "value"]])
    assert runs[0].equals(runs[1])


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def _tune_always_pruned(
    monkeypatch: pytest.MonkeyPatch, task: Task, db: Path, suggestion: Any, **kw: Any
) -> autowarm.TuneResult:
    """``tune`` of 40-step trials with a pruner that prunes whatever it is asked about."""
    from autowarm.study import _tune

    monkeypatch.setattr(_tune, "_make_pruner", lambda *_: _AlwaysPrune())
    return autowarm.tune(
        task, suggestion=suggestion, storage=str(db), trial_steps=40, confirm=0, progress=False,
        **kw,
    )  # fmt: skip


def test_references_and_a_trial_at_its_last_report_are_not_pruned(
    tmp_path: Path, task: Task, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pruner that prunes whatever it is asked about: the search trials stop at their first
    # report, but the probe's and the reference schedules run to the end (the report
    # compares the result with them), and no trial is pruned after its last step.
    from autowarm.study import _tune

    result = _tune_always_pruned(monkeypatch, task, tmp_path / "s.db", suggestion, n_trials=6)
    trials = result.study.get_trials()
    for t in trials:
        role = t.user_attrs[_attrs.ROLE]
        if role == _attrs.ROLE_SEARCH:
            assert t.state == TrialState.PRUNED and t.last_step is not None and t.last_step < 40
        else:
            assert t.state == TrialState.COMPLETE, (
                role,
                t.state,
                t.user_attrs.get("autowarm.reason"),
            )
    assert {t.user_attrs[_attrs.ROLE] for t in trials} > {_attrs.ROLE_PROBE, _attrs.ROLE_SEARCH}
    # a pruner that would prune at the last report only: every trial keeps its value
    monkeypatch.setattr(_tune, "_make_pruner", lambda *_: _PruneAtTheEnd())
    late = autowarm.tune(
        task, n_trials=6, suggestion=suggestion, storage=str(tmp_path / "late.db"),
        trial_steps=40, confirm=0, progress=False,
    )  # fmt: skip
    assert all(t.state == TrialState.COMPLETE for t in late.study.get_trials())


class _PruneAtTheEnd(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step is not None and trial.last_step >= 40


def test_resume_counts_the_study_total_and_keeps_the_probe(
    tmp_path: Path, task: Task, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kw: dict[str, Any] = dict(storage=str(tmp_path / "s.db"), trial_steps=40, progress=False)
    first = autowarm.tune(task, n_trials=5, suggestion=suggestion, **kw)
    probe_record = first.study.user_attrs[_attrs.SUGGESTION]
    again = autowarm.tune(task, n_trials=7, **kw)  # no suggestion: the stored one is reused
    assert len(again.study.get_trials()) == 7
    assert again.study.user_attrs[_attrs.SUGGESTION] == probe_record
    third = autowarm.tune(task, n_trials=7, **kw)
    assert len(third.study.get_trials()) == 7  # the total, not "7 more"
    # without n_trials a resume keeps the stored total (7), and reuses the stored probe
    # instead of probing again
    from autowarm import _suggest as suggest_module

    def no_probe(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a resume ran the probe again")

    monkeypatch.setattr(suggest_module, "suggest", no_probe)
    fourth = autowarm.tune(task, **kw)
    assert len(fourth.study.get_trials()) == 7
    assert sum(t.user_attrs[_attrs.ROLE] == _attrs.ROLE_PROBE for t in fourth.study.trials) == 1
    roles = [t.user_attrs[_attrs.ROLE] for t in third.study.get_trials()]
    assert roles.count(_attrs.ROLE_PROBE) == 1


def test_a_set_up_cut_short_is_done_again_on_resume(
    tmp_path: Path, task: Task, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C between the records' writes left some of them and no format record; the next
    # run must write them all (it used to fail on the missing base schedule every time).
    kw: dict[str, Any] = dict(storage=str(tmp_path / "s.db"), trial_steps=40, progress=False)
    real = optuna.Study.set_user_attr
    writes: list[str] = []

    def cut(self: optuna.Study, key: str, value: Any) -> None:
        if len(writes) == 3:
            raise KeyboardInterrupt
        writes.append(key)
        real(self, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", cut)
    with pytest.raises(KeyboardInterrupt):
        autowarm.tune(task, n_trials=5, suggestion=suggestion, study_name="cut", **kw)
    monkeypatch.setattr(optuna.Study, "set_user_attr", real)
    result = autowarm.tune(task, n_trials=5, suggestion=suggestion, study_name="cut", **kw)
    attrs = result.study.user_attrs
    assert attrs[_attrs.FORMAT] == _attrs.STUDY_FORMAT and _attrs.BASE_SCHEDULE in attrs
    assert len(result.study.get_trials()) == 5


@pytest.mark.parametrize("directions", [["maximize"], ["minimize", "minimize"]])
def test_an_existing_study_that_does_not_minimise_one_value_is_left_alone(
    tmp_path: Path, task: Task, suggestion: Any, directions: list[str]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    optuna.create_study(storage=url, study_name="theirs", directions=directions)
    with pytest.raises(ValueError, match=r"'theirs' has direction.*pass another --study-name"):
        autowarm.tune(
            task, n_trials=3, suggestion=suggestion, storage=url, study_name="theirs",
            trial_steps=40, progress=False,
        )  # fmt: skip
    study = optuna.load_study(study_name="theirs", storage=url)
    assert study.user_attrs == {} and study.get_trials() == []
    with pytest.raises(ValueError, match="not made by `autowarm tune`"):
        best_schedule(study)


def test_a_resume_with_a_timeout_alone_runs_trials_past_the_stored_total(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    kw: dict[str, Any] = dict(
        storage=str(tmp_path / "s.db"), trial_steps=40, progress=False, confirm=0
    )
    first = autowarm.tune(task, n_trials=5, suggestion=suggestion, **kw)
    assert len(first.study.get_trials()) == 5
    # The README: "with --timeout and no --n-trials, trials run until the time is up". The
    # stored total of 5 used to apply, and the resume ran nothing.
    again = autowarm.tune(task, timeout=3.0, **kw)
    assert len(again.study.get_trials()) > 5
    assert again.study.user_attrs[_attrs.N_TRIALS] is None
    third = autowarm.tune(task, n_trials=len(again.study.get_trials()), **kw)
    assert len(third.study.get_trials()) == len(again.study.get_trials())


def test_fewer_trials_than_references_queues_only_those_and_the_rest_on_resume(
    tmp_path: Path, task: Task, suggestion: Any, caplog: pytest.LogCaptureFixture
) -> None:
    kw: dict[str, Any] = dict(storage=str(tmp_path / "s.db"), trial_steps=40, progress=False)
    with caplog.at_level("WARNING", logger="autowarm"):
        first = autowarm.tune(task, n_trials=2, suggestion=suggestion, **kw)
    trials = first.study.get_trials()
    # no queued-then-failed surplus rows: exactly the probe and the first reference ran
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    roles = [t.user_attrs[_attrs.ROLE] for t in trials]
    assert roles == [_attrs.ROLE_PROBE, _attrs.REFERENCE_ROLES[0]]
    assert "n_trials=2 leaves no room" in caplog.text
    again = autowarm.tune(task, n_trials=5, **kw)
    trials = again.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    roles = [t.user_attrs[_attrs.ROLE] for t in trials]
    assert roles == [_attrs.ROLE_PROBE, *_attrs.REFERENCE_ROLES, _attrs.ROLE_SEARCH]


def test_a_resumed_study_does_not_draw_its_first_starts_trials_again(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # The sampler was seeded the same on every start, so a resume's first random trial was
    # the first start's again: the same schedule trained twice, a trial of the budget lost.
    kw: dict[str, Any] = dict(
        storage=str(tmp_path / "s.db"), trial_steps=40, progress=False, confirm=0
    )
    autowarm.tune(task, n_trials=5, suggestion=suggestion, **kw)
    study = autowarm.tune(task, n_trials=6, **kw).study
    first, resumed = (study.trials[n] for n in (4, 5))
    assert first.user_attrs[_attrs.ROLE] == resumed.user_attrs[_attrs.ROLE] == _attrs.ROLE_SEARCH
    assert first.params != resumed.params
    assert study.user_attrs[_attrs.CONFIRM] == 0  # the report counts confirmations against it


def test_resume_with_other_settings_is_an_error(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    kw: dict[str, Any] = dict(storage=str(tmp_path / "s.db"), progress=False, n_trials=4)
    study_name = autowarm.tune(task, trial_steps=40, suggestion=suggestion, **kw).study.study_name
    with pytest.raises(
        ValueError, match=r"trial_steps=40, but this run has autowarm\.trial_steps=50"
    ):
        autowarm.tune(task, trial_steps=50, **kw)
    with pytest.raises(ValueError, match=r"pruner='median', but this run has .*pruner='none'"):
        autowarm.tune(task, trial_steps=40, pruner="none", **kw)
    accumulating = dataclasses.replace(task, accumulation_steps=2)
    with pytest.raises(ValueError, match=r"accumulation_steps=1, but this run has .*steps=2"):
        autowarm.tune(accumulating, trial_steps=40, **kw)
    half = dataclasses.replace(task, precision="bf16-mixed")
    with pytest.raises(ValueError, match=r"precision='32-true', but .*precision='bf16-mixed'"):
        autowarm.tune(half, trial_steps=40, **kw)
    # another optimizer, other optimizer settings, clipping or metric: other runs' trials
    for other_task, message in (
        (
            dataclasses.replace(task, optimizer_cls=torch.optim.Adam),
            r"optimizer=.*AdamW\(.*Adam\(",
        ),
        (
            dataclasses.replace(task, optimizer_kwargs={"weight_decay": 5.0}),
            r"optimizer=.*this run has .*AdamW\(weight_decay=5\.0\)",
        ),
        (dataclasses.replace(task, grad_clip=0.5), r"grad_clip=None, but this run has .*=0\.5"),
        # a subset of the training data, or more validation batches: another run's trials
        (
            dataclasses.replace(task, train_data=list(task.train_data)[:5]),  # type: ignore[call-overload]
            r"data=\{'train_batches': 10, 'val_batches': 1\}, but this run has .*"
            r"\{'train_batches': 5, 'val_batches': 1\}",
        ),
        (
            dataclasses.replace(task, val_data=list(task.val_data or []) * 2),
            r"'val_batches': 1\}, but this run has .*'val_batches': 2\}",
        ),
        (
            dataclasses.replace(task, val_data=None, eval_fn=None),
            r"metric='validation loss .*, but this run has .*'mean training loss",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            autowarm.tune(other_task, trial_steps=40, **kw)
    # another probe's suggestion on resume: an error, not silently the stored one
    other = dataclasses.replace(
        suggestion,
        schedule=suggestion.schedule.replace(peak_lr=suggestion.peak_lr * 3),
        peak_lr=suggestion.peak_lr * 3,
    )
    with pytest.raises(ValueError, match=r"was created from another suggestion .*peak_lr"):
        autowarm.tune(task, trial_steps=40, suggestion=other, **kw)
    # another seed, run length, warmup transfer or task: other runs' trials
    longer = dataclasses.replace(task, total_steps=task.total_steps * 2)
    renamed = dataclasses.replace(task, name="another-task")
    for call, message in (
        (lambda: autowarm.tune(task, trial_steps=40, seed=1, **kw), r"seed=0, but .*seed=1"),
        (lambda: autowarm.tune(longer, trial_steps=40, **kw), r"total_steps=200, but .*=400"),
        (
            lambda: autowarm.tune(task, trial_steps=40, warmup_transfer="absolute", **kw),
            r"warmup_transfer='fraction', but .*='absolute'",
        ),
        (
            lambda: autowarm.tune(renamed, trial_steps=40, study_name=study_name, **kw),
            r"task=.*, but this run has .*task='another-task'",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    # the same suggestion again, or none, resumes
    autowarm.tune(task, trial_steps=40, suggestion=suggestion, confirm=0, **kw)
    autowarm.tune(task, trial_steps=40, confirm=0, **kw)


def test_a_study_autowarm_did_not_make_is_refused(tmp_path: Path, task: Task) -> None:
    db = str(tmp_path / "s.db")
    theirs = optuna.create_study(storage=f"sqlite:///{db}", study_name="theirs")
    theirs.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(
        ValueError, match="'theirs' already exists and was not created by autowarm"
    ):
        autowarm.tune(task, storage=db, study_name="theirs", n_trials=4, progress=False)


def test_resume_with_other_param_groups_is_an_error(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # A body at a tenth of the head's LR, then at a hundredth: another run's trials, which
    # used to join the study silently (the groups were not recorded).
    def groups(scale: float, decay: float = 0.01) -> Any:
        return lambda m: [
            {"params": m[0].parameters(), "lr_scale": scale},
            {"params": m[2].parameters(), "weight_decay": decay},
        ]

    kw: dict[str, Any] = dict(
        storage=str(tmp_path / "s.db"), progress=False, n_trials=4, trial_steps=40, confirm=0
    )
    grouped = dataclasses.replace(task, param_groups=groups(0.1))
    study = autowarm.tune(grouped, suggestion=suggestion, **kw).study
    recorded = study.user_attrs[_attrs.PARAM_GROUPS]
    assert len(recorded) == 2 and "lr_scale=0.1" in recorded[0]
    assert "weight_decay=0.01" in recorded[1]
    # the training record carries them, so a Trainer export says it cannot hold them
    assert study.user_attrs[_attrs.TRAINING]["param_groups"] == [
        {"lr_scale": 0.1},
        {"lr_scale": 1.0, "weight_decay": 0.01},
    ]
    from autowarm.cli import export_text

    with pytest.warns(UserWarning, match=r"measured on 2 parameter group\(s\) \(lr_scale"):
        export_text(best_schedule(study), "trainer", study_training(study))
    for other, changed in (
        (dataclasses.replace(task, param_groups=groups(0.01)), "lr_scale=0.01"),
        (dataclasses.replace(task, param_groups=groups(0.1, 0.0)), "weight_decay=0.0"),
        (task, "param_groups=None"),
    ):
        with pytest.raises(ValueError, match=rf"autowarm\.param_groups=.*{changed}"):
            autowarm.tune(other, **kw)
    autowarm.tune(dataclasses.replace(task, param_groups=groups(0.1)), **kw)  # the same: resumes
    assert task.param_groups_identity() is None


def test_a_task_file_is_the_same_task_however_its_path_is_spelled(
    tmp_path: Path, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hosts (or shells) that reach one task file by other paths join one study
    copy = tmp_path / "proj" / "tiny_task.py"
    copy.parent.mkdir()
    copy.write_text((HERE / "tiny_task.py").read_text())
    monkeypatch.chdir(tmp_path)
    tasks = [load_task(spec) for spec in ("proj/tiny_task.py:task", f"{copy}:task")]
    monkeypatch.chdir(copy.parent)
    tasks.append(load_task("./tiny_task.py:task"))
    assert {t.identity for t in tasks} == {"tiny_task.py:task"}
    kw: dict[str, Any] = dict(
        storage=str(tmp_path / "s.db"), trial_steps=40, suggestion=suggestion, progress=False
    )
    first = autowarm.tune(tasks[0], n_trials=5, confirm=0, **kw)
    again = autowarm.tune(tasks[2], n_trials=6, confirm=0, **kw)
    assert again.study.study_name == first.study.study_name and len(again.trials) == 6


def test_another_task_file_of_the_same_name_is_warned_about(
    tmp_path: Path, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # expA/tiny_task.py and expB/tiny_task.py share the default study name; with the same
    # settings nothing refuses the second, so it is told where the study came from
    for exp in ("expA", "expB"):
        (tmp_path / exp).mkdir()
        (tmp_path / exp / "tiny_task.py").write_text((HERE / "tiny_task.py").read_text())
    monkeypatch.chdir(tmp_path)
    kw: dict[str, Any] = dict(
        storage=str(tmp_path / "s.db"), trial_steps=40, progress=False, confirm=0
    )
    first = autowarm.tune(
        load_task("expA/tiny_task.py:task"), n_trials=4, suggestion=suggestion, **kw
    )
    started = str((tmp_path / "expA" / "tiny_task.py").resolve())
    assert first.study.user_attrs[_attrs.TASK_FILE] == started
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same file by another spelling: no warning
        autowarm.tune(load_task(f"{started}:task"), n_trials=4, **kw)
    with pytest.warns(UserWarning, match=rf"started from the task file {re.escape(started)}; "
                      r"this run loads .*expB/tiny_task\.py.*--study-name"):  # fmt: skip
        autowarm.tune(load_task("expB/tiny_task.py:task"), n_trials=5, **kw)


def test_an_edited_task_file_is_warned_about_on_resume(
    tmp_path: Path, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A loss edited to 10x between runs was resumed without a word: the new trials were
    # pruned against the old ones' values, and all ranked as one experiment.
    path = tmp_path / "tiny_task.py"
    path.write_text((HERE / "tiny_task.py").read_text())
    monkeypatch.chdir(tmp_path)
    kw: dict[str, Any] = dict(
        storage=str(tmp_path / "s.db"), trial_steps=40, progress=False, confirm=0
    )
    first = autowarm.tune(load_task("tiny_task.py:task"), n_trials=4, suggestion=suggestion, **kw)
    assert len(first.study.user_attrs[_attrs.TASK_CODE]) == 16
    path.write_text(path.read_text() + "\n# a comment, and a blank line above\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a comment is no change
        autowarm.tune(load_task("tiny_task.py:task"), n_trials=4, **kw)
    path.write_text(path.read_text() + "EDITED = 1\n")
    with pytest.warns(UserWarning, match=r"tiny_task\.py has changed since study .* --study-name"):
        autowarm.tune(load_task("tiny_task.py:task"), n_trials=5, **kw)


def test_a_study_named_from_the_path_by_an_earlier_version_is_resumed(
    tmp_path: Path, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autowarm.study._tune import _default_study_name

    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "tiny_task.py").write_text((HERE / "tiny_task.py").read_text())
    monkeypatch.chdir(tmp_path)
    task = load_task("proj/tiny_task.py:task")
    db = str(tmp_path / "s.db")
    kw: dict[str, Any] = dict(storage=db, trial_steps=40, progress=False, confirm=0)
    # what an earlier autowarm wrote: the spec with its path as the task and the name
    old = dataclasses.replace(task, name="proj/tiny_task.py:task")
    first = autowarm.tune(old, n_trials=4, suggestion=suggestion, **kw)
    assert first.study.study_name == "autowarm-proj-tiny_task.py-task"
    assert _default_study_name(task) == "autowarm-tiny_task.py-task"
    again = autowarm.tune(task, n_trials=5, **kw)
    assert again.study.study_name == first.study.study_name and len(again.trials) == 5


def test_another_model_under_the_same_name_is_an_error(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # two scripts whose make_model are both `lambda seed: ...` in __main__ share a default
    # study name; their models differ, so the second must not resume the first's study
    kw: dict[str, Any] = dict(
        storage=str(tmp_path / "s.db"), trial_steps=40, progress=False, confirm=0
    )
    a = dataclasses.replace(task, make_model=lambda seed: task.make_model(seed), name=None)
    first = autowarm.tune(a, n_trials=4, suggestion=suggestion, **kw)
    b = dataclasses.replace(a, make_model=lambda seed: torch.nn.Sequential(torch.nn.Linear(8, 1)))
    assert b.identity == a.identity
    with pytest.raises(ValueError, match=r"was created for another model .*Task\(name="):
        autowarm.tune(b, n_trials=4, **kw)
    assert len(first.study.get_trials()) == 4


def test_best_without_a_finished_trial_is_a_clear_error(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'e.db'}", study_name="empty")
    # no --probe advice: an empty study holds no probe suggestion to export
    with pytest.raises(NoFinishedTrialError, match=r"yet \(no trials\) and holds no probe sugg"):
        best_schedule(study)
    empty = trials_frame(study)
    assert empty.empty and empty["value"].dtype == "float64" and empty["number"].dtype == "int64"
    proc = _cli("export", "--storage", str(tmp_path / "e.db"), "--study-name", "empty")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "no completed trial yet" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_trials": 0}, "n_trials"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "8h"}, r"timeout must be positive seconds \(a number, e.g. 8 \* 3600\)"),
        ({"n_trials": True}, "n_trials"),
        ({"n_workers": 0}, "n_workers"),
        ({"trial_steps": 1}, "trial_steps"),
        ({"trial_steps": 10_000}, "trial_steps"),
        ({"pruner": "sometimes"}, "pruner"),
        ({"warmup_transfer": "linear"}, "warmup_transfer"),
        ({"storage": "study.txt"}, "cannot tell the kind of storage"),
    ],
)
def test_bad_arguments(task: Task, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        autowarm.tune(task, progress=False, **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"suggestion": "s.json"}, r"an autowarm.Suggestion .*Suggestion.load\(path\).* got str"),
        ({"search_space": {"lr_factor": 2}}, r"SearchSpace\(lr_factor=2.0\).* got dict"),
    ],
)
def test_wrong_types_fail_before_the_probe(
    task: Task, kwargs: dict[str, Any], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_probe(*args: Any, **kw: Any) -> None:
        raise AssertionError("the probe ran before the arguments were checked")

    monkeypatch.setattr(autowarm, "suggest", no_probe)
    monkeypatch.setattr("autowarm._suggest.suggest", no_probe)
    with pytest.raises(TypeError, match=match):
        autowarm.tune(task, progress=False, **kwargs)


def test_numpy_counts_are_ints_everywhere() -> None:
    import numpy as np

    from autowarm import ScheduleConfig

    cfg = ScheduleConfig(
        peak_lr=np.float32(1e-3), total_steps=np.int64(100), warmup_steps=np.int32(10)
    )
    assert cfg == ScheduleConfig(peak_lr=float(np.float32(1e-3)), total_steps=100, warmup_steps=10)
    assert type(cfg.total_steps) is int and type(cfg.warmup_steps) is int
    assert cfg.lr_at(np.int64(5)) == cfg.lr_at(5)
    t = Task(make_model=lambda s: None, train_data=[], total_steps=np.int64(5))  # type: ignore[arg-type,return-value]
    assert type(t.total_steps) is int
    with pytest.raises(ValueError, match=r"total_steps must be an int in \[1, 2\*\*53\]"):
        ScheduleConfig(peak_lr=1e-3, total_steps=True, warmup_steps=0)


def test_divergence_prunes_with_a_reason(
    tmp_path: Path, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.study.tiny_task as tiny

    monkeypatch.setattr(tiny, "NAN_ABOVE", 0.0)  # every trial's loss is NaN at once
    task = _tiny(loss_fn=tiny._Loss(), name="nan")
    result = autowarm.tune(
        task,
        n_trials=5,
        storage=str(tmp_path / "s.db"),
        trial_steps=40,
        suggestion=suggestion,
        progress=False,
    )
    frame = result.trials
    assert len(frame) == 5 and frame["state"].eq("pruned").all()
    assert frame["reason"].str.startswith("diverged: loss or gradient not finite").all()
    with pytest.raises(NoFinishedTrialError, match="all 5 of its trials diverged"):
        _ = result.best


def test_a_trial_whose_schedule_cannot_be_built_records_why(
    tmp_path: Path, task: Task, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import autowarm.study._tune as tune_module

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("no room for this warmup")

    monkeypatch.setattr(tune_module, "compress", refuse)
    db = str(tmp_path / "s.db")
    with pytest.raises(RuntimeError, match="3 trials in a row failed"):
        autowarm.tune(
            task, n_trials=4, storage=db, trial_steps=40, suggestion=suggestion, progress=False
        )
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
    reasons = [t.user_attrs.get(_attrs.REASON) for t in study.get_trials()]
    assert reasons[:3] == ["ValueError: no room for this warmup"] * 3


def test_errors_in_the_task_fail_trials_then_stop(
    tmp_path: Path, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.study.tiny_task as tiny

    monkeypatch.setattr(tiny, "RAISE", True)
    task = _tiny(loss_fn=tiny._Loss(), name="broken")
    with pytest.raises(RuntimeError, match=r"3 trials in a row failed.*broken on purpose"):
        autowarm.tune(
            task,
            n_trials=8,
            storage=str(tmp_path / "s.db"),
            trial_steps=40,
            suggestion=suggestion,
            progress=False,
        )
    study = _storage.load_study(str(tmp_path / "s.db"), None)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 3
    assert all("broken on purpose" in t.user_attrs[_attrs.REASON] for t in failed)


def test_first_trials_that_failed_are_queued_again_on_resume(
    tmp_path: Path, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.study.tiny_task as tiny

    monkeypatch.setattr(tiny, "RAISE", True)
    task = _tiny(loss_fn=tiny._Loss(), name="fixed")
    kw: dict[str, Any] = dict(
        storage=str(tmp_path / "s.db"), trial_steps=40, suggestion=suggestion, progress=False
    )
    with pytest.raises(RuntimeError, match="3 trials in a row failed"):
        autowarm.tune(task, n_trials=6, confirm=0, **kw)
    monkeypatch.setattr(tiny, "RAISE", False)  # the user fixes the task and resumes
    frame = autowarm.tune(task, n_trials=6, confirm=0, **kw).trials
    for role in (_attrs.ROLE_PROBE, *_attrs.REFERENCE_ROLES):
        states = list(frame.loc[frame["role"] == role, "state"])
        assert states[-1] == "complete", (role, states)
    retried = frame[frame["retry_of"] >= 0]
    assert sorted(retried["role"]) == sorted(frame.loc[frame["state"] == "fail", "role"])


def test_a_trial_failed_by_another_worker_meanwhile_does_not_stop_this_one(
    tmp_path: Path,
    task: Task,
    suggestion: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # In an RDB storage a worker whose heartbeat went stale (a suspended machine) has its
    # running trial failed and re-queued by another; when it wakes, optuna refuses its result
    # ("Cannot tell a FAIL trial", then an AssertionError). The worker must go on.
    from autowarm.study._tune import _Objective

    original = _Objective.__call__
    stolen: list[int] = []

    def call(self: Any, trial: optuna.Trial) -> float:
        value = original(self, trial)
        if not stolen:
            stolen.append(trial.number)
            trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return value

    monkeypatch.setattr(_Objective, "__call__", call)
    result = autowarm.tune(
        task,
        n_trials=5,
        storage=str(tmp_path / "s.db"),
        trial_steps=40,
        suggestion=suggestion,
        confirm=0,
        progress=False,
    )
    frame = result.trials
    assert frame.loc[stolen[0], "state"] == "fail"
    assert frame["state"].isin(["complete", "pruned"]).sum() == 5
    assert f"trial {stolen[0]} was finished by another worker" in caplog.text


def test_a_confirmation_failed_by_another_worker_meanwhile_is_dropped(
    tmp_path: Path,
    task: Task,
    suggestion: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import autowarm.study._confirm as confirm_module

    db = str(tmp_path / "s.db")
    original = confirm_module.train_trial
    stolen: list[int] = []

    def train(task: Task, schedule: ScheduleConfig, seed: int, **kw: Any) -> Any:
        outcome = original(task, schedule, seed, **kw)
        if not stolen:  # the first confirmation is failed by "another worker" meanwhile
            conf = _storage.load_study(db, f"{_default_name(task)}.confirm")
            (running,) = conf.get_trials(states=(TrialState.RUNNING,))
            conf._storage.set_trial_state_values(running._trial_id, TrialState.FAIL)
            stolen.append(running.user_attrs[confirm_module.CONFIRMS])
        return outcome

    monkeypatch.setattr(confirm_module, "train_trial", train)
    result = autowarm.tune(
        task,
        n_trials=5,
        storage=db,
        trial_steps=40,
        suggestion=suggestion,
        confirm=2,
        progress=False,
    )
    full = confirm_module.confirmed(result.study)
    assert stolen and stolen[0] not in full and len(full) == 1
    assert f"confirmation of trial {stolen[0]} was finished by another worker" in caplog.text


def _default_name(task: Task) -> str:
    from autowarm.study._tune import _default_study_name

    return _default_study_name(task)


# ------------------------------------------------------------------------- CLI and faults


def _wait_for(
    proc: subprocess.Popen[str], study_path: Path, name: str, pred: Any, timeout: float = 120
) -> optuna.Study:
    deadline = time.monotonic() + timeout
    seen = "nothing"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"tune exited early ({proc.returncode}): {out}{err}")
        if study_path.exists():
            try:
                study = _storage.load_study(str(study_path), name)
                if pred(study):
                    return study
                seen = str(_states(study))
            except ValueError as exc:
                seen = str(exc)
        time.sleep(0.3)
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"the study never reached the expected state; last seen {seen}: {err}")


def _done(study: optuna.Study) -> int:
    return len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


def test_cli_probe_tune_export(tmp_path: Path) -> None:
    out = tmp_path / "suggestion.json"
    proc = _cli("probe", SPEC, "-o", str(out), "--no-progress")
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    # a warning is one line, like an error (it printed Python's form, pointing into autowarm)
    assert "autowarm: warning: the probe takes 60 steps, 30% of this 200-step run" in err
    assert "UserWarning" not in err and "return suggest(" not in err
    quiet = _cli("-q", "probe", SPEC, "-o", str(tmp_path / "q.json"), "--no-progress")
    _, err = quiet.communicate(timeout=120)
    assert quiet.returncode == 0 and "warning" not in err, err
    assert out.exists() and out.with_suffix(".trace.csv").exists()
    assert json.loads(out.read_text())["format"] == "autowarm.suggestion"
    db = tmp_path / "my study.db"  # the printed commands quote it
    proc = _cli(*_tune_args(db, "s", 5, 40, "--suggestion", str(out)))
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"storage sqlite:///{db}" in stdout and "optuna-dashboard" in stdout
    assert err.count("]: ") >= 5  # one log line per finished trial
    target = tmp_path / "best.yaml"
    (printed,) = [ln for ln in stdout.splitlines() if ln.startswith("export it: autowarm ")]
    command = shlex.split(printed.removeprefix("export it: autowarm "))
    assert command[-2:] == ["-o", "schedule.yaml"]
    proc = _cli(*command[:-1], str(target))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    exported = ScheduleConfig.load(target)
    assert exported == best_schedule(_storage.load_study(str(db), "s"))
    proc = _cli("export", "--storage", str(db), "--study-name", "nope")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "the studies there: ['s']" in err


def test_cli_probe_refuses_a_bad_output_before_probing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from autowarm.cli import main
    from autowarm.study import _tune as tune_module

    def no_probe(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the probe ran before -o was checked")

    monkeypatch.setattr(tune_module, "probe_task", no_probe)
    (tmp_path / "x.json").mkdir()
    (tmp_path / "afile").write_text("mine")
    for out, message in (
        (tmp_path / "x.json", "x.json is a folder"),
        (tmp_path / "afile" / "s.json", "afile is a file, not a folder"),
    ):
        assert main(["probe", SPEC, "-o", str(out)]) == 1
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "x.json"]


def test_cli_tune_without_a_completed_trial_fails_and_the_probe_exports(
    tmp_path: Path, suggestion: Any
) -> None:
    saved = tmp_path / "suggestion.json"
    suggestion.save(saved)
    db = tmp_path / "study.db"
    args = _tune_args(db, "s", 4, 40, "--suggestion", str(saved), "--confirm", "0")
    proc = _cli(*args, env={"TINY_TASK_NAN_ABOVE": "0"})  # every trial diverges
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err  # was 0: a script would go on to export nothing
    # only trials at the probe's peak have run (the probe's and the references): the space
    # below it is untried, so resuming with more trials is the advice; the probe's own trial
    # diverged too, so exporting it is not offered as the way out
    assert "no completed trial yet (4 pruned)" in err and "a larger --n-trials" in err
    assert "the probe's own schedule diverged in trial 0 too" in err and "--probe`" not in err
    proc = _cli(
        "export", "--storage", str(db), "--study-name", "s", "-o", str(tmp_path / "x.yaml")
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "no completed trial yet" in err
    assert "STORAGE" not in err and f"--storage sqlite:///{db} --study-name=s -o report" in err
    target = tmp_path / "probe.yaml"
    proc = _cli("export", "--storage", str(db), "--study-name", "s", "--probe", "-o", str(target))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert ScheduleConfig.load(target) == suggestion.schedule
    proc = _cli("export", str(target), "--study-name", "s")  # used to be ignored silently
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "--study-name goes with --storage" in err


def test_export_probe_gives_the_schedule_at_the_studys_run_length(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    from autowarm.cli import main

    # A probe of the 200-step run, a study of a 600-step one: the probe's schedule the study
    # centred on (its trial 0) is the one resized to 600 steps, not the probe's own.
    longer = dataclasses.replace(task, total_steps=600)
    db = tmp_path / "s.db"
    result = autowarm.tune(
        longer,
        n_trials=1,
        storage=str(db),
        study_name="s",
        suggestion=suggestion,
        trial_steps=40,
        progress=False,
        confirm=0,
    )
    target = tmp_path / "probe.yaml"
    assert main(["export", "--storage", str(db), "--probe", "-o", str(target)]) == 0
    exported = ScheduleConfig.load(target)
    assert suggestion.schedule.total_steps == 200 and exported.total_steps == 600
    trial0 = result.study.get_trials()[0].user_attrs[_attrs.SCHEDULE]
    assert exported == ScheduleConfig.from_dict(trial0)
    assert exported.peak_lr == suggestion.peak_lr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_resume_finishes(tmp_path: Path, sig: signal.Signals) -> None:
    db = tmp_path / "study.db"
    args = _tune_args(db, "s", 6, 60, "--budget-steps", "40")
    proc = _cli(*args, env={"TINY_TASK_SLEEP": "0.02"})
    _wait_for(
        proc, db, "s", lambda s: _done(s) >= 1 and s.get_trials(states=(TrialState.RUNNING,))
    )
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Run the same command to resume" in err
    study = _storage.load_study(str(db), "s")
    kept = {t.number for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))}
    assert kept and not study.get_trials(states=(TrialState.RUNNING,))
    # the running trial stops at its next step, is failed with the reason and queued again
    # (unless it finished in the moment between the check above and the signal)
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) <= 1
    for t in failed:
        assert "interrupted" in t.user_attrs[_attrs.REASON]
    proc = _cli(*args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    study = _storage.load_study(str(db), "s")
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 6 and kept <= {t.number for t in done}
    for t in failed:
        retry = [r for r in done if r.user_attrs.get(_attrs.RETRY_OF) == t.number]
        assert len(retry) == 1 and retry[0].params == t.params


@pytest.mark.parametrize(
    ("codes", "raised"), [((130, 0), KeyboardInterrupt), ((130, 1), RuntimeError)]
)
def test_workers_stopped_by_a_signal_of_their_own_are_a_stop_not_an_error(
    monkeypatch: pytest.MonkeyPatch, codes: tuple[int, int], raised: type
) -> None:
    # Under nohup or a background job the parent ignores SIGINT, while its workers stop on it
    # (exit code 130, their trials re-queued): the parent must report a stop.
    import multiprocessing

    from autowarm.study import _tune

    exits = iter(codes)

    class Worker:
        def __init__(self, target: Any, args: Any, name: str) -> None:
            self.name, self.pid, self.exitcode = name, None, None

        def start(self) -> None:
            self.exitcode = next(exits)

        def join(self, timeout: float | None = None) -> None:
            pass

    monkeypatch.setattr(
        multiprocessing, "get_context", lambda kind: SimpleNamespace(Process=Worker)
    )
    with pytest.raises(raised):
        _tune._run_processes("task.py:task", None, 2)  # type: ignore[arg-type]


def test_sigkill_loses_only_the_running_trial(tmp_path: Path) -> None:
    log = tmp_path / "study.log"  # journal storage: no heartbeat, the pid check re-queues
    args = _tune_args(log, "s", 6, 60, "--budget-steps", "40")
    proc = _cli(*args, env={"TINY_TASK_SLEEP": "0.02"})
    _wait_for(
        proc, log, "s", lambda s: _done(s) >= 2 and s.get_trials(states=(TrialState.RUNNING,))
    )
    proc.kill()
    proc.communicate(timeout=30)
    study = _storage.load_study(str(log), "s")
    (running,) = study.get_trials(states=(TrialState.RUNNING,))
    kept = {t.number for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))}
    proc = _cli(*args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    study = _storage.load_study(str(log), "s")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == [running.number]
    assert "died" in failed[0].user_attrs[_attrs.REASON]
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 6 and kept <= {t.number for t in done}
    assert any(t.user_attrs.get(_attrs.RETRY_OF) == running.number for t in done)


def _check_no_loss_no_duplicates(study: optuna.Study, n_trials: int) -> None:
    trials = study.get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == n_trials, _states(study)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # every trial ran once: no other failures than surplus starts
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs[_attrs.REASON].startswith("surplus")
    roles = [t.user_attrs[_attrs.ROLE] for t in done]
    for role in (_attrs.ROLE_PROBE, *_attrs.REFERENCE_ROLES):
        assert roles.count(role) == 1
    workers = {t.user_attrs[_attrs.WORKER] for t in done}
    assert len(workers) == 2, workers


def test_confirmations_wait_for_trials_running_in_other_processes() -> None:
    # Two `tune` processes on one storage: the first to reach the total used to confirm (and
    # print a best, with a warning that confirmations "did not run") while the other still ran
    # a trial that then beat it.
    import threading
    import time

    from autowarm.study._tune import wait_for_running_trials

    study = optuna.create_study()
    other = study.ask()  # another process's trial: no worker of this host, so never failed
    finisher = threading.Timer(0.3, lambda: study.tell(other, 1.0))
    finisher.start()
    started = time.monotonic()
    wait_for_running_trials(study, None, lambda: False, poll_seconds=0.05)
    assert time.monotonic() - started >= 0.25
    assert not study.get_trials(states=(TrialState.RUNNING,))
    finisher.join()
    late = study.ask()
    wait_for_running_trials(study, time.time() - 1.0, lambda: False)  # the deadline has passed
    with pytest.raises(KeyboardInterrupt):
        wait_for_running_trials(study, None, lambda: True)
    study.tell(late, 2.0)


def test_two_workers_on_a_journal_file(tmp_path: Path) -> None:
    log = tmp_path / "study.log"
    args = _tune_args(log, "s", 10, 40, "--workers", "2", "--budget-steps", "40")
    proc = _cli(*args, env={"TINY_TASK_SLEEP": "0.005"})
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    _check_no_loss_no_duplicates(_storage.load_study(str(log), "s"), 10)


def test_a_worker_error_prints_one_line_and_the_traceback_with_debug(
    tmp_path: Path, suggestion: Any
) -> None:
    saved = tmp_path / "suggestion.json"
    suggestion.save(saved)
    for debug in (False, True):
        db = tmp_path / f"s{int(debug)}.db"
        args = _tune_args(db, "s", 10, 40, "--workers", "2", "--suggestion", str(saved))
        proc = _cli(*(["--debug"] if debug else []), *args, env={"TINY_TASK_RAISE": "1"})
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 1, err
        assert err.count("error: 3 trials in a row failed") == 2, err  # one line per worker
        assert "(exit status 1: see its log lines above)" in err
        assert ("Traceback" in err) is debug and ("in _worker_main" in err) is debug, err


def test_a_worker_stops_when_the_process_that_started_it_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # after a SIGKILL of `autowarm tune` its workers were reparented and ran on as orphans
    from autowarm.study import _tune

    def stopped(ppids: Callable[[], int]) -> bool:
        monkeypatch.setattr(_tune.os, "getppid", ppids)
        flag = _tune._StopFlag(hard_on_second=False)
        _tune._stop_when_orphaned(flag, 100, interval=0.01)
        deadline = time.time() + 5
        while not flag.is_set() and time.time() < deadline:
            time.sleep(0.01)
        return flag.received == signal.SIGTERM

    parents = iter([100] * 3 + [1] * 1000)  # the parent, then init after a while
    assert stopped(lambda: next(parents))
    # a parent already gone when the worker starts watching: it was reparented before it
    # could read its parent itself, which is why the tune process passes its pid
    assert stopped(lambda: 1)


def test_a_killed_worker_is_named_with_its_signal() -> None:
    from autowarm.study._tune import _how_ended

    killed = SimpleNamespace(name="autowarm-worker-1", exitcode=-signal.SIGKILL)
    assert _how_ended(killed) == "autowarm-worker-1 (killed by SIGKILL)"
    failed = SimpleNamespace(name="autowarm-worker-0", exitcode=1)
    assert _how_ended(failed) == "autowarm-worker-0 (exit status 1: see its log lines above)"


def _postgres_url() -> str:
    url = os.environ.get("AUTOWARM_TEST_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail("CI must provide AUTOWARM_TEST_POSTGRES_URL (.ci/run starts PostgreSQL)")
    pytest.skip(
        "no PostgreSQL server: set AUTOWARM_TEST_POSTGRES_URL=postgresql://user@127.0.0.1/db "
        "(.ci/run starts one)"
    )


def test_two_hosts_on_postgresql(tmp_path: Path) -> None:
    url = _postgres_url()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    args = _tune_args(url, name, 10, 40, "--budget-steps", "40")
    # two separate commands against one database, as two hosts would run them
    procs = [_cli(*args, env={"TINY_TASK_SLEEP": "0.005"}) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    _check_no_loss_no_duplicates(_storage.load_study(url, name), 10)


def test_a_postgresql_storage_pings_a_connection_before_using_it() -> None:
    # a connection idle through a long trial, closed by the server or a proxy meanwhile,
    # failed the trial's write; optuna pings before use only on MySQL
    storage = _storage.open_storage(_postgres_url(), heartbeat_interval=None)
    assert storage.engine.pool._pre_ping  # type: ignore[attr-defined]


def test_resume_keeps_the_stored_search_space_and_refuses_another(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    kw: dict[str, Any] = dict(storage=str(tmp_path / "s.db"), trial_steps=40, progress=False)
    wide = SearchSpace(lr_factor=8.0)
    autowarm.tune(task, n_trials=5, suggestion=suggestion, search_space=wide, **kw)
    with pytest.raises(ValueError, match=r"created with the search space .*'lr_factor': 8\.0"):
        autowarm.tune(task, n_trials=6, search_space=SearchSpace(lr_factor=2.0), **kw)
    refused = _storage.load_study(kw["storage"], None)
    assert len(refused.get_trials()) == 5  # nothing ran, and nothing was written:
    assert refused.user_attrs[_attrs.N_TRIALS] == 5  # not the refused run's 6
    again = autowarm.tune(task, n_trials=6, **kw)  # no space: the stored one
    last = again.study.get_trials()[-1]
    assert last.distributions[PEAK_LR].high == pytest.approx(8.0 * suggestion.peak_lr)  # type: ignore[attr-defined]
    again = autowarm.tune(task, n_trials=7, search_space=SearchSpace(lr_factor=8.0), **kw)
    assert len(again.study.get_trials()) == 7


def test_a_resume_may_list_the_same_decays_and_floors_in_another_order(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    kw: dict[str, Any] = dict(storage=str(tmp_path / "s.db"), trial_steps=40, progress=False)
    first = SearchSpace(decays=("cosine", "linear"), min_lr_ratios=(0.0, 0.1))
    autowarm.tune(task, n_trials=4, suggestion=suggestion, search_space=first, **kw)
    shuffled = SearchSpace(decays=("linear", "cosine"), min_lr_ratios=(0.1, 0.0))
    again = autowarm.tune(task, n_trials=5, search_space=shuffled, **kw)
    assert len(again.study.get_trials()) == 5
    assert again.study.user_attrs[_attrs.SEARCH_SPACE]["decays"] == ["cosine", "linear"]
    assert not first.same_search(SearchSpace(decays=("cosine",), min_lr_ratios=(0.0, 0.1)))


def test_cli_search_space_options() -> None:
    from autowarm.cli import build_parser
    from autowarm.study._cli import _search_space

    args = build_parser().parse_args(
        ["tune", SPEC, "--lr-factor", "3", "--decays", "cosine,linear", "--floors", "0,0.1"]
    )
    space = _search_space(args)
    assert space == SearchSpace(lr_factor=3.0, decays=("cosine", "linear"), min_lr_ratios=(0, 0.1))
    # no option of the space: None, so that a resumed study keeps its own
    assert _search_space(build_parser().parse_args(["tune", SPEC])) is None
    narrow = build_parser().parse_args(["tune", SPEC, "--max-warmup-fraction", "0.05"])
    assert _search_space(narrow) == SearchSpace(max_warmup_fraction=0.05, min_warmup_fraction=0.05)
    bad = build_parser().parse_args(["tune", SPEC, "--decays", "cosine,zigzag"])
    with pytest.raises(ValueError, match="zigzag"):
        _search_space(bad)
    bad = build_parser().parse_args(["tune", SPEC, "--floors", "0,abc"])
    with pytest.raises(ValueError, match=r"--floors takes comma-separated numbers .* got '0,abc'"):
        _search_space(bad)


def test_out_of_memory_fails_the_trial_and_the_study_goes_on(
    tmp_path: Path, suggestion: Any
) -> None:
    import tests.study.tiny_task as tiny

    calls = {"n": 0}

    def oom_once(model: Any, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return tiny._Loss()(model, batch)

    task = _tiny(loss_fn=oom_once, name="oom")
    result = autowarm.tune(
        task,
        n_trials=5,
        storage=str(tmp_path / "s.db"),
        trial_steps=40,
        suggestion=suggestion,
        progress=False,
    )
    frame = result.trials
    assert (frame["state"] == "complete").sum() == 5
    (failed,) = frame[frame["state"] == "fail"].itertuples()
    assert failed.reason.startswith("out of memory: CUDA out of memory")
    assert failed.reason.endswith("queued again once")
    retried = frame[frame["role"] == "probe"]
    assert len(retried) == 2  # the probe's trial failed and was run again by the study


def test_confirm_reruns_the_best_at_full_length(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    from autowarm.study._confirm import candidates, confirmed

    db = str(tmp_path / "s.db")
    kw: dict[str, Any] = dict(storage=db, trial_steps=40, suggestion=suggestion, progress=False)
    result = autowarm.tune(task, n_trials=6, **kw)  # confirm=2 is the default
    full = confirmed(result.study)
    top = [t.number for t in candidates(result.study, 2)]
    assert sorted(full) == sorted(top)
    frame = result.trials
    assert frame["full_value"].notna().sum() == 2
    winner = min(full, key=full.__getitem__)
    assert result.best == ScheduleConfig.from_dict(
        result.study.trials[winner].user_attrs[_attrs.SCHEDULE]
    )
    # a rerun confirms nothing twice
    again = autowarm.tune(task, n_trials=6, confirm=2, **kw)
    conf = _storage.load_study(db, again.study.study_name + ".confirm")
    assert len(conf.get_trials()) == 2
    with pytest.raises(ValueError, match="confirm"):
        autowarm.tune(task, confirm=-1, **kw)


def _confirm_by_hand(study: optuna.Study, values: dict[int, float]) -> None:
    # What run_confirmations writes, with chosen full-length values (inf: diverged).
    from autowarm.study._confirm import CONFIRMS, ROLE_CONFIRM

    conf = optuna.create_study(
        storage=study._storage, study_name=study.study_name + ".confirm", load_if_exists=True
    )
    for number, value in values.items():
        conf.add_trial(
            optuna.trial.create_trial(
                value=value,
                user_attrs={
                    _attrs.ROLE: ROLE_CONFIRM,
                    CONFIRMS: number,
                    _attrs.SCHEDULE: study.trials[number].user_attrs[_attrs.SCHEDULE],
                },
            )
        )


def test_a_schedule_that_diverged_at_full_length_is_never_the_best(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    from autowarm.study._confirm import candidates

    db = str(tmp_path / "s.db")
    kw: dict[str, Any] = dict(storage=db, trial_steps=40, suggestion=suggestion, progress=False)
    study = autowarm.tune(task, n_trials=6, confirm=0, **kw).study
    top = [t.number for t in candidates(study, 6)]
    schedule = {n: study.trials[n].user_attrs[_attrs.SCHEDULE] for n in top}
    _confirm_by_hand(study, {top[0]: math.inf, top[1]: math.inf})
    # both confirmations diverged: the best trial not shown to diverge, with a warning
    with pytest.warns(UserWarning, match=rf"trials \[{top[0]}, {top[1]}\] diverged at full"):
        best = best_schedule(study)
    assert best.to_dict() == ScheduleConfig.from_dict(schedule[top[2]]).to_dict()
    pytest.importorskip("matplotlib", reason="the report needs matplotlib (extra plot)")
    rep = autowarm.report((db, study.study_name))
    summary = rep.tables["summary"].iloc[0]
    assert summary["chosen_by"].startswith(f"study: trial {top[2]}, the best of")
    assert "2 diverged at full length" in summary["chosen_by"]
    assert summary["peak_lr"] == pytest.approx(best.peak_lr)
    # every completed schedule diverged at full length: an error, not one of them
    _confirm_by_hand(study, {n: math.inf for n in top[2:]})
    with pytest.raises(NoFinishedTrialError, match="diverged at full length"):
        best_schedule(study)


def test_a_confirmation_whose_heartbeat_stopped_is_claimed_again(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # A confirmation claimed by a worker on another host that died: the pid check cannot see
    # it, the heartbeat can. With a 1 s interval it is stale after the 4 s grace period; its
    # last heartbeat is moved an hour back in optuna's table rather than slept past (SQLite's
    # clock has whole seconds, so a sleep just past the grace period is flaky).
    from autowarm.study._confirm import (
        CONFIRMS,
        ROLE_CONFIRM,
        _confirm_study,
        candidates,
        confirmed,
        run_confirmations,
    )

    db, _, first = _unconfirmed_study(tmp_path, task, suggestion)
    name = first.study_name
    storage = _storage.open_storage(db, heartbeat_interval=1)
    study = optuna.load_study(study_name=name, storage=storage)
    (best,) = candidates(study, 1)
    conf = _confirm_study(study, create=True)
    assert conf is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dead = conf.ask()
    dead.set_user_attr(_attrs.ROLE, ROLE_CONFIRM)
    dead.set_user_attr(CONFIRMS, best.number)
    dead.set_user_attr(_attrs.SCHEDULE, best.user_attrs[_attrs.SCHEDULE])
    dead.set_user_attr(_attrs.WORKER, "another-host:4242:1")
    storage.record_heartbeat(dead._trial_id)
    with sqlite3.connect(db) as con:
        moved = con.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour') "
            "WHERE trial_id = ?",
            (dead._trial_id,),
        ).rowcount
    assert moved == 1
    run_confirmations(task, study, 1, seed=0, storage_url=db)
    states = {t.number: t.state for t in conf.get_trials()}
    assert states[dead.number] == TrialState.FAIL
    assert list(confirmed(study)) == [best.number]
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 1


def test_confirmation_heartbeat_beats_while_the_run_runs_and_stops_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Storage:
        def __init__(self, interval: float | None) -> None:
            self.interval, self.beats = interval, []  # type: ignore[var-annotated]
            self.stamps: list[tuple[int, str]] = []

        def get_heartbeat_interval(self) -> float | None:
            return self.interval

        def record_heartbeat(self, trial_id: int) -> None:
            self.beats.append(trial_id)

        def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
            self.stamps.append((trial_id, key))

    beating = Storage(0.05)
    with _storage.keep_alive(SimpleNamespace(_storage=beating), 7, heartbeat=True):  # type: ignore[arg-type]
        time.sleep(0.3)
    n = len(beating.beats)
    assert n >= 3 and set(beating.beats) == {7} and beating.stamps == []
    time.sleep(0.15)
    assert len(beating.beats) == n  # the thread stopped with the block
    by_optimize = Storage(0.05)  # study.optimize beats for its own trials
    with _storage.keep_alive(SimpleNamespace(_storage=by_optimize), 7, heartbeat=False):  # type: ignore[arg-type]
        time.sleep(0.1)
    assert by_optimize.beats == [] and by_optimize.stamps == []
    monkeypatch.setattr(_storage, "HEARTBEAT_INTERVAL", 0.05)
    journal = Storage(None)  # no heartbeat: liveness stamps instead
    with _storage.keep_alive(SimpleNamespace(_storage=journal), 7, heartbeat=True):  # type: ignore[arg-type]
        time.sleep(0.3)
    assert journal.beats == [] and len(journal.stamps) >= 3
    assert set(journal.stamps) == {(7, _attrs.ALIVE)}


def test_report_names_the_confirmed_best(tmp_path: Path, task: Task, suggestion: Any) -> None:
    pytest.importorskip("matplotlib", reason="the report needs matplotlib (extra plot)")
    from autowarm.study._confirm import confirmed

    db = str(tmp_path / "s.db")
    result = autowarm.tune(
        task, n_trials=6, storage=db, trial_steps=40, suggestion=suggestion, progress=False
    )
    full = confirmed(result.study)
    winner = min(full, key=full.__getitem__)
    rep = autowarm.report((db, result.study.study_name))
    summary = rep.tables["summary"].iloc[0]
    assert summary["chosen_by"] == f"study: trial {winner}, the best of 2 confirmed at full length"
    assert summary["peak_lr"] == pytest.approx(result.best.peak_lr)
    assert int(summary["warmup_steps"]) == result.best.warmup_steps
    comparison = rep.tables["comparison"].set_index("label")
    assert int(comparison.loc["best", "trial"]) == winner
    (best_marker,) = [s for s in rep.figures["trials_scatter"].series if s.label == "best"]
    assert list(best_marker.x) == [result.best.warmup_steps]


def test_a_timeout_keeps_time_for_the_confirmations() -> None:
    import datetime as dt
    from types import SimpleNamespace

    from autowarm.study._tune import _Plan, _reserve

    start = dt.datetime(2026, 1, 1)
    done = [
        SimpleNamespace(datetime_start=start, datetime_complete=start + dt.timedelta(seconds=x))
        for x in (10.0, 30.0, 20.0)
    ]
    study = SimpleNamespace(get_trials=lambda deepcopy, states: done)
    center = ScheduleConfig(peak_lr=1e-3, total_steps=200, warmup_steps=10)
    plan = _Plan(
        storage="",
        study_name="s",
        n_trials=None,
        deadline=0.0,
        trial_steps=50,
        seed=0,
        pruner="none",
        transfer="fraction",
        space=SearchSpace(),
        center=center,
        progress=False,
        heartbeat_interval=None,
        log_level=0,
        confirm=2,
        total_steps=200,
    )
    # two full runs of four trials' length each, at the median trial's 20 s
    assert _reserve(study, plan) == pytest.approx(2 * 20.0 * 4)
    assert _reserve(study, dataclasses.replace(plan, confirm=0)) == 0.0


def test_an_unpicklable_task_for_several_workers_is_refused_before_the_probe(
    tmp_path: Path, task: Task
) -> None:
    # A task built in a script with lambdas cannot reach spawned workers: say so at once,
    # not after the probe has run and the study has been written.
    local = dataclasses.replace(task, make_model=lambda seed: task.make_model(seed), source=None)
    db = tmp_path / "s.db"
    with pytest.raises(ValueError, match="with n_workers > 1 the task must pickle"):
        autowarm.tune(local, storage=str(db), n_workers=2, n_trials=4, progress=False)
    assert not db.exists()


def test_data_sizes_count_batches_without_reading_them(task: Task) -> None:
    class Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            return iter(task.train_data)  # type: ignore[arg-type]

    def batches(seed: int) -> Any:
        return (b for b in task.train_data)  # type: ignore[union-attr]

    assert task.data_sizes(0) == {"train_batches": 10, "val_batches": 1}
    loader = torch.utils.data.DataLoader(Stream(), batch_size=None)
    streamed = dataclasses.replace(task, train_data=loader, val_data=None)
    assert streamed.data_sizes(0) == {"train_batches": None, "val_batches": None}
    assert dataclasses.replace(task, train_data=batches).data_sizes(3)["train_batches"] is None
    dataset = torch.utils.data.TensorDataset(torch.zeros(70, 8), torch.zeros(70, 1))
    mapped = dataclasses.replace(task, train_data=torch.utils.data.DataLoader(dataset, 32))
    assert mapped.data_sizes(0)["train_batches"] == 3


def test_a_resume_on_other_batches_of_the_same_size_is_allowed(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # augmentation draws other values on every run: sizes are compared, never the values
    kw: dict[str, Any] = dict(
        storage=str(tmp_path / "s.db"), trial_steps=40, progress=False, confirm=0
    )
    autowarm.tune(task, n_trials=4, suggestion=suggestion, **kw)
    jittered = [(x + 0.01 * torch.randn_like(x), y) for x, y in task.train_data]  # type: ignore[union-attr]
    again = autowarm.tune(dataclasses.replace(task, train_data=jittered), n_trials=5, **kw)
    assert len(again.trials) == 5
    assert again.study.user_attrs[_attrs.DATA] == {"train_batches": 10, "val_batches": 1}


def _unconfirmed_study(
    tmp_path: Path, task: Task, suggestion: Any, n_trials: int = 4
) -> tuple[str, dict[str, Any], optuna.Study]:
    """A study of the tiny task without its confirmations: its storage, the tune keywords that
    resume it, and the study."""
    db = str(tmp_path / "s.db")
    kw: dict[str, Any] = dict(storage=db, trial_steps=40, suggestion=suggestion, progress=False)
    return db, kw, autowarm.tune(task, n_trials=n_trials, confirm=0, **kw).study


def test_an_interrupted_confirmation_is_failed_with_its_reason(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    from autowarm.study._confirm import _confirm_study, run_confirmations

    db, _, study = _unconfirmed_study(tmp_path, task, suggestion)
    with pytest.raises(KeyboardInterrupt):
        run_confirmations(task, study, 1, seed=0, storage_url=db, should_stop=lambda: True)
    conf = _confirm_study(study, create=False)
    assert conf is not None
    (failed,) = conf.get_trials()
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs[_attrs.REASON].startswith("interrupted (SIGINT/SIGTERM)")


def test_a_resume_waits_for_confirmations_another_process_is_running(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # The second of two `tune` processes printed the best before the first had finished the
    # confirmation it claimed (a best that the confirmation then overturned).
    import threading

    from autowarm.study._confirm import CONFIRMS, ROLE_CONFIRM, _confirm_study, candidates

    _, kw, study = _unconfirmed_study(tmp_path, task, suggestion)
    (best,) = candidates(study, 1)
    conf = _confirm_study(study, create=True)
    assert conf is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = conf.ask()  # another host's run: no worker of this one, so never failed
    theirs.set_user_attr(_attrs.ROLE, ROLE_CONFIRM)
    theirs.set_user_attr(CONFIRMS, best.number)
    theirs.set_user_attr(_attrs.SCHEDULE, best.user_attrs[_attrs.SCHEDULE])
    finisher = threading.Timer(1.0, lambda: conf.tell(theirs, 0.5))
    finisher.start()
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "confirmations ... have not run"
        result = autowarm.tune(task, n_trials=4, confirm=1, **kw)
        best_schedule = result.best
    finisher.join()
    assert time.monotonic() - started >= 0.9
    assert best_schedule.to_dict() == best.user_attrs[_attrs.SCHEDULE]


def test_export_in_the_trainer_format_carries_the_probes_training_settings(
    tmp_path: Path, task: Task, suggestion: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # the Trainer fields of a study's best, of its probe and of a suggestion JSON hold the
    # optimizer settings and clipping the probe trained with (a Trainer at its defaults runs
    # beta2 0.999 and clips at 1.0: another run than the one measured)
    from autowarm.cli import main

    db, _, _ = _unconfirmed_study(tmp_path, task, suggestion)
    expected = suggestion.to_trainer_args()
    saved = suggestion.save(tmp_path / "suggestion.json")
    for argv in (["--storage", db, "--probe"], ["--storage", db], [str(saved)]):
        assert main(["export", *argv, "--format", "trainer"]) == 0
        out = json.loads(capsys.readouterr().out)
        for key in ("adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm"):
            assert out[key] == expected[key], (argv, key)


def test_a_trial_left_running_by_a_worker_on_another_host_does_not_hold_the_resume(
    tmp_path: Path,
) -> None:
    # On a journal file (no heartbeat) such a trial stayed running: the resume counted it,
    # never ran its copy, and waited for it before the confirmations for ever.
    import time

    log = tmp_path / "study.log"
    proc = _cli(*_tune_args(log, "s", 5, 40, "--budget-steps", "40", "--confirm", "0"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    study = _storage.load_study(str(log), "s")
    orphan = study.ask()
    orphan.set_user_attr(_attrs.WORKER, "otherhost:12345:999:4026531836")
    orphan.set_user_attr(_attrs.ROLE, _attrs.ROLE_SEARCH)
    orphan.set_user_attr(_attrs.ALIVE, time.time() - 3600.0)  # its host went down an hour ago
    proc = _cli(*_tune_args(log, "s", 6, 40, "--budget-steps", "40", "--confirm", "1"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    study = _storage.load_study(str(log), "s")
    assert _states(study).get("FAIL") == 1 and _done(study) == 6, _states(study)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert failed.number == orphan.number and "no sign of life" in failed.user_attrs[_attrs.REASON]
    assert any(
        t.user_attrs.get(_attrs.RETRY_OF) == orphan.number
        for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    )


def test_confirmations_left_by_a_deleted_study_of_the_same_name_are_not_counted(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # Deleting a study (optuna's CLI, the dashboard) leaves "<name>.confirm": its runs were
    # pinned by number to the new study's trials, whose schedules are others, and those
    # trials' own confirmations were skipped as "already claimed".
    from autowarm.study._confirm import confirmed, run_confirmations, unconfirmed

    url = f"sqlite:///{tmp_path / 'study.db'}"
    autowarm.tune(
        task, storage=url, study_name="s", n_trials=5, confirm=1, suggestion=suggestion,
        trial_steps=40, progress=False,
    )  # fmt: skip
    old = optuna.load_study(study_name="s", storage=url)
    assert len(confirmed(old)) == 1
    done = old.get_trials(states=(TrialState.COMPLETE,))
    optuna.delete_study(study_name="s", storage=url)
    new = optuna.create_study(storage=url, study_name="s")  # same numbers, other schedules
    new.set_user_attr(_attrs.CONFIRM, 1)
    for t in done:
        attrs = dict(t.user_attrs)
        attrs[_attrs.SCHEDULE] = {**attrs[_attrs.SCHEDULE], "warmup_steps": 1 + t.number}
        new.add_trial(
            optuna.trial.create_trial(
                value=t.value, params=t.params, distributions=t.distributions, user_attrs=attrs
            )
        )
    assert confirmed(new) == {} and len(unconfirmed(new)) == 1
    run_confirmations(task, new, 1, seed=0, storage_url=url)
    conf = optuna.load_study(study_name="s.confirm", storage=url)
    assert len(conf.get_trials(states=(TrialState.COMPLETE,))) == 2  # the old run, a new one
    ((number, value),) = confirmed(new).items()
    assert value == conf.trials[-1].value and unconfirmed(new) == []
    assert (
        new.trials[number].user_attrs[_attrs.SCHEDULE]
        == conf.trials[-1].user_attrs[_attrs.SCHEDULE]
    )


def test_a_task_changed_after_loading_is_refused_for_worker_processes() -> None:
    # The workers load the task from its file again: a loss_fn or a run length replaced in
    # Python trained in the parent's records and not in the workers' trials (1000x values).
    from autowarm.study._tune import _worker_task

    loaded = load_task(SPEC)
    assert _worker_task(loaded) == SPEC
    assert _worker_task(dataclasses.replace(loaded, name="renamed")) == SPEC  # a label only
    changed = dataclasses.replace(loaded, loss_fn=lambda m, b: 1000 * loaded.loss_fn(m, b))
    with pytest.raises(ValueError, match=r"changed since it was loaded from there \(loss_fn;"):
        _worker_task(changed)
    with pytest.raises(ValueError, match=r"\(total_steps;"):
        _worker_task(dataclasses.replace(loaded, total_steps=loaded.total_steps + 1))


def test_confirm_0_says_when_a_better_trial_is_not_the_one_confirmed(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    from autowarm.study._confirm import candidates
    from autowarm.study._tune import _warn_better_unconfirmed

    kw: dict[str, Any] = dict(storage=str(tmp_path / "s.db"), trial_steps=40, progress=False)
    study = autowarm.tune(task, n_trials=5, suggestion=suggestion, confirm=0, **kw).study
    best, second = candidates(study, 2)
    _confirm_by_hand(study, {second.number: 1.0})  # an earlier run confirmed another one
    with pytest.warns(UserWarning, match=rf"trial {best.number} is the best .* --confirm 1"):
        _warn_better_unconfirmed(study)
    _confirm_by_hand(study, {best.number: 2.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_better_unconfirmed(study)


def test_a_plain_resume_after_a_timeout_run_keeps_the_trials_it_reached(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # the timeout run stored no total (None), and the next plain resume took the default
    # total, unrelated to it: 8 more trials ran
    kw: dict[str, Any] = dict(storage=str(tmp_path / "s.db"), trial_steps=40, progress=False)
    autowarm.tune(task, n_trials=4, suggestion=suggestion, confirm=0, **kw)
    timed = autowarm.tune(task, timeout=0.6, confirm=0, **kw)
    reached = len(timed.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    assert 4 <= reached < 20, reached  # below the default total (29 here)
    again = autowarm.tune(task, confirm=0, **kw)
    assert len(again.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == reached


def test_a_task_changed_in_one_expression_after_loading_is_refused_too() -> None:
    # dataclasses.replace(load_task(spec), ...): the loaded Task itself is gone at once
    from autowarm.study._tune import _worker_task

    changed = dataclasses.replace(load_task(SPEC), total_steps=123)
    with pytest.raises(ValueError, match=r"\(total_steps;"):
        _worker_task(changed)
    same = dataclasses.replace(load_task(SPEC), total_steps=load_task(SPEC).total_steps * 1)
    assert _worker_task(same) == SPEC  # the same value given again is no change


def test_a_search_trial_is_never_pruned_in_its_own_warmup(
    tmp_path: Path, task: Task, suggestion: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With warmups up to 90% of the run (absolute transfer), trials still ramping up were
    # pruned at half the trial: the search was biased against the long warmups it tunes.
    result = _tune_always_pruned(
        monkeypatch, task, tmp_path / "s.db", suggestion, n_trials=12,
        warmup_transfer="absolute", search_space=SearchSpace(max_warmup_fraction=0.9),
    )  # fmt: skip
    search = [
        t for t in result.study.get_trials() if t.user_attrs[_attrs.ROLE] == _attrs.ROLE_SEARCH
    ]
    warmups = [t.user_attrs[_attrs.TRIAL_SCHEDULE]["warmup_steps"] for t in search]
    assert max(warmups) > 20  # some warmups last past half the trial
    for t, warmup in zip(search, warmups, strict=True):
        steps = sorted(t.intermediate_values)
        if t.state == TrialState.PRUNED:
            assert warmup < steps[-1] < 40, (warmup, steps)
        else:  # no report after its warmup and before its end: nothing to judge it on
            assert t.state == TrialState.COMPLETE
            assert not [s for s in steps if warmup < s < 40], (warmup, steps)


def test_a_first_trial_whose_worker_died_each_time_is_not_queued_on_every_resume(
    task: Task, caplog: pytest.LogCaptureFixture
) -> None:
    from autowarm.study._tune import _enqueue_first_trials

    study = optuna.create_study()
    center = ScheduleConfig(peak_lr=1e-2, total_steps=task.total_steps, warmup_steps=20)
    reason = (
        "its worker process h:1:2:3 died; not queued again: the worker of each of its 3 runs died"
    )
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.FAIL,
            user_attrs={_attrs.ROLE: _attrs.ROLE_PROBE, _attrs.REASON: reason},
        )
    )
    with caplog.at_level(logging.WARNING, logger="autowarm"):
        _enqueue_first_trials(study, task, center, SearchSpace(), None)
    queued = [t.user_attrs[_attrs.ROLE] for t in study.get_trials(states=(TrialState.WAITING,))]
    assert _attrs.ROLE_PROBE not in queued and queued  # the references are queued as before
    assert "the first trial probe is not queued again" in caplog.text


def test_the_2_over_1_minus_beta2_reference_follows_the_optimizer(task: Task) -> None:
    # an SGD task trained it with a made-up beta2 of 0.999, though the probe's own report
    # has no such reference for an optimizer without a second moment
    from autowarm.study._tune import _reference_schedules

    center = ScheduleConfig(peak_lr=1e-2, total_steps=task.total_steps, warmup_steps=10)
    sgd = dataclasses.replace(task, optimizer_cls=torch.optim.SGD)
    assert _attrs.ROLE_UNTUNED not in _reference_schedules(center, sgd)
    adam = dataclasses.replace(task, optimizer_kwargs={"betas": (0.9, 0.95)})
    assert _reference_schedules(center, adam)[_attrs.ROLE_UNTUNED].warmup_steps == 40


def test_a_suggestion_probed_under_other_settings_is_warned_and_the_export_is_the_studys(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # another task's suggestion (another beta2, weight decay): tune took it silently, and the
    # study's trainer export carried the suggestion's optimizer settings, not its trials'
    training = dict(suggestion.training)
    training["optimizer_settings"] = {**training["optimizer_settings"], "betas": [0.9, 0.5]}
    other = dataclasses.replace(suggestion, training=training)
    db = tmp_path / "s.db"
    with pytest.warns(UserWarning, match=r"probed under other settings .*optimizer_settings"):
        autowarm.tune(task, suggestion=other, storage=str(db), n_trials=1, trial_steps=50,
                      progress=False, pruner="none", confirm=0)  # fmt: skip
    from autowarm.cli import main

    out = tmp_path / "args.json"
    assert main(["export", "--storage", str(db), "--format", "trainer", "-o", str(out)]) == 0
    args = json.loads(out.read_text())
    assert args["adam_beta2"] == 0.999  # the task's AdamW default, which the trials used
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{db}")
    assert study.user_attrs[_attrs.TRAINING]["optimizer_settings"]["betas"] == [0.9, 0.999]


def test_a_resume_that_leaves_out_the_trial_settings_keeps_the_studys(
    tmp_path: Path, task: Task, suggestion: Any
) -> None:
    # "rerun the same command" without --trial-steps (or --pruner, --warmup-transfer, --seed)
    # took the default, which the study then refused as another setting
    db = str(tmp_path / "s.db")
    first = autowarm.tune(task, suggestion=suggestion, storage=db, n_trials=1, trial_steps=40,
                          progress=False, pruner="none", warmup_transfer="absolute",
                          seed=3, confirm=0)  # fmt: skip
    again = autowarm.tune(task, storage=db, n_trials=2, progress=False, confirm=0)
    assert again.study.user_attrs[_attrs.SEED] == 3
    assert again.study.user_attrs[_attrs.TRIAL_STEPS] == 40
    assert again.study.user_attrs[_attrs.PRUNER] == "none"
    assert again.study.user_attrs[_attrs.WARMUP_TRANSFER] == "absolute"
    assert len(again.study.get_trials()) == 2 and first.study.study_name == again.study.study_name
    with pytest.raises(ValueError, match=r"created with autowarm.trial_steps=40"):
        autowarm.tune(task, storage=db, n_trials=3, trial_steps=50, progress=False, confirm=0)


def test_no_completed_trial_yet_gives_advice_that_fits_the_study() -> None:
    # A running study was told to "resume with a larger --n-trials", and an empty one (its
    # probe interrupted) to "export the probe's suggestion instead", which it did not hold.
    study = optuna.create_study()
    with pytest.raises(NoFinishedTrialError) as empty:
        best_schedule(study)
    message = str(empty.value)
    assert "no trials" in message and "holds no probe suggestion" in message
    assert "--probe" not in message and "run `autowarm tune` again" in message
    study.set_user_attr(_attrs.SUGGESTION, {"not": "read here"})
    study.enqueue_trial({"x": 1.0})
    study.ask()
    study.enqueue_trial({"x": 2.0})
    with pytest.raises(NoFinishedTrialError) as running:
        best_schedule(study)
    message = str(running.value)
    assert "(1 running, 1 waiting)" in message or "(1 waiting, 1 running)" in message
    assert "wait for one to complete" in message and "--probe" in message


def test_a_budget_for_a_probe_that_does_not_run_is_said_to_be_unused(
    tmp_path: Path, task: Task, suggestion: Any, caplog: pytest.LogCaptureFixture
) -> None:
    kw: dict[str, Any] = dict(
        storage=str(tmp_path / "s.db"), trial_steps=40, progress=False, confirm=0
    )
    autowarm.tune(task, n_trials=4, suggestion=suggestion, **kw)
    with caplog.at_level("WARNING", logger="autowarm"):
        autowarm.tune(task, n_trials=4, budget_steps=60, **kw)
    assert "budget_steps=60 (--budget-steps) is not used" in caplog.text
    assert "its stored probe" in caplog.text
