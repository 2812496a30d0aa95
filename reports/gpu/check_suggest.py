"""``suggest()`` on a CUDA model, end to end: restoration, precision modes, picks and timings.

Run on a machine with a GPU (it exits with a message elsewhere)::

    python reports/gpu/check_suggest.py > reports/gpu/check_suggest.md

For each case, a benchmark task's model (seed 0) is moved to the GPU and probed as
``autowarm bench eval`` probes it (same optimizer settings, ``total_steps``, seed 0). Afterwards
every parameter and buffer is compared bitwise with a clone taken before (dtype and device too),
and the torch CPU, CUDA, numpy and ``random`` RNG states with theirs. Reported per case: the
pick, its confidence and deciding signal, the probe's wall time, the wall time of the same
number of plain training steps on a copy of the model (``train_step`` with the task's AdamW,
fp32), and the GPU memory the probe allocated above the model's own weights (peak).

The fp32 picks are printed beside the CPU picks in ``reports/benchmark/evaluation.csv`` (same
task, seed and settings): floating-point sums differ between the devices, so equal picks are
not guaranteed, and the table says whether they agree.
"""

from __future__ import annotations

import copy
import csv
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import autowarm
from autowarm._train import BatchStream, train_step
from autowarm.bench.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
CASES = [
    # (task, precision, snapshot_device)
    ("postln_lm", "32-true", None),
    ("postln_lm", "32-true", "cpu"),
    ("postln_lm", "bf16-mixed", None),
    ("postln_lm", "16-mixed", None),
    ("hf_gpt2", "32-true", None),
    ("hf_gpt2", "bf16-mixed", None),
    ("deep_mlp", "32-true", None),
    ("convnet", "32-true", None),
    ("control_convex", "32-true", None),
]


def _cpu_picks() -> dict[str, tuple[float, int]]:
    picks = {}
    with (ROOT / "reports/benchmark/evaluation.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row["method"] == "autowarm" and row["seed"] == "0":
                picks[row["task"]] = (float(row["peak_lr"]), int(row["warmup_steps"]))
    return picks


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = list(model.named_parameters()) + list(model.named_buffers())
    return {name: t.detach().clone() for name, t in named}


def _rng() -> tuple[Any, ...]:
    return (
        torch.get_rng_state(),
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        np.random.get_state(),
        random.getstate(),
    )


def _same_rng(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    np_a, np_b = a[2], b[2]
    return (
        torch.equal(a[0], b[0])
        and len(a[1]) == len(b[1])
        and all(torch.equal(x, y) for x, y in zip(a[1], b[1], strict=True))
        and np_a[0] == np_b[0]
        and np.array_equal(np_a[1], np_b[1])
        and np_a[2:] == np_b[2:]
        and a[3] == b[3]
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain_steps(task: Any, model: torch.nn.Module, n: int, lr: float) -> float:
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    optimizer = task.make_optimizer(model.parameters(), lr)
    stream = BatchStream(task.train_data(0), device)
    loss_fn = task.resolved_loss_fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        train_step(model, optimizer, stream.next(), loss_fn, grad_clip=task.grad_clip)
    _sync(device)
    return time.perf_counter() - start


def _cpu_model_with_buffers(device: torch.device) -> int:
    # A CPU model with BatchNorm buffers probed with suggest(device=...): Module.to gives the
    # buffers new tensors, which the bursts must keep on the device (the review of 2026-11-27
    # found them put back on the CPU before every burst). 1 when it fails or does not restore.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
    )
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(64 * 16, 8, generator=g)
    ys = xs.sum(1, keepdim=True)
    data = [(xs[i : i + 64], ys[i : i + 64]) for i in range(0, len(xs), 64)]
    before, rng = _state(model), _rng()
    try:
        s = autowarm.suggest(
            model,
            data,
            torch.optim.AdamW,
            criterion=torch.nn.functional.mse_loss,
            total_steps=2000,
            device=device,
            progress=False,
        )
        answer = f"peak lr {s.peak_lr:.3g}, warmup {s.warmup_steps}"
    except Exception as exc:  # reported, not raised: the table above is still wanted
        answer = f"FAILED: {type(exc).__name__}: {exc}"
    after = _state(model)
    restored = _same_rng(rng, _rng()) and all(
        a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
        for a, b in zip(before.values(), after.values(), strict=True)
    )
    ok = restored and not answer.startswith("FAILED")
    print(
        f"\nCPU model with BatchNorm, suggest(device={str(device)!r}): {answer}; "
        f"back on the CPU bitwise: {'yes' if restored else 'NO'}"
    )
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    # ``--device cpu`` (and a task list) only to try the script out where there is no GPU.
    device = torch.device(argv[0] if argv else "cuda")
    tasks = set(argv[1].split(",")) if len(argv) > 1 else None
    if device.type == "cuda" and not torch.cuda.is_available():
        print("check_suggest: needs CUDA (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"{where}, torch {torch.__version__}, autowarm {autowarm.__version__}\n")
    cpu = _cpu_picks()
    head = (
        "| task | precision | snapshot | peak lr | warmup | confidence | deciding | CPU pick "
        "| probe s | plain steps s | probe steps | extra GPU MiB | weights MiB | restored |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    failures = 0
    for name, precision, snapshot_device in CASES:
        if tasks is not None and name not in tasks:
            continue
        task = get_task(name)
        if not task.is_available():
            print(f"| {name} | {precision} | skipped: needs {task.requires} |")
            continue
        model = task.make_model(0).to(device)
        before, rng = _state(model), _rng()
        weights = sum(t.numel() * t.element_size() for t in before.values())
        _sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if cuda else 0
        start = time.perf_counter()
        s = autowarm.suggest(
            model,
            task.train_data(0),
            torch.optim.AdamW,
            optimizer_kwargs=dict(task.optimizer_kwargs),
            loss_fn=task.loss_fn,
            criterion=task.criterion,
            total_steps=task.total_steps,
            seed=0,
            progress=False,
            precision=precision,
            snapshot_device=snapshot_device,
        )
        _sync(device)
        probe_s = time.perf_counter() - start
        extra = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else math.nan
        after = _state(model)
        restored = (
            before.keys() == after.keys()
            and all(
                a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
                for a, b in zip(before.values(), after.values(), strict=True)
            )
            and _same_rng(rng, _rng())
        )
        failures += not restored
        plain_s = _plain_steps(task, model, s.probe_steps, s.peak_lr)
        c = cpu.get(name)
        cpu_pick = f"{c[0]:.3g} / {c[1]}" if c else "-"
        print(
            f"| {name} | {precision} | {snapshot_device or 'same'} | {s.peak_lr:.3g} "
            f"| {s.warmup_steps} | {s.confidence} | {s.deciding_signal} | {cpu_pick} "
            f"| {probe_s:.1f} | {plain_s:.1f} | {s.probe_steps} | {extra:.1f} "
            f"| {weights / 2**20:.1f} | {'yes' if restored else 'NO'} |",
            flush=True,
        )
    failures += _cpu_model_with_buffers(device)
    print(f"{failures} case(s) not restored")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
