"""Our LRs against the schedulers transformers itself builds from our exported kwargs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from autowarm import ScheduleConfig

transformers = pytest.importorskip("transformers", reason="transformers not installed (extra hf)")

T = 1000
CASES: list[dict[str, Any]] = [
    {"decay": "constant", "warmup_steps": 0},
    {"decay": "constant", "warmup_steps": 100},
    {"decay": "linear", "warmup_steps": 100},
    {"decay": "linear", "warmup_steps": 0},
    {"decay": "linear", "warmup_steps": 100, "min_lr": 3e-5},  # polynomial of power 1
    {"decay": "polynomial", "warmup_steps": T, "power": 2.0},  # no decay within the run
    {"decay": "linear", "warmup_steps": T, "min_lr": 3e-5},
    {"decay": "polynomial", "warmup_steps": 100, "min_lr": 3e-4},  # decays to the peak itself
    {"decay": "cosine", "warmup_steps": 100},
    {"decay": "cosine", "warmup_steps": 37, "min_lr": 3e-5},
    {"decay": "cosine_with_restarts", "warmup_steps": 50, "num_cycles": 3},
    {"decay": "polynomial", "warmup_steps": 100, "power": 2.0, "min_lr": 1e-5},
    {"decay": "polynomial", "warmup_steps": 10, "power": 0.5},
    {"decay": "inverse_sqrt", "warmup_steps": 100},
    {"decay": "inverse_sqrt", "warmup_steps": 100, "timescale": 300},
    {"decay": "inverse_sqrt", "warmup_steps": 0},
    {"decay": "warmup_stable_decay", "warmup_steps": 100, "wsd_decay_fraction": 0.25},
    {
        "decay": "warmup_stable_decay",
        "warmup_steps": 80,
        "wsd_decay_shape": "cosine",
        "min_lr": 1e-5,
        "warmup_start_factor": 1e-5 / 3e-4,
    },
    {"decay": "warmup_stable_decay", "warmup_steps": 0, "wsd_decay_shape": "1-sqrt"},
    # a WSD that decays to the peak itself is constant_with_warmup; one whose warmup starts at
    # the peak is transformers' WSD without warmup (its stable phase covers our warmup)
    {"decay": "warmup_stable_decay", "warmup_steps": 100, "min_lr": 3e-4},
    {"decay": "warmup_stable_decay", "warmup_steps": 100, "warmup_start_factor": 1.0},
    {
        "decay": "warmup_stable_decay",
        "warmup_steps": 100,
        "warmup_start_factor": 1.0,
        "min_lr": 1e-5,
        "wsd_decay_shape": "cosine",
    },
    # the peak held after the warmup, whatever the shape: constant(_with_warmup), which used to
    # be refused for these shapes ("no floor in transformers", "warms up from 0")
    {"decay": "cosine_with_restarts", "warmup_steps": 100, "min_lr": 3e-4},
    {"decay": "inverse_sqrt", "warmup_steps": 100, "min_lr": 3e-4},
    {"decay": "inverse_sqrt", "warmup_steps": T, "min_lr": 1e-5},
    {"decay": "cosine_with_restarts", "warmup_steps": T, "min_lr": 1e-5, "num_cycles": 2},
    {"decay": "constant", "warmup_steps": 100, "warmup_start_factor": 1.0},
    {"decay": "cosine", "warmup_steps": T, "warmup_start_factor": 1.0},
    {"decay": "cosine", "warmup_steps": 0, "warmup_start_factor": 0.5},
]


def _lrs(sched: Any, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_lrs_equal_transformers_get_scheduler(case: dict[str, Any]) -> None:
    cfg = ScheduleConfig(peak_lr=3e-4, total_steps=T, **case)
    kwargs = cfg.to_transformers()
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.peak_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. WSD's "both num_training_steps and ..." warning
        hf = transformers.get_scheduler(optimizer=opt, **kwargs)
    theirs = _lrs(hf, opt, T)
    param2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.SGD([param2], lr=1.0)
    ours = _lrs(cfg.lambda_lr(opt2), opt2, T)
    bad = [
        (s, a, b) for s, (a, b) in enumerate(zip(ours, theirs, strict=True)) if not _close(a, b)
    ]
    assert not bad, f"{kwargs}: first differing steps {bad[:5]}"
    assert ours == [cfg.lr_at(s) for s in range(T)]


_WSD_FROM_THE_PEAK = {
    "decay": "warmup_stable_decay",
    "warmup_steps": 100,
    "warmup_start_factor": 1.0,
}
_TRAINER_CASES = [*CASES[:8], _WSD_FROM_THE_PEAK]


@pytest.mark.parametrize(
    "case", _TRAINER_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values())
)
def test_trainer_args_construct_without_warnings(case: dict[str, Any], tmp_path: Path) -> None:
    cfg = ScheduleConfig(peak_lr=3e-4, total_steps=T, **case)
    args = cfg.to_trainer_args()
    assert set(args) == {
        "learning_rate",
        "warmup_steps",
        "lr_scheduler_type",
        "lr_scheduler_kwargs",
        "max_steps",
    }
    assert isinstance(args["warmup_steps"], int)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        ta = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], **args)
    assert ta.learning_rate == cfg.peak_lr
    assert ta.max_steps == T
    # the exported warmup: 0 for a warmup that starts at the peak of a WSD
    assert ta.get_warmup_steps(T) == cfg.to_transformers()["num_warmup_steps"]
