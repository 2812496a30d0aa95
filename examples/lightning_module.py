"""Lightning: a ``LightningModule`` whose ``configure_optimizers`` returns the suggested schedule.

The module is a small MLP regressor on generated data. ``autowarm.suggest`` probes it with the
module's own loss (``loss_fn=Regressor.loss``), then ``configure_optimizers`` returns
``schedule.to_lightning(optimizer)``, which tells Lightning to step the scheduler after every
optimizer update. A callback records the LR of each update, and the example checks it against
``schedule.lr_at(step)`` at every step.

Needs ``lightning`` (``pip install -e '.[lightning]'`` in a checkout). Run::

    python examples/lightning_module.py              # 300 steps, seconds on a CPU
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import autowarm


def make_data(n: int, dim: int, seed: int) -> TensorDataset:
    """Targets from a random smooth function of the inputs, with noise."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(dim, 16, generator=g), torch.randn(16, 1, generator=g)
    x = torch.randn(n, dim, generator=g)
    y = torch.tanh(x @ w1) @ w2 / 4 + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class Regressor(L.LightningModule):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.schedule: autowarm.ScheduleConfig | None = None

    def loss(self, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        return F.mse_loss(self.net(inputs), targets)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        if self.schedule is None:
            raise RuntimeError("set module.schedule (e.g. from autowarm.suggest) before fit()")
        optimizer = torch.optim.AdamW(self.parameters(), weight_decay=0.01)
        return self.schedule.to_lightning(optimizer)  # interval="step": Lightning steps it


class RecordLR(L.Callback):
    """The LR in the optimizer as each batch starts: what its update will use."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=300, help="optimizer steps of the run (default 300)"
    )
    parser.add_argument("--tiny", action="store_true", help="smaller model, shortest probe")
    args = parser.parse_args(argv)

    L.seed_everything(0, verbose=False)
    dim, hidden = (8, 32) if args.tiny else (16, 128)
    loader = DataLoader(make_data(2_048, dim, seed=0), batch_size=128, shuffle=True)
    module = Regressor(dim, hidden)

    # 1. Probe the module with its own loss: loss_fn(model, batch) is Regressor.loss.
    suggestion = autowarm.suggest(
        module,
        loader,
        torch.optim.AdamW,
        optimizer_kwargs={"weight_decay": 0.01},
        loss_fn=Regressor.loss,
        total_steps=args.steps,
        budget_steps=40 if args.tiny else None,
    )
    module.schedule = suggestion.schedule
    print(
        f"suggested: warmup {suggestion.warmup_steps} steps, peak LR {suggestion.peak_lr:.3g} "
        f"({suggestion.confidence} confidence)"
    )
    if suggestion.low_confidence:  # check it before a long run: the reasons say what to change
        print("low confidence: " + "; ".join(suggestion.low_confidence_reasons))

    # 2. Fit with Lightning, on the CPU, without writing checkpoints or logs into the repo.
    recorder = RecordLR()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer = L.Trainer(
            max_steps=args.steps,
            accelerator="cpu",
            devices=1,
            callbacks=[recorder],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
        )
        trainer.fit(module, loader)

    expected = [suggestion.schedule.lr_at(s) for s in range(args.steps)]
    if recorder.lrs != expected:
        step = next(
            (s for s, (a, b) in enumerate(zip(recorder.lrs, expected, strict=False)) if a != b),
            min(len(recorder.lrs), len(expected)),
        )
        raise SystemExit(
            f"Lightning ran {len(recorder.lrs)} updates; the first LR that differs from "
            f"schedule.lr_at is at step {step}"
        )
    print(f"Lightning: {args.steps} updates, each at schedule.lr_at(step)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
