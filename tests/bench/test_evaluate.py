"""The method evaluation and the regret table, end to end on a tiny configuration."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from autowarm.bench._evaluate import (
    COLUMNS,
    METHODS,
    evaluate_methods,
    finder_lr,
    regret_markdown,
    regret_stem,
    regret_table,
    suggestion_path,
)
from autowarm.bench._grid import oracle_grid
from autowarm.bench.tasks import get_task

STEPS = 80


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield None
    torch.set_num_threads(before)


def test_finder_lr_counts_its_steps() -> None:
    lr, steps = finder_lr(get_task("control_convex"), 0, steps=40)
    assert 1e-7 <= lr <= 10.0
    assert 11 <= steps <= 40  # may stop early on divergence, never before the skip window


def test_evaluate_and_regret_tiny(tmp_path: Path) -> None:
    import dataclasses

    task = dataclasses.replace(get_task("control_convex"), total_steps=STEPS)
    grid = tmp_path / "grid.csv"
    oracle_grid(task, csv_path=grid, lrs=[0.01, 0.05], warmups=[0, 8], seeds=[0], workers=0)
    ev = tmp_path / "eval.csv"
    methods = ["autowarm", "finder_10pct", "radam_finder", "hf_default"]
    evaluate_methods(
        ["control_convex"], csv_path=ev, methods=methods, seeds=[0], workers=0, total_steps=STEPS
    )
    rows = pd.read_csv(ev)
    assert sorted(rows["method"]) == sorted(methods)
    aw = rows[rows["method"] == "autowarm"].iloc[0]
    assert 0 < aw["probe_steps"] <= 61  # counted from outside: steps + the first-batch check
    # the probe's suggestion (its rationale, the reason for a pick) is saved beside the CSV
    from autowarm import Suggestion

    saved = suggestion_path(ev, "control_convex", "autowarm", 0, STEPS)
    name = f"control_convex.autowarm.t{STEPS}.seed0"
    assert saved == tmp_path / "eval.suggestions" / f"{name}.json"
    s = Suggestion.load(saved)
    assert s.rationale and len(s.trace) > 0 and s.peak_lr == pytest.approx(aw["peak_lr"])
    assert sorted(p.name for p in saved.parent.iterdir()) == [
        f"{name}.json",
        f"{name}.signals.csv",
        f"{name}.trace.csv",
    ]  # the baselines have none
    assert list(rows.columns) == list(COLUMNS)
    assert rows.loc[rows["method"] == "hf_default", "probe_steps"].iloc[0] == 0
    # resumable: nothing new to run
    evaluate_methods(
        ["control_convex"], csv_path=ev, methods=methods, seeds=[0], workers=0, total_steps=STEPS
    )
    assert len(pd.read_csv(ev)) == len(methods)
    table = regret_table(ev, grid)
    body = table[table["task"] != "median"]
    assert set(body["method"]) == set(methods)
    assert all(math.isfinite(r) and r > -0.5 for r in body["regret"])
    assert set(table.loc[table["task"] == "median", "method"]) == set(methods)
    md = regret_markdown(table)
    assert md.splitlines()[0].startswith("| task | " + " | ".join(METHODS[:2]))
    assert "control_convex" in md and "**median**" in md


def test_the_markdown_marks_a_method_run_over_fewer_seeds() -> None:
    row = {"task": "t", "total_steps": 100, "probe_cost": 0.0, "oracle_heldout_regret": 0.01}
    table = pd.DataFrame(
        [
            {**row, "method": "finder_10pct", "seeds": 2, "regret": 0.1},
            {**row, "method": "hf_default", "seeds": 1, "regret": 0.2},
            {"task": "median", "method": "finder_10pct", "regret": 0.1},
            {"task": "median", "method": "hf_default", "regret": 0.2},
        ]
    )
    md = regret_markdown(table)
    assert "20.00% (cost 0.0%) [1 of 2 seeds]" in md and "[k of n seeds]:" in md
    assert "10.00% (cost 0.0%) |" in md  # the method with every seed is not marked
    full = table.assign(seeds=2)
    assert "seeds]" not in regret_markdown(full)


def test_a_median_over_fewer_tasks_is_marked() -> None:
    # A method without some of the tasks had its median over the others, bolded beside the
    # medians over every task with nothing to say so.
    row = {"seeds": 2, "probe_cost": 0.0, "oracle_heldout_regret": 0.01}
    rows = [
        {**row, "task": "a", "total_steps": 100, "method": "autowarm", "regret": 0.01},
        {**row, "task": "b", "total_steps": 100, "method": "autowarm", "regret": 0.03},
        {**row, "task": "a", "total_steps": 100, "method": "hf_default", "regret": 0.5},
    ]
    table = pd.DataFrame(rows)
    medians = table.groupby("method")["regret"].median()
    md = regret_markdown(
        pd.concat(
            [table, pd.DataFrame({"task": "median", "regret": medians}).reset_index()],
            ignore_index=True,
        )
    )
    median_line = next(line for line in md.splitlines() if line.startswith("| **median**"))
    assert "| **2.00%** |" in median_line  # over both tasks: not marked
    assert "**50.00%** [1 of 2 tasks]" in median_line
    assert "[k of n tasks]: this method's median is over the k tasks" in md
    # each run length counts as a task: a at 200 steps is a third one that autowarm lacks
    longer = {**rows[2], "total_steps": 200, "method": "hf_default"}
    table = pd.DataFrame([*rows, longer])
    medians = table.groupby("method")["regret"].median()
    md = regret_markdown(
        pd.concat(
            [table, pd.DataFrame({"task": "median", "regret": medians}).reset_index()],
            ignore_index=True,
        )
    )
    assert "**2.00%** [2 of 3 tasks]" in md and "**50.00%** [2 of 3 tasks]" in md


def test_a_probe_variant_is_its_own_method(tmp_path: Path) -> None:
    import dataclasses

    task = dataclasses.replace(get_task("control_convex"), total_steps=STEPS)
    grid = tmp_path / "grid.csv"
    oracle_grid(task, csv_path=grid, lrs=[0.01, 0.05], warmups=[0, 8], seeds=[0], workers=0)
    ev = tmp_path / "eval.csv"
    kw = {"methods": ["autowarm"], "seeds": [0], "workers": 0, "total_steps": STEPS}
    evaluate_methods(["control_convex"], csv_path=ev, **kw)
    variant = ["lr_min=1e-4", "range_test_max_steps=12", "range_test_min_steps=12"]
    evaluate_methods(["control_convex"], csv_path=ev, probe_settings=variant, **kw)
    label = "autowarm[lr_min=0.0001,range_test_max_steps=12,range_test_min_steps=12]"
    rows = pd.read_csv(ev).set_index("method")
    assert list(rows.index) == ["autowarm", label]
    assert rows.loc[label, "peak_lr"] != rows.loc["autowarm", "peak_lr"]  # another probe ran
    # resumable per variant: nothing new to run for either
    evaluate_methods(["control_convex"], csv_path=ev, probe_settings=variant, **kw)
    evaluate_methods(["control_convex"], csv_path=ev, **kw)
    assert len(pd.read_csv(ev)) == 2
    md = regret_markdown(regret_table(ev, grid))
    assert md.splitlines()[0].endswith(f"| hf_default | {label} | seed noise |")
    with pytest.raises(ValueError, match="unknown probe setting 'lr'"):
        evaluate_methods(["control_convex"], csv_path=ev, probe_settings=["lr=1"], **kw)
    with pytest.raises(ValueError, match="include autowarm in methods"):
        evaluate_methods(
            ["control_convex"],
            csv_path=ev,
            methods=["hf_default"],
            seeds=[0],
            workers=0,
            probe_settings=variant,
        )


def test_eval_cli_rejects_a_bad_probe_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autowarm.bench._cli import main

    argv = ["eval", "--tasks", "control_convex", "--methods", "autowarm", "--out", str(tmp_path)]
    assert main([*argv, "--probe-setting", "refine=perhaps"]) == 1
    assert "'refine' takes a value like its default refine=false" in capsys.readouterr().err
    assert not (tmp_path / "evaluation.csv").exists()  # nothing ran


def test_unknown_method_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="methods must be among"):
        evaluate_methods(["control_convex"], csv_path=tmp_path / "e.csv", methods=["nope"])


def test_regret_compares_the_same_seeds_as_the_evaluation(tmp_path: Path) -> None:
    # A grid with seeds 0 and 1 and an evaluation with seed 1 only: the oracle is seed 1's.
    cells = [(0.01, 0, 1.0, 3.0), (0.05, 0, 2.0, 1.5)]  # (lr, warmup, loss seed 0, seed 1)
    grid = tmp_path / "grid.csv"
    pd.DataFrame(
        [
            {
                "task": "t",
                "total_steps": 10,
                "peak_lr": lr,
                "warmup_steps": w,
                "warmup_frac": w / 10,
                "seed": seed,
                "final_val_loss": loss,
                "diverged": False,
            }
            for lr, w, l0, l1 in cells
            for seed, loss in ((0, l0), (1, l1))
        ]
    ).to_csv(grid, index=False)
    ev = tmp_path / "eval.csv"
    base = {
        "task": "t",
        "method": "autowarm",
        "total_steps": 10,
        "peak_lr": 0.01,
        "warmup_steps": 0,
        "probe_cost": 0.1,
        "diverged": False,
    }
    pd.DataFrame(
        [{**base, "seed": 0, "final_val_loss": 1.1}, {**base, "seed": 1, "final_val_loss": 1.8}]
    ).to_csv(ev, index=False)
    both = regret_table(ev, grid)
    row = both[both["task"] == "t"].iloc[0]
    # seeds 0+1: the oracle's best cell is lr 0.05 (mean 1.75); the method's mean is 1.45
    assert row["oracle_best_loss"] == pytest.approx(1.75)
    assert row["regret"] == pytest.approx(1.45 / 1.75 - 1)
    # the grid's seed noise: seed 0 scored with seed 1's best cell (2.0), and the other way
    # round (3.0), against the same oracle
    assert row["oracle_heldout_regret"] == pytest.approx(2.5 / 1.75 - 1)
    md = regret_markdown(both)
    assert md.splitlines()[0].endswith("| seed noise |")
    assert md.splitlines()[2].endswith(f"| {100 * (2.5 / 1.75 - 1):.2f}% |")
    one = regret_table(ev, grid, seeds=[1])
    row = one[one["task"] == "t"].iloc[0]
    assert row["oracle_best_loss"] == pytest.approx(1.5) and row["seeds"] == 1
    assert math.isnan(row["oracle_heldout_regret"])  # one seed: nothing to hold out
    assert regret_markdown(one).splitlines()[2].endswith("|  |")
    assert row["regret"] == pytest.approx(1.8 / 1.5 - 1)
    with pytest.raises(ValueError, match=r"no rows for seeds \[7\]; it has \[0, 1\]"):
        regret_table(ev, grid, seeds=[7])
    assert regret_stem([1], None) == "regret_seeds1"
    assert regret_stem([0, 2], 2000) == "regret_seeds0-2_2000steps"
    assert regret_stem(None, None) == "regret"
    pd.DataFrame([{**base, "seed": 2, "final_val_loss": 1.0}]).to_csv(ev, index=False)
    with pytest.raises(ValueError, match=r"no runs of task 't' with seed\(s\) \[2\]") as e:
        regret_table(ev, grid)
    # the command it names is the one for this task and this grid's folder
    assert f"`autowarm bench grid --tasks t --out {Path(grid).parent} --seeds 3" in str(e.value)
    pd.DataFrame([{**base, "task": "u", "seed": 0}]).to_csv(ev, index=False)
    with pytest.raises(ValueError, match=r"has no runs of task 'u', which the evaluation has"):
        regret_table(ev, grid)


def test_a_row_cut_short_by_a_kill_is_run_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ev = tmp_path / "eval.csv"
    kw = {"methods": ["hf_default"], "seeds": [0, 1], "workers": 0, "total_steps": 20}
    evaluate_methods(["control_convex"], csv_path=ev, **kw)
    lines = ev.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    # the last row cut mid-append: its first five fields only, no line end
    ev.write_text("".join(lines[:2]) + ",".join(lines[2].split(",")[:5]))
    with caplog.at_level(logging.WARNING, logger="autowarm"):
        evaluate_methods(["control_convex"], csv_path=ev, **kw)
    assert caplog.text.count("dropping its last row") == 1  # the file is read once
    rows = pd.read_csv(ev)
    assert (
        sorted(rows["seed"]) == [0, 1] and not rows.isna()[["diverged", "run_seconds"]].any().any()
    )
    # a cut row that a later append terminated (an older writer): dropped on read, run again
    lines = ev.read_text().splitlines(keepends=True)
    ev.write_text("".join(lines[:2]) + ",".join(lines[2].split(",")[:5]) + "\r\n")
    evaluate_methods(["control_convex"], csv_path=ev, **kw)
    rows = pd.read_csv(ev).dropna(subset=["run_seconds"])
    assert sorted(rows["seed"]) == [0, 1]


def test_rows_record_the_versions_that_made_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from autowarm.bench._grid import versions

    ev = tmp_path / "eval.csv"
    kw = {"methods": ["hf_default"], "workers": 0, "total_steps": 20}
    evaluate_methods(["control_convex"], csv_path=ev, seeds=[0], **kw)
    rows = pd.read_csv(ev, dtype=str)
    now = versions()
    assert list(rows["autowarm_version"]) == [now["autowarm_version"]]
    assert list(rows["torch_version"]) == [now["torch_version"]]
    # rows of these tasks made by another version: the run says the file will mix them
    ev.write_text(ev.read_text().replace(now["torch_version"], "1.0.0"))
    with caplog.at_level(logging.WARNING, logger="autowarm"):
        evaluate_methods(["control_convex"], csv_path=ev, seeds=[0, 1], **kw)
    assert "autowarm " + now["autowarm_version"] + " with torch 1.0.0" in caplog.text
    assert "mixes versions" in caplog.text


def test_a_file_from_before_the_version_columns_keeps_its_shape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ev = tmp_path / "eval.csv"
    kw = {"methods": ["hf_default"], "workers": 0, "total_steps": 20}
    evaluate_methods(["control_convex"], csv_path=ev, seeds=[0], **kw)
    old = pd.read_csv(ev).drop(columns=["autowarm_version", "torch_version"])
    old.to_csv(ev, index=False)
    with caplog.at_level(logging.WARNING, logger="autowarm"):
        evaluate_methods(["control_convex"], csv_path=ev, seeds=[0, 1], **kw)
    assert "written before evaluation rows recorded the versions" in caplog.text
    lines = ev.read_text().splitlines()
    assert len(lines) == 3 and {line.count(",") for line in lines} == {len(old.columns) - 1}
    rows = pd.read_csv(ev)
    assert list(rows.columns) == list(old.columns) and sorted(rows["seed"]) == [0, 1]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_failed_job_keeps_the_other_jobs_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    from autowarm.bench._cli import main

    # 10 steps are too short for autowarm's probe; hf_default runs them fine
    argv = ["eval", "--tasks", "control_convex", "--methods", "autowarm,hf_default"]
    argv += ["--seeds", "2", "--total-steps", "10", "--workers", str(workers)]
    assert main([*argv, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "2 evaluation job(s) failed" in err
    assert "control_convex autowarm seed 0 total_steps 10: ValueError" in err
    assert "control_convex autowarm seed 1 total_steps 10: ValueError" in err
    assert "too short to probe" in err
    rows = pd.read_csv(tmp_path / "evaluation.csv")
    assert sorted(zip(rows["method"], rows["seed"], strict=True)) == [
        ("hf_default", 0),
        ("hf_default", 1),
    ]


@pytest.mark.filterwarnings("ignore::autowarm.bench.GridEdgeWarning")
def test_regret_compares_each_run_length_with_its_own_oracle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autowarm.bench._cli import main

    grid = tmp_path / "grid.csv"
    best = {10: 1.0, 20: 0.5}  # the oracle's best loss per run length
    pd.DataFrame(
        [
            {
                "task": "t",
                "total_steps": n,
                "peak_lr": lr,
                "warmup_steps": 0,
                "warmup_frac": 0.0,
                "seed": 0,
                "final_val_loss": best[n] * factor,
                "diverged": False,
            }
            for n in (10, 20)
            for lr, factor in ((0.01, 1.0), (0.05, 2.0))
        ]
    ).to_csv(grid, index=False)
    ev = tmp_path / "evaluation.csv"
    base = {"task": "t", "method": "autowarm", "seed": 0, "peak_lr": 0.01, "warmup_steps": 0}
    base |= {"probe_cost": 0.1, "diverged": False}
    pd.DataFrame(
        [
            {**base, "total_steps": 10, "final_val_loss": 1.1},
            {**base, "total_steps": 20, "final_val_loss": 0.6},
        ]
    ).to_csv(ev, index=False)
    table = regret_table(ev, grid)
    assert list(table.loc[table["task"] == "t", "seeds"]) == [1, 1]  # one row per length
    body = table[table["task"] == "t"].set_index("total_steps")
    assert sorted(body.index) == [10, 20] and list(body["seeds"]) == [1, 1]
    assert body.loc[10, "oracle_best_loss"] == pytest.approx(1.0)
    assert body.loc[10, "regret"] == pytest.approx(0.1)
    assert body.loc[20, "oracle_best_loss"] == pytest.approx(0.5)
    assert body.loc[20, "regret"] == pytest.approx(0.2)
    md = regret_markdown(table).splitlines()
    assert md[2].startswith("| t (10 steps) | 10.00% ") and md[3].startswith("| t (20 steps) |")
    # one length: the task's row as before, without the length
    argv = ["regret", "--eval-csv", str(ev), "--grid-csv", str(grid), "--out", str(tmp_path)]
    assert main(argv) == 0
    whole = (tmp_path / "regret.md").read_text()
    capsys.readouterr()
    assert main([*argv, "--total-steps", "20"]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("| t | 20.00% ")
    assert (tmp_path / "regret_20steps.md").read_text().splitlines()[2].startswith("| t | 20.00% ")
    assert (tmp_path / "regret.md").read_text() == whole  # a subset never overwrites the whole
    # a length the grid lacks is named
    pd.DataFrame([{**base, "total_steps": 30, "final_val_loss": 0.6}]).to_csv(ev, index=False)
    with pytest.raises(ValueError, match=r"no runs of task 't' with total_steps=30"):
        regret_table(ev, grid)


def _grid_rows(cells: list[tuple[float, int, int, float]]) -> pd.DataFrame:
    # (lr, warmup, seed, loss) rows of task "t", 10 steps, with every grid column
    from autowarm.bench._grid import COLUMNS as GRID_COLUMNS

    rows = [
        {
            "task": "t",
            "peak_lr": lr,
            "warmup_steps": w,
            "warmup_frac": w / 10,
            "total_steps": 10,
            "seed": seed,
            "final_val_loss": loss,
            "diverged": False,
            "seconds": 1.0,
            "seconds_per_step": 0.1,
            "autowarm_version": "0.1.0",
            "torch_version": "2.13.0",
        }
        for lr, w, seed, loss in cells
    ]
    return pd.DataFrame(rows, columns=list(GRID_COLUMNS))


def _eval_rows(path: Path, seeds: list[int]) -> Path:
    base = {"task": "t", "method": "autowarm", "total_steps": 10, "peak_lr": 0.01}
    base |= {"warmup_steps": 0, "probe_cost": 0.1, "diverged": False, "final_val_loss": 1.2}
    pd.DataFrame([{**base, "seed": s} for s in seeds]).to_csv(path, index=False)
    return path


@pytest.mark.filterwarnings("ignore::autowarm.bench.GridEdgeWarning")
def test_regret_refuses_a_grid_stopped_mid_way(tmp_path: Path) -> None:
    # seed 1 of the grid stopped after one of its two cells: the other cell's mean would be
    # seed 0's alone, and the oracle a mix
    grid = tmp_path / "grid.csv"
    _grid_rows([(0.01, 0, 0, 1.0), (0.05, 0, 0, 2.0), (0.01, 0, 1, 3.0)]).to_csv(grid, index=False)
    ev = _eval_rows(tmp_path / "eval.csv", [0, 1])
    with pytest.raises(ValueError, match=r"grid of task 't' \(10 steps\) is incomplete: 1 of 2 "):
        regret_table(ev, grid)
    with pytest.raises(ValueError, match=r"peak_lr 0\.05, warmup 0: seeds \[0\]\).*--only-seeds"):
        regret_table(ev, grid)
    # the seeds every cell has compare like with like
    row = regret_table(ev, grid, seeds=[0]).iloc[0]
    assert row["oracle_best_loss"] == 1.0 and row["regret"] == pytest.approx(0.2)


def test_a_grid_row_cut_inside_its_last_fields_is_dropped(tmp_path: Path) -> None:
    from autowarm.bench._oracle import load_grid

    grid = tmp_path / "grid.csv"
    _grid_rows([(0.01, 0, 0, 1.556), (0.05, 0, 0, 2.0)]).to_csv(grid, index=False)
    lines = grid.read_text().splitlines()
    # a kill mid-append, then the grid's next append ended the line: "1.556" reads "1."
    cut = ",".join(lines[1].split(",")[:6]) + ",1." + "," * 5
    grid.write_text("\n".join([lines[0], cut, lines[2], lines[1]]) + "\n")
    with pytest.warns(UserWarning, match=r"dropping 1 row\(s\) with empty fields"):
        frame = load_grid(grid)
    assert sorted(frame["final_val_loss"]) == [1.556, 2.0]


def test_a_probe_with_no_usable_lr_counts_as_a_diverged_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import autowarm._suggest

    def every_lr_diverges(model: object, data: object, *a: object, **kw: object) -> None:
        loss_fn = kw["loss_fn"]
        for batch in list(data)[:7]:  # type: ignore[call-overload]
            loss_fn(model, batch)  # type: ignore[operator]  # the probe's steps, counted
        raise autowarm._suggest.ProbeDivergedError("every LR diverged\nmore", pd.DataFrame())

    monkeypatch.setattr(autowarm._suggest, "suggest", every_lr_diverges)
    ev = tmp_path / "eval.csv"
    kw = {"methods": ["autowarm"], "seeds": [0], "workers": 0, "total_steps": 20}
    # an earlier run's suggestion for this row (its CSV deleted since) must not pass for this
    # one; a file of the user's there is not a suggestion's, and stays
    stale = suggestion_path(ev, "control_convex", "autowarm", 0, 20)
    stale.parent.mkdir()
    stale.write_text('{"format": "autowarm.suggestion"}\n')
    stale.with_suffix(".trace.csv").write_text("phase,burst,step,lr,loss\n")
    stale.with_suffix(".signals.csv").write_text("my own notes\n")
    with caplog.at_level(logging.INFO, logger="autowarm"):
        evaluate_methods(["control_convex"], csv_path=ev, **kw)  # no JobsFailed: a row
    assert [p.name for p in stale.parent.iterdir()] == [stale.with_suffix(".signals.csv").name]
    assert "control_convex autowarm seed 0: loss inf (lr nan, warmup none" in caplog.text
    row = pd.read_csv(ev).iloc[0]
    assert row["diverged"] and math.isinf(row["final_val_loss"])
    assert row["probe_steps"] == 7 and row["probe_cost"] == pytest.approx(7 / 20)
    assert math.isnan(row["peak_lr"]) and row["deciding_signal"] == (
        "no schedule: every LR diverged"
    )
    evaluate_methods(["control_convex"], csv_path=ev, **kw)  # resumes: the row counts as done
    assert len(pd.read_csv(ev)) == 1


def test_regret_replaces_its_own_tables_never_a_file_of_the_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from autowarm.bench._cli import main

    task = dataclasses.replace(get_task("control_convex"), total_steps=STEPS)
    oracle_grid(
        task,
        csv_path=tmp_path / "oracle_grid.csv",
        lrs=[0.01, 0.05],
        warmups=[0, 8],
        seeds=[0],
        workers=0,
    )
    evaluate_methods(
        ["control_convex"],
        csv_path=tmp_path / "evaluation.csv",
        methods=["hf_default"],
        seeds=[0],
        workers=0,
        total_steps=STEPS,
    )
    mine = tmp_path / "regret.md"
    mine.write_text("# my notes on regret\n")
    assert main(["regret", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "regret.md exists and is not a regret table autowarm wrote" in err
    assert mine.read_text() == "# my notes on regret\n"
    assert not (tmp_path / "regret.csv").exists()  # neither table was written
    mine.unlink()
    assert main(["regret", "--out", str(tmp_path)]) == 0
    first = (tmp_path / "regret.csv").read_text()
    assert main(["regret", "--out", str(tmp_path)]) == 0  # its own tables are replaced
    assert (tmp_path / "regret.csv").read_text() == first
    assert pd.read_csv(tmp_path / "regret.csv").columns[:4].tolist() == [
        "task",
        "method",
        "total_steps",
        "seeds",
    ]


def test_a_low_confidence_probe_is_recorded_in_the_csv_not_warned_per_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dataclasses
    import warnings

    from autowarm import _suggest
    from autowarm.bench._evaluate import _method_schedule

    real = _suggest.suggest

    def low(*args: object, **kwargs: object) -> _suggest.Suggestion:
        s = real(*args, **kwargs)  # type: ignore[arg-type]
        warnings.warn(_suggest.LOW_CONFIDENCE_WARNING + "a reason", UserWarning, stacklevel=1)
        warnings.warn("another warning", UserWarning, stacklevel=1)  # not swallowed
        return dataclasses.replace(s, confidence="low", low_confidence_reasons=("a reason",))

    monkeypatch.setattr(_suggest, "suggest", low)
    task = dataclasses.replace(get_task("control_convex"), total_steps=STEPS)
    with pytest.warns(UserWarning) as caught:
        _, _, extra = _method_schedule(task, "autowarm", 0)
    messages = [str(w.message) for w in caught]
    assert "another warning" in messages
    assert not any(m.startswith(_suggest.LOW_CONFIDENCE_WARNING) for m in messages)
    assert extra["confidence"] == "low"


def test_a_task_files_suggestion_is_saved_under_a_name_a_file_takes(tmp_path: Path) -> None:
    got = suggestion_path(
        tmp_path / "e.csv", "emb_task.py:task", "autowarm[lr_min=1e-06]", 1, 2000
    )
    assert got.name == "emb_task.py_task.autowarm[lr_min=1e-06].t2000.seed1.json"
    # one CSV may hold runs of two lengths: each keeps its own file
    assert suggestion_path(tmp_path / "e.csv", "t", "autowarm", 0, 2000) != suggestion_path(
        tmp_path / "e.csv", "t", "autowarm", 0, 4000
    )
