"""The method evaluation and the regret table, end to end on a tiny configuration."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from autowarm.bench._evaluate import (
    METHODS,
    evaluate_methods,
    finder_lr,
    regret_markdown,
    regret_table,
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


def test_unknown_method_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="methods must be among"):
        evaluate_methods(["control_convex"], csv_path=tmp_path / "e.csv", methods=["nope"])
