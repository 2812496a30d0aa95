"""Hugging Face ``Trainer``: suggest a warmup for a tiny GPT-2, then train with the Trainer.

The model is a GPT-2 built from a ``GPT2Config`` (no weights are downloaded) and the text is
generated here from a small grammar, read through a character-level vocabulary built from it,
so nothing is fetched. Batches are dicts (``input_ids``, ``labels``), the Hugging Face way:
``autowarm.suggest`` calls ``model(**batch).loss`` on them by default.

The Trainer gets the schedule, and the optimizer settings the probe trained with, through
``TrainingArguments(**suggestion.to_trainer_args(), ...)``.
The example checks that the LR the Trainer logs at every step (``logging_steps=1``) is
``schedule.lr_at`` of that step, and that the optimizer really used it.

Needs ``transformers>=5`` and ``accelerate`` (``pip install -e '.[hf]'`` in a checkout). Run::

    python examples/hf_trainer.py                    # 200 steps, well under a minute on a CPU
    python examples/hf_trainer.py --steps 500 --out runs/hf
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import autowarm

WORDS = {
    "who": ["the cat", "a dog", "my sister", "the old man", "a small bird", "our teacher"],
    "does": ["sees", "likes", "follows", "draws", "finds", "waits for"],
    "what": ["the red ball", "a quiet river", "the green door", "two apples", "the last train"],
    "when": ["today", "at night", "after lunch", "in the rain", "every morning"],
}


def make_text(sentences: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(
        f"{rng.choice(WORDS['who'])} {rng.choice(WORDS['does'])} {rng.choice(WORDS['what'])} "
        f"{rng.choice(WORDS['when'])}."
        for _ in range(sentences)
    )


class CharBlocks(Dataset):
    """Consecutive blocks of ``context`` characters as ``{"input_ids", "labels"}`` dicts."""

    def __init__(self, text: str, context: int) -> None:
        self.vocab = sorted(set(text))
        ids = torch.tensor([self.vocab.index(c) for c in text])
        self.blocks = ids[: len(ids) // context * context].view(-1, context)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        # GPT-2 shifts the labels inside its forward pass.
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


class RecordLR(TrainerCallback):
    """The LR in the optimizer just before each update: what the update really uses."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.lrs.append(kwargs["optimizer"].param_groups[0]["lr"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=200, help="optimizer steps of the run (default 200)"
    )
    parser.add_argument("--tiny", action="store_true", help="smaller model, shortest probe")
    parser.add_argument(
        "--out", type=Path, default=None, help="Trainer output_dir (default: temp)"
    )
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    context, width, layers = (16, 16, 1) if args.tiny else (32, 64, 2)
    data = CharBlocks(make_text(2_000, seed=0), context)
    config = GPT2Config(
        vocab_size=len(data.vocab),
        n_positions=context,
        n_embd=width,
        n_layer=layers,
        n_head=2,
        bos_token_id=None,  # no special tokens in this vocabulary
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(config)

    # 1. Probe on dict batches, with the optimizer settings of the real run.
    suggestion = autowarm.suggest(
        model,
        DataLoader(data, batch_size=16, shuffle=True),
        torch.optim.AdamW,
        optimizer_kwargs={"weight_decay": 0.0},
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

    # 2. Train with the Trainer on the suggested schedule.
    recorder = RecordLR()
    with tempfile.TemporaryDirectory() as tmp:
        training_args = TrainingArguments(
            # the schedule (learning_rate, warmup_steps, scheduler, max_steps) and the
            # optimizer settings the probe trained with (betas, eps, weight_decay, clipping)
            **suggestion.to_trainer_args(),
            output_dir=str(args.out or tmp),
            per_device_train_batch_size=16,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=training_args, train_dataset=data, callbacks=[recorder]
        )
        trainer.remove_callback(PrinterCallback)  # logging_steps=1 is for the check below
        trainer.train()

    # transformers 5 logs, at global step s, the LR of update s: lr_at(s - 1).
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "loss" in h}
    if sorted(logged) != list(range(1, args.steps + 1)):
        raise SystemExit(f"expected one log per step, got steps {sorted(logged)[:10]}...")
    for step in range(args.steps):
        want = schedule.lr_at(step)
        used = recorder.lrs[step]
        # transformers computes the same formula in its own order: equal to rounding.
        if not (_close(logged[step + 1], want) and _close(used, want)):
            raise SystemExit(
                f"update {step + 1}: Trainer logged lr {logged[step + 1]!r} and used {used!r}, "
                f"but schedule.lr_at({step}) = {want!r}"
            )
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(
        f"Trainer: {args.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; the LR it logged "
        "and used at every step equals schedule.lr_at(step)"
    )
    return 0


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


if __name__ == "__main__":
    raise SystemExit(main())
