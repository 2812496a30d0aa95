"""``autowarm bench`` on a task file (an ``autowarm.Task``), as a user runs it on their own."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from autowarm.bench._cli import main
from autowarm.bench._user import load_file_task

TASK_FILE = """
import torch
from torch import nn

import autowarm

g = torch.Generator().manual_seed(0)
X = torch.randn(320, 6, generator=g)
Y = X @ torch.randn(6, 1, generator=g)
{extra}

def make_model(seed):
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))

task = autowarm.Task(
    make_model=make_model,
    train_data=[(X[i : i + 32], Y[i : i + 32]) for i in range(0, 256, 32)],
    criterion=nn.functional.mse_loss,
    val_data=[(X[256:], Y[256:])],
    total_steps=40,
    {options}
)
"""


def _forget_loaded() -> None:
    for name in [m for m in sys.modules if m.startswith("autowarm_task_mytask_")]:
        del sys.modules[name]


def _task_file(folder: Path, options: str = "", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mytask.py"
    path.write_text(textwrap.dedent(TASK_FILE).format(options=options, extra=extra))
    return path


@pytest.mark.filterwarnings("ignore::autowarm.bench.GridEdgeWarning")
def test_grid_eval_and_regret_on_a_task_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _task_file(tmp_path / "proj")
    out = tmp_path / "out"
    grid = ["grid", "--lrs", "0.003,0.03", "--warmups", "0,10", "--seeds", "1"]
    # one worker: the task travels to the worker process by its file, not pickled
    assert main([*grid, "--tasks", f"{path}:task", "--workers", "1", "--out", str(out)]) == 0
    rows = pd.read_csv(out / "oracle_grid.csv")
    assert set(rows["task"]) == {"mytask.py:task"} and len(rows) == 4
    assert (rows["total_steps"] == 40).all() and rows["final_val_loss"].notna().all()
    # the same file from another working directory, by a relative path: the same task
    monkeypatch.chdir(tmp_path)
    assert main([*grid, "--tasks", "proj/mytask.py:task", "--workers", "0", "--out", "out"]) == 0
    assert '"skipped": 4' in capsys.readouterr().out
    ev = ["eval", "--tasks", "proj/mytask.py:task", "--methods", "hf_default,radam_finder"]
    ev += ["--seeds", "1", "--workers", "0", "--out", "out"]
    assert main(ev) == 0
    assert main(ev) == 0  # resumes: nothing to run again
    evaluation = pd.read_csv(out / "evaluation.csv")
    assert len(evaluation) == 2 and set(evaluation["task"]) == {"mytask.py:task"}
    capsys.readouterr()
    assert main(["regret", "--out", "out"]) == 0
    table = pd.read_csv(out / "regret.csv")
    row = table[(table["task"] == "mytask.py:task") & (table["method"] == "hf_default")].iloc[0]
    best = rows.groupby(["peak_lr", "warmup_steps"])["final_val_loss"].mean().min()
    assert row["oracle_best_loss"] == pytest.approx(best)
    # given the CSVs alone, the tables go beside the evaluation, not into reports/benchmark
    (out / "regret.md").unlink()
    assert (
        main(["regret", "--eval-csv", "out/evaluation.csv", "--grid-csv", "out/oracle_grid.csv"])
        == 0
    )
    assert (out / "regret.md").is_file() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    "options, extra, message",
    [
        ("optimizer_cls=torch.optim.SGD,", "", "its optimizer_cls is SGD"),
        ("precision='bf16-mixed',", "", "mixed precision"),
        ("accumulation_steps=2,", "", "accumulates gradients"),
        ("param_groups=lambda m: [{'params': m.parameters()}],", "", "has param_groups"),
        ("optimizer_kwargs={'momentum': 0.9},", "", r"AdamW does not take \['momentum'\]"),
    ],
)
def test_a_task_file_the_benchmark_cannot_run_is_refused(
    tmp_path: Path, options: str, extra: str, message: str
) -> None:
    path = _task_file(tmp_path, options, extra)
    with pytest.raises(ValueError, match=rf"mytask.py:task cannot be benchmarked: .*{message}"):
        load_file_task(f"{path}:task")


def test_a_task_file_without_validation_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _task_file(tmp_path)
    path.write_text(path.read_text().replace("val_data=[(X[256:], Y[256:])],", ""))
    assert main(["grid", "--tasks", f"{path}:task", "--out", str(tmp_path / "o")]) == 1
    assert "it has no validation: give it val_data=[...] or eval_fn=..." in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_study_and_ranks_name_what_they_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _task_file(tmp_path)
    for action in ("study", "ranks"):
        assert main([action, "--tasks", f"{path}:task", "--out", str(tmp_path)]) == 1
        assert "run on the built-in tasks only" in capsys.readouterr().err


def test_a_task_changed_since_its_rows_is_not_resumed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _task_file(tmp_path)
    out = tmp_path / "out"
    grid = ["grid", "--tasks", f"{path}:task", "--lrs", "0.01", "--warmups", "0"]
    grid += ["--seeds", "1", "--workers", "0", "--out", str(out)]
    assert main(grid) == 0
    assert (out / "oracle_grid.csv.tasks.json").exists()
    ev = ["eval", "--tasks", f"{path}:task", "--methods", "hf_default", "--seeds", "1"]
    ev += ["--workers", "0", "--out", str(out)]
    assert main(ev) == 0
    # a wider model under the same name: its old rows must not be resumed as this task's
    narrow, wide = (
        "Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)",
        "Linear(6, 32), nn.Tanh(), nn.Linear(32, 1)",
    )
    path.write_text(path.read_text().replace(narrow, wide))
    _forget_loaded()  # a new run of the command imports the file afresh
    capsys.readouterr()
    for argv in (grid, ev):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "task 'mytask.py:task' has changed since its rows in" in err and "its model" in err
    # other optimizer settings, too
    weighted = "total_steps=40, optimizer_kwargs={'weight_decay': 0.5},"
    path.write_text(path.read_text().replace(wide, narrow).replace("total_steps=40,", weighted))
    _forget_loaded()
    assert main(grid) == 1
    assert "optimizer_kwargs" in capsys.readouterr().err
    assert len(pd.read_csv(out / "oracle_grid.csv")) == 1


def _refuses_each_edit(path: Path, out: Path, edits: list[tuple[str, str, str]]) -> Path:
    """Record the task file's definition beside a grid CSV with a row of it, then make each
    edit (old, new, the part named) in turn and expect the grid to refuse the task; each
    edit is undone after. Returns the CSV."""
    from autowarm.bench._grid import check_definitions

    csv_path = out / "oracle_grid.csv"
    check_definitions(csv_path, [load_file_task(f"{path}:task")])
    csv_path.write_text("task,peak_lr\nmytask.py:task,0.01\n")
    for old, new, part in edits:
        text = path.read_text()
        path.write_text(text.replace(old, new))
        _forget_loaded()
        with pytest.raises(ValueError, match=rf"has changed since its rows .*its [a-z_, ]*{part}"):
            check_definitions(csv_path, [load_file_task(f"{path}:task")])
        path.write_text(text)
        _forget_loaded()
    return csv_path


def test_a_loss_body_or_the_data_edited_is_a_changed_task(tmp_path: Path) -> None:
    # Neither the model's structure nor the loss's name moves: the rows of the old loss or
    # data were resumed and averaged with the new ones.
    from autowarm.bench._grid import check_definitions

    path = _task_file(tmp_path / "a")
    path.write_text(
        path.read_text()
        .replace("criterion=nn.functional.mse_loss,", "loss_fn=loss,")
        .replace(
            "def make_model(seed):",
            "def loss(model, batch):\n    return nn.functional.mse_loss(model(batch[0]), "
            "batch[1])\n\n# a comment\ndef make_model(seed):",
        )
    )
    csv_path = _refuses_each_edit(
        path,
        tmp_path / "out",
        [
            ("nn.functional.mse_loss(model", "nn.functional.l1_loss(model", "source"),
            ("Y = X @ torch.randn", "Y = 2 * X @ torch.randn", "data"),
        ],
    )
    # a reworded comment or a blank line is no change
    path.write_text(path.read_text().replace("# a comment", "# another comment\n"))
    _forget_loaded()
    check_definitions(csv_path, [load_file_task(f"{path}:task")])


def test_an_activation_or_a_loss_swapped_is_a_changed_task(tmp_path: Path) -> None:
    import json

    from autowarm.bench._grid import check_definitions

    path = _task_file(tmp_path / "a")
    csv_path = _refuses_each_edit(
        path,
        tmp_path / "out",
        [
            ("nn.Tanh()", "nn.ReLU()", "modules"),
            ("criterion=nn.functional.mse_loss", "criterion=nn.functional.l1_loss", "loss"),
        ],
    )
    record = csv_path.with_name("oracle_grid.csv.tasks.json")
    # a record written before these parts were recorded is extended, not refused
    stored = json.loads(record.read_text())
    for part in ("modules", "loss", "file", "source", "data"):
        del stored["mytask.py:task"][part]
    record.write_text(json.dumps(stored))
    check_definitions(csv_path, [load_file_task(f"{path}:task")])
    assert "modules" in json.loads(record.read_text())["mytask.py:task"]
    # the same name from another file: resumed (it may be the project moved), with a warning
    other = _task_file(tmp_path / "b")
    _forget_loaded()
    with pytest.warns(UserWarning, match=r"was loaded from .*b/mytask\.py, but the rows"):
        check_definitions(csv_path, [load_file_task(f"{other}:task")])


@pytest.mark.filterwarnings("ignore::autowarm.bench.GridEdgeWarning")
def test_regret_refuses_an_evaluation_of_another_definition_than_the_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    path = _task_file(tmp_path / "proj")
    out, cross = tmp_path / "out", tmp_path / "cross"
    grid = ["grid", "--tasks", f"{path}:task", "--lrs", "0.01", "--warmups", "0"]
    assert main([*grid, "--seeds", "1", "--workers", "0", "--out", str(out)]) == 0
    cross.mkdir()
    for name in ("oracle_grid.csv", "oracle_grid.csv.tasks.json"):
        shutil.copy(out / name, cross / name)
    path.write_text(path.read_text().replace("nn.Tanh()", "nn.ReLU()"))
    _forget_loaded()
    ev = ["eval", "--tasks", f"{path}:task", "--methods", "hf_default", "--seeds", "1"]
    assert main([*ev, "--workers", "0", "--out", str(cross)]) == 0
    capsys.readouterr()
    assert main(["regret", "--out", str(cross)]) == 1
    err = capsys.readouterr().err
    assert "was run with another definition than its oracle grid" in err and "modules" in err


@pytest.mark.filterwarnings("ignore::autowarm.bench.GridEdgeWarning")
def test_a_grid_missing_whole_cells_is_not_scored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # A grid stopped during its first seed (or whose cells failed) lacks whole cells, which
    # the per-cell seed check cannot see: the record of what was asked of it can.
    path = _task_file(tmp_path / "proj")
    out = tmp_path / "out"
    grid = ["grid", "--tasks", f"{path}:task", "--lrs", "0.003,0.03", "--warmups", "0,10"]
    grid += ["--seeds", "1", "--workers", "0", "--out", str(out)]
    assert main(grid) == 0
    csv_path = out / "oracle_grid.csv"
    rows = pd.read_csv(csv_path)
    rows[rows["peak_lr"] < 0.01].to_csv(csv_path, index=False)  # as if stopped half-way
    ev = ["eval", "--tasks", f"{path}:task", "--methods", "hf_default", "--seeds", "1"]
    assert main([*ev, "--workers", "0", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["regret", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "is incomplete: 2 of the runs asked of it at seeds [0] have no row" in err
    assert main(["table", str(csv_path)]) == 0
    assert "2 of the 4 runs asked of it have no row" in caplog.text
    assert main(grid) == 0  # the same command finishes it
    capsys.readouterr()
    assert main(["regret", "--out", str(out)]) == 0


def test_one_task_name_twice_in_a_command_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _task_file(tmp_path / "a")
    other = _task_file(tmp_path / "b")
    monkeypatch.chdir(tmp_path / "a")
    grid = ["grid", "--lrs", "0.01", "--warmups", "0", "--seeds", "1", "--workers", "0"]
    for tasks, said in (
        ("mytask.py:task,./mytask.py:task", "(the same task): its rows are keyed by that name"),
        (f"{path}:task,{other}:task", "give one of them another file name"),
    ):
        assert main([*grid, "--tasks", tasks, "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert "task 'mytask.py:task' is given twice" in err and said in err
    ev = ["eval", "--methods", "hf_default", "--seeds", "1", "--workers", "0"]
    assert main([*ev, "--tasks", "mytask.py:task,./mytask.py:task", "--out", "o2"]) == 1
    assert "is given twice" in capsys.readouterr().err


def test_an_output_that_is_no_bench_csv_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _task_file(tmp_path / "proj")
    grid = ["grid", "--tasks", f"{path}:task", "--lrs", "0.01", "--warmups", "0", "--seeds", "1"]
    other = tmp_path / "u"
    other.mkdir()
    (other / "data.csv").write_text("a,b\n1,2\n")
    (other / "model.pt").write_bytes(bytes([0xA6, 0xFF, 0x00]) * 50)
    for target, said in (
        (["--out", str(path)], "is a file, not a folder"),
        (["--csv", str(other / "data.csv")], "lacks the columns"),
        (["--csv", str(other / "model.pt")], "is not a text file"),
    ):
        assert main([*grid, "--workers", "0", *target]) == 1
        assert said in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["data.csv", "model.pt"]  # no record
    ev = ["eval", "--tasks", f"{path}:task", "--methods", "hf_default", "--seeds", "1"]
    assert main([*ev, "--workers", "0", "--out", str(path)]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err
    assert "--csv" not in err  # eval has no --csv to pass
    assert main(["regret", "--out", str(tmp_path / "none")]) == 1
    assert "no evaluation CSV at" in capsys.readouterr().err


def test_a_task_that_cannot_run_leaves_no_empty_csv_nor_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The empty CSV was then "empty" to `bench table`, and the plan called a later, smaller
    # grid in the same folder incomplete.
    path = _task_file(tmp_path / "proj")
    path.write_text(
        path.read_text().replace(
            "criterion=nn.functional.mse_loss,", "criterion=lambda out, y: out.sum() / 0 + {}[1],"
        )
    )
    out = tmp_path / "out"
    grid = ["grid", "--tasks", f"{path}:task", "--lrs", "0.01", "--warmups", "0", "--seeds", "1"]
    assert main([*grid, "--workers", "0", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "task 'mytask.py:task' fails when scored once before its runs" in err
    assert "KeyError: 1" in err
    assert not (out / "oracle_grid.csv").exists()
    assert not (out / "oracle_grid.csv.plan.json").exists()


def test_a_task_defining_its_own_loss_and_module_records_alike_from_any_folder(
    tmp_path: Path,
) -> None:
    # A task file is imported as a module named for its absolute path: the record of its own
    # loss and module classes must not carry that name, or a moved project reads as changed.
    from autowarm.bench._grid import check_definitions, differing_parts

    extra = (
        "class Block(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = nn.Linear(6, 1)\n"
        "    def forward(self, x):\n"
        "        return self.lin(x)\n"
        "def my_loss(model, batch):\n"
        "    return ((model(batch[0]) - batch[1]) ** 2).mean()\n"
    )
    defs = []
    for folder in ("a", "b"):
        path = _task_file(tmp_path / folder, "loss_fn=my_loss,", extra)
        text = path.read_text().replace("criterion=nn.functional.mse_loss,", "")
        path.write_text(text.replace("return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), "
                                     "nn.Linear(16, 1))", "return Block()"))  # fmt: skip
        _forget_loaded()
        defs.append(load_file_task(f"{path}:task").definition())
    assert "mytask.my_loss" in str(defs[0]["loss"])
    assert differing_parts(defs[0], defs[1]) == []  # the file differs, which only warns
    csv_path = tmp_path / "out" / "oracle_grid.csv"
    check_definitions(csv_path, [load_file_task(f"{tmp_path / 'a' / 'mytask.py'}:task")])


def test_a_task_without_rows_takes_its_new_definition(tmp_path: Path) -> None:
    # a first run whose every cell failed wrote no row: the fixed task is not "changed"
    from autowarm.bench._grid import check_definitions

    path = _task_file(tmp_path)
    out = tmp_path / "out"
    csv_path = out / "oracle_grid.csv"
    check_definitions(csv_path, [load_file_task(f"{path}:task")])
    path.write_text(path.read_text().replace("Linear(6, 16)", "Linear(6, 8)").replace(
        "Linear(16, 1)", "Linear(8, 1)"))  # fmt: skip
    _forget_loaded()
    check_definitions(csv_path, [load_file_task(f"{path}:task")])  # no rows: no refusal
    csv_path.write_text("task,peak_lr\nmytask.py:task,0.01\n")  # now it has a row
    path.write_text(path.read_text().replace("Linear(6, 8)", "Linear(6, 4)").replace(
        "Linear(8, 1)", "Linear(4, 1)"))  # fmt: skip
    _forget_loaded()
    with pytest.raises(ValueError, match="has changed since its rows"):
        check_definitions(csv_path, [load_file_task(f"{path}:task")])


def test_a_validation_metric_at_or_below_zero_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # regret and the divergence test are ratios of losses: -1/(1+mse) would read as diverged
    mse = "float(((model(X[256:]) - Y[256:]) ** 2).mean())"
    extra = f"def score(model):\n    return -1.0 / (1.0 + {mse})\n"
    path = _task_file(tmp_path, "eval_fn=score,", extra)
    argv = ["grid", "--tasks", f"{path}:task", "--lrs", "0.01", "--warmups", "0", "--seeds", "1"]
    assert main([*argv, "--workers", "0", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err  # one error before any run, not one per cell
    assert err.count("\n") == 1
    assert "the benchmark compares validation losses by their ratio" in err
    assert "at the initial weights" in err
    assert not (tmp_path / "o" / "oracle_grid.csv").exists()  # nothing counted, no empty CSV


@pytest.mark.parametrize(
    ("extra", "options", "match"),
    [
        ("VAL = [(X[256:], Y[256:] * float('nan'))]", "", "validation loss at the initial"),
        ("def score(model):\n    return 'low'", "eval_fn=score,", r"eval_fn\(model\) must be"),
        ("", "loss_fn=lambda m, b: m(b[0]),", "a tensor with one element"),
    ],
    ids=["nan_in_val_data", "eval_fn_returns_str", "loss_not_scalar"],
)
def test_a_broken_task_stops_the_command_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, options: str, match: str
) -> None:
    path = _task_file(tmp_path, options, extra)
    if "VAL" in extra:
        path.write_text(path.read_text().replace("val_data=[(X[256:], Y[256:])]", "val_data=VAL"))
    if "loss_fn" in options:
        path.write_text(path.read_text().replace("criterion=nn.functional.mse_loss,", ""))
    argv = ["grid", "--tasks", f"{path}:task", "--lrs", "0.01,0.02", "--warmups", "0,5"]
    assert main([*argv, "--seeds", "1", "--workers", "0", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err


def test_adamw_options_reach_the_radam_baseline(tmp_path: Path) -> None:
    from autowarm.bench._evaluate import _RAdamW

    w = [torch.nn.Parameter(torch.zeros(2))]
    opt = _RAdamW(w, foreach=True, maximize=False, fused=True, weight_decay=0.1)
    assert opt.defaults["foreach"] is True and opt.defaults["decoupled_weight_decay"]
    with pytest.raises(ValueError, match="the RAdam baseline has no amsgrad"):
        _RAdamW(w, amsgrad=True)
    path = _task_file(tmp_path, "optimizer_kwargs={'amsgrad': True},")
    with pytest.raises(ValueError, match="amsgrad=True, which the RAdam baseline cannot do"):
        load_file_task(f"{path}:task")
