"""Summarise grid.csv (made by run.sh): the spread of a full run's final loss under LR changes of
a few parts in 10^9, per (task, cell, seed), and per cell against the oracle's best cell.

Run from the repository root: python reports/benchmark/numerical_noise/summary.py
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
ORACLE = HERE.parent / "three_seeds" / "oracle_grid.csv"


def main() -> None:
    runs = pd.read_csv(HERE / "grid.csv")
    runs["cell_lr"] = runs["peak_lr"].round(6)
    runs["loss"] = runs["final_val_loss"].where(~runs["diverged"].astype(bool), math.inf)
    oracle = pd.read_csv(ORACLE)
    oracle = oracle[oracle["seed"].isin(runs["seed"].unique())]
    cells = oracle.groupby(["task", "peak_lr", "warmup_steps"])["final_val_loss"].mean()
    best = cells.groupby(level="task").min()

    lines = [
        "Per seed: four runs of one cell whose peak LR differs by at most 3e-9 (relative).",
        "",
        "| task | peak lr | warmup | seed | final losses | spread (max/min - 1) |",
        "|---|---|---|---|---|---|",
    ]
    keys = ["task", "cell_lr", "warmup_steps", "seed"]
    for (task, lr, w, seed), g in runs.groupby(keys):
        finite = g["loss"][g["loss"].map(math.isfinite)]
        spread = finite.max() / finite.min() - 1 if len(finite) else math.nan
        shown = ", ".join("diverged" if not math.isfinite(x) else f"{x:.4f}" for x in g["loss"])
        lines.append(f"| {task} | {lr:g} | {w} | {seed} | {shown} | {spread:.1%} |")
    lines += [
        "",
        "Per cell, over all seeds and replicates, against the oracle's best cell",
        "(three_seeds/oracle_grid.csv, one run per seed): the mean final loss (as the benchmark",
        "averages), the median, and the runs that collapsed (final loss above 10x the cell's",
        "median: the network ended near a constant predictor, which the benchmark's divergence",
        "rule, 10x the initial loss, does not count as diverged).",
        "",
        "| task | peak lr | warmup | runs | collapsed | mean | regret of mean | median "
        "| regret of median |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, lr, w), g in runs.groupby(["task", "cell_lr", "warmup_steps"]):
        loss = g["loss"]
        median = loss.median()
        collapsed = int((loss > 10 * median).sum())
        mean = loss.mean()
        lines.append(
            f"| {task} | {lr:g} | {w} | {len(g)} | {collapsed} | {mean:.4f} | "
            f"{mean / best[task] - 1:+.1%} | {median:.4f} | {median / best[task] - 1:+.1%} |"
        )
    text = "\n".join(lines) + "\n"
    (HERE / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
