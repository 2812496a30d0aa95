"""``autowarm demo``: the probe on a built-in task, end to end, in a minute or two on a CPU.

The task is the benchmark's post-LayerNorm transformer language model on generated Markov-chain
text (nothing is downloaded): post-LN transformers are the classic case that needs warmup.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autowarm._checks import check_seed, is_int

if TYPE_CHECKING:
    from autowarm._suggest import Suggestion

_log = logging.getLogger("autowarm")

DEMO_TASK = "postln_lm"


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced: the suggestion and the files written."""

    suggestion_path: Path
    schedule_path: Path
    text: str
    report_path: Path | None = None


def run_demo(
    out_dir: Path, *, seed: int = 0, progress: bool = True, total_steps: int | None = None
) -> DemoResult:
    """Probe the demo task, write ``schedule.yaml``, ``suggestion.json`` and the report (in
    ``out_dir/report/``, when matplotlib is installed) into ``out_dir``.

    Files there that an earlier demo wrote are replaced; any other file under one of those
    names stops the demo before the probe (:class:`FileExistsError`), and nothing is written.

    ``total_steps`` shortens the task's run (and so the probe's 10% budget), for a quick look.

    Returns:
        The paths written and a human-readable summary (the suggestion and its rationale).
    """
    import torch

    from autowarm._suggest import suggest
    from autowarm.bench.tasks import get_task

    if total_steps is not None and (not is_int(total_steps) or total_steps < 40):
        raise ValueError(
            f"--total-steps must be an int >= 40 (the probe needs at least 40 steps), but got "
            f"{total_steps!r}"
        )  # before the folder is made: a bad value leaves nothing behind
    check_seed(seed, "torch, numpy and random")  # as suggest() would, but before the folder
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file: pass --out a folder (it is made if missing)")
    out_dir.mkdir(parents=True, exist_ok=True)  # before the probe: a bad path fails at once
    from autowarm._outputs import check_replaceable, is_schedule_output
    from autowarm._suggest import check_suggestion_path

    # Files of the user's own under the names the demo writes fail now, not after the probe.
    if (out_dir / "report").exists() and not (out_dir / "report").is_dir():
        raise ValueError(
            f"{out_dir / 'report'} is a file, where the demo writes its report folder: move "
            "it away, or pass another --out"
        )
    check_replaceable(out_dir / "schedule.yaml", is_schedule_output, "a schedule config")
    check_suggestion_path(out_dir / "suggestion.json")
    if importlib.util.find_spec("matplotlib") is not None:
        from autowarm.reporting._report import refuse_others

        # A report folder holding files no report wrote fails now, not after the probe.
        refuse_others(out_dir / "report", {"report.html", "report.md"})
    task = get_task(DEMO_TASK)
    if total_steps is not None:
        import dataclasses

        task = dataclasses.replace(task, total_steps=total_steps)
    # A model this small gains nothing from intra-op threads, and on a busy machine their
    # spin-waiting makes each step many times slower.
    torch.set_num_threads(1)
    model = task.make_model(seed)
    _log.info("demo: probing %s (%s)", task.name, task.description)
    s = suggest(
        model,
        task.train_data(seed),
        torch.optim.AdamW,
        optimizer_kwargs=dict(task.optimizer_kwargs),
        loss_fn=task.resolved_loss_fn(),
        total_steps=task.total_steps,
        seed=seed,
        progress=progress,
    )
    schedule_path = s.schedule.save(out_dir / "schedule.yaml")
    suggestion_path = s.save(out_dir / "suggestion.json")
    report_path, report_note = _write_report(s, out_dir / "report")
    text = "\n".join(
        [
            f"task: {task.name}: {task.description}",
            f"suggested warmup: {s.warmup_steps} steps "
            f"({s.warmup_steps / task.total_steps:.1%} of {task.total_steps})",
            f"suggested peak lr: {s.peak_lr:.3g}",
            f"confidence: {s.confidence}; probe steps: {s.probe_steps} "
            f"({s.probe_steps / task.total_steps:.1%} of the run); {s.wall_seconds:.1f} s",
            "",
            "rationale: " + s.rationale,
            "",
            f"schedule: {schedule_path}",
            f"suggestion and evidence: {suggestion_path} (+ .trace.csv, .signals.csv)",
            f"report: {report_path}" if report_path is not None else f"report: {report_note}",
        ]
    )
    return DemoResult(suggestion_path, schedule_path, text, report_path)


def _write_report(s: Suggestion, out: Path) -> tuple[Path | None, str]:
    # The report's first path, or None and why it was not written: the suggestion and the
    # schedule are already saved, so a report that cannot be written does not fail the demo.
    if importlib.util.find_spec("matplotlib") is None:
        return None, "not written (pip install 'autowarm[plot]' for its figures)"
    from autowarm.reporting import report

    try:
        return report(s).write(out)[0], ""
    except FileExistsError as exc:
        return None, f"not written: {exc}"
