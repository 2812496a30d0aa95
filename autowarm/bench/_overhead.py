"""Overhead of second-moment monitoring on a training step, measured side by side.

The probe calls :meth:`~autowarm.probe._moments.SecondMomentMonitor.update` after every
:func:`autowarm._train.train_step` of a burst. This module times that cost on CPU (or, with
``--device cuda``, on a GPU): one model and one AdamW optimizer take *plain* steps
(``train_step`` only) and *monitored* steps (``train_step`` then ``monitor.update()``)
interleaved in ABBA blocks (A B B A, A B B A, ...) in one process, so slow drifts of a shared
machine's load hit both arms alike. The first ``warmup_steps`` blocks are discarded; per-step
wall times come from ``time.perf_counter``.

Reported per model size: the median step time of each arm, their ratio (with a bootstrap 95%
interval over blocks and the ratio of the minima, the least noise-prone estimate), the same
ratio in thread CPU time (``time.thread_time``, blind to time slices lost to other processes),
the time of ``monitor.update()`` alone as a cross-check, and the memory of the probe's weight
snapshot (:class:`~autowarm.probe._state.ModelSnapshot`) and of the monitor's buffers.

The model is a small pre-LN transformer (causal self-attention and a 4x MLP per block, a
linear head over 256 classes, float32), its width chosen so that the parameter count is close
to the target. Inputs are random float features, so no embedding table is involved.

Command::

    python -m autowarm.bench._overhead --sizes 1e6,3e6,1e7,3e7,1e8 --out reports/benchmark/
    autowarm bench overhead --device cuda --sizes 1e6,1e7,1e8 --out reports/gpu
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import gc
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from autowarm._checks import no_abbreviations
from autowarm._train import train_step
from autowarm.bench import _args
from autowarm.probe._moments import SecondMomentMonitor
from autowarm.probe._state import ModelSnapshot

__all__ = [
    "COLUMNS",
    "OverheadResult",
    "add_arguments",
    "build_model",
    "default_steps",
    "format_table",
    "main",
    "measure_overhead",
    "monitor_nbytes",
    "run",
    "write_csv",
]

# Columns of overhead.csv: the required ones first, then the extra detail.
COLUMNS = (
    "n_params",
    "step_ms_plain",
    "step_ms_monitored",
    "overhead_ratio",
    "monitor_update_ms",
    "snapshot_mb",
    "monitor_kb",
    "steps",
    "threads",
    "torch_version",
    "n_params_target",
    "ratio_ci_low",
    "ratio_ci_high",
    "ratio_of_mins",
    "direct_ratio",
    "batch_rows",
    "width",
    "n_layers",
    "n_tensors",
    "monitor_coords",
    "warmup_steps",
    "cpu_ms_plain",
    "cpu_ms_monitored",
    "cpu_overhead_ratio",
    "loadavg_1m",
    "seconds",
    "device",
)

_N_LAYERS = 6
_N_CLASSES = 256
_HEAD_DIM = 64
_N_BATCHES = 4  # distinct batches, cycled
_BOOTSTRAP = 2000


class OverheadResult(TypedDict):
    """One model size's measurement (times in milliseconds, memory in MiB / KiB)."""

    n_params: int
    step_ms_plain: float
    step_ms_monitored: float
    overhead_ratio: float
    monitor_update_ms: float
    snapshot_mb: float
    monitor_kb: float
    steps: int
    threads: int
    torch_version: str
    n_params_target: int
    ratio_ci_low: float
    ratio_ci_high: float
    ratio_of_mins: float
    direct_ratio: float
    batch_rows: int
    width: int
    n_layers: int
    n_tensors: int
    monitor_coords: int
    warmup_steps: int
    cpu_ms_plain: float
    cpu_ms_monitored: float
    cpu_overhead_ratio: float
    loadavg_1m: float
    seconds: float
    snapshot_bytes: int
    monitor_bytes: int
    device: str


class _Block(nn.Module):
    """Pre-LN transformer block: causal self-attention and a 4x GELU MLP, both residual."""

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        shape = (b, t, self.n_heads, d // self.n_heads)
        q, k, v = (z.reshape(shape).transpose(1, 2) for z in (q, k, v))
        att: torch.Tensor = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return out


class _TinyTransformer(nn.Module):
    """A stack of :class:`_Block` with a final LayerNorm and a linear classification head."""

    def __init__(self, width: int, n_layers: int, n_heads: int, n_classes: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(width, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.head(self.ln(x))
        return out


def _n_params(width: int, n_layers: int, n_classes: int) -> int:
    # Per block: 2 LayerNorms (4d), qkv (3d^2 + 3d), proj (d^2 + d), fc1 (4d^2 + 4d),
    # fc2 (4d^2 + d); then the final LayerNorm (2d) and the head (d*C + C).
    per_block = 12 * width * width + 13 * width
    return n_layers * per_block + 2 * width + width * n_classes + n_classes


def _shape_for(n_params_target: int, n_layers: int) -> tuple[int, int]:
    # The width (a multiple of the head count) whose parameter count is closest to the target.
    a, b = 12 * n_layers, 13 * n_layers + 2 + _N_CLASSES
    guess = (-b + math.sqrt(b * b + 4 * a * max(n_params_target - _N_CLASSES, 1))) / (2 * a)
    n_heads = max(1, round(guess / _HEAD_DIM))
    candidates = {
        max(n_heads, n_heads * math.floor(guess / n_heads)),
        max(n_heads, n_heads * math.ceil(guess / n_heads)),
    }
    width = min(
        candidates, key=lambda w: abs(_n_params(w, n_layers, _N_CLASSES) - n_params_target)
    )
    return width, n_heads


def build_model(
    n_params_target: int, *, n_layers: int = _N_LAYERS, seed: int = 0
) -> tuple[nn.Module, int]:
    """A float32 pre-LN transformer with about ``n_params_target`` parameters.

    Args:
        n_params_target:
            Wanted number of parameters; the width is rounded to a multiple of the head count
            (heads of about 64 channels), so the count lands within a few percent.
        n_layers:
            Number of transformer blocks.
        seed:
            Seed of the initialisation.

    Returns:
        The model and its width (the feature size of its inputs).

    Raises:
        ValueError: ``n_params_target`` or ``n_layers`` is not positive.

    Example:
        >>> model, width = build_model(1_000_000)
        >>> width, sum(p.numel() for p in model.parameters())
        (116, 1008064)
    """
    if n_params_target < 1 or n_layers < 1:
        raise ValueError(
            "n_params_target and n_layers must be positive, but got "
            f"n_params_target={n_params_target!r}, n_layers={n_layers!r}"
        )
    width, n_heads = _shape_for(n_params_target, n_layers)
    torch.manual_seed(seed)
    return _TinyTransformer(width, n_layers, n_heads, _N_CLASSES), width


def monitor_nbytes(monitor: SecondMomentMonitor) -> int:
    """Bytes held by a monitor's own tensors (sample indices and running state).

    The model's parameters that the monitor references are not counted, nor the transient
    vectors one :meth:`~SecondMomentMonitor.update` allocates (a few more of ``n_coords``
    entries, freed when it returns), nor :attr:`~SecondMomentMonitor.history` (one small
    Python object per observed update).

    Args:
        monitor:
            The monitor.

    Returns:
        The total ``numel * element_size`` of the tensors it owns.
    """
    seen: set[int] = set()
    total = 0

    def add(obj: Any) -> None:
        nonlocal total
        if isinstance(obj, nn.Parameter) or id(obj) in seen:
            return
        if isinstance(obj, torch.Tensor):
            seen.add(id(obj))
            total += obj.numel() * obj.element_size()
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                add(item)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                add(getattr(obj, f.name))

    for value in vars(monitor).values():
        if not isinstance(value, torch.optim.Optimizer):
            add(value)
    return total


def _batches(
    n: int, rows: int, seq_len: int, width: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    n_seq = rows // seq_len
    return [
        (
            torch.randn(n_seq, seq_len, width, generator=gen),
            torch.randint(0, _N_CLASSES, (n_seq, seq_len), generator=gen),
        )
        for _ in range(n)
    ]


def _token_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def measure_overhead(
    n_params_target: int | float,
    *,
    steps: int,
    warmup_steps: int,
    batch: int,
    seed: int = 0,
    max_coords: int = 16384,
    seq_len: int = 16,
    threads: int = 1,
    device: torch.device | str = "cpu",
) -> OverheadResult:
    """Time plain and monitored training steps side by side on one model.

    One model and one ``AdamW`` (lr 1e-4) run :func:`autowarm._train.train_step` on a cycle of
    fixed random batches; every second step of each ABBA block is followed by
    ``monitor.update()`` of a :class:`SecondMomentMonitor` (``max_coords``, ``every=1``, as the
    probe builds it), so both arms share the weights, the optimizer state and the batches.
    A monitored step's time includes the update; the update is also timed alone. torch runs
    with ``threads`` intra-op threads for the measurement (restored afterwards).

    Args:
        n_params_target:
            Wanted parameter count (see :func:`build_model`).
        steps:
            Timed steps per arm, rounded up to an even number (two per ABBA block).
        warmup_steps:
            Untimed steps per arm before that (rounded up to even as well), so that AdamW's
            state and the monitor's buffers exist and caches are warm.
        batch:
            Rows (tokens) per step, a multiple of ``seq_len``.
        seed:
            Seed of the weights, the batches, the monitor's sample and the bootstrap.
        max_coords:
            The monitor's coordinate budget (the probe uses 16384).
        seq_len:
            Tokens per sequence; ``batch // seq_len`` sequences per step.
        threads:
            ``torch.set_num_threads`` during the measurement.
        device:
            Where the model, its optimizer state and the batches live. On CUDA every timed
            interval starts and ends with ``torch.cuda.synchronize()``, so a step's time is
            the GPU work it queued, not only the host's (``train_step`` itself syncs twice,
            for the loss and the gradient norm, but the optimizer's kernels would still be in
            flight).

    Returns:
        The measurement; ``overhead_ratio`` is the median monitored step time over the median
        plain one, ``ratio_ci_low``/``ratio_ci_high`` its bootstrap 95% interval (blocks
        resampled), ``ratio_of_mins`` the ratio of the fastest steps and ``direct_ratio``
        ``1 + monitor_update_ms / step_ms_plain``. The ``cpu_*`` fields are the same medians
        in this thread's CPU time (``time.thread_time``), which time slices lost to other
        processes on a shared machine do not inflate (on CUDA they are the host thread's
        time, waits in ``synchronize`` included, not the GPU's: read the wall-time ratio
        there); ``loadavg_1m`` is the 1-minute load average at the end. ``snapshot_mb`` is in
        MiB, ``monitor_kb`` in KiB.

    Raises:
        ValueError: a count is not positive or ``batch`` is not a multiple of ``seq_len``.
    """
    target = int(n_params_target)
    for name, value in (("steps", steps), ("batch", batch), ("seq_len", seq_len)):
        if value < 1:
            raise ValueError(f"{name} must be positive, but got {name}={value!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, but got warmup_steps={warmup_steps!r}")
    if batch % seq_len:
        raise ValueError(f"batch must be a multiple of seq_len={seq_len}, but got batch={batch!r}")
    blocks, warm_blocks = math.ceil(steps / 2), math.ceil(warmup_steps / 2)
    dev = torch.device(device)
    # the device timed, not the current one (--device cuda:1)
    sync = functools.partial(torch.cuda.synchronize, dev) if dev.type == "cuda" else _no_sync
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        model, width = build_model(target, seed=seed)
        model.to(dev).train()
        n_params = sum(p.numel() for p in model.parameters())
        snapshot = ModelSnapshot(model)
        snapshot_bytes = snapshot.nbytes
        snapshot.release()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        monitor = SecondMomentMonitor(optimizer, max_coords=max_coords, seed=seed)
        data = [
            (x.to(dev), y.to(dev)) for x, y in _batches(_N_BATCHES, batch, seq_len, width, seed)
        ]
        plain: list[float] = []
        monitored: list[float] = []
        update: list[float] = []
        cpu_plain: list[float] = []
        cpu_monitored: list[float] = []
        k = 0
        gc.collect()
        for block in range(warm_blocks + blocks):
            for arm in ("A", "B", "B", "A"):
                sync()
                c0, t0 = time.thread_time(), time.perf_counter()
                train_step(model, optimizer, data[k % _N_BATCHES], _token_loss)
                sync()
                t1 = time.perf_counter()
                if arm == "B":
                    monitor.update()
                    sync()
                t2, c2 = time.perf_counter(), time.thread_time()
                k += 1
                if block < warm_blocks:
                    continue
                if arm == "A":
                    plain.append(t1 - t0)
                    cpu_plain.append(c2 - c0)
                else:
                    monitored.append(t2 - t0)
                    update.append(t2 - t1)
                    cpu_monitored.append(c2 - c0)
        monitor_bytes = monitor_nbytes(monitor)
        n_tensors = len(optimizer.param_groups[0]["params"])
    finally:
        torch.set_num_threads(before)
    a = np.asarray(plain).reshape(blocks, 2)
    b = np.asarray(monitored).reshape(blocks, 2)
    med_a, med_b = float(np.median(a)), float(np.median(b))
    low, high = _bootstrap_ratio(a, b, seed)
    med_update = float(np.median(update))
    return OverheadResult(
        n_params=n_params,
        step_ms_plain=1e3 * med_a,
        step_ms_monitored=1e3 * med_b,
        overhead_ratio=med_b / med_a,
        monitor_update_ms=1e3 * med_update,
        snapshot_mb=snapshot_bytes / 2**20,
        monitor_kb=monitor_bytes / 2**10,
        steps=2 * blocks,
        threads=threads,
        torch_version=torch.__version__,
        n_params_target=target,
        ratio_ci_low=low,
        ratio_ci_high=high,
        ratio_of_mins=float(b.min() / a.min()),
        direct_ratio=1.0 + med_update / med_a,
        batch_rows=batch,
        width=width,
        n_layers=_N_LAYERS,
        n_tensors=n_tensors,
        monitor_coords=monitor.n_coords,
        warmup_steps=2 * warm_blocks,
        cpu_ms_plain=1e3 * float(np.median(cpu_plain)),
        cpu_ms_monitored=1e3 * float(np.median(cpu_monitored)),
        cpu_overhead_ratio=float(np.median(cpu_monitored) / np.median(cpu_plain)),
        loadavg_1m=os.getloadavg()[0],
        seconds=time.perf_counter() - start,
        snapshot_bytes=snapshot_bytes,
        monitor_bytes=monitor_bytes,
        device=str(dev),
    )


def _no_sync() -> None:
    pass


def _bootstrap_ratio(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[float, float]:
    # 95% percentile interval of median(b)/median(a), resampling whole ABBA blocks (paired).
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.shape[0], size=(_BOOTSTRAP, a.shape[0]))
    ratios = np.median(b[idx].reshape(_BOOTSTRAP, -1), axis=1) / np.median(
        a[idx].reshape(_BOOTSTRAP, -1), axis=1
    )
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def default_steps(n_params: float, device: str = "cpu") -> tuple[int, int, int]:
    """Timed steps per arm, warmup steps per arm and rows per step for a model size.

    On CPU, chosen so that all five sizes from 1M to 100M take a few minutes on one core
    together, with the most steps at 10M (the acceptance figure). On a GPU, 200 steps of 4096
    rows (256 sequences of 16) at every size: a step of a few dozen rows would time kernel
    launches, not a training step anyone runs on a GPU.

    Args:
        n_params:
            Target parameter count.
        device:
            ``"cpu"`` or an accelerator's device type (``"cuda"``).

    Returns:
        ``(steps, warmup_steps, batch)``.
    """
    if device != "cpu":
        return 200, 20, 4096
    if n_params <= 2e6:
        return 300, 10, 64
    if n_params <= 5e6:
        return 200, 6, 64
    if n_params <= 2e7:
        return 200, 6, 64
    if n_params <= 5e7:
        return 60, 4, 64
    return 24, 2, 32


def write_csv(rows: Sequence[OverheadResult], path: Path) -> None:
    """Write the measurements to ``path`` with the columns of :data:`COLUMNS`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row[k]) for k in COLUMNS})  # type: ignore[literal-required]


def _fmt(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


def format_table(rows: Sequence[OverheadResult]) -> str:
    """The measurements as a markdown table (one row per model size)."""
    head = (
        "| params | plain step ms | monitored step ms | overhead (95% CI) | min/min | CPU time "
        "| update ms | update/step | snapshot MiB | monitor KiB | steps/arm | rows | load |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['n_params'] / 1e6:.2f}M | {r['step_ms_plain']:.1f} "
            f"| {r['step_ms_monitored']:.1f} "
            f"| {_pct(r['overhead_ratio'])} ({_pct(r['ratio_ci_low'])} .. "
            f"{_pct(r['ratio_ci_high'])}) | {_pct(r['ratio_of_mins'])} "
            f"| {_pct(r['cpu_overhead_ratio'])} "
            f"| {r['monitor_update_ms']:.2f} | {_pct(r['direct_ratio'])} "
            f"| {r['snapshot_mb']:.1f} | {r['monitor_kb']:.0f} | {r['steps']} "
            f"| {r['batch_rows']} | {r['loadavg_1m']:.1f} |"
        )
    return "\n".join(lines)


def _pct(ratio: float) -> str:
    return f"{100.0 * (ratio - 1.0):+.1f}%"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of the overhead benchmark to ``parser``."""
    parser.add_argument(
        "--sizes",
        type=_args.sizes,
        default=_args.sizes("1e6,3e6,1e7,3e7,1e8"),
        help="target parameter counts, comma separated (default 1e6,3e6,1e7,3e7,1e8)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reports/benchmark"),
        help="folder (default reports/benchmark)",
    )
    parser.add_argument(
        "--steps",
        type=_args.positive_int,
        default=None,
        help="timed steps per arm (default: per size)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=_args.count,
        default=None,
        help="untimed steps per arm (default: per size)",
    )
    parser.add_argument(
        "--batch",
        type=_args.positive_int,
        default=None,
        help="rows per step, multiple of 16 (default: per size)",
    )
    parser.add_argument(
        "--max-coords",
        type=_args.positive_int,
        default=16384,
        help="monitor coordinates (default 16384)",
    )
    parser.add_argument(
        "--threads", type=_args.positive_int, default=1, help="torch threads (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda[:N]: where the model, the optimizer and the batches live",
    )


def run(args: argparse.Namespace) -> int:
    """Measure every size, write ``OUT/overhead.csv`` and print a markdown table.

    Returns:
        The exit code (0).
    """
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"autowarm bench overhead: --device {args.device} but torch.cuda.is_available() is "
            "False here; pass --device cpu"
        )
    rows: list[OverheadResult] = []
    load_before = os.getloadavg()
    for size in args.sizes:
        steps, warmup, batch = default_steps(size, device.type)
        row = measure_overhead(
            size,
            steps=steps if args.steps is None else args.steps,
            warmup_steps=warmup if args.warmup_steps is None else args.warmup_steps,
            batch=batch if args.batch is None else args.batch,
            seed=args.seed,
            max_coords=args.max_coords,
            threads=args.threads,
            device=device,
        )
        rows.append(row)
        print(
            f"{row['n_params'] / 1e6:.2f}M params: overhead {_pct(row['overhead_ratio'])} "
            f"({row['steps']} steps/arm, {row['seconds']:.0f} s, "
            f"load {os.getloadavg()[0]:.2f})",
            file=sys.stderr,
            flush=True,
        )
    out: Path = args.out
    write_csv(rows, out / "overhead.csv")
    load_after = os.getloadavg()
    print(format_table(rows))
    print()
    where = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    print(
        f"{where}torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), max_coords={args.max_coords}; "
        f"load average (1/5/15 min) before {_load(load_before)}, after {_load(load_after)}; "
        f"wrote {out / 'overhead.csv'}"
    )
    return 0


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m autowarm.bench._overhead``: parse ``argv`` and :func:`run`."""
    parser = argparse.ArgumentParser(
        prog="python -m autowarm.bench._overhead",
        description="Time second-moment monitoring against plain training steps (CPU or GPU).",
    )
    add_arguments(parser)
    no_abbreviations(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
