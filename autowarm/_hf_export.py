"""Mapping a ``ScheduleConfig`` onto ``transformers.get_scheduler`` names and kwargs.

Only exact equivalents are emitted: where transformers has no schedule that gives the same LR at
every step, ``TransformersExportError`` names the closest type and what differs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from autowarm._shapes import Decay, WsdShape

if TYPE_CHECKING:
    from autowarm.schedules import ScheduleConfig


def _unsupported(cfg: ScheduleConfig, closest: str, what: str) -> Exception:
    from autowarm.schedules import TransformersExportError

    return TransformersExportError(
        f"decay={Decay(cfg.decay).value!r} with {what} has no exact transformers equivalent; "
        f"the closest transformers type is {closest!r}. Change the schedule (or use "
        "ScheduleConfig.lambda_lr, which supports it) to export it to transformers."
    )


def transformers_kwargs(cfg: ScheduleConfig) -> dict[str, Any]:
    """``get_scheduler`` kwargs (name, num_warmup_steps, num_training_steps, specific kwargs)."""
    decay = Decay(cfg.decay)
    floor = cfg.min_lr / cfg.peak_lr
    # Without warmup the start factor never applies.
    start = cfg.warmup_start_factor if cfg.warmup_steps > 0 else 0.0
    name, kwargs = _name_and_kwargs(cfg, decay, floor, start)
    warmup = cfg.warmup_steps
    if name == "warmup_stable_decay" and start == 1.0:
        warmup = 0  # a warmup that starts at the peak is part of transformers' stable phase
    return {
        "name": name,
        "num_warmup_steps": warmup,
        "num_training_steps": cfg.total_steps,
        "scheduler_specific_kwargs": kwargs,
    }


def _name_and_kwargs(
    cfg: ScheduleConfig, decay: Decay, floor: float, start: float
) -> tuple[str, dict[str, Any]]:
    # The peak held from the end of the warmup on: no decay within the run, a decay to the
    # peak itself, or the constant shape. Any shape then is transformers' constant(_with_warmup).
    held = (
        decay is Decay.CONSTANT or cfg.warmup_steps >= cfg.total_steps or cfg.min_lr >= cfg.peak_lr
    )
    if held and (cfg.warmup_steps == 0 or start == 1.0):
        return "constant", {}  # no warmup, or one that starts at the peak: the peak throughout
    if decay is Decay.WARMUP_STABLE_DECAY and not held:
        # transformers starts the WSD warmup at min_lr_ratio: it must equal our start factor,
        # unless the warmup starts at the peak, which transformers_kwargs exports as no warmup.
        if (
            cfg.warmup_steps > 0
            and start != 1.0
            and not math.isclose(start, floor, rel_tol=1e-12, abs_tol=0.0)
        ):
            raise _unsupported(
                cfg,
                "warmup_stable_decay",
                f"warmup_start_factor={start!r} != min_lr/peak_lr={floor!r} (transformers starts "
                "its warmup at min_lr_ratio)",
            )
        return "warmup_stable_decay", {
            "num_decay_steps": cfg.wsd_decay_steps,
            "decay_type": WsdShape(cfg.wsd_decay_shape).value,
            "min_lr_ratio": floor,
        }
    if start != 0.0 and cfg.warmup_steps > 0:
        closest = "cosine_warmup_with_min_lr" if decay is Decay.COSINE else decay.value
        raise _unsupported(
            cfg,
            closest,
            f"warmup_start_factor={start!r} (transformers warms up from 0, and "
            "cosine_warmup_with_min_lr reaches the peak one step earlier)",
        )
    if held:
        return "constant_with_warmup", {}
    if decay is Decay.COSINE:
        if floor == 0.0:
            return "cosine", {}
        return "cosine_with_min_lr", {"min_lr_rate": floor}
    if decay is Decay.POLYNOMIAL:
        return "polynomial", {"lr_end": cfg.min_lr, "power": cfg.power}
    if decay is Decay.LINEAR and floor != 0.0:
        # a linear decay to a floor is transformers' polynomial of power 1 ending at min_lr
        return "polynomial", {"lr_end": cfg.min_lr, "power": 1.0}
    if floor != 0.0:
        raise _unsupported(
            cfg, decay.value, f"min_lr={cfg.min_lr!r} > 0 (no floor in transformers)"
        )
    if decay is Decay.LINEAR:
        return "linear", {}
    if decay is Decay.COSINE_WITH_RESTARTS:
        return "cosine_with_restarts", {"num_cycles": cfg.num_cycles}
    return "inverse_sqrt", {"timescale": cfg.effective_timescale}
