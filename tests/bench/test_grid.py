from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from autowarm.bench import (
    COLUMNS,
    GridEdgeWarning,
    get_task,
    load_grid,
    oracle_grid,
    oracle_table,
    oracle_tables,
    regret,
)
from autowarm.bench._cli import main


def _tiny() -> object:
    return dataclasses.replace(get_task("control_convex"), total_steps=30, val_batches=2)


def test_tiny_grid_end_to_end_with_resume(tmp_path: Path) -> None:
    task = _tiny()
    csv_path = tmp_path / "grid.csv"
    first = oracle_grid(
        task, csv_path=csv_path, lrs=[1e-3, 3e-2], warmups=[0, 10], seeds=1, workers=0
    )
    assert (first.ran, first.skipped, first.failed) == (4, 0, [])
    frame = pd.read_csv(csv_path)
    assert tuple(frame.columns) == COLUMNS
    assert len(frame) == 4
    assert set(frame["warmup_frac"]) == {0.0, 10 / 30}
    second = oracle_grid(
        task, csv_path=csv_path, lrs=[1e-3, 3e-2], warmups=[0, 10], seeds=1, workers=0
    )
    assert (second.ran, second.skipped) == (0, 4)
    assert len(pd.read_csv(csv_path)) == 4
    # a second seed only runs the new cells
    third = oracle_grid(
        task, csv_path=csv_path, lrs=[1e-3, 3e-2], warmups=[0, 10], seeds=[0, 1], workers=0
    )
    assert (third.ran, third.skipped) == (4, 4)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GridEdgeWarning)
        table = oracle_table(csv_path, task.name)
    assert table.n_cells == 4
    assert set(table.cells["n_seeds"]) == {2}
    best = table.cells["mean_val_loss"].min()
    assert table.best_loss == best
    assert 1 <= table.flatness <= 4
    assert table.pivot().shape == (2, 2)
    assert table.cells["rel_to_best"].min() == 0.0


@pytest.mark.slow
def test_grid_runs_in_worker_processes(tmp_path: Path) -> None:
    csv_path = tmp_path / "grid.csv"
    result = oracle_grid(
        _tiny(), csv_path=csv_path, lrs=[1e-2], warmups=[0, 5], seeds=1, workers=2
    )
    assert (result.ran, result.failed) == (2, [])
    serial = oracle_grid(
        _tiny(), csv_path=tmp_path / "s.csv", lrs=[1e-2], warmups=[0, 5], seeds=1, workers=0
    )
    assert serial.ran == 2
    a = pd.read_csv(csv_path).sort_values("warmup_steps")["final_val_loss"].to_numpy()
    b = pd.read_csv(tmp_path / "s.csv").sort_values("warmup_steps")["final_val_loss"].to_numpy()
    assert a.tolist() == pytest.approx(b.tolist(), rel=1e-5)


def _frame(
    losses: dict[tuple[float, int], float], diverged: frozenset[tuple[float, int]] = frozenset()
) -> pd.DataFrame:
    rows = []
    for (lr, w), loss in losses.items():
        for seed in (0, 1):
            rows.append(
                {
                    "task": "t",
                    "peak_lr": lr,
                    "warmup_steps": w,
                    "warmup_frac": w / 100,
                    "total_steps": 100,
                    "seed": seed,
                    "final_val_loss": loss + 0.001 * seed,
                    "diverged": (lr, w) in diverged and seed == 1,
                    "seconds": 1.0,
                    "seconds_per_step": 0.01,
                    "autowarm_version": "x",
                    "torch_version": "y",
                }
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_oracle_table_best_flatness_edges_and_divergence() -> None:
    losses = {(lr, w): 2.0 for lr in (1e-3, 1e-2, 1e-1) for w in (0, 10, 60)}
    losses[(1e-2, 10)] = 1.0
    losses[(1e-2, 0)] = 1.005
    losses[(1e-1, 0)] = 0.5  # would be best, but one seed diverged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = oracle_table(_frame(losses, diverged=frozenset({(1e-1, 0)})), "t")
    assert (table.best_peak_lr, table.best_warmup_steps) == (1e-2, 10)
    assert table.best_loss == pytest.approx(1.0005)
    assert table.flatness == 2
    assert table.edges == ()
    diverged = table.cells.set_index(["peak_lr", "warmup_steps"]).loc[(1e-1, 0)]
    assert math.isinf(diverged["mean_val_loss"]) and diverged["n_diverged"] == 1


def test_heldout_regret_is_the_oracles_own_seed_noise() -> None:
    # Two cells whose ranking flips between the seeds: each seed, scored with the cell the
    # other seed ranks best, lands on its worse cell.
    rows = [
        {
            "task": "t",
            "peak_lr": lr,
            "warmup_steps": 0,
            "warmup_frac": 0.0,
            "total_steps": 10,
            "seed": seed,
            "final_val_loss": loss,
            "diverged": False,
        }
        for lr, l0, l1 in ((1e-3, 1.0, 1.2), (1e-2, 1.1, 1.0))
        for seed, loss in ((0, l0), (1, l1))
    ]
    table = oracle_table(pd.DataFrame(rows), "t")
    assert table.best_loss == pytest.approx(1.05)
    # held out seed 0: seed 1 picks lr 1e-2 (1.1 on seed 0); held out 1: seed 0 picks 1e-3 (1.2)
    assert table.heldout_regret == pytest.approx((1.1 + 1.2) / 2 / 1.05 - 1)
    assert table.summary()["heldout_regret"] == table.heldout_regret
    # the same ranking on every seed: picking on the other seeds loses nothing
    same = [dict(r, final_val_loss=1.0 if r["peak_lr"] == 1e-3 else 2.0) for r in rows]
    assert oracle_table(pd.DataFrame(same), "t").heldout_regret == 0.0
    # one seed: nothing to hold out
    assert math.isnan(oracle_table(pd.DataFrame(rows[::2]), "t").heldout_regret)
    # a cell the other seeds rank best diverges on the held-out seed: infinite
    flip = [dict(r, diverged=r["seed"] == 1 and r["peak_lr"] == 1e-3) for r in rows]
    flip = [
        dict(r, final_val_loss=0.5) if r["seed"] == 0 and r["peak_lr"] == 1e-3 else r for r in flip
    ]
    assert math.isinf(oracle_table(pd.DataFrame(flip), "t").heldout_regret)


def test_best_on_the_edge_warns() -> None:
    losses = {(lr, w): 2.0 for lr in (1e-3, 1e-2) for w in (0, 60)}
    losses[(1e-2, 60)] = 1.0
    with pytest.warns(GridEdgeWarning, match="highest peak_lr and longest warmup"):
        table = oracle_table(_frame(losses), "t")
    assert table.edges == ("highest peak_lr", "longest warmup")
    with pytest.warns(GridEdgeWarning, match="lowest peak_lr"):
        tables = oracle_tables(_frame({(1e-3, 0): 1.0, (1e-2, 0): 2.0, (1e-1, 0): 3.0}))
    assert set(tables) == {"t"}


def test_regret() -> None:
    assert regret(1.1, 1.0) == pytest.approx(0.1)
    assert regret(1.0, 1.0) == 0.0
    assert regret(float("nan"), 1.0) == math.inf
    assert regret(float("inf"), 1.0) == math.inf
    with pytest.raises(ValueError, match="oracle_best must be a finite loss > 0"):
        regret(1.0, 0.0)


def test_missing_task_and_mismatched_csv(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no rows for task='u'; it has: t"):
        oracle_table(_frame({(1e-3, 0): 1.0}), "u")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="it is not an oracle grid CSV"):
        oracle_grid(_tiny(), csv_path=bad, lrs=[1e-3], warmups=[0], seeds=1, workers=0)
    with pytest.raises(ValueError, match="warmups must lie in"):
        oracle_grid(_tiny(), csv_path=tmp_path / "x.csv", lrs=[1e-3], warmups=[31], seeds=1)


def test_a_file_that_is_not_csv_is_refused_naming_it(tmp_path: Path) -> None:
    # pandas' own errors ("Error tokenizing data. C error: ...") name neither the file nor
    # what it should be
    suggestion = tmp_path / "suggestion.json"
    suggestion.write_text(
        json.dumps({"format": "autowarm.suggestion", "rationale": "a, b, c, d"}, indent=1)
    )
    binary = tmp_path / "grid.csv"
    binary.write_bytes(b"task,peak_lr\n\xff\xfe\x00,1\n")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    for path, why in (
        (suggestion, "it cannot be read as CSV"),
        (binary, "not UTF-8 text"),
        (empty, "it is empty"),
    ):
        with pytest.raises(ValueError) as err:
            load_grid(path)
        message = str(err.value)
        assert message.startswith(f"{path} is not an oracle grid CSV (`autowarm bench grid`")
        assert why in message and len(message.splitlines()) == 1
        with pytest.raises(ValueError, match="is not an oracle grid CSV"):
            oracle_table(path, "t")


def test_cli_grid_table_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "grid",
        "--tasks",
        "control_convex",
        "--total-steps",
        "20",
        "--seeds",
        "1",
        "--workers",
        "0",
        "--lrs",
        "1e-3,1e-2,0.001",  # a repeated value runs once
        "--warmups",
        "0,5,5",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert '"ran": 4' in capsys.readouterr().out
    assert main(["table", str(tmp_path / "oracle_grid.csv")]) == 0
    out = capsys.readouterr().out
    assert '"task": "control_convex"' in out
    # one seed: no held-out regret, written as JSON's null (NaN is not JSON)
    assert json.loads(out)[0]["heldout_regret"] is None
    csv_path = str(tmp_path / "oracle_grid.csv")
    assert main(["table", csv_path, "--task", "control_convex", "--pivot"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "peak_lr,0,5"
    # --csv, as grid, eval and regret spell it, reads the same file
    assert main(["table", "--csv", csv_path, "--task", "control_convex", "--pivot"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "peak_lr,0,5"
    assert main(["table", csv_path, "--csv", str(tmp_path / "other.csv")]) == 1
    assert "two grid CSVs" in capsys.readouterr().err
    assert main(["grid", "--tasks", "nope", "--out", str(tmp_path)]) == 1
    assert "valid names" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::autowarm.bench.GridEdgeWarning")
def test_a_row_cut_short_by_a_kill_is_run_again(tmp_path: Path) -> None:
    task = _tiny()
    csv_path = tmp_path / "grid.csv"
    oracle_grid(task, csv_path=csv_path, lrs=[1e-2], warmups=[0, 5], seeds=1, workers=0)
    text = csv_path.read_text()
    last_start = text.rstrip("\r\n").rfind("\n") + 1
    csv_path.write_text(text[: last_start + 12])  # the last row loses its tail, no newline
    result = oracle_grid(task, csv_path=csv_path, lrs=[1e-2], warmups=[0, 5], seeds=1, workers=0)
    assert (result.ran, result.skipped) == (1, 1)
    table = oracle_table(csv_path, task.name)
    assert table.n_cells == 2 and set(table.cells["n_seeds"]) == {1}


def test_rows_keep_coming_when_the_csv_is_replaced_midway(tmp_path: Path) -> None:
    from autowarm.bench._grid import COLUMNS, RowAppender

    csv_path = tmp_path / "grid.csv"
    writer = RowAppender(csv_path, COLUMNS)
    row = dict.fromkeys(COLUMNS, "1")
    writer.write(row)
    header = csv_path.read_text().splitlines()[0]
    csv_path.unlink()
    csv_path.write_text(header + "\n")  # e.g. `git checkout` of an older version
    writer.write(row)
    assert len(csv_path.read_text().splitlines()) == 2


@pytest.mark.filterwarnings("ignore::autowarm.bench.GridEdgeWarning")
def test_cli_table_picks_one_of_several_run_lengths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = tmp_path / "grid.csv"
    for steps in (10, 20):
        task = dataclasses.replace(get_task("control_convex"), total_steps=steps, val_batches=1)
        oracle_grid(task, csv_path=csv_path, lrs=[1e-2], warmups=[0, 5], seeds=1, workers=0)
    assert main(["table", str(csv_path)]) == 1
    assert "--total-steps N" in capsys.readouterr().err
    assert main(["table", str(csv_path), "--total-steps", "20"]) == 0
    assert '"total_steps": 20' in capsys.readouterr().out
    assert main(["table", str(csv_path), "--task", "control_convex", "--total-steps", "10"]) == 0
    assert capsys.readouterr().out.count("\n") == 3  # header + two cells of length 10
    assert main(["table", str(csv_path), "--total-steps", "30"]) == 1
    assert "[10, 20]" in capsys.readouterr().err


def test_cli_table_says_when_cells_ran_over_different_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # a second grid command added a cell with fewer seeds: its best cell was shown silently
    csv_path = tmp_path / "grid.csv"
    task = dataclasses.replace(get_task("control_convex"), total_steps=10, val_batches=1)
    oracle_grid(task, csv_path=csv_path, lrs=[1e-2], warmups=[0], seeds=2, workers=0)
    with caplog.at_level("WARNING"):
        assert main(["table", str(csv_path)]) == 0
    assert "different seeds" not in caplog.text
    oracle_grid(task, csv_path=csv_path, lrs=[3e-2], warmups=[0], seeds=1, workers=0)
    with caplog.at_level("WARNING"):
        assert main(["table", str(csv_path)]) == 0
    assert "has cells over different seeds (1 to 2 per cell)" in caplog.text


_POOL_THEN_HANG = """
import os, sys, time
from autowarm.bench._grid import process_pool
pool = process_pool(1)
print(pool.submit(os.getpid).result(), flush=True)
pool.submit(time.sleep, 600)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_end_when_the_main_process_is_killed(sig: signal.Signals) -> None:
    # Workers are children of the forkserver, so no signal to the main process reaches them;
    # they used to run on for good (a job scheduler's preemption, `timeout`).
    proc = subprocess.Popen(
        [sys.executable, "-c", _POOL_THEN_HANG], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    proc.send_signal(sig)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.2)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by the forkserver) counts as ended
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return bool(stat) and stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_stop_pool_ends_running_workers_at_once() -> None:
    # Ctrl-C (or SIGINT to the main process alone) must not wait for the running cells, whose
    # rows nobody would write: the workers end now and their cells run again on resume
    import time

    from autowarm.bench._grid import process_pool, stop_pool

    pool = process_pool(2)
    futures = [pool.submit(time.sleep, 120) for _ in range(6)]
    deadline = time.monotonic() + 60
    while not all(f.running() for f in futures[:2]) and time.monotonic() < deadline:
        time.sleep(0.05)
    processes = list(pool._processes.values())  # type: ignore[attr-defined]
    assert len(processes) == 2
    start = time.monotonic()
    stop_pool(pool)
    for process in processes:
        process.join(20)
    assert not any(p.is_alive() for p in processes)
    assert time.monotonic() - start < 20  # not the 120 s of the running jobs
    # the executor's call queue holds workers + 1 jobs (marked running) besides the ones the
    # workers took, so at most 2 + 3 of the 6 were handed out; the rest are cancelled (which
    # of 3..4 were handed out depends on how fast the workers took theirs: CI flaked on it)
    assert futures[-1].cancelled()


def test_a_second_process_on_the_same_csv_is_refused(tmp_path: Path) -> None:
    # two grids on one CSV would each run every cell and write each row twice
    import fcntl

    from autowarm.bench._grid import writing_alone

    csv_path = tmp_path / "out" / "oracle_grid.csv"
    busy = r"another process is writing .*oracle_grid\.csv"
    with writing_alone(csv_path):
        # what a second process's lock attempt sees
        with open(csv_path, "a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match=busy), writing_alone(csv_path):
            pass
    with writing_alone(csv_path):  # released
        pass


def test_a_run_refused_by_the_lock_writes_no_record(tmp_path: Path) -> None:
    # The task definitions were recorded before the lock was taken: a second run refused
    # because the first one held the CSV still rewrote the record beside it.
    from autowarm.bench._evaluate import evaluate_methods
    from autowarm.bench._grid import definitions_path, plan_path, writing_alone

    busy = "another process is writing"
    grid = tmp_path / "oracle_grid.csv"
    with writing_alone(grid), pytest.raises(ValueError, match=busy):
        oracle_grid(_tiny(), csv_path=grid, lrs=[1e-3], warmups=[0], seeds=1, workers=0)
    assert not definitions_path(grid).exists() and not plan_path(grid).exists()
    ev = tmp_path / "evaluation.csv"
    with writing_alone(ev), pytest.raises(ValueError, match=busy):
        evaluate_methods(["control_convex"], csv_path=ev, methods=["hf_default"], workers=0)
    assert not definitions_path(ev).exists()


def test_a_grid_resumed_with_another_torch_says_it_mixes_versions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task = _tiny()
    csv_path = tmp_path / "grid.csv"
    kw: dict[str, Any] = dict(csv_path=csv_path, lrs=[1e-3], warmups=[0], workers=0)
    oracle_grid(task, seeds=1, **kw)
    frame = pd.read_csv(csv_path)
    frame.assign(torch_version="2.0.0").to_csv(csv_path, index=False)  # an older torch's row
    with caplog.at_level(logging.WARNING, logger="autowarm.bench._grid"):
        oracle_grid(task, seeds=1, **kw)  # nothing to run: nothing to say
        assert "mix versions" not in caplog.text
        oracle_grid(task, seeds=2, **kw)  # seed 1 runs beside seed 0's older row
    assert "made by autowarm" in caplog.text and "with torch 2.0.0" in caplog.text
    assert "so the grid will mix versions" in caplog.text


def test_a_grid_row_cut_by_a_kill_is_cut_off_when_the_grid_resumes(tmp_path: Path) -> None:
    # It was ended with a newline and kept: every later table and regret warned about it.
    csv_path = tmp_path / "grid.csv"
    task = dataclasses.replace(get_task("control_convex"), total_steps=10, val_batches=1)
    kw: dict[str, Any] = dict(csv_path=csv_path, lrs=[1e-2], warmups=[0, 5], seeds=1, workers=0)
    oracle_grid(task, **kw)
    whole = csv_path.read_bytes()
    cut = (
        whole.rstrip(b"\n").rsplit(b"\n", 1)[0]
        + b"\n"
        + whole.rstrip(b"\n").rsplit(b"\n", 1)[1][:20]
    )
    csv_path.write_bytes(cut)  # the last row cut short, no line end
    result = oracle_grid(task, **kw)
    assert result.ran == 1 and result.skipped == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "dropping 1 row(s)" any more
        rows = load_grid(csv_path)
    assert len(rows) == 2


def test_a_whole_last_row_without_its_line_end_runs_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # It was counted as done, then cut off by the appender: "0 to run" and the row gone.
    csv_path = tmp_path / "grid.csv"
    task = dataclasses.replace(get_task("control_convex"), total_steps=10, val_batches=1)
    kw: dict[str, Any] = dict(csv_path=csv_path, lrs=[1e-2], warmups=[0, 5], seeds=1, workers=0)
    oracle_grid(task, **kw)
    csv_path.write_bytes(csv_path.read_bytes().rstrip(b"\n"))  # every field there, no line end
    with caplog.at_level(logging.WARNING, logger="autowarm.bench._grid"):
        result = oracle_grid(task, **kw)
    assert (result.ran, result.skipped) == (1, 1)
    assert "dropping its last row, cut short" in caplog.text
    assert len(load_grid(csv_path)) == 2


def test_bench_csvs_end_their_rows_in_newline_only(tmp_path: Path) -> None:
    # pandas rewrites these files with "\n" (removing a method's rows before a re-run); an
    # appender writing csv's default "\r\n" made committed files mix both line ends.
    from autowarm.bench._grid import COLUMNS, RowAppender
    from autowarm.bench._overhead import COLUMNS as OVERHEAD_COLUMNS
    from autowarm.bench._overhead import write_csv

    grid = tmp_path / "grid.csv"
    writer = RowAppender(grid, COLUMNS)
    writer.write(dict.fromkeys(COLUMNS, "1"))
    grid.write_bytes(grid.read_bytes() + b"1,2")  # a row cut by a kill: ended, then skipped
    writer.write(dict.fromkeys(COLUMNS, "2"))
    overhead = tmp_path / "overhead.csv"
    write_csv([dict.fromkeys(OVERHEAD_COLUMNS, 1.0)], overhead)  # type: ignore[list-item]
    for path, lines in ((grid, 4), (overhead, 2)):  # study and ranks: RowAppender too
        data = path.read_bytes()
        assert b"\r" not in data and data.count(b"\n") == lines, path.name
