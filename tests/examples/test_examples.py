"""Each example under ``examples/`` runs on a tiny configuration and checks what it shows.

An example raises ``SystemExit`` with a message when its check fails; the negative tests break
the thing each example checks, to show the check is not vacuous.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import autowarm

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"autowarm_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _needs_hf() -> None:
    pytest.importorskip(
        "transformers", minversion="5.0", reason="needs transformers>=5 (extra hf)"
    )
    pytest.importorskip("accelerate", reason="needs accelerate (extra hf)")


def _needs_lightning() -> None:
    pytest.importorskip("lightning", reason="needs lightning (extra lightning)")


# ---------------------------------------------------------------- plain PyTorch
def test_plain_pytorch_resume_continues_the_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    example = _load("plain_pytorch")
    assert example.main(["--tiny", "--steps", "60", "--resume-at", "17"]) == 0
    out = capsys.readouterr().out
    assert "resumed at step 17" in out
    assert "final weights identical" in out


def test_plain_pytorch_notices_a_scheduler_that_was_not_restored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = _load("plain_pytorch")
    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "load_state_dict", lambda *a: None)
    with pytest.raises(SystemExit, match="after resuming at step 17 the LR differs"):
        example.main(["--tiny", "--steps", "60", "--resume-at", "17"])


def test_plain_pytorch_runs_as_a_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As `python examples/plain_pytorch.py ...`, in this process (a new one would import torch
    # again), from an empty folder that must stay empty.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["plain_pytorch.py", "--tiny", "--steps", "45"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(EXAMPLES / "plain_pytorch.py"), run_name="__main__")
    assert done.value.code == 0
    assert "final weights identical" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- Hugging Face Trainer
def test_hf_trainer_logs_the_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    _needs_hf()
    example = _load("hf_trainer")
    assert example.main(["--tiny", "--steps", "50"]) == 0
    assert "equals schedule.lr_at(step)" in capsys.readouterr().out


def test_hf_trainer_notices_a_schedule_off_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_hf()
    example = _load("hf_trainer")
    exported = autowarm.ScheduleConfig.to_trainer_args

    def late(self: autowarm.ScheduleConfig) -> dict[str, Any]:
        return {**exported(self), "warmup_steps": self.warmup_steps + 1}

    monkeypatch.setattr(autowarm.ScheduleConfig, "to_trainer_args", late)
    with pytest.raises(SystemExit, match=r"but schedule\.lr_at"):
        example.main(["--tiny", "--steps", "50"])


# ---------------------------------------------------------------- Lightning
def test_lightning_steps_the_schedule_per_update(capsys: pytest.CaptureFixture[str]) -> None:
    _needs_lightning()
    example = _load("lightning_module")
    assert example.main(["--tiny", "--steps", "50"]) == 0
    assert "each at schedule.lr_at(step)" in capsys.readouterr().out


def test_lightning_notices_a_per_epoch_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_lightning()
    example = _load("lightning_module")
    exported = autowarm.ScheduleConfig.to_lightning

    def per_epoch(self: autowarm.ScheduleConfig, optimizer: Any) -> dict[str, Any]:
        out = exported(self, optimizer)
        out["lr_scheduler"]["interval"] = "epoch"  # Lightning's default, the classic mistake
        return out

    monkeypatch.setattr(autowarm.ScheduleConfig, "to_lightning", per_epoch)
    with pytest.raises(SystemExit, match=r"differs from schedule\.lr_at"):
        example.main(["--tiny", "--steps", "50"])


def test_overnight_study_with_two_workers_then_export_and_report(tmp_path: Path) -> None:
    """examples/overnight/run.sh: two workers on a journal file, export, report (tiny task)."""
    import json
    import os
    import subprocess
    import sys

    root = str(EXAMPLES.parent)
    env = {
        **os.environ,
        # the checkout under test, whatever `autowarm` the PATH holds (or none)
        "AUTOWARM": f"{sys.executable} -m autowarm",
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "AUTOWARM_EXAMPLE_TINY": "1",
        "N_TRIALS": "5",
        "WORKERS": "2",
        "TRIAL_STEPS": "40",
        "OUT": str(tmp_path / "out"),
    }
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "overnight" / "run.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    schedule = autowarm.ScheduleConfig.load(out / "schedule.yaml")
    assert schedule.total_steps == 120
    assert json.loads((out / "trainer_args.json").read_text())["lr_scheduler_type"]
    assert (out / "report" / "report.html").stat().st_size > 10_000
    trials = (out / "report" / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 5
