"""The oracle grid: every (peak LR, warmup, seed) cell of a task trained in full.

Each cell is one :func:`~autowarm.bench._run.run_schedule` with linear warmup from 0 and cosine
decay to 0. Cells run in worker processes (one torch thread each) and every finished cell is
appended to a CSV at once, so the grid is resumable: a second call skips the rows already there
and a kill loses only the cells that were running. :mod:`autowarm.bench._oracle` reads the CSV
back into the oracle table.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import fcntl
import functools
import importlib.metadata
import io
import json
import logging
import math
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from autowarm._config_io import atomic_write, file_in_the_way
from autowarm.bench._run import check_runnable, run_schedule
from autowarm.bench.tasks import BenchTask
from autowarm.schedules import ScheduleConfig

__all__ = ["COLUMNS", "GridCell", "GridResult", "grid_cells", "oracle_grid"]

_logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "task",
    "peak_lr",
    "warmup_steps",
    "warmup_frac",
    "total_steps",
    "seed",
    "final_val_loss",
    "diverged",
    "seconds",
    "seconds_per_step",
    "autowarm_version",
    "torch_version",
)
"""Columns of the grid CSV, in order."""

_Key = tuple[str, float, int, int, int]  # task, peak_lr, warmup_steps, total_steps, seed


@dataclass(frozen=True)
class GridCell:
    """One run of the grid: a task at one peak LR, warmup length and seed."""

    task: BenchTask
    peak_lr: float
    warmup_steps: int
    seed: int

    @property
    def key(self) -> _Key:
        """``(task name, peak_lr, warmup_steps, total_steps, seed)``, as the CSV stores it."""
        t = self.task
        return (t.name, float(self.peak_lr), int(self.warmup_steps), t.total_steps, self.seed)

    def schedule(self) -> ScheduleConfig:
        """Linear warmup from 0 to ``peak_lr``, then cosine decay to 0."""
        return ScheduleConfig(
            peak_lr=self.peak_lr,
            total_steps=self.task.total_steps,
            warmup_steps=self.warmup_steps,
            decay="cosine",
        )

    def label(self) -> str:
        return f"{self.task.name} lr={self.peak_lr:g} warmup={self.warmup_steps} seed={self.seed}"


@dataclass(frozen=True)
class GridResult:
    """What :func:`oracle_grid` did.

    Attributes:
        csv_path:
            The CSV holding every row (old and new).
        ran:
            Cells trained by this call.
        skipped:
            Cells already in the CSV, not trained again.
        failed:
            ``(cell label, error message)`` of cells that raised; they have no row, so the next
            call retries them.
    """

    csv_path: Path
    ran: int
    skipped: int
    failed: list[tuple[str, str]] = field(default_factory=list)


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive count or a list of ints, got {seeds}")
        return list(range(seeds))
    return [int(s) for s in seeds]


def grid_cells(
    tasks: BenchTask | Sequence[BenchTask],
    *,
    lrs: Sequence[float] | None = None,
    warmups: Sequence[int] | None = None,
    seeds: int | Sequence[int] = 2,
) -> list[GridCell]:
    """All cells of the grid, seed by seed (so a grid stopped half-way has whole seeds).

    Args:
        tasks:
            One task or several.
        lrs:
            Peak LRs; ``None`` for each task's ``lr_grid``.
        warmups:
            Warmup lengths in steps; ``None`` for each task's ``warmup_grid``.
        seeds:
            A count ``n`` (seeds ``0 .. n-1``) or explicit seeds.

    Raises:
        ValueError: If a warmup is negative or longer than a task's ``total_steps``, or an LR is
            not positive.
    """
    task_list = [tasks] if isinstance(tasks, BenchTask) else list(tasks)
    cells: list[GridCell] = []
    for seed in _seed_list(seeds):
        for task in task_list:
            task_lrs = task.lr_grid if lrs is None else tuple(float(x) for x in lrs)
            task_warmups = task.warmup_grid if warmups is None else tuple(int(w) for w in warmups)
            for w in task_warmups:
                if not 0 <= w <= task.total_steps:
                    raise ValueError(
                        f"warmups must lie in [0, total_steps={task.total_steps}] for task "
                        f"{task.name!r}, but got warmup={w}"
                    )
            if any(not (lr > 0 and math.isfinite(lr)) for lr in task_lrs):
                raise ValueError(f"lrs must be finite floats > 0, but got lrs={task_lrs!r}")
            cells += [GridCell(task, lr, w, seed) for lr in task_lrs for w in task_warmups]
    return cells


def versions() -> dict[str, str]:
    """The ``autowarm_version`` and ``torch_version`` a benchmark row records."""
    try:
        autowarm_version = importlib.metadata.version("autowarm")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        autowarm_version = "unknown"
    return {"autowarm_version": autowarm_version, "torch_version": torch.__version__}


def warn_other_versions(
    csv_path: Path,
    made: Iterable[tuple[str, str]],
    rows: str,
    now_doing: str,
    outcome: str,
    *,
    prefix: str = "",
) -> None:
    """Warn that ``csv_path`` holds ``rows`` made (``made``: their ``(autowarm, torch)``
    versions) by other versions than this run's, whose floating-point results differ (in the
    last digits, or more on a chaotic task): "{csv_path} holds {rows} made by ...; {now_doing}
    autowarm X with torch Y, so {outcome}"."""
    now = versions()
    other = set(made) - {(now["autowarm_version"], now["torch_version"])}
    if other:
        _logger.warning(
            "%s%s holds %s made by %s; %s autowarm %s with torch %s, so %s",
            prefix,
            csv_path,
            rows,
            ", ".join(f"autowarm {a} with torch {t}" for a, t in sorted(other)),
            now_doing,
            now["autowarm_version"],
            now["torch_version"],
            outcome,
        )


def _warn_other_versions(
    csv_path: Path, todo: list[GridCell], rows: dict[_Key, tuple[str, str]]
) -> None:
    # Rows of these tasks made with another autowarm or torch: the grid will mix versions.
    if not todo:
        return
    tasks = {c.task.name for c in todo}
    warn_other_versions(
        csv_path,
        (made for key, made in rows.items() if key[0] in tasks),
        "rows of these tasks",
        f"the {len(todo)} cells to run now use",
        "the grid will mix versions (write to another --out for a grid of one version)",
        prefix="grid: ",
    )


def _run_cell(cell: GridCell) -> dict[str, Any]:
    result = run_schedule(cell.task, cell.schedule(), cell.seed)
    return {
        "task": cell.task.name,
        "peak_lr": float(cell.peak_lr),
        "warmup_steps": int(cell.warmup_steps),
        "warmup_frac": cell.warmup_steps / cell.task.total_steps,
        "total_steps": cell.task.total_steps,
        "seed": cell.seed,
        "final_val_loss": result.final_val_loss,
        "diverged": result.diverged,
        "seconds": round(result.seconds, 4),
        "seconds_per_step": result.seconds_per_step,
        **versions(),
    }


def _init_worker(main_pid: int | None = None) -> None:
    # One thread per cell: the cells are the parallelism, and tiny models gain nothing from more.
    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)
    if main_pid is not None:
        threading.Thread(
            target=_exit_with, args=(main_pid,), name="autowarm-orphan-watch", daemon=True
        ).start()


def _exit_with(main_pid: int, interval: float = 1.0) -> None:
    # A worker outlives a main process killed by SIGTERM or SIGKILL (a job scheduler's
    # preemption, `timeout`): it is a child of the forkserver, not of the main process, so no
    # signal reaches it. It ends itself once the main process is gone; its cell is lost, as
    # the main process could not have written it anyway, and the next run computes it again.
    while True:
        time.sleep(interval)
        try:
            os.kill(main_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass


def _existing_rows(csv_path: Path) -> dict[_Key, tuple[str, str]]:
    # The finished rows' keys, each with the (autowarm, torch) versions that made it.
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return {}
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(
                f"{csv_path} has columns {reader.fieldnames}, but a grid CSV has {list(COLUMNS)}; "
                "pass a new csv_path (or move the old file away)"
            )
        rows = {}
        for row in reader:
            key = _parse_key(row)
            if key is not None:
                rows[key] = (str(row["autowarm_version"]), str(row["torch_version"]))
        return rows


def _parse_key(row: dict[str, str | None]) -> _Key | None:
    # A row cut short by a kill mid-write has empty fields: skip it, so the cell runs again.
    if any(not row.get(name) for name in COLUMNS):
        return None
    try:
        return (
            str(row["task"]),
            float(str(row["peak_lr"])),
            int(str(row["warmup_steps"])),
            int(str(row["total_steps"])),
            int(str(row["seed"])),
        )
    except ValueError:
        return None


class RowAppender:
    """Appends rows to a CSV of ``columns``: open, append, flush and fsync, close, per row.

    Reopening by path for every row (cheap next to a run of seconds) means a CSV that something
    else replaces while the run goes on (a ``git checkout`` or ``git stash`` of the file) still
    gets every later row, instead of an unlinked file that vanishes with the process. Rows that
    the replacement dropped are simply run again by the next call.

    A new file gets the header. A last line without a line end (a row cut short by a kill) is
    ended with one (its reader skips it if a field is missing), or with ``drop_partial=True``
    cut off the file, for a reader that could take a cut row for a finished one.
    """

    def __init__(
        self,
        csv_path: Path,
        columns: Sequence[str],
        *,
        drop_partial: bool = False,
        header: Sequence[str] | None = None,
    ) -> None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        self._path = csv_path
        # an existing file's own header (a subset of ``columns``, from an older writer): its
        # rows are written with those columns only, so the file keeps one shape
        self._columns = list(header) if header is not None else list(columns)
        self._extras: Literal["raise", "ignore"] = "raise" if header is None else "ignore"
        self._drop_partial = drop_partial
        self._prepare()

    def _prepare(self) -> None:
        path = self._path
        if self._drop_partial:
            cut_partial_row(path)
        if not path.exists() or path.stat().st_size == 0:
            with path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns, lineterminator="\n").writeheader()
            return
        with path.open("rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) not in (b"\n", b"\r"):
                f.write(b"\n")  # end the cut row, which the reader then skips

    def write(self, row: dict[str, Any]) -> None:
        self._prepare()
        with self._path.open("a", newline="") as f:
            csv.DictWriter(
                f, fieldnames=self._columns, lineterminator="\n", extrasaction=self._extras
            ).writerow(row)
            f.flush()
            os.fsync(f.fileno())


def cut_partial_row(path: Path) -> str:
    """Cut the last line of ``path`` off when it has no line end: a row cut short by a kill
    mid-write, whose last field may look whole. Returns what was cut (``""``: nothing, or no
    file)."""
    try:
        with path.open("rb+") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return ""
            f.seek(-1, os.SEEK_END)
            if f.read(1) in (b"\n", b"\r"):
                return ""
            f.seek(0)
            data = f.read()
            keep = data.rfind(b"\n") + 1
            f.truncate(keep)
            return data[keep:].decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def oracle_grid(
    tasks: BenchTask | Sequence[BenchTask],
    *,
    csv_path: str | os.PathLike[str],
    lrs: Sequence[float] | None = None,
    warmups: Sequence[int] | None = None,
    seeds: int | Sequence[int] = 2,
    workers: int = 1,
) -> GridResult:
    """Train every (peak LR, warmup, seed) cell in full and append one CSV row per cell.

    Cells already in ``csv_path`` (same task, peak LR, warmup, total steps and seed) are
    skipped, so calling again after a kill resumes the grid. Each cell trains with linear
    warmup from 0 and cosine decay to 0 (:meth:`GridCell.schedule`).

    Args:
        tasks:
            One task or several (one pool serves them all).
        csv_path:
            The CSV to append to (created with a header if missing); columns :data:`COLUMNS`.
        lrs:
            Peak LRs; ``None`` for each task's ``lr_grid``.
        warmups:
            Warmup lengths in steps; ``None`` for each task's ``warmup_grid``.
        seeds:
            A count ``n`` (seeds ``0 .. n-1``) or explicit seeds.
        workers:
            Worker processes (``forkserver`` where available, else ``spawn``), one torch
            thread each; ``0`` runs the cells in this process, one after another.

    Returns:
        A :class:`GridResult` with the counts of cells run, skipped and failed.

    Raises:
        ValueError: If ``workers`` is negative, or the CSV has other columns.
    """
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, but got workers={workers!r}")
    path = Path(csv_path)
    check_csv_target(path, COLUMNS, "grid")
    task_list = [tasks] if isinstance(tasks, BenchTask) else list(tasks)
    check_distinct_names(task_list)
    cells = grid_cells(task_list, lrs=lrs, warmups=warmups, seeds=seeds)
    with writing_alone(path):
        # under the lock: a run refused because another one holds it writes no record
        check_definitions(path, task_list)
        # cut before the rows are read: read as done, the row would then be cut off by the
        # appender below all the same, and its cell never run again
        cut = cut_partial_row(path)
        if cut:
            _logger.warning(
                "grid: %s: dropping its last row, cut short (no line end; it runs again): %r",
                path,
                cut,
            )
        done = _existing_rows(path)
        todo = [c for c in cells if c.key not in done]
        for task in {c.task.name: c.task for c in todo}.values():
            check_runnable(task)  # a broken task: one error now, not one per cell
        record_plan(path, cells)  # after the checks: a refused run asked for nothing
        skipped = len(cells) - len(todo)
        _logger.info(
            "grid: %d cells, %d already in %s, %d to run", len(cells), skipped, path, len(todo)
        )
        _warn_other_versions(path, todo, done)
        # a row cut by a kill while this run goes on (the CSV replaced mid-way) is cut off the
        # file (its cell runs again), not kept and warned about by every later table and regret
        failed = _run_cells(todo, RowAppender(path, COLUMNS, drop_partial=True), workers)
    return GridResult(path, ran=len(todo) - len(failed), skipped=skipped, failed=failed)


def process_pool(workers: int) -> cf.ProcessPoolExecutor:
    """Worker processes for full runs: ``forkserver`` where available, one torch thread each."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return cf.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
    )


@contextlib.contextmanager
def writing_alone(csv_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``csv_path`` (made if missing) while a grid or an evaluation
    appends to it: a second process on the same CSV would run every cell again beside the
    first, writing each row twice.

    Raises:
        ValueError: If another process holds it.
    """
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    made = not csv_path.exists()
    with open(csv_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"another process is writing {csv_path} (an `autowarm bench` run on the same "
                "CSV): wait for it to finish, or pass another --out"
            ) from None
        try:
            same = os.stat(csv_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # removed by a run that ended as this one opened it: its rows go nowhere
            fcntl.flock(handle, fcntl.LOCK_UN)
            raise ValueError(
                f"{csv_path} was removed as this run opened it (another `autowarm bench` run "
                "on it ended): run the command again"
            )
        try:
            yield
        finally:
            if made and csv_path.exists() and csv_path.stat().st_size == 0:
                # made for the lock, and no row came: a refused or failed run leaves no
                # empty CSV that later commands call "empty"
                csv_path.unlink()
            fcntl.flock(handle, fcntl.LOCK_UN)


# what each kind of benchmark CSV is, as an error names it: "it is not <this>"
_CSV_KINDS = {
    "grid": "an oracle grid CSV written by `autowarm bench`",
    "evaluation": "an evaluation CSV written by `autowarm bench eval`",
    "study": "a study CSV written by `autowarm bench study`",
    "ranks": "a ranks CSV written by `autowarm bench ranks`",
}


def check_csv_target(path: Path, columns: Sequence[str], kind: str) -> None:
    """Refuse a CSV path a benchmark command cannot append to (or read), before anything is
    written beside it: under a file (``--out`` naming a file), a folder, or an existing file
    that is not such a CSV (other columns, not text).

    Args:
        path: the CSV.
        columns: the columns its header must hold (all of them).
        kind: ``"grid"``, ``"evaluation"``, ``"study"`` or ``"ranks"``, for the message.

    Raises:
        ValueError: saying what the path is and what to pass.
    """
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise ValueError(
            f"{blocking} is a file, not a folder: --out takes the folder of the {kind} CSV"
            + (" (or --csv its path)" if kind == "grid" else "")
        )
    if path.is_dir():
        raise ValueError(f"{path} is a folder: the {kind} CSV must be a file path")
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb") as f:
        first = f.readline()
    try:
        header = next(csv.reader([first.decode("utf-8")]), [])
    except UnicodeDecodeError:
        header = None
    absent = None if header is None else [c for c in columns if c not in header]
    if header is None or absent:
        what = "is not a text file" if header is None else f"lacks the columns {absent}"
        raise ValueError(
            f"{path} {what}: it is not {_CSV_KINDS[kind]}; pass another --out"
            + (" (or --csv)" if kind == "grid" else "")
            + ", or move the file away"
        )


def read_rows(
    csv_path: str | os.PathLike[str], columns: Sequence[str], optional: Sequence[str] = ()
) -> pd.DataFrame:
    """The finished rows of a CSV that :class:`RowAppender` appends to, without a row cut
    short by a kill mid-append.

    A last line without its line terminator, and any row whose fields of ``columns`` but
    ``optional`` are empty (a cut row that a later append terminated), is dropped with a
    warning: its job runs again. A file without rows gives an empty frame of ``columns``.
    """
    path = Path(csv_path)
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith(("\n", "\r")):
        cut = text[text.rfind("\n") + 1 :]
        _logger.warning("%s: dropping its last row, cut short (no line end): %r", path, cut)
        text = text[: len(text) - len(cut)]
    frame = pd.read_csv(io.StringIO(text)) if text.strip() else pd.DataFrame(columns=list(columns))
    required = [c for c in columns if c in frame.columns and c not in optional]
    incomplete = frame[required].isna().any(axis=1)
    if incomplete.any():
        lines = [int(i) + 2 for i in frame.index[incomplete]]  # 1-based, after the header
        _logger.warning(
            "%s: dropping incomplete row(s) on line(s) %s; they run again", path, lines
        )
        frame = frame[~incomplete].reset_index(drop=True)
    return frame


def check_distinct_names(tasks: Sequence[BenchTask]) -> None:
    """Refuse two tasks of one name in one command: their rows would share keys (each cell
    run and written twice, or two tasks averaged as one).

    Raises:
        ValueError: naming the task and where each came from.
    """
    seen: dict[str, BenchTask] = {}
    for task in tasks:
        if task.name not in seen:
            seen[task.name] = task
        else:
            first = seen[task.name]
            where = [getattr(t, "spec", "") or t.name for t in (first, task)]
            same = where[0] == where[1]
            raise ValueError(
                f"task {task.name!r} is given twice"
                + (" (the same task)" if same else f" ({where[0]} and {where[1]})")
                + ": its rows are keyed by that name, so "
                + (
                    "pass it once"
                    if same
                    else "give one of them another file name, or run them with another --out"
                )
            )


def plan_path(csv_path: Path) -> Path:
    """The file beside a grid CSV that records every cell a grid command was asked to run."""
    return csv_path.with_name(csv_path.name + ".plan.json")


def _cell_key(peak_lr: float, warmup: float, seed: float) -> tuple[float, int, int]:
    # 12 significant digits: an LR read back from the CSV or the record matches the cell's
    return (float(f"{float(peak_lr):.12g}"), int(warmup), int(seed))


def _read_record(record: Path, unreadable: str) -> Any:
    # A JSON record beside a CSV (its plan, its task definitions): None when there is none,
    # else its content; `unreadable` ends the error raised for a file that does not parse.
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as exc:
        raise ValueError(f"{record} is not readable ({exc}); {unreadable}") from None


def read_plan(csv_path: Path) -> dict[str, dict[str, list[list[float]]]]:
    """The record of the runs asked of the grid at ``csv_path`` (:func:`record_plan`), per
    task and run length; ``{}`` without one."""
    plan = _read_record(
        plan_path(csv_path),
        f"it records the cells asked of {csv_path.name}: delete it to check the grid's "
        "completeness no more",
    )
    return plan if isinstance(plan, dict) else {}


def record_plan(csv_path: Path, cells: Sequence[GridCell]) -> None:
    """Add ``cells`` to the record of the cells asked of the grid at ``csv_path`` (per task
    and run length: ``[peak_lr, warmup_steps, seed]``), so that a table or a regret can tell
    a finished grid from one stopped or failed part-way (:func:`missing_cells`)."""
    plan = read_plan(csv_path)
    for c in cells:
        runs = plan.setdefault(c.task.name, {}).setdefault(str(c.task.total_steps), [])
        runs.append(list(_cell_key(c.peak_lr, c.warmup_steps, c.seed)))
    for by_length in plan.values():
        for length, runs in by_length.items():
            by_length[length] = [list(k) for k in sorted({_cell_key(*r) for r in runs})]
    atomic_write(plan_path(csv_path), json.dumps(plan, sort_keys=True) + "\n")


def missing_cells(
    plan: dict[str, dict[str, list[list[float]]]],
    rows: Any,
    task: str,
    steps: int,
    seeds: Sequence[int],
) -> list[tuple[float, int, int]]:
    """The runs of ``task`` at ``steps`` and ``seeds`` that a grid command was asked for
    (``plan``, from :func:`read_plan`) but that have no row in ``rows`` (the grid's rows of
    that task and length): stopped before them, or failed. ``[]`` without a record (older
    grids)."""
    asked = plan.get(task, {}).get(str(steps), [])
    wanted = {_cell_key(*r) for r in asked if int(r[2]) in set(seeds)}
    have = {
        _cell_key(lr, w, s)
        for lr, w, s in zip(rows["peak_lr"], rows["warmup_steps"], rows["seed"], strict=True)
    }
    return sorted(wanted - have)


def incomplete_tasks(csv_path: Path, rows: Any) -> list[str]:
    """One sentence per task and run length of the grid at ``csv_path`` whose asked-for runs
    (:func:`record_plan`) are not all in ``rows`` (the grid's rows)."""
    out = []
    plan = read_plan(csv_path)
    for task, by_length in sorted(plan.items()):
        for length, asked in sorted(by_length.items()):
            steps = int(length)
            mine = rows[(rows["task"] == task) & (rows["total_steps"] == steps)]
            seeds = sorted({int(r[2]) for r in asked})
            absent = missing_cells(plan, mine, task, steps, seeds)
            if absent:
                out.append(
                    f"the grid of task {task!r} ({steps} steps) is incomplete: {len(absent)} "
                    f"of the {len(asked)} runs asked of it have no row (stopped before them, "
                    "or failed); the same `autowarm bench grid` command finishes it, or "
                    f"deleting {plan_path(csv_path)} gives them up"
                )
    return out


def definitions_path(csv_path: Path) -> Path:
    """The file beside a grid or evaluation CSV that records its tasks' definitions."""
    return csv_path.with_name(csv_path.name + ".tasks.json")


def read_definitions(csv_path: Path) -> dict[str, Any]:
    """The task definitions recorded beside ``csv_path`` (``{}`` when there is no record).

    Raises:
        ValueError: If the record exists but cannot be read.
    """
    record_path = definitions_path(csv_path)
    recorded = _read_record(
        record_path,
        f"it records the task definitions of {csv_path.name}: restore it, or delete it to take "
        "the current definitions",
    )
    if recorded is None:
        return {}
    if not isinstance(recorded, dict):
        raise ValueError(
            f"{record_path} does not hold a JSON object of task definitions; restore it, or "
            "delete it to take the current definitions"
        )
    return recorded


def check_same_tasks(
    eval_csv: Path, grid_csv: Path, tasks: Iterable[str], *, kind: str = "evaluation"
) -> None:
    """Refuse to compare an evaluation (or a study's or ranks' rows: ``kind``) with a grid made
    from another definition of a task (a model, loss or setting changed between the two
    commands), by the records beside them.

    Raises:
        ValueError: naming the task and the parts that differ.
    """
    ev, grid = read_definitions(eval_csv), read_definitions(grid_csv)
    for name in tasks:
        if name in ev and name in grid:
            parts = differing_parts(grid[name], ev[name])
            if parts:
                raise ValueError(
                    f"task {name!r} of {eval_csv} was run with another definition than its "
                    f"oracle grid in {grid_csv} (its {', '.join(parts)}: "
                    f"{_pick(grid[name], parts)} in the grid, {_pick(ev[name], parts)} in the "
                    f"{kind}): run the grid and the {kind} of one definition"
                )


def check_grid_complete(
    plan: dict[str, dict[str, list[list[float]]]],
    rows: Any,
    task: str,
    steps: int,
    seeds: Sequence[int],
    grid_csv: Path,
) -> None:
    """Refuse a grid of which some runs of ``task`` at ``steps`` and ``seeds`` asked of it
    (``plan``, :func:`read_plan`) have no row in ``rows`` (its rows of that task and length):
    stopped before them, or failed (:func:`missing_cells`).

    Raises:
        ValueError: naming one missing run, how many there are, and the two ways out.
    """
    not_run = missing_cells(plan, rows, task, steps, seeds)
    if not_run:
        lr, warmup, seed = not_run[0]
        raise ValueError(
            f"the grid of task {task!r} ({steps} steps) is incomplete: {len(not_run)} of "
            f"the runs asked of it at seeds {list(seeds)} have no row (e.g. peak_lr {lr:g}, "
            f"warmup {warmup}, seed {seed}), stopped before them or failed: finish it "
            "with the same `autowarm bench grid` command (it resumes where it stopped), "
            f"or, to give those runs up, delete {plan_path(grid_csv)} (the record "
            "of what the grid commands asked)"
        )


def check_definitions(csv_path: Path, tasks: Iterable[BenchTask]) -> None:
    """Refuse to resume ``csv_path`` for a task whose definition (:meth:`BenchTask.definition`)
    differs from the one its rows were written with; record the definitions of new tasks.

    Rows key on the task's name, LR, warmup, length and seed only: without this, a task whose
    model or optimizer settings were edited would resume on the old definition's rows.
    A task without rows in the CSV (a first run whose every cell failed, a CSV deleted or
    moved) takes its current definition, as does a CSV written before this record existed.

    Raises:
        ValueError: If a task's definition changed; the message says which parts.
    """
    record_path = definitions_path(csv_path)
    recorded = read_definitions(csv_path)
    changed = False
    with_rows: set[str] | None = None  # read from the CSV only when a definition differs
    for task in tasks:
        now = json.loads(json.dumps(task.definition()))  # as stored: tuples become lists
        then = recorded.get(task.name)
        differ = [] if then is None else differing_parts(then, now)
        if differ and with_rows is None:
            with_rows = _task_names_in(csv_path)
        if then is None or (differ and task.name not in (with_rows or set())):
            recorded[task.name], changed = now, True
        elif differ:
            raise ValueError(
                f"task {task.name!r} has changed since its rows in {csv_path} were written "
                f"(its {', '.join(differ)}: {_pick(then, differ)} then, {_pick(now, differ)} "
                f"now): its old rows would be resumed as this task's. Write to another CSV "
                f"(--out or --csv), or move {csv_path.name} and {record_path.name} away"
            )
        else:
            _warn_other_file(task.name, then, now, csv_path)
            if any(k not in then for k in now):  # parts recorded since: added, not compared
                recorded[task.name], changed = {**now, **then}, True
    if changed:
        atomic_write(record_path, json.dumps(recorded, indent=1, sort_keys=True) + "\n")


def differing_parts(then: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The parts of two task definitions that differ, among those both record (a part
    recorded by a later version is not held against an older record), the task file aside."""
    return sorted(k for k in then.keys() & now.keys() if k != "file" and then[k] != now[k])


def _warn_other_file(name: str, then: dict[str, Any], now: dict[str, Any], csv: Path) -> None:
    # Two files of one name (task.py:task in two folders) read alike; their rows would mix.
    if then.get("file") and now.get("file") and then["file"] != now["file"]:
        warnings.warn(
            f"task {name!r} was loaded from {now['file']}, but the rows of {name!r} in {csv} "
            f"were written from {then['file']}: if that is another task, write to another "
            "CSV (--out or --csv), or its rows will be resumed and averaged as this one's",
            UserWarning,
            stacklevel=3,
        )


def _task_names_in(csv_path: Path) -> set[str]:
    # The tasks that have rows in a grid or evaluation CSV (its "task" column).
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            return {row["task"] for row in csv.DictReader(f) if row.get("task")}
    except (FileNotFoundError, KeyError):
        return set()


def _pick(record: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    return {k: record.get(k) for k in keys}


def stop_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Stop ``pool`` now: cancel the jobs not started and end the worker processes.

    For an interrupt (Ctrl-C, or SIGINT to the main process alone): without it the workers
    would finish their running jobs, whose rows nobody writes any more, before the process
    could exit (the executor's exit handler waits for them). Their cells run again on resume.
    """
    # ProcessPoolExecutor keeps its processes in _processes (CPython 3.8 to 3.14), which
    # shutdown() clears: read it first. Without it the workers still end themselves once this
    # process is gone (_exit_with).
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()


@contextlib.contextmanager
def running_pool(workers: int) -> Iterator[cf.ProcessPoolExecutor]:
    """:func:`process_pool` for a ``with`` block: shut down when the block ends, or stopped at
    once (:func:`stop_pool`) when it ends by an exception or an interrupt."""
    pool = process_pool(workers)
    try:
        yield pool
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown()


def _run_cells(todo: list[GridCell], writer: RowAppender, workers: int) -> list[tuple[str, str]]:
    progress = _Progress(len(todo))

    def write(row: dict[str, Any], cell: GridCell) -> None:
        writer.write(row)
        progress.tick(cell, row)

    return run_jobs(_run_cell, [(c,) for c in todo], write, workers, "grid", GridCell.label)


def run_jobs(
    run_one: Callable[..., dict[str, Any]],
    jobs: Sequence[tuple[Any, ...]],
    write: Callable[..., None],
    workers: int,
    kind: str,
    label: Callable[..., str],
) -> list[tuple[str, str]]:
    """``run_one(*job)`` for each job, each row passed to ``write(row, *job)`` as it comes: in
    this process, one after another, for ``workers=0``; else in that many worker processes
    (``run_one`` must pickle). A job that raises is logged and left out (it has no row, so the
    next run retries it); returns those as ``(label(*job), "ErrorType: message")``. The grid,
    the evaluation, the study and the ranks all run their jobs through this."""
    failed: list[tuple[str, str]] = []

    def finish(job: tuple[Any, ...], get: Callable[[], dict[str, Any]]) -> None:
        try:
            row = get()
        except Exception as exc:  # one failed job must not lose the others' rows
            failed.append((label(*job), f"{type(exc).__name__}: {exc}"))
            _logger.error("%s: %s failed: %s: %s", kind, label(*job), type(exc).__name__, exc)
            return
        write(row, *job)

    if workers <= 0:
        for job in jobs:
            finish(job, functools.partial(run_one, *job))
        return failed
    # Ctrl-C stops the workers now, not after the running jobs (whose rows are lost)
    with running_pool(workers) as pool:
        futures = {pool.submit(run_one, *job): job for job in jobs}
        for fut in cf.as_completed(futures):
            finish(futures[fut], fut.result)
    return failed


class _Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.monotonic()

    def tick(self, cell: GridCell, row: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        loss = row["final_val_loss"]
        shown = "diverged" if row["diverged"] or not math.isfinite(loss) else f"val={loss:.4f}"
        _logger.info(
            "grid %d/%d (%.0f s, eta %.0f s): %s %s in %.1f s",
            self.done,
            self.total,
            elapsed,
            eta,
            cell.label(),
            shown,
            row["seconds"],
        )
