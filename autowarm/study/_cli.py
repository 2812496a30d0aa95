"""``autowarm tune`` and ``autowarm probe``: the study and the probe on a task file."""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from autowarm._shapes import Decay

__all__ = ["add_probe", "add_tune", "parse_duration"]

_log = logging.getLogger("autowarm")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"8h"``, ``"90m"``, ``"1h30m"``, ``"45s"`` or a plain number of seconds.

    Raises:
        argparse.ArgumentTypeError: For anything else, or a duration that is not positive.
    """
    text = text.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(
                f"cannot read duration {text!r}: write e.g. 8h, 90m, 1h30m or 3600"
            ) from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, but got {text!r}")
    return seconds


def add_tune(sub: Any) -> None:
    """Register ``autowarm tune``."""
    p = sub.add_parser(
        "tune",
        help="refine warmup and peak LR with an optuna study (resumable, several workers)",
        description="Run (or resume) an optuna study around the probe's estimate. Rerunning "
        "the same command resumes the same study; --n-trials is the study's total.",
    )
    p.add_argument("task", help="path/to/file.py:task or package.module:task")
    p.add_argument(
        "--storage",
        default=None,
        help="optuna storage URL or file (default: the autowarm.db or autowarm.journal.log "
        "already in this folder, else autowarm.db, or autowarm.journal.log with --workers > 1); "
        "postgresql://user@host/db for several hosts",
    )
    p.add_argument("--study-name", default=None, help="default: autowarm-<task>")
    p.add_argument("--timeout", type=parse_duration, default=None, help="e.g. 8h, 90m")
    p.add_argument(
        "--n-trials",
        type=int,
        default=None,
        help="the study's total (default: 6 full runs' worth; with --timeout: until the time "
        "is up)",
    )
    p.add_argument(
        "--trial-steps",
        type=int,
        default=None,
        help="steps of one compressed trial (default: a resumed study's, else a quarter of "
        "the run, at least min(run, 100))",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes on this host (default 1)"
    )
    p.add_argument("--suggestion", type=Path, default=None, help="start from this probe JSON")
    p.add_argument("--seed", type=int, default=None, help="default: a resumed study's, else 0")
    p.add_argument(
        "--pruner",
        choices=("median", "hyperband", "none"),
        default=None,
        help="default: a resumed study's, else median",
    )
    p.add_argument(
        "--warmup-transfer",
        choices=("fraction", "absolute"),
        default=None,
        help="how a full-run warmup maps into a trial (default: a resumed study's, else fraction)",
    )
    p.add_argument("--budget-steps", type=int, default=None, help="the probe's budget")
    p.add_argument(
        "--confirm",
        type=int,
        default=2,
        help="re-run the K best trials at full length and pick among them (default 2; 0: none "
        "in this run, though a study confirmed before keeps naming its best confirmed schedule)",
    )
    space = p.add_argument_group(
        "search space (around the probe's estimate; a resumed study keeps its own: give none, "
        "or the same)"
    )
    space.add_argument(
        "--lr-factor", type=float, default=None, help="peak LR within estimate/F..estimate*F (4)"
    )
    space.add_argument(
        "--warmup-factor", type=float, default=None, help="warmup up to F times the estimate (4)"
    )
    space.add_argument(
        "--max-warmup-fraction",
        type=float,
        default=None,
        help="longest warmup, as a fraction of the run (0.5)",
    )
    space.add_argument(
        "--decays",
        default=None,
        help="search only these decay shapes, e.g. cosine,linear (list the probe's to keep "
        "it: trial 0 and the references take the first listed when theirs is not)",
    )
    space.add_argument(
        "--floors",
        default=None,
        help="search only these floors (x peak), e.g. 0,0.1 (trial 0 and the references take "
        "the nearest listed)",
    )
    p.add_argument("--no-progress", action="store_true", help="no per-trial lines, no bar")
    p.set_defaults(func=_run_tune)


def _search_space(args: argparse.Namespace) -> Any:
    # None when no option of the space is given: a new study gets the default space and a
    # resumed one keeps its own. Otherwise the options given, on top of the defaults.
    from autowarm.study._space import SearchSpace

    def items(text: str | None) -> list[str] | None:
        return None if text is None else [x.strip() for x in text.split(",") if x.strip()]

    given: dict[str, Any] = {
        name: value
        for name, value in (("lr_factor", args.lr_factor), ("warmup_factor", args.warmup_factor))
        if value is not None
    }
    if args.max_warmup_fraction is not None:
        given["max_warmup_fraction"] = args.max_warmup_fraction
        given["min_warmup_fraction"] = min(
            SearchSpace.min_warmup_fraction, args.max_warmup_fraction
        )
    decays = items(args.decays)
    if decays is not None:
        given["decays"] = tuple(decays)
    floors = items(args.floors)
    if floors is not None:
        given["min_lr_ratios"] = _floats("--floors", floors)
    return SearchSpace(**given) if given else None


def _floats(option: str, texts: list[str]) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in texts)
    except ValueError:
        raise ValueError(
            f"{option} takes comma-separated numbers such as 0,0.1, but got {','.join(texts)!r}"
        ) from None


def _run_tune(args: argparse.Namespace) -> int:
    from autowarm._shapes import Decay
    from autowarm._suggest import Suggestion
    from autowarm.study import _storage
    from autowarm.study._task import load_task
    from autowarm.study._tune import NoFinishedTrialError, tune

    task = load_task(args.task)
    suggestion = Suggestion.load(args.suggestion) if args.suggestion is not None else None
    # the default file is claimed by tune() once it has checked the arguments (a refused
    # command leaves no empty autowarm.db); the one it will take is named here beforehand
    url = _storage.normalize_url(args.storage or _storage.default_storage_url(args.workers))
    shown = _storage.redact(url)
    print(f"autowarm tune: storage {shown}")
    if url.startswith("journal"):
        print(f"  watch it: optuna-dashboard {shlex.quote(url.split('://', 1)[1])}")
    else:
        print(f"  watch it: optuna-dashboard {shlex.quote(shown)}")
    sys.stdout.flush()
    try:
        result = tune(
            task,
            n_trials=args.n_trials,
            timeout=args.timeout,
            storage=args.storage,
            study_name=args.study_name,
            trial_steps=args.trial_steps,
            suggestion=suggestion,
            search_space=_search_space(args),
            pruner=args.pruner,
            seed=args.seed,
            n_workers=args.workers,
            progress=not args.no_progress,
            warmup_transfer=args.warmup_transfer,
            budget_steps=args.budget_steps,
            confirm=args.confirm,
        )
    except KeyboardInterrupt:
        print(
            "autowarm tune: stopped; finished trials are kept. Run the same command to resume.",
            file=sys.stderr,
        )
        return 130
    name = result.study.study_name
    shown = _storage.redact(result.storage)  # another tune command's, if it claimed first
    try:
        best = result.best
    except NoFinishedTrialError as exc:
        # the study ran, but has nothing to export: a script chaining tune and export stops here
        print(f"autowarm tune: {exc}".replace("STORAGE", shlex.quote(shown)), file=sys.stderr)
        return 1
    print(
        f"best: peak_lr {best.peak_lr:.4g}, warmup {best.warmup_steps} steps, decay "
        f"{Decay(best.decay).value} (study {name!r})"
    )
    # --study-name=NAME: a name that starts with "-" is not taken for an option
    command = f"autowarm export --storage {shlex.quote(shown)} --study-name={shlex.quote(name)}"
    hidden = " (the password shown as *** filled in)" if "***" in shown else ""
    print(f"export it: {command} -o schedule.yaml{hidden}")
    return 0


def add_probe(sub: Any) -> None:
    """Register ``autowarm probe``."""
    p = sub.add_parser(
        "probe",
        help="run the probe alone on a task file and save the suggestion",
        description="Probe a fresh model of the task and save the suggestion (schedule, "
        "rationale) as JSON, with the evidence tables as CSV beside it.",
    )
    p.add_argument("task", help="path/to/file.py:task or package.module:task")
    p.add_argument("-o", "--output", type=Path, required=True, help="suggestion.json")
    p.add_argument(
        "--seed", type=int, default=0, help="the fresh model's and the probe's seed (0)"
    )
    p.add_argument("--budget-steps", type=int, default=None, help="the probe's budget")
    p.add_argument(
        "--decay",
        default="cosine",
        choices=[d.value for d in Decay],
        metavar="SHAPE",
        help="decay shape of the suggested schedule (default cosine): "
        + ", ".join(d.value for d in Decay),
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_probe)


def _run_probe(args: argparse.Namespace) -> int:
    from autowarm._suggest import check_suggestion_path
    from autowarm.study._task import load_task
    from autowarm.study._tune import probe_task

    if args.output.suffix.lower() != ".json":
        raise ValueError(f"-o must end in .json, but got {str(args.output)!r}")
    check_suggestion_path(args.output)  # a bad -o fails now, not after the probe has run
    task = load_task(args.task)
    s = probe_task(
        task,
        seed=args.seed,
        budget_steps=args.budget_steps,
        progress=not args.no_progress,
        decay=args.decay,
    )
    path = s.save(args.output)
    print(f"warmup {s.warmup_steps} steps, peak lr {s.peak_lr:.4g} ({s.confidence} confidence)")
    print(s.rationale)
    print(f"saved {path} (and the evidence tables beside it)")
    return 0
