"""The study benchmark's tables (the runs themselves are the `autowarm bench study` command)."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from autowarm.bench._study import markdown, rank_table, study_table

LRS = (0.001, 0.002, 0.004)
WARMUPS = (0, 20, 200)
# full-length loss of each cell: best at (0.002, 20), one diverged cell
FULL = {
    (0.001, 0): 1.30, (0.001, 20): 1.28, (0.001, 200): 1.29,
    (0.002, 0): 1.21, (0.002, 20): 1.20, (0.002, 200): 1.22,
    (0.004, 0): math.inf, (0.004, 20): 1.40, (0.004, 200): 1.25,
}  # fmt: skip


@pytest.fixture
def grid_csv(tmp_path: Path) -> Path:
    rows = [
        {
            "task": "toy", "peak_lr": lr, "warmup_steps": w, "warmup_frac": w / 2000,
            "total_steps": 2000, "seed": seed, "final_val_loss": FULL[(lr, w)],
            "diverged": not math.isfinite(FULL[(lr, w)]), "seconds": 1.0,
        }
        for lr, w in itertools.product(LRS, WARMUPS)
        for seed in (0, 1)
    ]  # fmt: skip
    path = tmp_path / "grid.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_rank_table_spearman_and_pick(tmp_path: Path, grid_csv: Path) -> None:
    rows = []
    for (lr, w), full in FULL.items():
        # "fraction": the same order as full length; "absolute": reversed, and hotter
        rows.append(("fraction", lr, w, full - 0.1))
        if w:
            rows.append(("absolute", lr, w, -full if math.isfinite(full) else math.inf))
    frame = pd.DataFrame(rows, columns=["transfer", "peak_lr", "warmup_steps", "trial_value"])
    frame = frame.assign(task="toy", trial_steps=500, trial_warmup_steps=0, seconds=1.0)
    ranks_csv = tmp_path / "ranks.csv"
    frame.to_csv(ranks_csv, index=False)
    table = rank_table(ranks_csv, grid_csv).set_index("transfer")
    fraction, absolute = table.loc["fraction"], table.loc["absolute"]
    assert fraction["cells"] == absolute["cells"] == 9  # zero warmup counted under both rules
    assert fraction["spearman"] == pytest.approx(1.0)
    assert (fraction["picked_peak_lr"], fraction["picked_warmup"]) == (0.002, 20)
    assert fraction["picked_regret"] == 0.0 and not fraction["picked_hotter"]
    assert absolute["spearman"] < 0
    assert (absolute["picked_peak_lr"], absolute["picked_warmup"]) == (0.004, 20)
    assert (
        absolute["picked_regret"] == pytest.approx(1.40 / 1.20 - 1) and absolute["picked_hotter"]
    )


def test_study_table_regret_and_median(tmp_path: Path, grid_csv: Path) -> None:
    rows = [
        ("tune_fraction", 0, 1.20, 5.0),
        ("tune_fraction", 1, 1.26, 5.2),
        ("tpe_scratch", 0, 1.32, 4.6),
    ]
    frame = pd.DataFrame(rows, columns=["method", "seed", "final_val_loss", "cost_steps"])
    frame = frame.assign(
        task="toy", total_steps=2000, cost_wall=6.0, n_trials=23, peak_lr=0.002, warmup_steps=20
    )
    frame = frame.assign(trial_steps=500, n_complete=9, n_pruned=14, n_failed=0, probe_steps=0)
    frame = frame.assign(study_seconds=60.0, eval_seeds=2)
    study_csv = tmp_path / "study.csv"
    frame.to_csv(study_csv, index=False)
    table = study_table(study_csv, grid_csv)
    body = table[table["task"] == "toy"].set_index("method")
    assert body.loc["tune_fraction", "regret"] == pytest.approx((0.0 + 0.05) / 2)
    assert body.loc["tune_fraction", "cost_steps"] == 5.2  # the worst seed's cost
    assert body.loc["tpe_scratch", "regret"] == pytest.approx(0.1)
    medians = table[table["task"] == "median"].set_index("method")["regret"]
    assert medians["tpe_scratch"] == pytest.approx(0.1)
    text = markdown(table)
    assert text.splitlines()[0].startswith("| task | method | study_seeds | regret |")
    assert "| median | tpe_scratch |  | 0.1 |" in text  # NaN cells are blank
    # a grid seed the study's runs do not use (a luckier one) leaves its oracle as it was
    grid = pd.read_csv(grid_csv)
    lucky = grid[grid["seed"] == 0].assign(seed=2, final_val_loss=0.5, diverged=False)
    pd.concat([grid, lucky]).to_csv(grid_csv, index=False)
    again = study_table(study_csv, grid_csv)
    assert again["regret"].tolist() == table["regret"].tolist()
    # a grid without seed 1 in some cell: the study's runs (seeds 0 and 1) have no oracle
    grid = pd.read_csv(grid_csv)
    grid[~((grid["seed"] == 1) & (grid["peak_lr"] == LRS[0]))].to_csv(grid_csv, index=False)
    with pytest.raises(ValueError, match=r"grid of task 'toy' \(2000 steps\) is incomplete"):
        study_table(study_csv, grid_csv)


def test_tpe_from_scratch_spends_its_budget_in_trials() -> None:
    from autowarm.bench._study import STUDY_METHODS, TPE_BUDGETS, tpe_trials
    from autowarm.bench.tasks import get_task

    bench = get_task("control_convex")  # 2,000 steps: trials of 500
    assert tpe_trials(bench, 500) == 24  # six full runs
    assert tpe_trials(bench, 500, "tpe_scratch_10") == 40
    assert tpe_trials(bench, 500, "tpe_scratch_5") == 20
    assert set(TPE_BUDGETS) <= set(STUDY_METHODS)
    with pytest.raises(ValueError, match="method must be one of"):
        tpe_trials(bench, 500, "tune_confirm")


def test_ranks_refuse_a_grid_of_another_run_length(tmp_path: Path) -> None:
    from autowarm.bench._study import run_ranks

    # a 60-step grid of a 2,000-step task: its trials would be compressed from 2,000 steps
    # and ranked against 60-step runs
    rows = [
        {
            "task": "control_convex", "peak_lr": 0.01, "warmup_steps": w, "warmup_frac": w / 60,
            "total_steps": 60, "seed": 0, "final_val_loss": 1.0, "diverged": False,
        }
        for w in (0, 30)
    ]  # fmt: skip
    grid = tmp_path / "grid.csv"
    pd.DataFrame(rows).to_csv(grid, index=False)
    with pytest.raises(ValueError, match=r"no cells of task 'control_convex' at its run length "
                       r"of 2000 steps \(it has \[60\]\)"):  # fmt: skip
        run_ranks(["control_convex"], tmp_path / "ranks.csv", grid, workers=0)
    assert not (tmp_path / "ranks.csv").exists()


def _study_row(task: str, method: str, seed: int) -> dict[str, object]:
    from autowarm.bench._study import STUDY_COLUMNS

    row: dict[str, object] = dict.fromkeys(STUDY_COLUMNS, 1)
    return {**row, "task": task, "method": method, "seed": seed, "final_val_loss": 1.25}


def test_a_study_row_cut_by_a_kill_runs_again_and_nothing_is_glued_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A cut row counted as done (its fields NaN), and the next row was appended to its line.
    from autowarm.bench import _study

    ran: list[tuple[str, str, int]] = []

    def one_study(task: str, method: str, seed: int) -> dict[str, object]:
        ran.append((task, method, seed))
        return _study_row(task, method, seed)

    monkeypatch.setattr(_study, "_one_study", one_study)
    study_csv = tmp_path / "study.csv"
    kw: dict[str, Any] = dict(methods=["tune_fraction"], seeds=[0, 1], workers=0)
    _study.run_study_bench(["control_convex"], study_csv, **kw)
    text = study_csv.read_text()
    cut = "control_convex,tune_fraction,1,20"
    study_csv.write_text(text[: text.rstrip("\n").rfind("\n") + 1] + cut)
    ran.clear()
    with caplog.at_level(logging.WARNING, logger="autowarm"):
        _study.run_study_bench(["control_convex"], study_csv, **kw)
    assert ran == [("control_convex", "tune_fraction", 1)]
    assert "dropping its last row, cut short" in caplog.text
    frame = pd.read_csv(study_csv)
    assert frame["seed"].tolist() == [0, 1] and not frame.isna().any().any()
    # a cut row that a later writer ended (its last fields empty) is not read as finished
    study_csv.write_text(study_csv.read_text() + "control_convex,tune_absolute,0,20\n")
    ran.clear()
    _study.run_study_bench(["control_convex"], study_csv, **{**kw, "methods": ["tune_absolute"]})
    assert [seed for _, _, seed in ran] == [0, 1]
    assert len(pd.read_csv(study_csv).dropna()) == 4


def test_a_csv_of_another_kind_is_named(tmp_path: Path, grid_csv: Path) -> None:
    # It read as "error: task", "error: warmup_steps" or pandas' "None of [Index...]".
    from autowarm.bench._study import run_ranks, run_study_bench

    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    study = r"other\.csv lacks the columns \['task', .*it is not a study CSV written by "
    ranks = r"other\.csv lacks the columns \['task', .*it is not a ranks CSV written by "
    with pytest.raises(ValueError, match=study):
        run_study_bench(["control_convex"], other, methods=["tune_fraction"], workers=0)
    with pytest.raises(ValueError, match=study):
        study_table(other, grid_csv)
    with pytest.raises(ValueError, match=ranks):
        rank_table(other, grid_csv)
    with pytest.raises(ValueError, match=ranks):
        run_ranks(["control_convex"], other, _full_length_grid(tmp_path), workers=0)
    assert other.read_text() == "a,b\n1,2\n"
    with pytest.raises(ValueError, match=r"no study CSV at .*: run `autowarm bench study`"):
        study_table(tmp_path / "nothing.csv", grid_csv)


def _full_length_grid(tmp_path: Path) -> Path:
    rows = [
        {
            "task": "control_convex", "peak_lr": 0.01, "warmup_steps": w,
            "warmup_frac": w / 2000, "total_steps": 2000, "seed": 0, "final_val_loss": 1.0,
            "diverged": False,
        }
        for w in (0, 30)
    ]  # fmt: skip
    grid = tmp_path / "full_grid.csv"
    pd.DataFrame(rows).to_csv(grid, index=False)
    return grid


def test_ranks_with_no_workers_run_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `--workers 0` ("in-process") started a pool of one worker all the same.
    from autowarm.bench import _study

    ran: list[tuple[float, int, str]] = []

    def one_rank(task: str, peak_lr: float, warmup: int, transfer: str) -> dict[str, object]:
        ran.append((peak_lr, warmup, transfer))
        return {
            "task": task, "transfer": transfer, "peak_lr": peak_lr, "warmup_steps": warmup,
            "trial_steps": 500, "trial_warmup_steps": warmup // 4, "trial_value": 1.0,
            "seconds": 0.1,
        }  # fmt: skip

    monkeypatch.setattr(_study, "_one_rank", one_rank)
    ranks_csv = tmp_path / "ranks.csv"
    _study.run_ranks(["control_convex"], ranks_csv, _full_length_grid(tmp_path), workers=0)
    assert sorted(ran) == [(0.01, 0, "fraction"), (0.01, 30, "absolute"), (0.01, 30, "fraction")]
    assert len(pd.read_csv(ranks_csv)) == 3


def test_a_failed_study_or_rank_job_keeps_the_other_jobs_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # One failed job stopped the pool: the others' finished rows were lost.
    from autowarm.bench import _study
    from autowarm.bench._evaluate import JobsFailed

    def one_study(task: str, method: str, seed: int) -> dict[str, object]:
        if seed == 1:
            raise RuntimeError("out of memory")
        return _study_row(task, method, seed)

    monkeypatch.setattr(_study, "_one_study", one_study)
    study_csv = tmp_path / "study.csv"
    said = r"1 study job\(s\) failed .*\n  control_convex tune_fraction seed 1: RuntimeError: "
    with pytest.raises(JobsFailed, match=said):
        _study.run_study_bench(
            ["control_convex"], study_csv, methods=["tune_fraction"], seeds=[0, 1, 2], workers=0
        )
    assert pd.read_csv(study_csv)["seed"].tolist() == [0, 2]

    def one_rank(task: str, peak_lr: float, warmup: int, transfer: str) -> dict[str, object]:
        raise ValueError("no")

    monkeypatch.setattr(_study, "_one_rank", one_rank)
    with pytest.raises(JobsFailed, match=r"3 ranks job\(s\) failed"):
        _study.run_ranks(
            ["control_convex"], tmp_path / "ranks.csv", _full_length_grid(tmp_path), workers=0
        )
    # the command line lists every failed job, exits 1 and leaves the tables as they were
    from autowarm.bench._cli import main

    out = tmp_path / "out"
    out.mkdir()
    _full_length_grid(tmp_path).rename(out / "oracle_grid.csv")
    assert main(["ranks", "--tasks", "control_convex", "--workers", "0", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error: 3 ranks job(s) failed" in err and "transfer absolute: ValueError: no" in err
    assert "the tables were not rebuilt" in err
    assert not (out / "ranks_summary.md").exists()


def _study_csv(tmp_path: Path) -> Path:
    rows = [_study_row("toy", "tune_fraction", 0)]
    study_csv = tmp_path / "study.csv"
    pd.DataFrame(rows).assign(total_steps=2000, peak_lr=0.002, warmup_steps=20).to_csv(
        study_csv, index=False
    )
    return study_csv


def _ranks_csv(tmp_path: Path) -> Path:
    rows = [
        {
            "task": "toy", "transfer": "fraction", "peak_lr": lr, "warmup_steps": w,
            "trial_steps": 500, "trial_warmup_steps": w // 4, "trial_value": full,
            "seconds": 1.0,
        }
        for (lr, w), full in FULL.items()
    ]  # fmt: skip
    ranks_csv = tmp_path / "ranks.csv"
    pd.DataFrame(rows).to_csv(ranks_csv, index=False)
    return ranks_csv


def test_study_and_rank_tables_refuse_a_grid_stopped_mid_way(
    tmp_path: Path, grid_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The regret table refused it; these took the best of the cells the grid had run.
    import json

    from autowarm.bench import _study
    from autowarm.bench._grid import plan_path

    monkeypatch.setitem(_study.TASKS, "toy", _study.TASKS["control_convex"])  # 2,000 steps
    study_csv, ranks_csv = _study_csv(tmp_path), _ranks_csv(tmp_path)
    study_table(study_csv, grid_csv)
    rank_table(ranks_csv, grid_csv)
    asked = [[lr, w, s] for lr, w in FULL for s in (0, 1)] + [[0.008, 20, 0], [0.008, 20, 1]]
    plan_path(grid_csv).write_text(json.dumps({"toy": {"2000": asked}}))
    incomplete = r"grid of task 'toy' \(2000 steps\) is incomplete: 2 of the runs asked of it"
    with pytest.raises(ValueError, match=incomplete):
        study_table(study_csv, grid_csv)
    with pytest.raises(ValueError, match=incomplete):
        rank_table(ranks_csv, grid_csv)


def test_study_and_rank_tables_refuse_a_grid_of_another_definition(
    tmp_path: Path, grid_csv: Path
) -> None:
    import json

    from autowarm.bench._grid import definitions_path

    study_csv, ranks_csv = _study_csv(tmp_path), _ranks_csv(tmp_path)
    definitions_path(grid_csv).write_text(json.dumps({"toy": {"model": "mlp(64)"}}))
    for path, kind, table in ((study_csv, "study", study_table), (ranks_csv, "ranks", rank_table)):
        definitions_path(path).write_text(json.dumps({"toy": {"model": "mlp(128)"}}))
        with pytest.raises(ValueError, match=f"another definition .* in the {kind}\\): run"):
            table(path, grid_csv)


def test_study_and_ranks_check_the_grid_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The study's grid was read only by its table, once every study had run: hours later,
    # "No such file oracle_grid.csv".
    import json

    from autowarm.bench import _study
    from autowarm.bench._cli import main
    from autowarm.bench._grid import plan_path

    ran: list[object] = []
    monkeypatch.setattr(_study, "_one_study", lambda *job: ran.append(job))
    monkeypatch.setattr(_study, "_one_rank", lambda *job: ran.append(job))
    argv = ["study", "--tasks", "control_convex", "--methods", "tune_fraction", "--workers", "0"]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    assert "no oracle grid CSV at" in capsys.readouterr().err
    grid = _full_length_grid(tmp_path).rename(tmp_path / "oracle_grid.csv")  # seed 0 only
    study_csv = tmp_path / "study.csv"
    kw: dict[str, Any] = dict(methods=["tune_fraction"], workers=0, grid_csv=grid)
    with pytest.raises(ValueError, match=r"lack some of the seeds \[0, 1\]"):
        _study.run_study_bench(["control_convex"], study_csv, **kw)
    asked = [[0.01, w, 0] for w in (0, 30, 60)]  # a cell the grid has not run yet
    plan_path(grid).write_text(json.dumps({"control_convex": {"2000": asked}}))
    with pytest.raises(ValueError, match="is incomplete: 1 of the runs asked of it"):
        _study.run_ranks(["control_convex"], tmp_path / "ranks.csv", grid, workers=0)
    assert ran == [] and not study_csv.exists() and not (tmp_path / "ranks.csv").exists()


def test_a_study_median_over_fewer_tasks_is_marked(tmp_path: Path, grid_csv: Path) -> None:
    # A method without some of the tasks had its median over the others, unmarked.
    grid = pd.read_csv(grid_csv)
    pd.concat([grid, grid.assign(task="toy2")]).to_csv(grid_csv, index=False)
    rows = [
        _study_row("toy", "tpe_scratch", 0),
        _study_row("toy2", "tpe_scratch", 0),
        _study_row("toy", "tune_confirm", 0),
    ]
    study_csv = tmp_path / "study.csv"
    frame = pd.DataFrame(rows).assign(total_steps=2000, peak_lr=0.002, warmup_steps=20)
    frame.to_csv(study_csv, index=False)
    table = study_table(study_csv, grid_csv)
    medians = table[table["task"].str.startswith("median")].set_index("method")["task"]
    assert medians.to_dict() == {"tpe_scratch": "median", "tune_confirm": "median [1 of 2 tasks]"}
    assert "| median [1 of 2 tasks] | tune_confirm |" in markdown(table)
