"""The ``autowarm`` command: a thin shell over the library.

Each subcommand has an ``add_arguments(parser)`` and a ``run(args) -> int``; everything it does
is reachable from Python under the same names. User errors print one line and exit 1; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autowarm import __version__
from autowarm._checks import error_line, no_abbreviations
from autowarm.schedules import ScheduleConfig

_log = logging.getLogger("autowarm")
EXPORT_FORMATS = ("json", "yaml", "transformers", "trainer", "lightning")


# ---------------------------------------------------------------------------- schedule show
def key_points(cfg: ScheduleConfig) -> list[dict[str, Any]]:
    """Rows (label, step, lr, multiplier) at step 0, warmup end, quarter points, last step."""
    t = cfg.total_steps
    points = [("start", 0), ("warmup end", cfg.warmup_steps)]
    points += [(f"{q}/4 of run", (q * t) // 4) for q in (1, 2, 3)]
    points += [("last step", t - 1), ("end (floor)", t)]
    rows = []
    for label, step in sorted(points, key=lambda p: p[1]):
        rows.append(
            {
                "point": label,
                "step": step,
                "lr": cfg.lr_at(step),
                "multiplier": cfg.multiplier(step),
            }
        )
    return rows


def check_plot_path(path: Path, source: Path | None = None) -> None:
    """Refuse a ``--plot`` path that is not a ``.png``, is the schedule file ``source``, or
    holds a file that is not a PNG (someone else's): checked before anything is printed."""
    from autowarm._imports import require
    from autowarm._outputs import check_replaceable, is_png

    require("matplotlib", "drawing --plot")  # before the table is printed
    if source is not None and path.resolve() == source.resolve():
        raise ValueError(f"--plot {path} is the schedule file being shown: pass another path")
    if path.suffix.lower() != ".png":
        raise ValueError(f"--plot writes a PNG image: pass a name ending in .png, not {path}")
    check_replaceable(path, is_png, "a PNG image autowarm drew")


def plot_schedule(cfg: ScheduleConfig, path: Path) -> Path:
    """Draw LR against step to ``path`` (PNG), the end of warmup marked (the report's figure).

    Raises:
        ValueError, FileExistsError: as :func:`check_plot_path`; nothing is written.
    """
    from autowarm._config_io import atomic_write
    from autowarm.reporting._draw import png_bytes
    from autowarm.reporting._figures import schedule_figure

    check_plot_path(path)
    return atomic_write(path, png_bytes(schedule_figure(cfg)))


def _add_schedule(sub: Any) -> None:
    p = sub.add_parser("schedule", help="inspect a schedule config file")
    ssub = p.add_subparsers(dest="schedule_command", required=True, metavar="ACTION")
    show = ssub.add_parser("show", help="print the schedule's key points (and plot it)")
    show.add_argument(
        "file", type=Path, help="schedule config (.json or .yaml), or a suggestion JSON"
    )
    show.add_argument("--plot", type=Path, metavar="PNG", help="also draw LR against step")
    show.add_argument("--json", action="store_true", help="print the key points as JSON")
    show.set_defaults(func=_run_schedule_show)


def _run_schedule_show(args: argparse.Namespace) -> int:
    cfg, _ = _schedule_file(args.file)  # a schedule config, or a probe's suggestion
    if args.plot:
        check_plot_path(args.plot, args.file)
    rows = key_points(cfg)
    if args.json:
        print(json.dumps({"schedule": cfg.to_dict(), "key_points": rows}, indent=2))
    else:
        d = cfg.to_dict()
        head = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("format", "format_version"))
        print(head)
        print(f"{'point':<14}{'step':>8}  {'lr':>12}  {'x peak':>8}")
        for r in rows:
            print(f"{r['point']:<14}{r['step']:>8}  {r['lr']:>12.6g}  {r['multiplier']:>8.4f}")
    if args.plot:
        plot_schedule(cfg, args.plot)
        _log.info("wrote %s", args.plot)
    return 0


# ---------------------------------------------------------------------------- export
def export_text(cfg: ScheduleConfig, fmt: str, training: Mapping[str, Any] | None = None) -> str:
    """The text ``autowarm export`` writes for ``fmt`` (one of ``EXPORT_FORMATS``).

    ``training``: the settings the probe trained under (``Suggestion.training``), which the
    ``trainer`` format adds (optimizer settings, clipping, accumulation); ``None`` gives the
    schedule's fields alone.
    """
    if fmt == "json":
        return json.dumps(cfg.to_dict(), indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if fmt == "transformers":
        return json.dumps(cfg.to_transformers(), indent=2) + "\n"
    if fmt == "trainer":
        if training is None:
            return json.dumps(cfg.to_trainer_args(), indent=2) + "\n"
        from autowarm._suggest import trainer_args

        return json.dumps(trainer_args(cfg, training), indent=2) + "\n"
    if fmt == "lightning":
        out = {
            "lr_scheduler": {"interval": "step", "frequency": 1, "name": "autowarm"},
            "schedule": cfg.to_dict(),
            "usage": "return ScheduleConfig.from_dict(d['schedule']).to_lightning(optimizer) "
            "from configure_optimizers",
        }
        return json.dumps(out, indent=2) + "\n"
    raise ValueError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, but got {fmt!r}")


def _check_export_output(output: Path, source: Path | None) -> None:
    """Refuse an ``-o`` that would overwrite something other than an earlier export: the
    schedule file being read, a study's storage, or any existing file that is not a schedule
    config or an export in one of :data:`EXPORT_FORMATS` (a task file, a suggestion, the
    user's own training config)."""
    from autowarm._config_io import storage_file_kind

    if source is not None and output.resolve() == source.resolve():
        raise ValueError(f"-o {str(output)!r} is the file being exported: pass another path")
    if not output.is_file():  # absent (a folder is refused by export_format)
        return
    raw = output.read_bytes()
    if not raw.strip():
        return  # an empty file (mktemp --suffix .json) holds nothing to lose
    kind = storage_file_kind(raw)
    if kind is not None:
        raise ValueError(
            f"-o {str(output)!r} is {kind} (a study's storage): writing there would destroy "
            "it; pass another path"
        )
    from autowarm._outputs import is_schedule_output

    if not is_schedule_output(raw):
        raise FileExistsError(
            f"-o {str(output)!r} exists and is not a schedule config or an earlier export, so "
            "autowarm did not write it and will not replace it: pass another path, or move or "
            "remove that file first"
        )


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="convert a schedule config, a probe's suggestion, or a study's best schedule, to "
        "another format",
    )
    p.add_argument(
        "file",
        type=Path,
        nargs="?",
        help="schedule config (.json, .yaml or .yml), or a suggestion JSON (whose trainer format "
        "adds the optimizer settings the probe trained with)",
    )
    p.add_argument("--storage", default=None, help="export the best schedule of this study")
    p.add_argument("--study-name", default=None, help="with --storage (optional if only one)")
    p.add_argument(
        "--probe",
        action="store_true",
        help=(
            "with --storage: the probe's schedule the study started from (its trial 0, at the "
            "study's run length), not its best"
        ),
    )
    p.add_argument(
        "--format",
        "-f",
        choices=EXPORT_FORMATS,
        default=None,
        help="default: from the suffix of -o (.json, .yaml, .yml), json to standard output; "
        "an -o of another suffix needs --format",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        help="write here instead of stdout ('-': stdout); an existing file is replaced only "
        "when it is a schedule config or an earlier export",
    )
    p.set_defaults(func=_run_export)


_CONFIG_SUFFIX_FORMAT = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def export_format(fmt: str | None, output: Path | None) -> str:
    """The format ``autowarm export`` writes: ``--format``, else the suffix of ``-o``, else json.

    Raises:
        ValueError: If ``--format`` json/yaml contradicts a ``.json``/``.yaml`` output name, a
            schedule config's ``-o`` has no config suffix, or ``-o`` is a directory.
    """
    if output is not None and output.is_dir():
        raise ValueError(f"-o {output} is a directory: pass a file path such as {output}/s.yaml")
    by_suffix = None if output is None else _CONFIG_SUFFIX_FORMAT.get(output.suffix.lower())
    chosen = fmt or by_suffix or "json"
    if output is not None and chosen in ("json", "yaml") and by_suffix is None:
        # a schedule config is read back (ScheduleConfig.load, autowarm schedule show) by
        # its suffix: a file without one could be written but never read again
        raise ValueError(
            f"-o {output} has no .json, .yaml or .yml suffix, so a schedule config written "
            f"there could not be read back: pass -o {output}.{chosen}"
        )
    if fmt in ("json", "yaml") and by_suffix is not None and by_suffix != fmt:
        raise ValueError(
            f"--format {fmt} but -o {output} names a {by_suffix} file: give the output a "
            f"{'.json' if fmt == 'json' else '.yaml'} suffix, or leave out --format"
        )
    return chosen


def _run_export(args: argparse.Namespace) -> int:
    if args.file is None and args.storage is None:
        raise ValueError("pass a schedule file, or --storage URL [--study-name NAME]")
    if args.file is not None and args.storage is not None:
        raise ValueError("pass a schedule file or --storage URL [--study-name NAME], not both")
    if args.storage is None and (args.study_name is not None or args.probe):
        given = "--study-name" if args.study_name is not None else "--probe"
        raise ValueError(f"{given} goes with --storage URL (a study), not with a schedule file")
    if args.output == Path("-"):
        args.output = None  # stdout, as without -o
    fmt = export_format(args.format, args.output)
    if args.output is not None:
        _check_export_output(args.output, args.file)
    if args.storage is not None:
        from autowarm.study import _attrs
        from autowarm.study._storage import load_study, normalize_url, redact
        from autowarm.study._tune import (
            NoFinishedTrialError,
            best_schedule,
            study_training,
            suggestion_from_study,
        )

        study = load_study(args.storage, args.study_name)
        stored = suggestion_from_study(study)
        # the settings the study's trials trained under (a study from before that record:
        # its probe's, which trained under the task's own)
        training: Mapping[str, Any] | None = study_training(study)
        if args.probe:
            suggestion = stored
            if suggestion is None:
                raise ValueError(
                    f"study {study.study_name!r} holds no probe suggestion: it was not made by "
                    "`autowarm tune`, or its probe has not finished; leave out --probe for its "
                    "best trial"
                )
            base = study.user_attrs.get(_attrs.BASE_SCHEDULE)
            # The probe's schedule at the study's run length (its trial 0), which differs from
            # the suggestion's own when the probe was made for a run of another length.
            cfg = ScheduleConfig.from_dict(base) if base is not None else suggestion.schedule
            if cfg.total_steps != suggestion.schedule.total_steps:
                _log.info(
                    "the probe's schedule for the study's run of %d steps (the probe itself was "
                    "made for %d)",
                    cfg.total_steps,
                    suggestion.schedule.total_steps,
                )
        else:
            try:
                cfg = best_schedule(study)
            except NoFinishedTrialError as exc:  # its advice names the storage as STORAGE
                shown = redact(normalize_url(args.storage))
                quoted = shlex.quote(shown)
                raise NoFinishedTrialError(str(exc).replace("STORAGE", quoted)) from None
    else:
        cfg, training = _schedule_file(args.file)
    if fmt == "trainer" and training is None:
        _log.warning(
            "the trainer format here holds the schedule's fields alone (no probe's record of "
            "the optimizer settings, clipping and accumulation): set adam_beta2, "
            "weight_decay and max_grad_norm as the probe trained, or export from the "
            "suggestion JSON or the study"
        )
    if fmt == "transformers":
        # get_scheduler's arguments hold no LR: it multiplies the optimizer's own
        _log.info("build the optimizer with lr=%g (the peak LR) for this schedule", cfg.peak_lr)
    if args.output is not None:
        if fmt in ("json", "yaml") and args.output.suffix.lower() in (".json", ".yaml", ".yml"):
            cfg.save(args.output)
        else:
            from autowarm._config_io import atomic_write

            atomic_write(args.output, export_text(cfg, fmt, training))
        _log.info("wrote %s", args.output)
    else:
        sys.stdout.write(export_text(cfg, fmt, training))
    return 0


def _schedule_file(path: Path) -> tuple[ScheduleConfig, Mapping[str, Any] | None]:
    # A schedule config, or a probe's suggestion JSON: its schedule, with the settings the
    # probe trained under. The suggestion's tables are not exported, so not read: a stale or
    # broken .trace.csv beside it (which Suggestion.load refuses) does not stop an export.
    from autowarm._outputs import is_suggestion

    if path.suffix.lower() == ".json" and path.is_file() and is_suggestion(path.read_bytes()):
        from autowarm._suggest import Suggestion, read_suggestion_record  # imports torch

        data = read_suggestion_record(path)  # read as Suggestion.load reads it
        try:
            suggestion = Suggestion.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None  # as Suggestion.load says it
        return suggestion.schedule, suggestion.training
    return ScheduleConfig.load(path), None


# ---------------------------------------------------------------------------- demo
def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the probe on a built-in example task")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("autowarm-demo"),
        help="output folder (default autowarm-demo)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="the example model's and the probe's seed (0)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--total-steps", type=int, default=None, help="shorter run (and probe), for a quick look"
    )
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from autowarm._demo import run_demo

    result = run_demo(
        args.out, seed=args.seed, progress=not args.no_progress, total_steps=args.total_steps
    )
    print(result.text)
    return 0


# ---------------------------------------------------------------------------- bench
_BENCH_HELP = "benchmark: oracle grids, baselines, regret"


def _add_bench(sub: Any) -> None:
    from autowarm.bench import _cli as bench_cli

    p = sub.add_parser("bench", help=_BENCH_HELP)
    bench_cli.add_arguments(p)
    p.set_defaults(func=bench_cli.run)


def _add_bench_name(sub: Any) -> None:
    # Its name and help only: building bench's own parser imports torch and scipy (about 3 s),
    # which every other command (`autowarm --version`, `schedule show`) need not pay.
    sub.add_parser("bench", help=_BENCH_HELP)


# ---------------------------------------------------------------------------- main
def _add_tune(sub: Any) -> None:
    from autowarm.study import _cli as study_cli

    study_cli.add_tune(sub)
    study_cli.add_probe(sub)


def _add_report(sub: Any) -> None:
    from autowarm.reporting import _cli as report_cli

    report_cli.add_parser(sub)


_COMMANDS: list[Callable[[Any], None]] = [
    _add_demo,
    _add_schedule,
    _add_export,
    _add_tune,
    _add_bench,
    _add_report,
]


def build_parser(*, bench: bool = True) -> argparse.ArgumentParser:
    """The ``autowarm`` argument parser with every subcommand.

    With ``bench=False`` the ``bench`` command is listed but has no arguments (for a command
    line that does not run it).
    """
    parser = argparse.ArgumentParser(
        prog="autowarm",
        description="Measure the warmup length and peak LR of a PyTorch run.",
    )
    parser.add_argument("--version", action="version", version=f"autowarm {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug log output too")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        (add if bench or add is not _add_bench else _add_bench_name)(sub)
    no_abbreviations(parser)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    # INFO by default (what was written, the probe's progress); -v adds the DEBUG lines
    level = logging.ERROR if quiet else (logging.DEBUG if verbose >= 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("autowarm")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    print(f"autowarm: warning: {message}", file=sys.stderr if file is None else file)


def exit_code(command: Callable[[], int], *, debug: bool = False) -> int:
    """Run ``command`` and return its exit code, or the one of how it ended: an interrupt
    exits 130 quietly, a closed stdout 141, an error 1 with its first line on stderr (its
    traceback with ``debug``). For every entry point (``autowarm``, ``python -m
    autowarm.bench``), so that they end alike."""
    try:
        return command()
    except KeyboardInterrupt:
        print("autowarm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout stopped early (`| head`): nothing is wrong with the command.
        # Point stdout at devnull so that Python's flush at exit does not fail again, and
        # exit as a process killed by SIGPIPE would (128 + 13), quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:
        if debug:
            raise
        print(f"autowarm: error: {error_line(exc)}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autowarm`` console script; returns the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(bench="bench" in words)
    args = parser.parse_args(words)
    logger = logging.getLogger("autowarm")
    # main may run inside another program (a test, a notebook): its logging comes back
    logging_before = (logger.handlers[:], logger.level, logger.propagate)
    _setup_logging(args.verbose, args.quiet)
    # Worker processes (`tune --workers N`) print their own errors: they read this.
    debug_before = os.environ.get("AUTOWARM_DEBUG")
    if args.debug:
        os.environ["AUTOWARM_DEBUG"] = "1"
    try:
        with warnings.catch_warnings():
            # A warning is one line, as an error is (no source line of autowarm's own code);
            # -q ("only errors") leaves them out, --debug keeps Python's full form.
            if args.quiet:
                warnings.simplefilter("ignore")
            elif not args.debug:
                warnings.showwarning = _one_line_warning
            return exit_code(functools.partial(args.func, args), debug=args.debug)
    finally:
        logger.handlers[:] = logging_before[0]
        logger.setLevel(logging_before[1])  # setLevel: the loggers' cached levels follow
        logger.propagate = logging_before[2]
        if args.debug:
            if debug_before is None:
                os.environ.pop("AUTOWARM_DEBUG", None)
            else:
                os.environ["AUTOWARM_DEBUG"] = debug_before
