"""Benchmark of the overnight study: regret at a fixed cost, and how compressed trials rank.

Two measurements (the project's benchmark design, issue "Overnight refinement"):

``autowarm bench study``
    For each task and study seed, three methods spend at most ``budget`` full-run equivalents
    of optimizer steps on compressed trials (``trial_steps = total_steps / 4``):

    - ``tune_fraction``: :func:`autowarm.tune` (probe included in the budget), warmup
      transferred as a fraction of the run;
    - ``tune_absolute``: the same, warmup transferred in absolute steps;
    - ``tune_confirm``: ``tune_fraction`` with ``confirm=2``: the two best trials are re-run at
      full length (two of the six runs, so fewer trials) and the better one is named best;
    - ``tpe_scratch``: optuna's TPE with the same pruner and trials but no probe, searching
      the whole oracle grid's range (peak LR log-uniform over the grid's LRs, warmup 0 to 60%);
    - ``tpe_scratch_5`` and ``tpe_scratch_10``: the same with five and ten full runs' worth
      of trials instead of six (the benchmark's design asks for TPE from scratch at 5 and at
      10 runs).

    The best schedule of each is then trained at full length on the oracle grid's seeds, and
    its mean final loss compared with the grid's best cell gives the regret. Cost is counted in
    optimizer steps (probe plus every trial step taken, pruned trials up to their pruning) and
    in wall time, both divided by one full run.

``autowarm bench ranks``
    Every oracle-grid cell is also run as a compressed trial (seed 0), with each warmup
    transfer rule; the Spearman correlation between compressed values and the grid's
    full-length mean losses says how well a short trial ranks schedules, and whether the best
    compressed cell is too hot (a higher peak LR than the full-length best).

Both write resumable CSVs (one row per finished unit) under ``reports/benchmark/``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from autowarm.bench import _args
from autowarm.bench._evaluate import JobsFailed
from autowarm.bench._grid import (
    RowAppender,
    check_csv_target,
    check_definitions,
    check_grid_complete,
    check_same_tasks,
    read_plan,
    read_rows,
    run_jobs,
    writing_alone,
)
from autowarm.bench._oracle import check_seeds_complete, load_grid, oracle_table, regret
from autowarm.bench._run import run_schedule
from autowarm.bench.tasks import TASKS, BenchTask, get_task
from autowarm.schedules import ScheduleConfig
from autowarm.study import _attrs
from autowarm.study._space import SearchSpace
from autowarm.study._task import Task
from autowarm.study._trial import compress, train_trial

__all__ = ["STUDY_METHODS", "as_task", "rank_table", "run_ranks", "run_study_bench", "study_table"]

_log = logging.getLogger("autowarm")

STUDY_METHODS = (
    "tune_fraction",
    "tune_absolute",
    "tpe_scratch",
    "tune_confirm",
    "tpe_scratch_10",
    "tpe_scratch_5",
)
BUDGET = 6.0
"""Full-run equivalents of optimizer steps each method may spend (but ``tpe_scratch_5/_10``)."""
TPE_BUDGETS = {"tpe_scratch": BUDGET, "tpe_scratch_5": 5.0, "tpe_scratch_10": 10.0}
TRIAL_FRACTION = 0.25
EVAL_SEEDS = (0, 1)
CONFIRM = 2
"""Full-length confirmations of ``tune_confirm`` (paid from its six runs: fewer trials)."""


def _build(bench: BenchTask, seed: int) -> torch.nn.Module:
    return bench.make_model(seed)


def as_task(bench: BenchTask) -> Task:
    """The benchmark task as an :class:`autowarm.Task` (fused AdamW where available)."""
    kwargs = dict(bench.optimizer_kwargs)
    if "fused" in inspect.signature(torch.optim.AdamW).parameters:
        kwargs.setdefault("fused", True)
    return Task(
        make_model=functools.partial(_build, bench),
        train_data=bench.train_data,
        loss_fn=bench.loss_fn,
        criterion=bench.criterion,
        val_data=bench.val_data(),
        total_steps=bench.total_steps,
        optimizer_kwargs=kwargs,
        grad_clip=bench.grad_clip,
        name=f"bench:{bench.name}",
    )


def _steps_taken(trials: Sequence[optuna.trial.FrozenTrial]) -> int:
    """Optimizer steps the trials took: all of a completed one, a pruned one up to its last
    report (a diverged one up to its first evaluation at most: an undercount of < 1/8 trial)."""
    total = 0
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        short = t.user_attrs.get(_attrs.TRIAL_SCHEDULE) or {}
        if t.state == TrialState.COMPLETE:
            total += int(short.get("total_steps", 0))
        else:
            total += max(t.intermediate_values, default=0)
    return total


def _scratch_space(bench: BenchTask) -> tuple[ScheduleConfig, SearchSpace]:
    low, high = min(bench.lr_grid), max(bench.lr_grid)
    center = ScheduleConfig(
        peak_lr=math.sqrt(low * high), total_steps=bench.total_steps, warmup_steps=0
    )
    top = max(bench.warmup_fracs)
    space = SearchSpace(
        lr_factor=math.sqrt(high / low), min_warmup_fraction=top, max_warmup_fraction=top
    )
    return center, space


def tpe_trials(bench: BenchTask, trial_steps: int, method: str = "tpe_scratch") -> int:
    """Trials of TPE from scratch: its budget (:data:`TPE_BUDGETS`) in trials of that length."""
    if method not in TPE_BUDGETS:
        raise ValueError(f"method must be one of {sorted(TPE_BUDGETS)}, but got {method!r}")
    return int(TPE_BUDGETS[method] * bench.total_steps / trial_steps)


def _tpe_scratch(
    task: Task, bench: BenchTask, seed: int, trial_steps: int, method: str
) -> optuna.Study:
    from autowarm.study import _tune

    center, space = _scratch_space(bench)
    n_trials = tpe_trials(bench, trial_steps, method)
    plan = _tune._Plan(
        storage="",
        study_name="tpe_scratch",
        n_trials=n_trials,
        deadline=None,
        trial_steps=trial_steps,
        seed=seed,
        pruner="median",
        transfer="fraction",
        space=space,
        center=center,
        progress=False,
        heartbeat_interval=None,
        log_level=logging.WARNING,
    )
    study = optuna.create_study(direction="minimize")
    _tune._work(task, plan, study, worker=0, distributed=False)
    return study


STUDY_COLUMNS = (
    "task",
    "method",
    "seed",
    "total_steps",
    "trial_steps",
    "n_trials",
    "n_complete",
    "n_pruned",
    "n_failed",
    "probe_steps",
    "cost_steps",
    "study_seconds",
    "cost_wall",
    "peak_lr",
    "warmup_steps",
    "final_val_loss",
    "eval_seeds",
)
"""Columns of ``study.csv`` (one row per task, method and study seed), in order."""
RANKS_COLUMNS = (
    "task",
    "transfer",
    "peak_lr",
    "warmup_steps",
    "trial_steps",
    "trial_warmup_steps",
    "trial_value",
    "seconds",
)
"""Columns of ``ranks.csv`` (one row per grid cell and transfer rule), in order."""
_CSV_COLUMNS = {"study": STUDY_COLUMNS, "ranks": RANKS_COLUMNS}


def _one_study(task_name: str, method: str, seed: int) -> dict[str, Any]:
    from autowarm.study._tune import best_schedule, tune

    bench = get_task(task_name)
    task = as_task(bench)
    trial_steps = round(TRIAL_FRACTION * bench.total_steps)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if method in TPE_BUDGETS:
            study, probe_steps = _tpe_scratch(task, bench, seed, trial_steps, method), 0
        else:
            study = tune(
                task,
                storage=str(Path(tmp) / "study.log"),
                trial_steps=trial_steps,
                seed=seed,
                progress=False,
                warmup_transfer="absolute" if method == "tune_absolute" else "fraction",
                confirm=CONFIRM if method == "tune_confirm" else 0,
            ).study
            record = study.user_attrs.get(_attrs.SUGGESTION) or {}
            probe_steps = int(record.get("probe_steps", 0))
        study_seconds = time.perf_counter() - start
        # read while the journal file exists
        best = best_schedule(study)
        trials = study.get_trials()
    steps = probe_steps + _steps_taken(trials)
    if method == "tune_confirm":
        steps += CONFIRM * bench.total_steps
    finals = []
    run_seconds = []
    for s in EVAL_SEEDS:
        run = run_schedule(bench, best, s)
        finals.append(math.inf if run.diverged else run.final_val_loss)
        run_seconds.append(run.seconds)
    counts = pd.Series([t.state.name.lower() for t in trials]).value_counts().to_dict()
    return {
        "task": task_name,
        "method": method,
        "seed": seed,
        "total_steps": bench.total_steps,
        "trial_steps": trial_steps,
        "n_trials": len(trials),
        "n_complete": int(counts.get("complete", 0)),
        "n_pruned": int(counts.get("pruned", 0)),
        "n_failed": int(counts.get("fail", 0)),
        "probe_steps": probe_steps,
        "cost_steps": steps / bench.total_steps,
        "study_seconds": round(study_seconds, 2),
        "cost_wall": study_seconds / float(np.mean(run_seconds)),
        "peak_lr": best.peak_lr,
        "warmup_steps": best.warmup_steps,
        "final_val_loss": float(np.mean(finals)),
        "eval_seeds": len(finals),
    }


def _finished_rows(path: Path, kind: str) -> pd.DataFrame:
    """The finished rows of a study or ranks CSV (``kind``): a row cut by a kill is dropped,
    with a warning (its job runs again); no file, or an empty one, has none.

    Raises:
        ValueError: If the file is not such a CSV (its header lacks some of the columns).
    """
    columns = _CSV_COLUMNS[kind]
    check_csv_target(path, columns, kind)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(columns))
    return read_rows(path, columns)


def _appender(path: Path, kind: str, rows: pd.DataFrame) -> RowAppender:
    # A row cut by a kill is cut off the file before the first append (not glued to the new
    # row); an existing file's rows keep its own order of columns.
    header = list(rows.columns) if path.exists() and path.stat().st_size else None
    return RowAppender(path, _CSV_COLUMNS[kind], drop_partial=True, header=header)


def _table_rows(path: Path, kind: str) -> pd.DataFrame:
    # the rows a table is made of: a missing file is the command not yet run
    if not path.is_file():
        raise ValueError(f"no {kind} CSV at {path}: run `autowarm bench {kind}` first")
    return _finished_rows(path, kind)


def run_study_bench(
    tasks: Sequence[str],
    csv_path: Path,
    *,
    methods: Sequence[str] = STUDY_METHODS,
    seeds: Sequence[int] = (0,),
    workers: int = 2,
    grid_csv: Path | None = None,
) -> Path:
    """Run (or resume) the study benchmark into ``csv_path``; one row per (task, method, seed).

    ``workers=0`` runs the studies in this process, one after another. ``grid_csv``, the
    oracle grid that :func:`study_table` will compare the rows with, is checked before any
    study runs (hours before the table).

    Raises:
        ValueError: If ``grid_csv`` is missing, lacks a task's runs at its length and seeds 0
            and 1, is incomplete there, or was made from another definition of a task.
        JobsFailed: After every other job has run and written its row, if some jobs failed.
    """
    for m in methods:
        if m not in STUDY_METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {STUDY_METHODS}")
    if grid_csv is not None:
        _check_grid_first(grid_csv, tasks, "study")
    check_csv_target(csv_path, STUDY_COLUMNS, "study")  # before the lock makes the file
    with writing_alone(csv_path):  # a second run on this CSV would run every job again
        # its rows are compared with a grid's: the definitions they were made with are
        # recorded (and a changed task refused its old rows), as the grid and evaluation do
        check_definitions(csv_path, [get_task(t) for t in tasks])
        if grid_csv is not None:
            check_same_tasks(csv_path, grid_csv, tasks, kind="study")
        rows = _finished_rows(csv_path, "study")
        done = {
            (str(t), str(m), int(s))
            for t, m, s in zip(rows["task"], rows["method"], rows["seed"], strict=True)
        }
        jobs = [(t, m, s) for s in seeds for t in tasks for m in methods if (t, m, s) not in done]
        _log.info("study bench: %d jobs to run, %d already in %s", len(jobs), len(done), csv_path)
        if not jobs:
            return csv_path
        writer = _appender(csv_path, "study", rows)

        def write(row: dict[str, Any], *_job: Any) -> None:
            writer.write(row)
            _log.info(
                "%s %s seed %s: loss %.5g, cost %.2f runs",
                row["task"],
                row["method"],
                row["seed"],
                row["final_val_loss"],
                row["cost_steps"],
            )

        failed = run_jobs(_one_study, jobs, write, workers, "study", _study_label)
    if failed:
        raise JobsFailed(csv_path, failed, kind="study")
    return csv_path


def _check_grid_first(grid_csv: Path, tasks: Sequence[str], kind: str) -> pd.DataFrame:
    """The rows of the oracle grid, checked before any run: a grid that the ``kind`` table
    ("study" or "ranks") would refuse once every run is done is refused now (missing, without
    a task's runs of its length, at seeds 0 and 1 for the study, or incomplete there)."""
    if not grid_csv.is_file():
        raise ValueError(
            f"no oracle grid CSV at {grid_csv}: the {kind} tables compare with it; run "
            f"`autowarm bench grid --seeds 2 --out {grid_csv.parent}` first"
        )
    grid = load_grid(grid_csv)
    plan = read_plan(grid_csv)
    for name in tasks:
        steps = get_task(name).total_steps
        rows = grid[(grid["task"] == name) & (grid["total_steps"] == steps)]
        if kind == "ranks":
            _check_ranks_oracle(_full_length_cells(grid, name), plan, name, steps, grid_csv)
            continue
        rows = rows[rows["seed"].isin(EVAL_SEEDS)]
        if rows.empty:
            raise ValueError(
                f"the grid {grid_csv} has no runs of task {name!r} at its run length of "
                f"{steps} steps and seeds 0 and 1: run `autowarm bench grid --tasks {name} "
                f"--seeds 2 --out {grid_csv.parent}` first"
            )
        _check_study_oracle(rows, plan, name, steps, grid_csv)
    return grid


def _study_label(task: str, method: str, seed: int) -> str:
    return f"{task} {method} seed {seed}"


def _check_study_oracle(
    rows: pd.DataFrame, plan: dict[str, Any], task: str, steps: int, grid_csv: Path
) -> None:
    # The grid's rows of a task and length at EVAL_SEEDS must be whole: every cell over both
    # seeds, and every run asked of the grid there done (else the oracle's best is of a part).
    check_seeds_complete(
        rows,
        task,
        list(EVAL_SEEDS),
        steps,
        "with --seeds 2 at least (the study scores each method's schedule on seeds 0 and 1)",
    )
    check_grid_complete(plan, rows, task, steps, EVAL_SEEDS, grid_csv)


def _check_ranks_oracle(
    rows: pd.DataFrame, plan: dict[str, Any], task: str, steps: int, grid_csv: Path
) -> None:
    # The ranks compare with the grid's mean over all its seeds: every cell must have them
    # all, and every run asked of the grid at that length must be done.
    seeds = sorted({int(s) for s in rows["seed"]})
    check_seeds_complete(
        rows,
        task,
        seeds,
        steps,
        "with the same --seeds for every cell (the ranks compare with the mean over all seeds)",
    )
    asked = {int(r[2]) for r in plan.get(task, {}).get(str(steps), [])}
    check_grid_complete(plan, rows, task, steps, sorted(asked | set(seeds)), grid_csv)


def study_table(study_csv: Path, grid_csv: Path) -> pd.DataFrame:
    """Per task and method: mean regret over study seeds and cost; ``median`` rows at the end.

    A method's median is over the tasks it has rows of; when that is fewer than the table's
    tasks (a job failed or was not run), its row's task reads ``median [k of n tasks]``: that
    median is not comparable with the others'.
    """
    frame = _table_rows(study_csv, "study")
    # like with like: each method's schedule is scored by full runs on EVAL_SEEDS, so the
    # oracle is the grid averaged over those seeds, however many more the grid has
    grid = load_grid(grid_csv)
    check_same_tasks(study_csv, Path(grid_csv), sorted(set(frame["task"])), kind="study")
    plan = read_plan(Path(grid_csv))
    grid = grid[grid["seed"].isin(EVAL_SEEDS)]
    rows = []
    for (task, method), g in frame.groupby(["task", "method"], sort=True):
        steps = int(g["total_steps"].iloc[0])
        same = grid[(grid["task"] == task) & (grid["total_steps"] == steps)]
        _check_study_oracle(same, plan, str(task), steps, Path(grid_csv))
        oracle = oracle_table(grid, str(task), total_steps=steps)
        regrets = [regret(float(v), oracle.best_loss) for v in g["final_val_loss"]]
        rows.append(
            {
                "task": task,
                "method": method,
                "study_seeds": len(g),
                "regret": float(np.mean(regrets)),
                "cost_steps": float(g["cost_steps"].max()),
                "cost_wall": float(g["cost_wall"].max()),
                "n_trials": float(g["n_trials"].mean()),
                "peak_lr": float(np.exp(np.log(g["peak_lr"]).mean())),
                "warmup_steps": float(g["warmup_steps"].mean()),
                "oracle_best_peak_lr": oracle.best_peak_lr,
                "oracle_best_warmup": oracle.best_warmup_steps,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    med = table.groupby("method")["regret"].median()
    tasks_of = table.groupby("method")["task"].nunique()
    n_tasks = table["task"].nunique()
    label = [
        "median" if tasks_of[m] == n_tasks else f"median [{tasks_of[m]} of {n_tasks} tasks]"
        for m in med.index
    ]
    return pd.concat(
        [table, pd.DataFrame({"task": label, "method": list(med.index), "regret": med.values})],
        ignore_index=True,
    )


# ---------------------------------------------------------------------------------------------
# ranks


def _one_rank(task_name: str, peak_lr: float, warmup: int, transfer: str) -> dict[str, Any]:
    bench = get_task(task_name)
    task = as_task(bench)
    trial_steps = round(TRIAL_FRACTION * bench.total_steps)
    full = ScheduleConfig(peak_lr=peak_lr, total_steps=bench.total_steps, warmup_steps=warmup)
    short = compress(full, trial_steps, transfer)  # type: ignore[arg-type]
    outcome = train_trial(task, short, 0)
    return {
        "task": task_name,
        "transfer": transfer,
        "peak_lr": peak_lr,
        "warmup_steps": warmup,
        "trial_steps": trial_steps,
        "trial_warmup_steps": short.warmup_steps,
        "trial_value": outcome.value,
        "seconds": round(outcome.seconds, 3),
    }


def run_ranks(
    tasks: Sequence[str],
    csv_path: Path,
    grid_csv: Path,
    *,
    transfers: Sequence[str] = ("fraction", "absolute"),
    workers: int = 2,
) -> Path:
    """Run (or resume) every oracle-grid cell as a compressed trial, for each transfer rule.

    The trials compress the task's own run (its ``total_steps``), so only the grid's cells of
    that length are used; a grid with none is an error. ``workers=0`` runs the trials in this
    process, one after another.

    Raises:
        JobsFailed: After every other trial has run and written its row, if some failed.
    """
    grid = _check_grid_first(grid_csv, tasks, "ranks")  # not once every trial has run
    cells = {
        name: _full_length_cells(grid, name)[["peak_lr", "warmup_steps"]].drop_duplicates()
        for name in tasks
    }
    check_csv_target(csv_path, RANKS_COLUMNS, "ranks")  # before the lock makes the file
    with writing_alone(csv_path):  # a second run on this CSV would run every trial again
        check_definitions(csv_path, [get_task(t) for t in tasks])  # as study does
        check_same_tasks(csv_path, grid_csv, tasks, kind="ranks")
        rows = _finished_rows(csv_path, "ranks")
        keys = zip(
            rows["task"], rows["transfer"], rows["peak_lr"], rows["warmup_steps"], strict=True
        )
        done = {(str(t), str(tr), float(lr), int(w)) for t, tr, lr, w in keys}
        jobs = []
        for task_name in tasks:
            for transfer in transfers:
                for lr, w in cells[task_name].itertuples(index=False):
                    if transfer == "absolute" and w == 0:
                        continue  # the same trial as with "fraction"
                    if (task_name, transfer, float(lr), int(w)) not in done:
                        jobs.append((task_name, float(lr), int(w), transfer))
        _log.info("ranks: %d compressed trials to run", len(jobs))
        if not jobs:
            return csv_path
        appender = _appender(csv_path, "ranks", rows)
        failed = run_jobs(
            _one_rank, jobs, lambda row, *_job: appender.write(row), workers, "ranks", _rank_label
        )
    if failed:
        raise JobsFailed(csv_path, failed, kind="ranks")
    return csv_path


def _rank_label(task: str, peak_lr: float, warmup: int, transfer: str) -> str:
    return f"{task} peak_lr {peak_lr:g} warmup {warmup} transfer {transfer}"


def _full_length_cells(grid: pd.DataFrame, task_name: str) -> pd.DataFrame:
    steps = get_task(task_name).total_steps
    rows = grid[grid["task"] == task_name]
    cells = rows[rows["total_steps"] == steps]
    if cells.empty:
        have = sorted(int(n) for n in rows["total_steps"].unique())
        raise ValueError(
            f"the grid has no cells of task {task_name!r} at its run length of {steps} steps "
            f"(it has {have or 'none'}): the ranks compare trials compressed from that run "
            f"with full runs of it; run `autowarm bench grid --tasks {task_name}` first"
        )
    return cells


def rank_table(ranks_csv: Path, grid_csv: Path) -> pd.DataFrame:
    """Per task and transfer: Spearman rank correlation of compressed vs full-length losses,
    the regret of the cell a compressed study would pick, and whether it is hotter."""
    ranks = _table_rows(ranks_csv, "ranks")
    grid = load_grid(grid_csv)
    check_same_tasks(ranks_csv, Path(grid_csv), sorted(set(ranks["task"])), kind="ranks")
    plan = read_plan(Path(grid_csv))
    # a zero warmup is the same trial under both rules
    zero = ranks[(ranks["warmup_steps"] == 0) & (ranks["transfer"] == "fraction")]
    ranks = pd.concat([ranks, zero.assign(transfer="absolute")], ignore_index=True)
    rows = []
    for (task, transfer), g in ranks.groupby(["task", "transfer"], sort=True):
        # the run the trials were compressed from (a grid may hold other lengths too)
        steps = TASKS[str(task)].total_steps if str(task) in TASKS else None
        same = grid[grid["task"] == task]
        lengths = {int(n) for n in same["total_steps"]} if steps is None else {steps}
        if len(lengths) == 1:  # else oracle_table names the lengths to choose from
            length = lengths.pop()
            same = same[same["total_steps"] == length]
            _check_ranks_oracle(same, plan, str(task), length, Path(grid_csv))
        oracle = oracle_table(grid, str(task), total_steps=steps)
        cells = oracle.cells[["peak_lr", "warmup_steps", "mean_val_loss"]]
        merged = g.merge(cells, on=["peak_lr", "warmup_steps"], how="inner")
        trial = merged["trial_value"].replace([np.inf], np.nan)
        full = merged["mean_val_loss"].replace([np.inf], np.nan)
        both = pd.DataFrame({"t": trial, "f": full}).fillna(np.inf)
        rho = float(both["t"].rank().corr(both["f"].rank()))
        pick = merged.iloc[int(np.argmin(merged["trial_value"].to_numpy()))]
        rows.append(
            {
                "task": task,
                "transfer": transfer,
                "cells": len(merged),
                "spearman": rho,
                "picked_peak_lr": float(pick["peak_lr"]),
                "picked_warmup": int(pick["warmup_steps"]),
                "picked_regret": regret(float(pick["mean_val_loss"]), oracle.best_loss),
                "oracle_peak_lr": oracle.best_peak_lr,
                "oracle_warmup": oracle.best_warmup_steps,
                "picked_hotter": bool(pick["peak_lr"] > oracle.best_peak_lr),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# CLI: autowarm bench study | ranks


STUDY_CSV = "study.csv"
RANKS_CSV = "ranks.csv"


def add_study_arguments(parser: Any) -> None:
    """Options of ``autowarm bench study``."""
    _args.add_run_options(
        parser, methods=STUDY_METHODS, seeds=1, seeds_help="study seeds 0..N-1 (default 1)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/benchmark"), help="default reports/benchmark"
    )
    parser.add_argument("--table-only", action="store_true", help="only rebuild the tables")


def add_ranks_arguments(parser: Any) -> None:
    """Options of ``autowarm bench ranks``."""
    parser.add_argument(
        "--tasks", type=_args.names, default=None, help="comma-separated tasks (default: all)"
    )
    parser.add_argument(
        "--workers",
        type=_args.worker_count,
        default=2,
        help="processes (default 2); 0 = in-process",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("reports/benchmark"), help="default reports/benchmark"
    )
    parser.add_argument("--table-only", action="store_true", help="only rebuild the tables")


def _task_names(names: list[str] | None) -> list[str]:
    from autowarm.bench._user import is_task_spec
    from autowarm.bench.tasks import available_tasks

    if names is None:
        return list(available_tasks())
    for n in names:
        if is_task_spec(n):
            raise ValueError(
                f"{n}: `bench study` and `bench ranks` run on the built-in tasks only; for your "
                "own task, run `autowarm bench grid`, `eval` and `regret` on it, and "
                "`autowarm tune` itself"
            )
        get_task(n)  # a clear KeyError for a typo
    return names


def markdown(table: pd.DataFrame) -> str:
    """A pipe table; floats to 4 significant digits, NaN as blank."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v)

    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = [
        "| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join([head, rule, *body]) + "\n"


def _write_table(table: pd.DataFrame, out: Path, stem: str) -> None:
    table.to_csv(out / f"{stem}.csv", index=False, float_format="%.6g")
    (out / f"{stem}.md").write_text(markdown(table))
    print(table.to_string(index=False))


def run_study_cli(args: Any) -> int:
    """``autowarm bench study``: run or resume, then write study_regret.csv/.md."""
    out: Path = args.out
    grid = out / "oracle_grid.csv"
    if not args.table_only:
        try:
            run_study_bench(
                _task_names(args.tasks),
                out / STUDY_CSV,
                methods=args.methods,
                seeds=range(args.seeds),
                workers=args.workers,
                grid_csv=grid,
            )
        except JobsFailed as exc:
            return _failed(exc)
    _write_table(study_table(out / STUDY_CSV, grid), out, "study_regret")
    return 0


def run_ranks_cli(args: Any) -> int:
    """``autowarm bench ranks``: run or resume, then write ranks_summary.csv/.md."""
    out: Path = args.out
    grid = out / "oracle_grid.csv"
    if not args.table_only:
        try:
            run_ranks(_task_names(args.tasks), out / RANKS_CSV, grid, workers=args.workers)
        except JobsFailed as exc:
            return _failed(exc)
    _write_table(rank_table(out / RANKS_CSV, grid), out, "ranks_summary")
    return 0


def _failed(exc: JobsFailed) -> int:
    # The listing of every failed job (the command line's error would keep its first line
    # only); the tables are left as they were, not rebuilt from part of the rows.
    print(f"error: {exc}", file=sys.stderr)
    print(
        "the tables were not rebuilt: run the same command again to retry the failed jobs, "
        "or pass --table-only for the tables of the rows there",
        file=sys.stderr,
    )
    return 1
