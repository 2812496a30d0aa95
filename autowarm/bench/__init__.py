"""The autowarm benchmark: tasks, full training runs, the oracle grid and regret.

A suggestion is good when training with it ends as well as the best (peak LR x warmup) cell of
an exhaustive grid on the same task. This package holds the tasks (:data:`TASKS`), one full run
(:func:`run_schedule`), the resumable grid (:func:`oracle_grid`) and its reading
(:func:`oracle_table`, :func:`regret`). The command is ``python -m autowarm.bench`` (``autowarm
bench``); see ``reports/benchmark/README.md`` for the committed grid.
"""

from __future__ import annotations

from autowarm.bench._grid import COLUMNS, GridCell, GridResult, grid_cells, oracle_grid
from autowarm.bench._oracle import (
    GridEdgeWarning,
    OracleTable,
    load_grid,
    oracle_table,
    oracle_tables,
    regret,
)
from autowarm.bench._run import RunResult, evaluate, run_schedule
from autowarm.bench.tasks import TASKS, BenchTask, available_tasks, get_task

__all__ = [
    "COLUMNS",
    "TASKS",
    "BenchTask",
    "GridCell",
    "GridEdgeWarning",
    "GridResult",
    "OracleTable",
    "RunResult",
    "available_tasks",
    "evaluate",
    "get_task",
    "grid_cells",
    "load_grid",
    "oracle_grid",
    "oracle_table",
    "oracle_tables",
    "regret",
    "run_schedule",
]
