"""``autowarm.report()``: a probe's or a study's morning report: tables, figures, files."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from autowarm._config_io import atomic_write, file_in_the_way
from autowarm.reporting import _render
from autowarm.reporting._figures import FigureData

if TYPE_CHECKING:
    import matplotlib.figure
    import optuna

    from autowarm._suggest import Suggestion

_MANIFEST = ".autowarm-report.json"


@dataclass(frozen=True)
class Report:
    """What a report shows, computed; :meth:`write` puts it on disk.

    Attributes:
        title: the page's title.
        status: ``"probe"`` (a suggestion alone), ``"complete"``, ``"running"`` (trials or
            full-length confirmations still marked running: running, or interrupted) or
            ``"incomplete"`` (stopped short, or its full-length confirmations stopped) or
            ``"no_result"`` (every trial ended without a value: diverged, pruned or failed).
        status_text: the status in a sentence, shown at the top of the page.
        tables: table name to DataFrame: ``summary``, ``comparison``, ``trials``, ``trace``,
            ``signals``, ``regret`` (those that apply), in page order.
        figures: figure name to :class:`FigureData` (the data each PNG is drawn from).
        notes: what the report could not show and why, one sentence each.
        rationale: the probe's rationale paragraph, when there was a probe.
        rationale_title: the heading above it (a study's report says that it is the probe's
            reasoning, not the study's choice).
    """

    title: str
    status: str
    status_text: str
    tables: Mapping[str, pd.DataFrame]
    figures: Mapping[str, FigureData]
    notes: tuple[str, ...] = ()
    rationale: str = field(default="", repr=False)
    rationale_title: str = "Why"

    @property
    def running(self) -> bool:
        """True when the study may still be running (or was interrupted mid-trial)."""
        return self.status == "running"

    @property
    def summary(self) -> pd.Series:
        """The one row of the ``summary`` table."""
        return self.tables["summary"].iloc[0]

    def figure(self, name: str) -> matplotlib.figure.Figure:
        """Figure ``name`` drawn with matplotlib (needs the ``plot`` extra)."""
        from autowarm.reporting._draw import draw

        if name not in self.figures:
            raise KeyError(f"no figure {name!r}; this report has: {', '.join(self.figures)}")
        fig: matplotlib.figure.Figure = draw(self.figures[name])
        return fig

    def to_markdown(self) -> str:
        """``report.md``: the page, figures referenced as ``NAME.png`` beside it."""
        return _render.to_markdown(
            self.title,
            self.status_text,
            self.notes,
            self.rationale,
            self.tables,
            self.figures,
            self.rationale_title,
        )

    def to_html(self) -> str:
        """``report.html``: the page with every figure embedded (needs matplotlib)."""
        return self._html(self._pngs())

    def _html(self, pngs: Mapping[str, tuple[FigureData, bytes]]) -> str:
        return _render.to_html(
            self.title,
            self.status,
            self.status_text,
            self.notes,
            self.rationale,
            self.tables,
            pngs,
            self.rationale_title,
        )

    def _pngs(self) -> dict[str, tuple[FigureData, bytes]]:
        from autowarm.reporting._draw import png_bytes

        return {name: (f, png_bytes(f)) for name, f in self.figures.items()}

    def write(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Write ``report.md``, ``report.html``, ``NAME.csv`` per table and ``NAME.png`` per
        figure into ``out_dir`` (created if needed).

        Each file is written to a temporary name and renamed, so a reader never sees half a
        file. Other files in ``out_dir`` are left alone, except those an earlier report wrote
        there (listed in ``.autowarm-report.json``): this one replaces them, and removes
        those it no longer has.

        Returns:
            The paths written, ``report.html`` first.

        Raises:
            NotADirectoryError: ``out_dir`` is a file, or a file stands where one of its
                parent folders should be.
            FileExistsError: a file this report would write is already in ``out_dir`` and was
                not written there by a report, or a folder has its name (the message names
                them); nothing is written.
            ImportError: matplotlib is not installed; nothing is written.
        """
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"the output must be a folder, but {out} is a file")
        blocking = file_in_the_way(out)
        if blocking is not None:
            raise NotADirectoryError(f"{out} cannot be made: {blocking} is a file, not a folder")
        names = {
            "report.html",
            "report.md",
            *(f"{name}.csv" for name in self.tables),
            *(f"{name}.png" for name in self.figures),
        }
        refuse_others(out, names)
        pngs = self._pngs()  # first: a missing matplotlib fails before anything is written
        out.mkdir(parents=True, exist_ok=True)
        # The pages last: a write cut short (a full disk, Ctrl-C) leaves the earlier report's
        # pages, never a new page beside the earlier report's figures.
        files: dict[str, bytes] = {}
        for name, frame in self.tables.items():
            files[f"{name}.csv"] = frame.to_csv(index=False).encode("utf-8")
        for name, (_, png) in pngs.items():
            files[f"{name}.png"] = png
        files["report.md"] = self.to_markdown().encode("utf-8")
        files["report.html"] = self._html(pngs).encode("utf-8")
        # Claimed before a file is written, so a write cut short (a full disk, Ctrl-C) leaves
        # files the next run knows as its own, not a folder it refuses.
        claimed = sorted((_owned(out) | set(files)) - {_MANIFEST})
        atomic_write(out / _MANIFEST, (json.dumps(claimed, indent=1) + "\n").encode())
        paths = [atomic_write(out / name, data) for name, data in files.items()]
        _forget_stale(out, set(files))
        atomic_write(out / _MANIFEST, (json.dumps(sorted(files), indent=1) + "\n").encode())
        return [paths[-1], *paths[:-1]]  # report.html first


def _owned(out: Path) -> set[str]:
    # The plain file names an earlier report listed as its own in this folder (none when the
    # list is missing or unreadable).
    try:
        previous = json.loads((out / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(previous, list):
        return set()
    return {n for n in previous if isinstance(n, str) and n and Path(n).name == n}


def refuse_others(out: Path, names: set[str]) -> None:
    """Raise :class:`FileExistsError` when ``out`` holds a file of one of ``names`` that no
    report wrote there (not in its manifest): someone else's, never to be replaced."""
    if not out.is_dir():
        return
    folders = sorted(n for n in names if (out / n).is_dir())
    if folders:
        # found before anything is written, not half-way through the files
        raise FileExistsError(
            f"{out} has folders named {', '.join(folders)}, where this report writes files: "
            "write it into another folder, or move those folders first"
        )
    owned = _owned(out)
    clash = sorted(n for n in names if n not in owned and os.path.lexists(out / n))
    if clash:
        raise FileExistsError(
            f"{out} already has {', '.join(clash)}, which an autowarm report did not write "
            f"there (they are not listed in its {_MANIFEST}), and this report would replace "
            "them: write it into another folder, or move or remove those files first"
        )


def _forget_stale(out: Path, current: set[str]) -> None:
    # Only files a previous report listed as its own, and only plain names in this folder.
    for name in _owned(out) - current:
        (out / name).unlink(missing_ok=True)


def report(
    source: Suggestion | str | os.PathLike[str] | optuna.Study | tuple[str, str],
    *,
    benchmark: str | os.PathLike[str] | None = None,
    task: str | None = None,
) -> Report:
    """The report of a probe or of a study.

    Args:
        source: a :class:`~autowarm.Suggestion`, the path of a suggestion JSON (as written by
            ``Suggestion.save`` or ``autowarm demo``), an ``optuna.Study``, or a
            ``(storage_url, study_name)`` pair. A study has one objective, minimised (as
            ``autowarm tune`` writes it) or maximised: "best" follows its direction.
        benchmark: the benchmark folder (``reports/benchmark``, with ``oracle_grid.csv``) or
            the grid CSV, to add the ``regret`` table.
        task: the benchmark task the suggestion was probed on (a study says its own, as
            ``autowarm.task = "bench:NAME"``).

    Returns:
        A :class:`Report`. Tables (plain float, int and str columns):

        - ``summary`` (one row): ``source``, ``name``, ``status``, ``chosen_by``,
          ``chosen_trial`` (the number of the study trial whose schedule the row shows),
          ``warmup_steps``, ``warmup_frac``, ``peak_lr``, ``decay``, ``min_lr``,
          ``total_steps``, ``probe_steps``, ``probe_wall_seconds``, ``deciding_signal``,
          ``confidence``, ``low_confidence_reasons``, ``warmup_steps_low/high`` and
          ``peak_lr_low/high`` (the span of trials within ``range_rule`` of the best value;
          for a probe alone, or with an empty ``range_rule`` when no trial has completed or
          the best value is 0, unknown: -1 for the warmups, NaN for the LRs),
          ``n_trials`` (every trial in the study: the sum of ``n_complete``, ``n_pruned``,
          ``n_failed``, ``n_running`` and ``n_waiting``, the trials queued and not started),
          ``best_value`` (the best value of a completed trial, the lowest or, in a study
          that maximises, the highest: a compressed run's, in an autowarm study),
          ``chosen_full_value`` (the chosen trial's value at full length, when its schedule
          was confirmed there, else NaN), ``metric`` (what the values measure, on which
          scale). The chosen trial is the best confirmed at full length
          when the study confirmed any, so it may not be the trial of ``best_value``. An
          unknown int is -1, an unknown float NaN.
        - ``comparison``: ``label`` (``probe``, ``no_warmup``,
          ``untuned_2_over_1_minus_beta2``, ``ten_percent``, ``best``: the chosen trial),
          ``description``, ``trial``, ``state``, ``peak_lr``, ``warmup_steps``,
          ``warmup_frac``, ``value``, ``vs_best`` (``(value - best_value) / |best_value|``,
          on the trials' own scale, negated in a study that maximises: 0.01 is 1% worse than
          the best, whatever the values' sign; NaN when the best value is 0).
        - ``trials`` (studies): the columns of ``TuneResult.trials`` (``number``, ``state``
          in lower case, ``value``, ``role``, ``peak_lr``, ``warmup_steps``, ``decay``,
          ``min_lr``, ``trial_steps``, ``trial_warmup_steps``, ``duration_s``, ``reason``,
          ``retry_of``, ``worker``, ``full_value``, ``also_roles``), then ``warmup_frac``,
          ``datetime_start``, ``datetime_complete``, ``last_step``,
          ``last_intermediate_value`` and ``param_NAME`` per sampled parameter.
        - ``trace`` and ``signals``: the probe's :attr:`Suggestion.trace` and
          :attr:`Suggestion.signals`, as they are.
        - ``regret`` (with ``benchmark``): see :mod:`autowarm.reporting._regret`.

    Example:
        >>> rep = autowarm.report("autowarm-demo/suggestion.json")  # doctest: +SKIP
        >>> rep.summary[["warmup_steps", "peak_lr", "deciding_signal"]]  # doctest: +SKIP
        >>> rep.write("reports/demo")  # report.html, report.md, CSVs, PNGs  # doctest: +SKIP

    Raises:
        TypeError: a source of another kind.
        FileNotFoundError: a missing file.
        ValueError: a JSON file that is not a suggestion, an unknown study name (the message
            lists the storage's studies), a multi-objective study, a benchmark grid without the
            task, ``task`` without ``benchmark``.
    """
    from autowarm._suggest import Suggestion
    from autowarm.reporting import _build

    if task is not None and benchmark is None:
        raise ValueError(
            f"task={task!r} goes with benchmark (the task's rows of its oracle grid make the "
            f"regret table): pass benchmark='reports/benchmark', task={task!r}, or leave task "
            "out"
        )
    if isinstance(source, Suggestion):
        return _build.probe_report(source, name="suggestion", benchmark=benchmark, task=task)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return _build.probe_report(
            _build.load_suggestion(path), name=path.name, benchmark=benchmark, task=task
        )
    if isinstance(source, tuple) and len(source) == 2:
        from autowarm.reporting._study import open_study

        study = open_study(str(source[0]), str(source[1]))
        return _build.study_report(study, benchmark=benchmark, task=task)
    import optuna

    if isinstance(source, optuna.Study):
        return _build.study_report(source, benchmark=benchmark, task=task)
    raise TypeError(
        "source must be a Suggestion, a suggestion JSON path, an optuna.Study or a "
        f"(storage_url, study_name) pair, but got {type(source).__name__}"
    )
