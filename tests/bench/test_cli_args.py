"""``autowarm bench``: bad or empty arguments are errors that name the option, never a run of
nothing that exits 0; CSVs of the wrong kind get a message, not a pandas KeyError."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from autowarm.bench._cli import main
from autowarm.bench._evaluate import regret_markdown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["grid", "--lrs", ","], "argument --lrs: must be finite numbers > 0"),
        (["grid", "--lrs", "inf"], "argument --lrs: must be finite numbers > 0"),
        (["grid", "--lrs", "0.1,x"], "argument --lrs: must be numbers"),
        (["grid", "--warmups", ""], "argument --warmups: must be ints >= 0"),
        (["grid", "--warmups", "-5"], "argument --warmups: must be ints >= 0"),
        (["grid", "--tasks", ""], "argument --tasks: give at least one name"),
        (["grid", "--seeds", "0"], "argument --seeds: must be an int >= 1"),
        (["eval", "--seeds", "-3"], "argument --seeds: must be an int >= 1"),
        (["eval", "--methods", ","], "argument --methods: give at least one name"),
        (["eval", "--workers", "-1"], "argument --workers: must be an int >= 0"),
        (["eval", "--total-steps", "0"], "argument --total-steps: must be an int >= 1"),
        (["overhead", "--sizes", ""], "argument --sizes: must be parameter counts >= 1"),
        (["overhead", "--steps", "0"], "argument --steps: must be an int >= 1"),
        (["study", "--tasks", " , "], "argument --tasks: give at least one name"),
        (["ranks", "--workers", "x"], "argument --workers: must be an int, but got 'x'"),
    ],
)
def test_bad_arguments_are_refused(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(tmp_path)])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written, not even an empty CSV


def test_csvs_of_the_wrong_kind_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ev = tmp_path / "evaluation.csv"
    ev.write_text("task,method,seed,total_steps,peak_lr,final_val_loss,diverged\n")
    grid = tmp_path / "oracle_grid.csv"
    grid.write_text("task,method,seed,total_steps,peak_lr,warmup_steps,final_val_loss,diverged\n")
    assert main(["table", str(grid)]) == 1
    assert "is not an oracle grid CSV" in capsys.readouterr().err
    assert main(["regret", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "has no finished evaluation rows: run `autowarm bench eval` first" in err
    assert "Traceback" not in err


def test_an_infinite_median_reads_diverged() -> None:
    rows = [
        {"task": "a", "method": "autowarm", "regret": math.inf, "probe_cost": 0.1, "seeds": 1},
        {"task": "median", "method": "autowarm", "regret": math.inf},
    ]
    md = regret_markdown(pd.DataFrame(rows))
    assert md.splitlines()[-1].startswith("| **median** | **diverged** |")


def test_the_module_entry_point_ends_as_autowarm_bench_does(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `python -m autowarm.bench` caught a few error types only: any other error, and Ctrl-C,
    # ended in a traceback (`autowarm bench` gave one line, or exit 130 quietly).
    from autowarm.bench import _cli

    assert main(["overhead", "--device", "gpu"]) == 1  # torch's RuntimeError
    err = capsys.readouterr().err
    assert err.startswith("autowarm: error: Expected one of cpu") and "Traceback" not in err

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "run", interrupted)
    assert main(["tasks"]) == 130
    assert capsys.readouterr().err == "autowarm: interrupted\n"
