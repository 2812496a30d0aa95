"""Plain PyTorch: suggest a warmup, train with it, stop mid-run and resume from a checkpoint.

The model is a small MLP classifier on generated data. ``autowarm.suggest`` probes it, then the
run trains with ``suggestion.schedule.lambda_lr(optimizer)``. A second run stops at
``--resume-at``, writes a checkpoint (model, optimizer and scheduler state), builds everything
afresh, loads the checkpoint and carries on. The example checks that the resumed run uses the
same LR as the uninterrupted one at every step (and ``schedule.lr_at(step)``), and that both
runs end on the same weights, bit for bit.

Run::

    python examples/plain_pytorch.py                 # 400 steps, a few seconds on a CPU
    python examples/plain_pytorch.py --steps 1000 --resume-at 123
"""

from __future__ import annotations

import argparse
import copy
import itertools
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import autowarm


def make_data(n: int, dim: int, classes: int, seed: int) -> TensorDataset:
    """Points labelled by a random linear teacher, with label noise."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(dim, classes, generator=g)
    x = torch.randn(n, dim, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(n, classes, generator=g)).argmax(dim=1)
    return TensorDataset(x, y)


def make_model(dim: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(dim, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, classes),
    )


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    start: int,
    stop: int,
) -> list[float]:
    """Optimizer steps ``start .. stop - 1``; returns the LR each of them used."""
    lrs = []
    step = start
    while step < stop:
        # The shuffle order is a function of the epoch, so a resumed run sees the same batches.
        epoch, done = divmod(step, len(loader))
        loader.generator.manual_seed(1_000 + epoch)
        for inputs, targets in itertools.islice(loader, done, None):
            lrs.append(optimizer.param_groups[0]["lr"])
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()  # after optimizer.step(): the next update uses lr_at(step + 1)
            step += 1
            if step == stop:
                break
    return lrs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=400, help="optimizer steps of the run (default 400)"
    )
    parser.add_argument("--resume-at", type=int, default=None, help="default: half the run")
    parser.add_argument("--tiny", action="store_true", help="smaller model, shortest probe")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: temp)")
    args = parser.parse_args(argv)
    resume_at = args.steps // 2 if args.resume_at is None else args.resume_at
    if not 0 < resume_at < args.steps:
        parser.error(f"--resume-at must be in (0, --steps={args.steps}), but got {resume_at}")

    torch.manual_seed(0)
    dim, hidden, classes = (16, 32, 4) if args.tiny else (32, 128, 8)
    data = make_data(2_048, dim, classes, seed=0)
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator())
    model = make_model(dim, hidden, classes)
    initial = copy.deepcopy(model.state_dict())

    # 1. Probe: the model comes back exactly as it was.
    suggestion = autowarm.suggest(
        model,
        loader,
        torch.optim.AdamW,
        optimizer_kwargs={"weight_decay": 0.01},
        criterion=F.cross_entropy,
        total_steps=args.steps,
        budget_steps=40 if args.tiny else None,
    )
    schedule = suggestion.schedule
    print(
        f"suggested: warmup {suggestion.warmup_steps} steps, peak LR {suggestion.peak_lr:.3g} "
        f"({suggestion.confidence} confidence)"
    )
    if suggestion.low_confidence:  # check it before a long run: the reasons say what to change
        print("low confidence: " + "; ".join(suggestion.low_confidence_reasons))

    # 2. The run, uninterrupted.
    optimizer = torch.optim.AdamW(model.parameters(), weight_decay=0.01)
    scheduler = schedule.lambda_lr(optimizer)
    full_lrs = train(model, optimizer, scheduler, loader, 0, args.steps)

    # 3. The same run from the same weights, stopped at resume_at with a checkpoint...
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = (args.out or Path(tmp)) / "checkpoint.pt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        first = make_model(dim, hidden, classes)
        first.load_state_dict(initial)
        optimizer = torch.optim.AdamW(first.parameters(), weight_decay=0.01)
        scheduler = schedule.lambda_lr(optimizer)
        head = train(first, optimizer, scheduler, loader, 0, resume_at)
        torch.save(
            {
                "model": first.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": resume_at,
            },
            ckpt,
        )

        # ... then resumed in fresh objects, as a new process would.
        state = torch.load(ckpt, weights_only=True)
        resumed = make_model(dim, hidden, classes)
        resumed.load_state_dict(state["model"])
        optimizer = torch.optim.AdamW(resumed.parameters(), weight_decay=0.01)
        scheduler = schedule.lambda_lr(optimizer)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        tail = train(resumed, optimizer, scheduler, loader, state["step"], args.steps)

    expected = [schedule.lr_at(s) for s in range(args.steps)]
    if full_lrs != expected:
        raise SystemExit("the uninterrupted run's LRs differ from schedule.lr_at(step)")
    if head + tail != full_lrs:
        step = next(
            s for s, (a, b) in enumerate(zip(head + tail, full_lrs, strict=True)) if a != b
        )
        raise SystemExit(f"after resuming at step {resume_at} the LR differs from step {step}")
    same = all(
        torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters(), strict=True)
    )
    if not same:
        raise SystemExit("the resumed run ended on different weights")
    print(
        f"resumed at step {resume_at}: LR {tail[0]:.3g} (= lr_at({resume_at})); all "
        f"{args.steps} LRs equal the uninterrupted run and schedule.lr_at; final weights identical"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
