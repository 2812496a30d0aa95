"""Reading a grid CSV back: the oracle table of a task, its best cell, flatness and regret."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FLATNESS_TOLERANCE",
    "GridEdgeWarning",
    "OracleTable",
    "check_seeds_complete",
    "load_grid",
    "oracle_table",
    "oracle_tables",
    "regret",
]

FLATNESS_TOLERANCE = 0.01
"""A cell counts towards flatness when its loss is within this fraction of the best."""


class GridEdgeWarning(UserWarning):
    """The best oracle cell lies on the edge of the grid, so the grid may have set the answer."""


def regret(value: float, oracle_best: float) -> float:
    """Relative excess loss over the best oracle cell.

    .. math::

        \\mathrm{regret} = \\frac{L_\\text{suggestion}}{L_\\text{oracle best}} - 1

    0 is perfect; a diverged run (``nan`` or ``inf`` loss) has infinite regret. Negative values
    mean the suggestion beat every grid cell.

    Args:
        value:
            Final validation loss reached with the suggestion.
        oracle_best:
            Mean final validation loss of the best oracle cell.

    Raises:
        ValueError: If ``oracle_best`` is not a finite positive number.
    """
    if not math.isfinite(oracle_best) or oracle_best <= 0:
        raise ValueError(
            "oracle_best must be a finite loss > 0 (regret is a ratio), but got "
            f"oracle_best={oracle_best!r}"
        )
    if not math.isfinite(value):
        return math.inf
    return value / oracle_best - 1.0


def load_grid(source: pd.DataFrame | str | os.PathLike[str]) -> pd.DataFrame:
    """The grid rows as a DataFrame (from a CSV path, or a frame passed through).

    Rows with missing fields (cut short by a kill) are dropped, as the grid itself skips them
    and runs their cells again; ``diverged`` is boolean.
    """
    from autowarm.bench._grid import COLUMNS

    where = "the grid" if isinstance(source, pd.DataFrame) else str(source)
    not_grid = f"{where} is not an oracle grid CSV (`autowarm bench grid` writes those)"
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
    else:
        # pandas' own messages ("Error tokenizing data. C error: ...") name neither the file
        # nor what it should be: a JSON or other text passed as the grid
        try:
            frame = pd.read_csv(source)
        except pd.errors.EmptyDataError:
            raise ValueError(f"{not_grid}: it is empty") from None
        except pd.errors.ParserError as exc:
            why = str(exc).strip().splitlines()[0]
            raise ValueError(f"{not_grid}: it cannot be read as CSV ({why})") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{not_grid}: it is not UTF-8 text ({exc})") from None
    needed = ["task", "peak_lr", "warmup_steps", "total_steps", "seed", "final_val_loss"]
    missing = [c for c in [*needed, "warmup_frac", "diverged"] if c not in frame.columns]
    if missing:
        raise ValueError(f"{not_grid}: it lacks the columns {missing}")
    # a row cut short by a kill mid-write has empty fields from the cut on; its last field
    # may be cut too (a final_val_loss of "1." for "1.556"), so any empty field drops it
    cut = frame[[c for c in COLUMNS if c in frame.columns]].isna().any(axis=1)
    if cut.any():
        warnings.warn(
            f"{where}: dropping "
            f"{int(cut.sum())} row(s) with empty fields (cut short by a kill; `autowarm bench "
            "grid` runs their cells again)",
            UserWarning,
            stacklevel=2,
        )
        frame = frame[~cut]
    if frame["diverged"].dtype != bool:
        frame["diverged"] = frame["diverged"].astype(str).str.lower().eq("true")
    return frame


def check_seeds_complete(
    cells: pd.DataFrame, task: str, seeds: list[int], steps: int, hint: str
) -> None:
    """Refuse an oracle whose cells lack some of ``seeds``: a grid stopped mid-way has cells
    averaged over fewer seeds, whose means are not comparable with the others'.

    Args:
        cells: the grid's rows of one task and run length, limited to ``seeds``.
        task: its name, for the message.
        seeds: the seeds the methods compared with the oracle ran.
        steps: the run length, for the message.
        hint: the other way out, after "finish it with `autowarm bench grid`".

    Raises:
        ValueError: If a cell lacks a seed; the message names one and how many.
    """
    have: dict[tuple[float, int], set[int]] = {}
    for lr_, w_, seed in zip(cells["peak_lr"], cells["warmup_steps"], cells["seed"], strict=True):
        have.setdefault((float(lr_), int(w_)), set()).add(int(seed))
    short = {cell: got for cell, got in have.items() if not set(seeds) <= got}
    if not have or not short:
        return
    (lr, warmup), got = next(iter(short.items()))
    raise ValueError(
        f"the grid of task {task!r} ({steps} steps) is incomplete: {len(short)} of {len(have)} "
        f"cells lack some of the seeds {seeds} that the evaluation ran (e.g. peak_lr {lr:g}, "
        f"warmup {warmup}: seeds {sorted(got)}); finish it with `autowarm bench grid` "
        f"(it resumes where it stopped), {hint}"
    )


@dataclass(frozen=True)
class OracleTable:
    """The oracle of one task: the grid averaged over seeds, and its best cell.

    Attributes:
        task:
            Task name.
        total_steps:
            Run length of the grid's cells.
        cells:
            One row per (``peak_lr``, ``warmup_steps``): ``warmup_frac``, ``mean_val_loss``
            (``inf`` when any seed diverged), ``std_val_loss``, ``n_seeds``, ``n_diverged``,
            ``rel_to_best`` (the regret of that cell).
        best_peak_lr:
            Peak LR of the best cell.
        best_warmup_steps:
            Warmup steps of the best cell.
        best_loss:
            Mean final validation loss of the best cell.
        flatness:
            Number of cells within ``tolerance`` of the best loss (the best included).
        tolerance:
            The relative tolerance of :attr:`flatness`.
        edges:
            Where the best cell touches the grid's edge (``"lowest peak_lr"``, ``"highest
            peak_lr"``, ``"longest warmup"``); empty when it is inside. Warmup 0 is a natural
            bound, not an edge.
        heldout_regret:
            The grid's own seed noise, on the scale of :func:`regret`: each seed is scored
            with the cell that the *other* seeds rank best, and the mean of those losses is
            compared with :attr:`best_loss`. It is what a method would score that knew the
            grid but not the seed; a method's regret below it is within seed noise. ``nan``
            with fewer than two seeds, ``inf`` when such a cell diverged on its held-out seed.
    """

    task: str
    total_steps: int
    cells: pd.DataFrame
    best_peak_lr: float
    best_warmup_steps: int
    best_loss: float
    flatness: int
    tolerance: float
    edges: tuple[str, ...]
    heldout_regret: float = math.nan

    @property
    def n_cells(self) -> int:
        """Number of (peak LR, warmup) cells."""
        return len(self.cells)

    def pivot(self, value: str = "mean_val_loss") -> pd.DataFrame:
        """``value`` as a table: one row per peak LR, one column per warmup length."""
        return self.cells.pivot(index="peak_lr", columns="warmup_steps", values=value)

    def summary(self) -> dict[str, Any]:
        """The headline numbers as a JSON-ready dict."""
        return {
            "task": self.task,
            "total_steps": self.total_steps,
            "n_cells": self.n_cells,
            "min_seeds": int(self.cells["n_seeds"].min()),
            "best_peak_lr": self.best_peak_lr,
            "best_warmup_steps": self.best_warmup_steps,
            "best_warmup_frac": self.best_warmup_steps / self.total_steps,
            "best_loss": self.best_loss,
            "flatness": self.flatness,
            "n_diverged_cells": int((self.cells["n_diverged"] > 0).sum()),
            "edges": list(self.edges),
            "heldout_regret": self.heldout_regret,
        }


def oracle_table(
    grid: pd.DataFrame | str | os.PathLike[str],
    task: str,
    *,
    total_steps: int | None = None,
    tolerance: float = FLATNESS_TOLERANCE,
) -> OracleTable:
    """Average the grid over seeds for one task and find its best cell.

    Warns with :class:`GridEdgeWarning` when the best cell is at the lowest or highest peak LR
    or the longest warmup of the grid.

    Args:
        grid:
            The grid CSV path or its DataFrame (:func:`load_grid`).
        task:
            Task name.
        total_steps:
            Which run length to use when the CSV holds several for this task.
        tolerance:
            Relative tolerance of :attr:`OracleTable.flatness`.

    Raises:
        ValueError: If the grid has no rows for the task, several run lengths and no
            ``total_steps``, or no finite cell.
    """
    frame = load_grid(grid)
    rows = frame[frame["task"] == task]
    if rows.empty:
        have = ", ".join(sorted(frame["task"].unique()))
        raise ValueError(f"the grid has no rows for task={task!r}; it has: {have or 'nothing'}")
    lengths = sorted(int(x) for x in rows["total_steps"].unique())
    if total_steps is None and len(lengths) > 1:
        raise ValueError(
            f"task {task!r} has runs of several lengths {lengths}; pass total_steps=N "
            "(`--total-steps N` on the command line) to pick one"
        )
    steps = lengths[0] if total_steps is None else total_steps
    if steps not in lengths:
        raise ValueError(
            f"the grid has no runs of task {task!r} with total_steps={steps}; it has {lengths}"
        )
    rows = rows[rows["total_steps"] == steps]
    cells = _cells(rows)
    finite = cells[np.isfinite(cells["mean_val_loss"])]
    if finite.empty:
        raise ValueError(f"every cell of task {task!r} diverged; the grid needs smaller peak LRs")
    best = finite.loc[finite["mean_val_loss"].idxmin()]
    best_loss = float(best["mean_val_loss"])
    cells["rel_to_best"] = [regret(v, best_loss) for v in cells["mean_val_loss"]]
    table = OracleTable(
        task=task,
        total_steps=steps,
        cells=cells,
        best_peak_lr=float(best["peak_lr"]),
        best_warmup_steps=int(best["warmup_steps"]),
        best_loss=best_loss,
        flatness=int((cells["rel_to_best"] <= tolerance).sum()),
        tolerance=tolerance,
        edges=_edges(cells, float(best["peak_lr"]), int(best["warmup_steps"])),
        heldout_regret=_heldout_regret(rows, best_loss),
    )
    if table.edges:
        warnings.warn(
            f"the best oracle cell of task {task!r} (peak_lr={table.best_peak_lr:g}, "
            f"warmup_steps={table.best_warmup_steps}) is at the {' and '.join(table.edges)} "
            "of the grid; extend the grid there before trusting it",
            GridEdgeWarning,
            stacklevel=2,
        )
    return table


def _cells(rows: pd.DataFrame) -> pd.DataFrame:
    loss = rows["final_val_loss"].astype(float).where(~rows["diverged"], np.inf)
    grouped = rows.assign(loss=loss).groupby(["peak_lr", "warmup_steps"], as_index=False)
    cells = grouped.agg(
        warmup_frac=("warmup_frac", "first"),
        mean_val_loss=("loss", "mean"),
        std_val_loss=("loss", "std"),
        n_seeds=("seed", "nunique"),
        n_diverged=("diverged", "sum"),
    )
    cells["n_diverged"] = cells["n_diverged"].astype(int)
    return cells.sort_values(["peak_lr", "warmup_steps"], ignore_index=True)


def _heldout_regret(rows: pd.DataFrame, best_loss: float) -> float:
    # Per seed, the cell with the lowest mean loss over the other seeds, scored on that seed.
    # Only cells that every seed ran take part (a grid still running has gaps).
    loss = rows["final_val_loss"].astype(float).where(~rows["diverged"], np.inf)
    by_seed = rows.assign(loss=loss).pivot_table(
        index=["peak_lr", "warmup_steps"], columns="seed", values="loss", aggfunc="mean"
    )
    losses = by_seed.dropna().to_numpy(dtype=float)  # cells x seeds
    if losses.shape[1] < 2 or losses.shape[0] == 0:
        return math.nan
    scored = []
    for held in range(losses.shape[1]):
        others = np.delete(losses, held, axis=1).mean(axis=1)
        # (some cell is finite on every seed: oracle_table has a finite best cell)
        scored.append(losses[int(np.argmin(others)), held])
    return regret(float(np.mean(scored)), best_loss)


def _edges(cells: pd.DataFrame, best_lr: float, best_warmup: int) -> tuple[str, ...]:
    edges = []
    if len(cells["peak_lr"].unique()) > 1:
        if best_lr == cells["peak_lr"].min():
            edges.append("lowest peak_lr")
        if best_lr == cells["peak_lr"].max():
            edges.append("highest peak_lr")
    if best_warmup == cells["warmup_steps"].max() and len(cells["warmup_steps"].unique()) > 1:
        edges.append("longest warmup")
    return tuple(edges)


def oracle_tables(
    grid: pd.DataFrame | str | os.PathLike[str],
    *,
    total_steps: int | None = None,
    tolerance: float = FLATNESS_TOLERANCE,
) -> dict[str, OracleTable]:
    """:func:`oracle_table` for every task in the grid (one run length each).

    With ``total_steps``, only the runs of that length (and the tasks that have them).

    Raises:
        ValueError: If a task has several run lengths and no ``total_steps`` is given, or no
            task has runs of ``total_steps``.
    """
    frame = load_grid(grid)
    if total_steps is not None:
        have = sorted(int(x) for x in frame["total_steps"].unique())
        frame = frame[frame["total_steps"] == total_steps]
        if frame.empty:
            raise ValueError(f"the grid has no runs with total_steps={total_steps}; it has {have}")
    return {
        str(task): oracle_table(frame, str(task), total_steps=total_steps, tolerance=tolerance)
        for task in sorted(frame["task"].unique())
    }
