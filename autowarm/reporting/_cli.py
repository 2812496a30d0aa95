"""``autowarm report``: write the report of a probe or a study into a folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

_log = logging.getLogger("autowarm")


def add_parser(sub: Any) -> None:
    """Register ``autowarm report`` on the subcommand parsers ``sub``."""
    p = sub.add_parser(
        "report",
        help="write the report of a probe (SUGGESTION.json) or a study (--storage [--study-name])",
        description="Write report.md, a self-contained report.html, one CSV per table and one "
        "PNG per figure. Files already in the folder are left alone: a report replaces only "
        "the files an earlier report wrote there (listed in its .autowarm-report.json), and "
        "refuses to write, writing nothing, when the folder has another file of a name it "
        "would write.",
    )
    p.add_argument(
        "suggestion", nargs="?", type=Path, help="a suggestion JSON (Suggestion.save, demo)"
    )
    p.add_argument("--storage", help="optuna storage URL or file of the study")
    p.add_argument("--study-name", help="with --storage (optional if only one)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--benchmark",
        type=Path,
        help="benchmark folder or oracle grid CSV (e.g. reports/benchmark): adds regret.csv",
    )
    p.add_argument(
        "--task",
        help="with --benchmark: the benchmark task a suggestion was probed on, whose grid rows "
        "the regret table uses (a study names its own)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report the arguments name and write it; print the HTML page's path."""
    from autowarm.reporting import report

    study = args.storage is not None or args.study_name is not None
    if study and args.suggestion is not None:
        raise ValueError("pass a suggestion JSON or --storage/--study-name, not both")
    if study and args.storage is None:
        raise ValueError("a study report needs --storage URL (and --study-name NAME)")
    if not study and args.suggestion is None:
        raise ValueError("nothing to report: pass SUGGESTION.json or --storage [--study-name]")
    if str(args.out) == "-":
        raise ValueError(
            "-o - would be stdout, but a report is a folder of files (report.html, report.md, "
            "its tables and figures): pass a folder, e.g. -o report"
        )
    if args.task is not None and args.benchmark is None:
        raise ValueError(
            f"--task {args.task} goes with --benchmark (the task's rows of its oracle grid make "
            f"the regret table): pass --benchmark reports/benchmark --task {args.task}, or "
            "leave --task out"
        )
    source: Any = args.suggestion
    if study:
        from autowarm.reporting._study import open_study

        # without --study-name, the storage's one study (several: an error listing them)
        source = open_study(args.storage, args.study_name)
    rep = report(source, benchmark=args.benchmark, task=args.task)
    paths = rep.write(args.out)
    _log.info("%s", rep.status_text)
    for note in rep.notes:
        _log.info("note: %s", note)
    _log.info("wrote %d files into %s", len(paths), args.out)
    print(paths[0])
    return 0
