"""Pure schedule formulas: one warmup function composed with one decay function per shape.

Everything here is a function of the optimizer step and plain numbers, so it pickles and can be
checked against a hand-computed table. ``ScheduleConfig`` (``autowarm.schedules``) validates the
numbers and is the public face; this module trusts its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum

__all__ = ["Decay", "ScheduleLambda", "WsdShape", "schedule_multiplier"]


def _unknown_name(cls: type[Enum], field: str, value: object) -> ValueError:
    valid = ", ".join(repr(m.value) for m in cls)
    return ValueError(f"{field} must be one of {valid}, but got {field}={value!r}")


class _Name(str, Enum):
    """A name that prints as itself (``f"{cfg.decay}"`` is ``cosine``, not ``Decay.COSINE``,
    on every Python version: 3.11 changed what ``format`` gives for a str mix-in)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Decay(_Name):
    """Names of the decay shapes that follow the warmup."""

    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    INVERSE_SQRT = "inverse_sqrt"
    WARMUP_STABLE_DECAY = "warmup_stable_decay"

    @classmethod
    def _missing_(cls, value: object) -> Decay:
        raise _unknown_name(cls, "decay", value)


class WsdShape(_Name):
    """Shapes of the final decay phase of a warmup-stable-decay schedule."""

    LINEAR = "linear"
    COSINE = "cosine"
    ONE_MINUS_SQRT = "1-sqrt"

    @classmethod
    def _missing_(cls, value: object) -> WsdShape:
        raise _unknown_name(cls, "wsd_decay_shape", value)


def _warmup(step: int, warmup_steps: int, start_factor: float) -> float:
    # Linear from start_factor at step 0 to 1 at step == warmup_steps (reached, not exceeded).
    return start_factor + (1.0 - start_factor) * (float(step) / float(warmup_steps))


def _progress(step: int, begin: int, length: int) -> float:
    # Fraction of a phase done, clamped to [0, 1] so steps past the end stay at the floor.
    return min(1.0, max(0.0, float(step - begin) / float(max(1, length))))


# Each decay returns the raw factor f in [0, 1] for a step at or after the end of warmup; the
# floor is applied once, in ``schedule_multiplier``, as f * (1 - floor) + floor.


def _constant(step: int, s: ScheduleLambda) -> float:
    return 1.0


def _linear(step: int, s: ScheduleLambda) -> float:
    if step >= s.total_steps:
        return 0.0
    return float(s.total_steps - step) / float(max(1, s.total_steps - s.warmup_steps))


def _cosine(step: int, s: ScheduleLambda) -> float:
    p = _progress(step, s.warmup_steps, s.total_steps - s.warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * p)))


def _cosine_with_restarts(step: int, s: ScheduleLambda) -> float:
    p = _progress(step, s.warmup_steps, s.total_steps - s.warmup_steps)
    if p >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(s.num_cycles) * p) % 1.0))))


def _polynomial(step: int, s: ScheduleLambda) -> float:
    p = _progress(step, s.warmup_steps, s.total_steps - s.warmup_steps)
    return float((1.0 - p) ** s.power)


def _inverse_sqrt(step: int, s: ScheduleLambda) -> float:
    # Held at its value at total_steps afterwards, like every other shape.
    step = min(step, s.total_steps)
    timescale = s.timescale
    shift = timescale - s.warmup_steps
    return 1.0 / math.sqrt((step + shift) / timescale)


def _warmup_stable_decay(step: int, s: ScheduleLambda) -> float:
    decay_begin = s.total_steps - s.wsd_decay_steps
    if step < decay_begin:
        return 1.0
    if step >= s.total_steps:
        return 0.0
    p = float(step - decay_begin) / float(max(1, s.wsd_decay_steps))
    if s.wsd_decay_shape == WsdShape.LINEAR.value:
        return 1.0 - p
    if s.wsd_decay_shape == WsdShape.COSINE.value:
        return 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * p))
    return 1.0 - math.sqrt(p)


_DECAYS: dict[str, Callable[[int, ScheduleLambda], float]] = {
    Decay.CONSTANT.value: _constant,
    Decay.LINEAR.value: _linear,
    Decay.COSINE.value: _cosine,
    Decay.COSINE_WITH_RESTARTS.value: _cosine_with_restarts,
    Decay.POLYNOMIAL.value: _polynomial,
    Decay.INVERSE_SQRT.value: _inverse_sqrt,
    Decay.WARMUP_STABLE_DECAY.value: _warmup_stable_decay,
}


def schedule_multiplier(step: int, s: ScheduleLambda) -> float:
    """Factor on the peak LR for optimizer step ``step`` (warmup, then decay, then floor);
    past ``total_steps`` it holds the value at ``total_steps``."""
    step = min(int(step), s.total_steps)  # int: a numpy int16 would overflow in the shapes
    if step < s.warmup_steps:
        return _warmup(step, s.warmup_steps, s.warmup_start_factor)
    factor = _DECAYS[s.decay](step, s)
    if s.floor == 0.0:
        return factor
    return factor * (1.0 - s.floor) + s.floor


class ScheduleLambda:
    """The ``lr_lambda`` of the exported ``LambdaLR``: a picklable callable of plain attributes.

    ``LambdaLR.state_dict()`` stores this object's ``__dict__`` and ``load_state_dict`` writes it
    back, so a scheduler resumed from a checkpoint continues with the checkpointed schedule, even
    if it was rebuilt from a different config. ``group_scale`` lets one parameter group run at a
    fixed fraction of the schedule (discriminative learning rates).
    """

    def __init__(
        self,
        *,
        decay: str,
        total_steps: int,
        warmup_steps: int,
        warmup_start_factor: float,
        floor: float,
        num_cycles: int,
        power: float,
        timescale: int,
        wsd_decay_steps: int,
        wsd_decay_shape: str,
        group_scale: float = 1.0,
    ) -> None:
        self.schedule_version = 1
        self.decay = decay
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.floor = floor
        self.num_cycles = num_cycles
        self.power = power
        self.timescale = timescale
        self.wsd_decay_steps = wsd_decay_steps
        self.wsd_decay_shape = wsd_decay_shape
        self.group_scale = group_scale

    def __call__(self, step: int) -> float:
        return self.group_scale * schedule_multiplier(step, self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"ScheduleLambda({fields})"
