"""Regret of ``suggest()`` and of the baselines against the oracle grid.

For every task and seed, each method picks a schedule (and pays its probe cost, counted from
outside by wrapping the loss function), then one full run with that schedule and seed gives its
final validation loss. Averaged over seeds and compared with the oracle's best cell (also an
average over the same seeds), that is the method's regret on the task.

Methods (the baselines of the README's "Benchmark" section):

- ``autowarm``: :func:`autowarm.suggest` with the task's optimizer settings and run length.
- ``finder_10pct``: an LR range test (100 steps, 1e-7 to 10, steepest descent of the smoothed
  loss against log LR, as torch-lr-finder and Lightning suggest) and 10% linear warmup.
- ``finder_untuned``: the range-test LR with the untuned ``2 / (1 - beta2)`` warmup of Ma &
  Yarats (capped at the run length).
- ``radam_finder``: RAdam (its rectification is an implicit warmup) at the range-test LR, no
  warmup.
- ``hf_default``: transformers' ``TrainingArguments`` defaults: lr 5e-5, no warmup, linear
  decay.

A variant of the probe is measured the same way: ``probe_settings=["lr_min=1e-6"]`` (``autowarm
bench eval --probe-setting lr_min=1e-6``) runs ``suggest`` with those
:class:`~autowarm.probe._search.SearchSettings` fields changed, and its rows are the method
``autowarm[lr_min=1e-06]``, beside the default's in the same CSV and the regret table.

Every schedule decays with cosine to 0 after its warmup (as the oracle grid does), except
``hf_default``, which keeps transformers' linear decay.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from autowarm._config_io import atomic_write
from autowarm._outputs import REGRET_HEADER, check_replaceable, is_regret_markdown, is_table
from autowarm._train import LossFn, model_device, seeded_stream, train_step
from autowarm.bench import _args
from autowarm.bench._grid import (
    RowAppender,
    check_csv_target,
    check_definitions,
    check_distinct_names,
    check_grid_complete,
    check_same_tasks,
    read_plan,
    read_rows,
    run_jobs,
    versions,
    warn_other_versions,
    writing_alone,
)
from autowarm.bench._oracle import (
    OracleTable,
    check_seeds_complete,
    load_grid,
    oracle_table,
    regret,
)
from autowarm.bench._run import check_runnable, run_schedule
from autowarm.bench.tasks import BenchTask, get_task
from autowarm.probe import signals as sig
from autowarm.probe._search import SearchSettings, parse_settings, settings_label, use_settings
from autowarm.probe._state import seeded_rngs, torch_rng_kept
from autowarm.schedules import ScheduleConfig

__all__ = ["METHODS", "JobsFailed", "evaluate_methods", "finder_lr", "regret_table"]

_log = logging.getLogger("autowarm")

METHODS: tuple[str, ...] = (
    "autowarm",
    "finder_10pct",
    "finder_untuned",
    "radam_finder",
    "hf_default",
)
COLUMNS = (
    "task",
    "method",
    "seed",
    "total_steps",
    "peak_lr",
    "warmup_steps",
    "optimizer",
    "probe_steps",
    "probe_cost",
    "final_val_loss",
    "diverged",
    "probe_seconds",
    "run_seconds",
    "confidence",
    "deciding_signal",
    "autowarm_version",
    "torch_version",
)
# absent from a file written before the rows recorded the versions that made them; such a file
# keeps its header, and its new rows go without them
_VERSION_COLUMNS = ("autowarm_version", "torch_version")
FINDER_STEPS = 100


class _Counted:
    """Wraps a loss function and counts its calls: the probe's cost, seen from outside."""

    def __init__(self, fn: LossFn) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        self.calls += 1
        return self.fn(model, batch)


def finder_lr(task: BenchTask, seed: int, *, steps: int = FINDER_STEPS) -> tuple[float, int]:
    """The LR-finder baseline: steepest descent of an exponential sweep, and its step count."""
    with seeded_rngs(seed):
        model = task.make_model(seed)
        loss_fn = _Counted(task.resolved_loss_fn())
        optimizer = task.make_optimizer(model.parameters(), 1e-7)
        lrs = np.geomspace(1e-7, 10.0, steps)
        losses: list[float] = []
        best, avg = math.inf, 0.0
        with seeded_stream(task.train_data(seed), model_device(model), seed) as stream:
            for i, lr in enumerate(lrs):
                for group in optimizer.param_groups:
                    group["lr"] = float(lr)
                res = train_step(model, optimizer, stream.next(), loss_fn)
                losses.append(res.loss)
                if not res.finite:
                    break
                avg = 0.98 * avg + 0.02 * res.loss
                smooth = avg / (1 - 0.98 ** (i + 1))
                best = min(best, smooth)
                if i > 10 and smooth > 4 * best:  # torch-lr-finder's diverge_th
                    break
        rt = sig.range_test(lrs[: len(losses)], losses, skip_begin=10, skip_end=5)
        lr_out = rt.steepest_lr if math.isfinite(rt.steepest_lr) else 1e-3
        return float(lr_out), loss_fn.calls


def _beta2(task: BenchTask) -> float:
    betas = task.optimizer_kwargs.get("betas", (0.9, 0.999))
    return float(betas[1])


def method_label(method: str, probe_settings: dict[str, Any] | None = None) -> str:
    """The ``method`` column of a row: ``autowarm[key=value,...]`` for a probe variant."""
    if method != "autowarm" or not probe_settings:
        return method
    return f"autowarm[{settings_label(probe_settings)}]"


def _method_schedule(
    task: BenchTask, method: str, seed: int, probe_settings: dict[str, Any] | None = None
) -> tuple[ScheduleConfig, Callable[..., torch.optim.Optimizer], dict[str, Any]]:
    t = task.total_steps
    extra: dict[str, Any] = {"confidence": "", "deciding_signal": ""}
    if method == "autowarm":
        from autowarm._suggest import LOW_CONFIDENCE_WARNING, suggest

        counted = _Counted(task.resolved_loss_fn())
        start = time.perf_counter()
        settings = SearchSettings(**(probe_settings or {}))
        with (
            torch_rng_kept(),
            use_settings(settings),
            _no_schedule(counted),
            warnings.catch_warnings(),
        ):
            # recorded in the CSV's confidence column instead of a warning per job
            warnings.filterwarnings("ignore", re.escape(LOW_CONFIDENCE_WARNING), UserWarning)
            s = suggest(
                task.make_model(seed),
                task.train_data(seed),
                torch.optim.AdamW,
                optimizer_kwargs=dict(task.optimizer_kwargs),
                loss_fn=counted,
                total_steps=t,
                seed=seed,
                progress=False,
                grad_clip=task.grad_clip,
            )
        extra.update(
            probe_steps=counted.calls,
            probe_seconds=time.perf_counter() - start,
            confidence=s.confidence,
            deciding_signal=s.deciding_signal,
            suggestion=s,
        )
        return s.schedule, torch.optim.AdamW, extra
    if method == "hf_default":
        cfg = ScheduleConfig(peak_lr=5e-5, total_steps=t, warmup_steps=0, decay="linear")
        extra.update(probe_steps=0, probe_seconds=0.0)
        return cfg, torch.optim.AdamW, extra
    start = time.perf_counter()
    lr, calls = finder_lr(task, seed)
    extra.update(probe_steps=calls, probe_seconds=time.perf_counter() - start)
    if method == "finder_10pct":
        return (
            ScheduleConfig(peak_lr=lr, total_steps=t, warmup_steps=round(0.1 * t)),
            torch.optim.AdamW,
            extra,
        )
    if method == "finder_untuned":
        w = min(t, sig.untuned_warmup_steps(_beta2(task)))
        return ScheduleConfig(peak_lr=lr, total_steps=t, warmup_steps=w), torch.optim.AdamW, extra
    if method == "radam_finder":
        return ScheduleConfig(peak_lr=lr, total_steps=t, warmup_steps=0), _RAdamW, extra
    raise ValueError(f"method must be one of {', '.join(METHODS)}, but got method={method!r}")


class _RAdamW(torch.optim.RAdam):
    """RAdam with decoupled weight decay, as the AdamW of the other methods.

    It takes AdamW's options: ``fused`` (a kernel RAdam does not have; the math is the same)
    is ignored, and ``amsgrad=True``, which RAdam cannot do, is an error.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if amsgrad:
            raise ValueError("the RAdam baseline has no amsgrad: pass amsgrad=False")
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=True,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
        )


def _run_one(
    task_name: str,
    method: str,
    seed: int,
    total_steps: int | None,
    probe_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    import dataclasses

    task = get_task(task_name)
    if total_steps is not None:
        task = dataclasses.replace(task, total_steps=total_steps)
    try:
        schedule, opt_cls, extra = _method_schedule(task, method, seed, probe_settings)
    except _NoSchedule as exc:
        # Every LR the probe tried diverged: the method gave no schedule, which counts as a
        # diverged run (infinite loss), not as a seed left out of its mean.
        return _no_schedule_row(task, method, seed, probe_settings, exc)
    result = run_schedule(task, schedule, seed, optimizer_cls=opt_cls)
    return {
        "task": task.name,
        "method": method_label(method, probe_settings),
        "seed": seed,
        "total_steps": task.total_steps,
        "peak_lr": schedule.peak_lr,
        "warmup_steps": schedule.warmup_steps,
        "optimizer": "RAdam" if opt_cls is _RAdamW else "AdamW",
        "probe_steps": int(extra["probe_steps"]),
        "probe_cost": extra["probe_steps"] / task.total_steps,
        "final_val_loss": result.final_val_loss,
        "diverged": result.diverged,
        "probe_seconds": round(float(extra["probe_seconds"]), 3),
        "run_seconds": round(result.seconds, 3),
        "confidence": extra["confidence"],
        "deciding_signal": extra["deciding_signal"],
        **versions(),
        SUGGESTION_KEY: extra.get("suggestion"),  # saved beside the CSV, not a column
    }


class _NoSchedule(Exception):
    """``suggest()`` found no usable LR (``ProbeDivergedError``) after ``probe_steps`` steps."""

    def __init__(self, message: str, probe_steps: int) -> None:
        super().__init__(message)
        self.probe_steps = probe_steps


@contextlib.contextmanager
def _no_schedule(counted: _Counted) -> Iterator[None]:
    from autowarm._suggest import ProbeDivergedError

    try:
        yield
    except ProbeDivergedError as exc:
        raise _NoSchedule(str(exc).split("\n")[0][:200], counted.calls) from exc


def _no_schedule_row(
    task: BenchTask,
    method: str,
    seed: int,
    probe_settings: dict[str, Any] | None,
    exc: _NoSchedule,
) -> dict[str, Any]:
    probe_steps = exc.probe_steps
    first_line = str(exc)
    return {
        "task": task.name,
        "method": method_label(method, probe_settings),
        "seed": seed,
        "total_steps": task.total_steps,
        "peak_lr": math.nan,
        "warmup_steps": math.nan,
        "optimizer": "AdamW",
        "probe_steps": probe_steps,
        "probe_cost": probe_steps / task.total_steps,
        "final_val_loss": math.inf,
        "diverged": True,
        "probe_seconds": 0.0,
        "run_seconds": 0.0,
        "confidence": "",
        "deciding_signal": f"no schedule: {first_line}",
        **versions(),
    }


@dataclass(frozen=True)
class _Job:
    task: str
    method: str
    seed: int
    total_steps: int | None
    probe_settings: dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        steps = self.total_steps if self.total_steps is not None else "default"
        method = method_label(self.method, self.probe_settings)
        return f"{self.task} {method} seed {self.seed} total_steps {steps}"


# may be empty in a finished row: the non-autowarm methods have no confidence or signal, and
# final_val_loss is the only field left when an older writer wrote a NaN for a diverged run
# A probe that found no usable LR (ProbeDivergedError) leaves peak_lr and warmup_steps empty.
_OPTIONAL = ("confidence", "deciding_signal", "final_val_loss", "peak_lr", "warmup_steps")


def _read_rows(csv_path: str | os.PathLike[str]) -> pd.DataFrame:
    """The finished rows of an evaluation CSV (:func:`~autowarm.bench._grid.read_rows`)."""
    return read_rows(csv_path, COLUMNS, _OPTIONAL)


def _required_columns() -> list[str]:
    return [c for c in COLUMNS if c not in _OPTIONAL and c not in _VERSION_COLUMNS]


def _read_existing(csv_path: Path) -> pd.DataFrame | None:
    # the finished rows of an existing evaluation CSV (None: no file yet, or an empty one)
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return None
    return _read_rows(csv_path)


def _done(frame: pd.DataFrame | None) -> set[tuple[str, str, int, int]]:
    if frame is None:
        return set()
    keys = zip(frame["task"], frame["method"], frame["seed"], frame["total_steps"], strict=True)
    return {(str(t), str(m), int(s), int(n)) for t, m, s, n in keys}


def _versions_to_write(
    path: Path, frame: pd.DataFrame | None, names: set[str], methods: set[str]
) -> list[str] | None:
    """The header new rows are written with (None: :data:`COLUMNS`), with warnings for a file
    that cannot record versions or whose rows of these tasks came from other versions."""
    if frame is None:
        return None
    header = list(frame.columns)
    if any(c not in header for c in _VERSION_COLUMNS):
        now = versions()
        _log.warning(
            "%s was written before evaluation rows recorded the versions that made them: new "
            "rows go without them (this run: autowarm %s, torch %s; pass another --out for a "
            "file that records them)",
            path,
            now["autowarm_version"],
            now["torch_version"],
        )
        return [c for c in header if c in COLUMNS]
    mine = frame[frame["task"].isin(names) & frame["method"].isin(methods)]
    warn_other_versions(
        path,
        zip(mine["autowarm_version"].astype(str), mine["torch_version"].astype(str), strict=True),
        "rows of these tasks and methods",
        "this run uses",
        "a regret table over them mixes versions (pass another --out for rows of one version)",
    )
    return None


def evaluate_methods(
    tasks: Sequence[str],
    *,
    csv_path: str | os.PathLike[str],
    methods: Sequence[str] = METHODS,
    seeds: Sequence[int] = (0, 1),
    workers: int = 2,
    total_steps: int | None = None,
    probe_settings: Sequence[str] = (),
) -> Path:
    """Run every (task, method, seed) not yet in ``csv_path``; append one row each.

    Resumable: rows already in the CSV are skipped. A job that fails leaves no row; the others
    still run and write theirs, and then :class:`JobsFailed` names the failed jobs. Each job
    runs in a worker process with one torch thread (``workers=0`` runs them here, one after
    another). ``probe_settings`` (``KEY=VALUE`` strings,
    :func:`~autowarm.probe._search.parse_settings`) change the probe of ``autowarm``, whose
    rows are then labelled by :func:`method_label`. Each ``autowarm`` row's suggestion (its
    rationale, trace and signals) is saved beside the CSV, at :func:`suggestion_path`.

    Raises:
        JobsFailed: After every other job has run and written its row, if some jobs failed.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods must be among {', '.join(METHODS)}, but got {unknown}")
    overrides = parse_settings(probe_settings)
    if overrides and "autowarm" not in methods:
        raise ValueError(
            "probe settings change suggest() only: include autowarm in methods (--methods "
            f"autowarm), but got methods={list(methods)}"
        )
    path = Path(csv_path)
    check_csv_target(path, _required_columns(), "evaluation")
    loaded = [get_task(name) for name in tasks]
    check_distinct_names(loaded)
    with writing_alone(path):  # a second process on this CSV would run every job again
        check_definitions(path, loaded)  # under the lock: a refused run writes no record
        _evaluate_jobs(path, tasks, loaded, methods, seeds, workers, total_steps, overrides)
    return path


def _evaluate_jobs(
    path: Path,
    tasks: Sequence[str],
    loaded: Sequence[BenchTask],
    methods: Sequence[str],
    seeds: Sequence[int],
    workers: int,
    total_steps: int | None,
    overrides: dict[str, Any],
) -> None:
    existing = _read_existing(path)  # read once: a cut row is dropped, and said, once
    done = _done(existing)
    jobs = []
    for name, task in zip(tasks, loaded, strict=True):
        # a task file's rows carry its canonical name (task.name), not the path given
        steps = total_steps if total_steps is not None else task.total_steps
        jobs += [
            _Job(name, m, s, total_steps, overrides)
            for m in methods
            for s in seeds
            if (task.name, method_label(m, overrides), s, steps) not in done
        ]
    _log.info("evaluate: %d jobs to run, %d already in %s", len(jobs), len(done), path)
    for name, task in zip(tasks, loaded, strict=True):
        if any(j.task == name for j in jobs):
            check_runnable(task)  # a broken task: one error now, not one per job
    # a row cut inside an optional last field could read as finished: cut it off (its job
    # runs again; _read_rows has already dropped it)
    header = None
    if jobs:
        labels = {method_label(m, overrides) for m in methods}
        header = _versions_to_write(path, existing, {t.name for t in loaded}, labels)
    writer = RowAppender(path, COLUMNS, drop_partial=True, header=header)

    def write(row: dict[str, Any], _job: _Job) -> None:
        suggestion = row.pop(SUGGESTION_KEY, None)
        if row["method"].startswith("autowarm"):  # first: the CSV's row has its suggestion
            target = suggestion_path(
                path, row["task"], row["method"], row["seed"], row["total_steps"]
            )
            if suggestion is None:  # no schedule (the probe failed): no earlier run's file
                _remove_saved_suggestion(target)
            else:
                try:
                    suggestion.save(target)
                except (OSError, ValueError) as exc:  # the row is the result: it is kept
                    _log.warning("evaluate: the suggestion was not saved at %s: %s", target, exc)
        writer.write(row)
        _log.info(
            "%s %s seed %d: loss %.4f (lr %.3g, warmup %s, probe %d steps)",
            row["task"],
            row["method"],
            row["seed"],
            row["final_val_loss"],
            row["peak_lr"],
            "none" if math.isnan(row["warmup_steps"]) else int(row["warmup_steps"]),
            row["probe_steps"],
        )

    failed = run_jobs(_run_job, [(j,) for j in jobs], write, workers, "evaluate", _Job.label)
    if failed:
        raise JobsFailed(path, failed)


SUGGESTION_KEY = "_suggestion"
"""The key of a job's result that carries the probe's Suggestion to the writing process."""


def suggestion_path(csv_path: Path, task: str, method: str, seed: int, total_steps: int) -> Path:
    """Where :func:`evaluate_methods` saves the suggestion of an ``autowarm`` row (its
    rationale, trace and signals: ``Suggestion.load`` reads it): a folder beside the CSV,
    ``evaluation.suggestions/``, one ``TASK.METHOD.tSTEPS.seedN.json`` per row, ``STEPS``
    being the row's ``total_steps`` (one CSV may hold runs of several lengths; characters
    that no file name takes, such as a task file's ``:``, as ``_``)."""
    stem = re.sub(r"[^A-Za-z0-9._=\[\]-]", "_", f"{task}.{method}.t{total_steps}.seed{seed}")
    return csv_path.with_name(f"{csv_path.stem}.suggestions") / f"{stem}.json"


def _remove_saved_suggestion(target: Path) -> None:
    """Remove the suggestion an earlier run saved at ``target`` (its JSON and its two CSVs):
    only files a suggestion's save wrote; any other is kept, and a failure logged."""
    from autowarm._outputs import SIGNALS_HEADER, TRACE_HEADER, is_suggestion, is_table

    kinds = (
        (target, is_suggestion),
        (target.with_suffix(".trace.csv"), is_table(TRACE_HEADER)),
        (target.with_suffix(".signals.csv"), is_table(SIGNALS_HEADER)),
    )
    for path, ours in kinds:
        try:
            if path.is_file() and ours(path.read_bytes()):
                path.unlink()
        except OSError as exc:
            _log.warning("evaluate: an earlier run's %s was not removed: %s", path, exc)


class JobsFailed(RuntimeError):
    """Some evaluation (or study, or ranks) jobs failed; every other job's row is in the CSV
    (rerun to retry).

    Attributes:
        csv_path: the CSV.
        failed: ``(job, "ErrorType: message")`` for each failed job.
    """

    def __init__(
        self, csv_path: Path, failed: Sequence[tuple[str, str]], *, kind: str = "evaluation"
    ) -> None:
        self.csv_path = csv_path
        self.failed = list(failed)
        listing = "\n".join(f"  {job}: {error}" for job, error in self.failed)
        super().__init__(
            f"{len(self.failed)} {kind} job(s) failed (the others' rows are in {csv_path}; "
            f"run again to retry the failed ones):\n{listing}"
        )


def _run_job(j: _Job) -> dict[str, Any]:
    return _run_one(j.task, j.method, j.seed, j.total_steps, j.probe_settings)


def regret_table(
    eval_csv: str | os.PathLike[str],
    grid_csv: str | os.PathLike[str],
    *,
    seeds: Sequence[int] | None = None,
    total_steps: int | None = None,
) -> pd.DataFrame:
    """Per task, method and run length: mean final loss over seeds, regret, probe cost.

    The oracle is the grid's runs of the same length averaged over the same seeds as the
    method's runs, so a grid with more seeds than the evaluation (or the other way round), or
    an evaluation that ran a task at several lengths, still compares like with like.
    Diverged runs count as infinite loss (infinite regret). The last rows (task ``median``)
    hold each method's median regret over its rows: over tasks, each run length of a task
    counting as a task of its own. A method without a row for some of the table's (task,
    length) pairs (a job failed or was not run) has its median over fewer of them, which
    :func:`regret_markdown` marks ``[k of n tasks]``.

    Args:
        eval_csv: the evaluation rows (:func:`evaluate_methods`).
        grid_csv: the oracle grid.
        seeds: only these seeds of both (default: every seed of the evaluation).
        total_steps: only the runs of this length (default: every length, each its own row).

    Raises:
        ValueError: If no evaluation row is left, or the grid lacks a seed or a run length
            that the evaluation has.
    """
    ev = _read_rows(eval_csv)
    absent = [c for c in ("task", "method", "seed", "total_steps") if c not in ev.columns]
    if absent:
        raise ValueError(
            f"{eval_csv} is not an evaluation CSV (`autowarm bench eval` writes those): it "
            f"lacks the columns {absent}"
        )
    if ev.empty:
        raise ValueError(
            f"{eval_csv} has no finished evaluation rows: run `autowarm bench eval` first (its "
            "failed jobs write no row)"
        )
    grid = load_grid(grid_csv)
    check_same_tasks(Path(eval_csv), Path(grid_csv), sorted(set(ev["task"])))
    if seeds is not None:
        have = sorted(int(x) for x in ev["seed"].unique())
        ev = ev[ev["seed"].isin(list(seeds))]
        if ev.empty:
            raise ValueError(f"{eval_csv} has no rows for seeds {list(seeds)}; it has {have}")
    if total_steps is not None:
        have = sorted(int(x) for x in ev["total_steps"].unique())
        ev = ev[ev["total_steps"] == total_steps]
        if ev.empty:
            raise ValueError(
                f"{eval_csv} has no rows with total_steps={total_steps}; it has {have}"
            )
    plan = read_plan(Path(grid_csv))  # the runs asked of the grid, once for every group
    rows = []
    oracles: dict[tuple[str, tuple[int, ...], int], OracleTable] = {}
    groups = ev.groupby(["task", "method", "total_steps"], sort=True)
    for (task, method, length), g in groups:
        steps = int(str(length))
        used = sorted(int(x) for x in g["seed"].unique())
        same = grid[(grid["task"] == task) & (grid["total_steps"] == steps)]
        # the grid command to run names the task and the grid's folder (a task file's own
        # grid lives beside it, not in reports/benchmark); its other options are the user's
        to_run = (
            f"`autowarm bench grid --tasks {task} --out {Path(grid_csv).parent} --seeds "
            f"{max(used) + 1} --total-steps {steps}` (with the --lrs and --warmups of its grid)"
        )
        if same.empty:
            have = sorted(int(x) for x in grid.loc[grid["task"] == task, "total_steps"].unique())
            if not have:
                raise ValueError(
                    f"the grid {grid_csv} has no runs of task {task!r}, which the evaluation "
                    f"has (its tasks: {sorted(set(grid['task']))}): run "
                    + to_run
                    + " first, or pass --grid-csv the grid of that task"
                )
            raise ValueError(
                f"the grid has no runs of task {task!r} with total_steps={steps}, which the "
                f"evaluation has (it has {have}): run "
                + to_run
                + " first, or pass --total-steps N to compare one length"
            )
        cells = same[same["seed"].isin(used)]
        missing = sorted(set(used) - {int(x) for x in cells["seed"].unique()})
        if missing:
            raise ValueError(
                f"the grid has no runs of task {task!r} with seed(s) {missing}, which the "
                "evaluation has: run " + to_run + " first (it resumes: only the missing seeds run)"
            )
        check_seeds_complete(
            cells, str(task), used, steps, "or pass --only-seeds with seeds that every cell has"
        )
        check_grid_complete(plan, same, str(task), steps, used, Path(grid_csv))
        key = (str(task), tuple(used), steps)
        if key not in oracles:  # once per task and seeds (and its grid-edge warning once)
            oracles[key] = oracle_table(cells, key[0], total_steps=key[2])
        oracle = oracles[key]
        loss = g["final_val_loss"].astype(float).where(~g["diverged"].astype(bool), np.inf)
        mean = float(loss.mean())
        rows.append(
            {
                "task": task,
                "method": method,
                "total_steps": steps,
                "seeds": len(used),
                "mean_val_loss": mean,
                "oracle_best_loss": oracle.best_loss,
                "regret": regret(mean, oracle.best_loss),
                "peak_lr": float(np.exp(np.log(g["peak_lr"].astype(float)).mean())),
                "warmup_steps": float(g["warmup_steps"].mean()),
                "probe_cost": float(g["probe_cost"].max()),
                "diverged_runs": int(g["diverged"].astype(bool).sum()),
                "oracle_best_peak_lr": oracle.best_peak_lr,
                "oracle_best_warmup": oracle.best_warmup_steps,
                "oracle_flatness": oracle.flatness,
                "oracle_heldout_regret": oracle.heldout_regret,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    med = table.groupby("method")["regret"].median()
    medians = pd.DataFrame(
        {"task": "median", "method": [str(m) for m in med.index], "regret": med.to_numpy()}
    )
    out = pd.concat([table, medians], ignore_index=True)
    out["total_steps"] = out["total_steps"].astype("Int64")  # the medians have none
    return out


# ------------------------------------------------------------------ CLI (autowarm bench ...)
EVAL_CSV = "evaluation.csv"


def add_eval_arguments(parser: Any) -> None:
    """Options of ``autowarm bench eval``."""
    _args.add_run_options(parser, methods=METHODS, seeds=2, seeds_help="seeds 0..N-1 (default 2)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/benchmark"),
        help="folder of evaluation.csv (appended to; default reports/benchmark)",
    )
    parser.add_argument(
        "--total-steps", type=_args.positive_int, default=None, help="override run length"
    )
    parser.add_argument(
        "--probe-setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run suggest() with this probe setting changed (repeatable; e.g. lr_min=1e-6): a "
        "variant of the probe, written as the method autowarm[KEY=VALUE]",
    )


def add_regret_arguments(parser: Any) -> None:
    """Options of ``autowarm bench regret``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder of the CSVs and of regret.md/.csv (a subset's table: regret_seeds<S>"
        "[_<N>steps].md/.csv; default the --eval-csv's folder, else reports/benchmark)",
    )
    parser.add_argument("--eval-csv", type=Path, default=None, help="default OUT/evaluation.csv")
    parser.add_argument("--grid-csv", type=Path, default=None, help="default OUT/oracle_grid.csv")
    parser.add_argument(
        "--only-seeds",
        default=None,
        help="comma-separated seeds to compare (default: every seed of the evaluation); "
        "written as regret_seeds<S>.md/.csv",
    )
    parser.add_argument(
        "--total-steps",
        type=_args.positive_int,
        default=None,
        help="only the runs of this length (default: each length its own row); written as "
        "regret_<N>steps.md/.csv",
    )


def run_eval(args: Any) -> int:
    """``autowarm bench eval``: append method runs to ``OUT/evaluation.csv`` (resumable)."""
    from autowarm.bench.tasks import available_tasks

    names = list(available_tasks()) if args.tasks is None else args.tasks
    try:
        path = evaluate_methods(
            names,
            csv_path=args.out / EVAL_CSV,
            methods=args.methods,
            seeds=list(range(args.seeds)),
            workers=args.workers,
            total_steps=args.total_steps,
            probe_settings=args.probe_setting,
        )
    except JobsFailed as exc:
        print(exc.csv_path)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def run_regret(args: Any) -> int:
    """``autowarm bench regret``: the regret table (CSV + Markdown) from the two CSVs."""
    if args.out is None:
        # the tables go beside the evaluation they read, not into the project's reports
        args.out = Path(args.eval_csv).parent if args.eval_csv else Path("reports/benchmark")
    eval_csv = args.eval_csv or args.out / EVAL_CSV
    grid_csv = args.grid_csv or args.out / "oracle_grid.csv"
    seeds = None
    if args.only_seeds is not None:
        try:
            seeds = [int(x) for x in args.only_seeds.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"--only-seeds takes comma-separated integers such as 0,2, but got "
                f"{args.only_seeds!r}"
            ) from None
    for what, path, command in (
        ("evaluation", Path(eval_csv), "autowarm bench eval"),
        ("oracle grid", Path(grid_csv), "autowarm bench grid"),
    ):
        if not path.is_file():
            flag = "--eval-csv" if what == "evaluation" else "--grid-csv"
            raise ValueError(
                f"no {what} CSV at {path}: run `{command} --out {args.out}` first, or pass "
                f"{flag} PATH"
            )
    table = regret_table(eval_csv, grid_csv, seeds=seeds, total_steps=args.total_steps)
    stem = regret_stem(seeds, args.total_steps)
    csv_path, md_path = args.out / f"{stem}.csv", args.out / f"{stem}.md"
    # both checked before either is written: an earlier table is replaced, a file of the
    # user's own under the same name is not
    check_replaceable(csv_path, is_table(REGRET_HEADER), "a regret table autowarm wrote")
    check_replaceable(md_path, is_regret_markdown, "a regret table autowarm wrote")
    md = regret_markdown(table)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(csv_path, table.to_csv(index=False))
    atomic_write(md_path, md)
    print(md)
    return 0


def regret_stem(seeds: list[int] | None, total_steps: int | None) -> str:
    """File name (without suffix) of a regret table: ``regret`` for all the evaluation's runs;
    a subset (``--only-seeds``, ``--total-steps``) is named for it, so that it never
    overwrites the whole table beside it (``regret_seeds2``, ``regret_seeds0-1_2000steps``)."""
    stem = "regret"
    if seeds is not None:
        stem += "_seeds" + "-".join(str(s) for s in seeds)
    if total_steps is not None:
        stem += f"_{total_steps}steps"
    return stem


def regret_markdown(table: pd.DataFrame) -> str:
    """Tasks as rows, methods as columns: regret in % (probe cost in % of the run).

    The last column is the grid's own seed noise (:attr:`OracleTable.heldout_regret`): a
    method's regret below it on a task is within what the seeds alone move. When the table
    holds several run lengths, each (task, length) is a row, labelled ``task (N steps)``,
    and counts as a task in the medians: a method's median over fewer rows than the table's
    is marked ``[k of n tasks]`` (it is not comparable with the others' medians).
    """
    body = table[table["task"] != "median"]
    several = "total_steps" in body and body["total_steps"].nunique() > 1
    keys = ["task", "total_steps"] if several else ["task"]
    # the built-in methods in their order, then any probe variants (autowarm[...])
    methods = [*METHODS, *sorted(set(body["method"]) - set(METHODS))]
    lines = [
        "| task | " + " | ".join(methods) + " | seed noise |",
        "|---" * (len(methods) + 2) + "|",
    ]
    fewer = False
    for key, g in body.groupby(keys, sort=True):
        task = f"{key[0]} ({int(float(str(key[1])))} steps)" if several else key[0]
        most = int(g["seeds"].max())
        cells = []
        for m in methods:
            row = g[g["method"] == m]
            if row.empty:
                cells.append("")
                continue
            r = row.iloc[0]
            # a method run over fewer seeds than the task's others is marked, with its count
            short = f" [{int(r['seeds'])} of {most} seeds]" if int(r["seeds"]) < most else ""
            fewer = fewer or bool(short)
            cells.append(f"{_percent(r['regret'])} (cost {100 * r['probe_cost']:.1f}%){short}")
        # the seed noise of the oracle over the most seeds any method of this task ran
        noise = g.sort_values("seeds").iloc[-1].get("oracle_heldout_regret", math.nan)
        cells.append("" if pd.isna(noise) else _percent(float(noise)))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    med = table[table["task"] == "median"].set_index("method")["regret"]
    rows_of = body.groupby("method").size() if len(body) else pd.Series(dtype=int)
    n_rows = len(body.drop_duplicates(keys))  # tasks, each length its own (a row each)
    medians, partial = [], False
    for m in methods:
        if m not in med or pd.isna(med[m]):
            medians.append("")
            continue
        k = int(rows_of.get(m, 0))
        # a median over a part of the tasks is not comparable with the others': marked
        short = f" [{k} of {n_rows} tasks]" if k < n_rows else ""
        partial = partial or bool(short)
        medians.append(f"**{_percent(float(med[m]))}**{short}")
    lines.append("| **median** | " + " | ".join(medians) + " | |")
    if fewer:
        lines += [
            "",
            "[k of n seeds]: this method ran fewer seeds of the task than the others (a job "
            "failed or was not run), against an oracle over its own seeds; the same "
            "`autowarm bench eval` command runs the missing ones.",
        ]
    if partial:
        lines += [
            "",
            "[k of n tasks]: this method's median is over the k tasks (each run length a task) "
            "it has rows of, not all n; the same `autowarm bench eval` command runs the "
            "missing ones.",
        ]
    return "\n".join(lines) + "\n"


def _percent(value: float) -> str:
    return "diverged" if not math.isfinite(value) else f"{100 * value:.2f}%"
