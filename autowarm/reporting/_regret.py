"""``regret``: schedules placed on a benchmark task's oracle grid (``autowarm bench``).

A schedule that was not trained on the grid's run length is read off the grid at its nearest
cell (nearest peak LR on a log scale, then nearest warmup fraction): the regret of that cell is
what the grid says such a schedule costs, as far as the cell is near (``grid_distance_decades``
is how far the peak LR lies from the cell's). A measured value counts only when it comes from a
run as long as the grid's (``value_regret``); a compressed study trial's does not.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from autowarm.bench._oracle import GridEdgeWarning, OracleTable, oracle_table, regret

REGRET_COLUMNS = (
    "label",
    "source",
    "peak_lr",
    "warmup_steps",
    "warmup_frac",
    "grid_peak_lr",
    "grid_warmup_steps",
    "grid_loss",
    "grid_regret",
    "grid_distance_decades",
    "value",
    "value_regret",
    "oracle_best_loss",
    "oracle_best_peak_lr",
    "oracle_best_warmup_steps",
)
BENCH_PREFIX = "bench:"


@dataclass(frozen=True)
class Placed:
    """A schedule to place on the grid; ``value`` measured over ``value_steps`` (or nan)."""

    label: str
    peak_lr: float
    warmup_frac: float
    value: float = math.nan
    value_steps: int = 0


def grid_path(benchmark: str | os.PathLike[str]) -> Path:
    """The oracle grid CSV: ``benchmark`` itself, or ``oracle_grid.csv`` in that folder."""
    path = Path(benchmark)
    if path.is_dir():
        path = path / "oracle_grid.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"no oracle grid at {path}: pass the benchmark folder (with oracle_grid.csv, as "
            "written by `autowarm bench grid`) or the grid CSV itself"
        )
    return path


def bench_task_name(task: str | None) -> str | None:
    """``"postln_lm"`` from a study's ``"bench:postln_lm"`` (``None`` for other tasks)."""
    if task and task.startswith(BENCH_PREFIX):
        return task[len(BENCH_PREFIX) :]
    return None


def regret_table(
    benchmark: str | os.PathLike[str], task: str, placed: list[Placed]
) -> pd.DataFrame:
    """One row per schedule in ``placed``, then one per method the benchmark evaluated.

    Raises:
        FileNotFoundError: no grid there.
        ValueError: the grid has no rows for ``task`` (the message lists the tasks it has).
    """
    path = grid_path(benchmark)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)  # the table shows where the best is
        oracle = oracle_table(path, task)
    rows = [_row(oracle, p, "nearest grid cell") for p in placed]
    evaluated = path.with_name("regret.csv")
    if evaluated.is_file():
        bench = _read_regret_csv(evaluated)
        for r in bench[bench["task"] == task].to_dict("records"):
            p = Placed(
                label=f"benchmark: {r['method']}",
                peak_lr=float(r["peak_lr"]),
                warmup_frac=float(r["warmup_steps"]) / oracle.total_steps,
                value=float(r["mean_val_loss"]),
                value_steps=oracle.total_steps,
            )
            rows.append(_row(oracle, p, "benchmark evaluation (mean over seeds)"))
    return pd.DataFrame(rows, columns=list(REGRET_COLUMNS))


def _read_regret_csv(path: Path) -> pd.DataFrame:
    # The benchmark's own regret table beside the grid, whose rows the report adds: a file
    # there that is not one is named, with how to make it again, not shown as pandas' error.
    not_table = (
        f"{path} is not the regret table `autowarm bench regret` writes beside the grid (the "
        f"report adds its rows): make it again with `autowarm bench regret --out "
        f"{path.parent}`, or move it away"
    )
    try:
        bench = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{not_table}; it is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        why = str(exc).strip().splitlines()[0]
        raise ValueError(f"{not_table}; it cannot be read as CSV ({why})") from None
    missing = [
        c
        for c in ("task", "method", "peak_lr", "warmup_steps", "mean_val_loss")
        if c not in bench.columns
    ]
    if missing:
        raise ValueError(f"{not_table}; it lacks the columns {missing}")
    return bench


def _row(oracle: OracleTable, p: Placed, source: str) -> dict[str, object]:
    if not (math.isfinite(p.peak_lr) and p.peak_lr > 0):
        # a benchmark method that gave no schedule on some seed (its probe found no usable
        # LR): nothing to place on the grid; its value counts that seed as diverged
        return {
            **dict.fromkeys(REGRET_COLUMNS, math.nan),
            "label": f"{p.label} (no schedule on some seed)",
            "source": source,
            "value": p.value,
            "oracle_best_loss": oracle.best_loss,
            "oracle_best_peak_lr": oracle.best_peak_lr,
            "oracle_best_warmup_steps": oracle.best_warmup_steps,
        }
    cells = oracle.cells
    lrs = np.sort(cells["peak_lr"].unique())
    lr = float(lrs[np.argmin(np.abs(np.log(lrs) - math.log(p.peak_lr)))])
    same_lr = cells[cells["peak_lr"] == lr]
    cell = same_lr.iloc[int(np.argmin(np.abs(same_lr["warmup_frac"] - p.warmup_frac)))]
    comparable = p.value_steps == oracle.total_steps and math.isfinite(p.value)
    return {
        "label": p.label,
        "source": source,
        "peak_lr": p.peak_lr,
        "warmup_steps": round(p.warmup_frac * oracle.total_steps),
        "warmup_frac": p.warmup_frac,
        "grid_peak_lr": lr,
        "grid_warmup_steps": int(cell["warmup_steps"]),
        "grid_loss": float(cell["mean_val_loss"]),
        "grid_regret": float(cell["rel_to_best"]),
        "grid_distance_decades": abs(math.log10(p.peak_lr / lr)),
        "value": p.value,
        "value_regret": regret(p.value, oracle.best_loss) if comparable else math.nan,
        "oracle_best_loss": oracle.best_loss,
        "oracle_best_peak_lr": oracle.best_peak_lr,
        "oracle_best_warmup_steps": oracle.best_warmup_steps,
    }
