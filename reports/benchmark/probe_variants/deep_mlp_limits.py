"""Two measurements of what the probe's ladder can and cannot see (session of 2026-11-26).

``continuation TASK``: does a model trained for a burst at the probe's peak tolerate larger LRs?
For each seed: suggest() as the benchmark runs it; then, from the initial weights, the ladder's
burst at the chosen peak p (a 10-step linear ramp, 30 steps at p), continued without a break by
an exponential sweep from p upward (x1.12 per step, 40 steps). Printed: the LR (as a multiple of
p) of the continuation's lowest smoothed loss, where it first rose 30% above the burst's tail,
and its smoothed loss every 4 steps.

``ceiling TASK``: how good could the ladder be with a perfect chooser? For each seed: suggest(),
then one full run at each peak the ladder tried, with no warmup and with a 500-step (25%)
warmup. One line per run: task, seed, peak, warmup, final validation loss.

Run from the repository root, e.g.
    python reports/benchmark/probe_variants/deep_mlp_limits.py ceiling deep_mlp
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import pandas as pd
import torch

from autowarm._suggest import Suggestion, suggest
from autowarm._train import BatchStream, model_device, train_step
from autowarm.bench._run import run_schedule
from autowarm.bench.tasks import BenchTask, get_task
from autowarm.schedules import ScheduleConfig

torch.set_num_threads(1)


def probe(task: BenchTask, seed: int, **more: Any) -> Suggestion:
    """suggest() on the task as ``autowarm bench eval`` runs it; ``more`` adds arguments
    (``budget_steps=...``)."""
    with torch.random.fork_rng(devices=[]):
        return suggest(
            task.make_model(seed),
            task.train_data(seed),
            torch.optim.AdamW,
            optimizer_kwargs=dict(task.optimizer_kwargs),
            loss_fn=task.resolved_loss_fn(),
            total_steps=task.total_steps,
            seed=seed,
            progress=False,
            **more,
        )


def losses_along(task: BenchTask, seed: int, lrs: list[float]) -> list[float]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.make_model(seed)
        loss_fn = task.resolved_loss_fn()
        opt = task.make_optimizer(model.parameters(), 1e-3, torch.optim.AdamW)
        stream = BatchStream(task.train_data(seed), model_device(model))
        out = []
        for lr in lrs:
            for g in opt.param_groups:
                g["lr"] = lr
            r = train_step(model, opt, stream.next(), loss_fn, grad_clip=None)
            out.append(float(r.loss) if r.finite else math.nan)
            if not r.finite:
                break
        return out


def ema(x: np.ndarray, b: float) -> np.ndarray:
    a, out = 0.0, []
    for i, v in enumerate(x):
        a = b * a + (1 - b) * v
        out.append(a / (1 - b ** (i + 1)))
    return np.array(out)


def continuation(task: BenchTask) -> None:
    for seed in (0, 1, 2):
        p = probe(task, seed).peak_lr
        burst = [p * s / 10 for s in range(10)] + [p] * 30
        sweep = [p * 1.12**i for i in range(40)]
        losses = losses_along(task, seed, burst + sweep)
        smooth = ema(np.nan_to_num(np.array(losses[40:]), nan=1e9), 0.8)
        base = float(np.mean(losses[30:40]))
        rise = [i for i in range(len(smooth)) if smooth[i] > 1.3 * base]
        i_min = int(np.argmin(smooth))
        print(
            f"{task.name} {seed} p={p:.3g} base={base:.3f} min at {sweep[i_min] / p:.1f}x p, "
            f"30% rise at {sweep[rise[0]] / p if rise else math.nan:.1f}x p; smoothed: "
            + " ".join(f"{x:.2f}" for x in smooth[::4]),
            flush=True,
        )


def ceiling(task: BenchTask) -> None:
    for seed in (0, 1, 2):
        trace: pd.DataFrame = probe(task, seed).trace
        ladder = trace[trace["phase"] == "peak_ladder"]
        peaks = sorted({round(float(g["lr"].max()), 8) for _, g in ladder.groupby("burst")})
        for p in peaks:
            for w in (0, 500):
                cfg = ScheduleConfig(peak_lr=p, total_steps=task.total_steps, warmup_steps=w)
                loss = run_schedule(task, cfg, seed).final_val_loss
                print(task.name, seed, p, w, loss, flush=True)


if __name__ == "__main__":
    {"continuation": continuation, "ceiling": ceiling}[sys.argv[1]](get_task(sys.argv[2]))
