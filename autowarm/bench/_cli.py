"""The ``autowarm bench`` command: a thin shell over :mod:`autowarm.bench`.

Sub-actions:

* ``grid``: run (or resume) the oracle grid of some tasks into a CSV;
* ``table``: the oracle summary of every task in a grid CSV, as JSON (or one task's cells as
  CSV);
* ``tasks``: the registered tasks, their run lengths and grids, as JSON;
* ``time``: time one full run per task at a middle cell of its grid, as JSON;
* ``eval``: ``suggest()`` and the baselines on each task, one full run each (resumable CSV);
* ``regret``: the regret of each method against the oracle grid (CSV and Markdown);
* ``overhead``: the second-moment monitor's cost per training step, by model size;
* ``study``: ``tune()`` against TPE from scratch at the same cost (resumable CSV);
* ``ranks``: how compressed trials rank schedules against full runs (resumable CSV).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from autowarm._checks import no_abbreviations
from autowarm.bench import _args

__all__ = ["add_arguments", "main", "run"]

DEFAULT_OUT = Path("reports/benchmark")
GRID_CSV = "oracle_grid.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sub-actions listed in the module docstring to ``parser``."""
    sub = parser.add_subparsers(dest="bench_action", metavar="ACTION", required=True)

    grid = sub.add_parser("grid", help="run or resume the oracle grid (appends to a CSV)")
    _add_task_options(grid)
    grid.add_argument(
        "--seeds", type=_args.positive_int, default=2, help="seeds 0..N-1 per cell (default 2)"
    )
    grid.add_argument(
        "--workers",
        type=_args.worker_count,
        default=2,
        help="worker processes (default 2); 0 = in-process",
    )
    grid.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})"
    )
    grid.add_argument("--csv", type=Path, default=None, help=f"CSV path (default OUT/{GRID_CSV})")
    grid.add_argument(
        "--lrs",
        type=_args.positive_floats,
        default=None,
        help="peak LRs, comma separated (default: each built-in task's own grid; half-decades "
        "from 1e-4 to 0.1 for a task file)",
    )
    grid.add_argument(
        "--warmups",
        type=_args.nonnegative_ints,
        default=None,
        help="warmup lengths in steps, comma separated (default: each task's own; 0, 1, 3, "
        "10, 25 and 60%% of the run, rounded to steps, for a task file)",
    )

    table = sub.add_parser("table", help="oracle summary per task of a grid CSV (JSON)")
    table.add_argument(
        "csv",
        type=Path,
        nargs="?",
        default=None,
        help=f"grid CSV (default {DEFAULT_OUT / GRID_CSV})",
    )
    # the spelling of grid/eval/regret, which take their CSVs as options
    table.add_argument("--csv", dest="csv_option", type=Path, default=None, help="the same")
    table.add_argument("--task", default=None, help="print this task's cells as CSV instead")
    table.add_argument(
        "--pivot",
        action="store_true",
        help="with --task: mean loss as a peak_lr x warmup_steps table (CSV)",
    )
    table.add_argument(
        "--total-steps",
        type=_args.positive_int,
        default=None,
        help="only the runs of this length (needed when the CSV holds several)",
    )

    sub.add_parser("tasks", help="list the benchmark tasks (JSON)")

    timing = sub.add_parser("time", help="time one full run per task (JSON)")
    _add_task_options(timing)

    from autowarm.bench import _evaluate, _overhead

    ev = sub.add_parser("eval", help="suggest() and the baselines on each task (resumable CSV)")
    _evaluate.add_eval_arguments(ev)
    rg = sub.add_parser("regret", help="regret against the oracle grid (CSV + Markdown)")
    _evaluate.add_regret_arguments(rg)
    ov = sub.add_parser(
        "overhead", help="time second-moment monitoring vs plain steps (CPU or GPU)"
    )
    _overhead.add_arguments(ov)

    from autowarm.bench import _study

    st = sub.add_parser(
        "study", help="tune() vs TPE from scratch at 5, 6 and 10 full runs (resumable)"
    )
    _study.add_study_arguments(st)
    rk = sub.add_parser("ranks", help="compressed trials vs full runs on the grid (resumable)")
    _study.add_ranks_arguments(rk)


def _add_task_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tasks",
        type=_args.names,
        default=None,
        help="comma-separated built-in task names, or path/to/task.py:task (default: all "
        "available built-in tasks)",
    )
    parser.add_argument(
        "--total-steps",
        type=_args.positive_int,
        default=None,
        help="override every task's run length",
    )


def _dumps(obj: Any) -> str:
    """JSON for stdout: NaN and infinities (e.g. a held-out regret with one seed) as null,
    which every JSON parser reads (``NaN`` is not JSON)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=2, allow_nan=False)


def run(args: argparse.Namespace) -> int:
    """Execute the parsed sub-action with one torch thread; returns the exit code.

    Progress of ``grid`` is logged at INFO level on ``autowarm.bench._grid``; machine output
    (JSON or CSV) goes to stdout.

    Raises:
        KeyError: For an unknown task name (the message lists the valid ones).
    """
    import torch

    torch.set_num_threads(1)  # cells (or `time` runs) are the parallelism, one thread each
    action: str = args.bench_action
    if action == "tasks":
        return _tasks()
    if action == "table":
        if args.csv is not None and args.csv_option is not None and args.csv != args.csv_option:
            raise ValueError(
                f"two grid CSVs, {args.csv} and --csv {args.csv_option}: pass one of them"
            )
        csv_path = args.csv or args.csv_option or DEFAULT_OUT / GRID_CSV
        return _table(csv_path, args.task, pivot=args.pivot, total_steps=args.total_steps)
    if action == "time":
        return _time(args)
    if action in ("eval", "regret", "overhead", "study", "ranks"):
        from autowarm.bench import _evaluate, _overhead, _study

        runner = {
            "eval": _evaluate.run_eval,
            "regret": _evaluate.run_regret,
            "overhead": _overhead.run,
            "study": _study.run_study_cli,
            "ranks": _study.run_ranks_cli,
        }[action]
        return runner(args)
    return _grid(args)


def _selected(args: argparse.Namespace) -> list[Any]:
    import dataclasses

    from autowarm.bench.tasks import available_tasks, get_task

    if args.tasks is None:
        tasks = list(available_tasks().values())
    else:
        tasks = []
        for name in args.tasks:
            task = get_task(name)
            if task.is_available():
                tasks.append(task)
            else:
                logging.getLogger(__name__).warning(
                    "skipping task %s: it needs %s", name, ", ".join(task.requires)
                )
    if args.total_steps is not None:
        tasks = [dataclasses.replace(t, total_steps=args.total_steps) for t in tasks]
    return tasks


def _grid(args: argparse.Namespace) -> int:
    from autowarm.bench._grid import oracle_grid

    csv_path = args.csv if args.csv is not None else args.out / GRID_CSV
    result = oracle_grid(
        _selected(args),
        csv_path=csv_path,
        lrs=args.lrs,
        warmups=args.warmups,
        seeds=args.seeds,
        workers=args.workers,
    )
    out = {
        "csv": str(result.csv_path),
        "ran": result.ran,
        "skipped": result.skipped,
        "failed": [{"cell": c, "error": e} for c, e in result.failed],
    }
    print(_dumps(out))
    return 1 if result.failed else 0


def _table(
    csv_path: Path, task: str | None, *, pivot: bool = False, total_steps: int | None = None
) -> int:
    from autowarm.bench._oracle import oracle_table, oracle_tables

    if pivot and task is None:
        raise ValueError("--pivot needs --task NAME (one table per task)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if task is not None:
            table = oracle_table(csv_path, task, total_steps=total_steps)
            frame = table.pivot() if pivot else table.cells
            frame.to_csv(sys.stdout, index=pivot)
        else:
            tables = oracle_tables(csv_path, total_steps=total_steps)
            summaries = [t.summary() for t in tables.values()]
            print(_dumps(summaries))
    for w in caught:  # e.g. GridEdgeWarning: to stderr, stdout stays machine-readable
        logging.getLogger(__name__).warning("%s", w.message)
    from autowarm.bench._grid import incomplete_tasks
    from autowarm.bench._oracle import load_grid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_grid's own warnings were given above
        rows = load_grid(csv_path)
    for sentence in incomplete_tasks(Path(csv_path), rows):
        if task is None or sentence.startswith(f"the grid of task {task!r}"):
            logging.getLogger(__name__).warning("%s", sentence)
    for sentence in uneven_seeds(rows):
        if task is None or sentence.startswith(f"the grid of task {task!r}"):
            logging.getLogger(__name__).warning("%s", sentence)
    return 0


def uneven_seeds(rows: Any) -> list[str]:
    """A sentence per task and run length whose cells were run over different seeds (cells
    added later with fewer ``--seeds``): their means, and so the best cell, are not
    comparable. ``bench regret`` refuses such a grid; ``bench table`` shows it, saying so."""
    out = []
    for (task, steps), group in rows.groupby(["task", "total_steps"], sort=True):
        seeds = group.groupby(["peak_lr", "warmup_steps"])["seed"].agg(frozenset)
        if seeds.nunique() > 1:
            counts = sorted({len(s) for s in seeds})
            out.append(
                f"the grid of task {task!r} ({steps} steps) has cells over different seeds "
                f"({counts[0]} to {counts[-1]} per cell): their means are not comparable, nor "
                "is its best cell; run `autowarm bench grid` with the same --seeds for every "
                "cell (it resumes: only the missing runs run)"
            )
    return out


def _tasks() -> int:
    from autowarm.bench.tasks import TASKS

    out = [
        {
            "name": t.name,
            "available": t.is_available(),
            "description": t.description,
            "total_steps": t.total_steps,
            "lr_grid": list(t.lr_grid),
            "warmup_grid": list(t.warmup_grid),
            "optimizer_kwargs": {k: v for k, v in t.optimizer_kwargs.items()},
            "warmup_needed": t.warmup_needed,
        }
        for t in TASKS.values()
    ]
    print(_dumps(out))
    return 0


def _time(args: argparse.Namespace) -> int:
    from autowarm.bench._run import run_schedule
    from autowarm.schedules import ScheduleConfig

    out = []
    for task in _selected(args):
        lr = task.lr_grid[len(task.lr_grid) // 2]
        warmup = task.warmup_grid[len(task.warmup_grid) // 2]
        schedule = ScheduleConfig(peak_lr=lr, total_steps=task.total_steps, warmup_steps=warmup)
        result = run_schedule(task, schedule, seed=0)
        out.append(
            {
                "task": task.name,
                "peak_lr": lr,
                "warmup_steps": warmup,
                "steps": result.steps,
                "seconds": round(result.seconds, 3),
                "ms_per_step": round(1e3 * result.seconds_per_step, 3),
                "final_val_loss": result.final_val_loss,
            }
        )
    print(_dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m autowarm.bench``: parse ``argv`` and run; an error exits with code 1 (one
    line on stderr), an interrupt with 130."""
    parser = argparse.ArgumentParser(
        prog="python -m autowarm.bench",
        description="autowarm benchmark: oracle grids, baselines, regret, overhead, studies",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every cell")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_arguments(parser)
    no_abbreviations(parser)
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose or args.bench_action == "grid" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")
    from autowarm.cli import exit_code  # here: autowarm.cli imports this module for `bench`

    # an interrupt, a closed stdout or any error ends as it does under `autowarm bench`
    return exit_code(functools.partial(run, args), debug=args.debug)
