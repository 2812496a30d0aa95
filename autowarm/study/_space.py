"""The search space of a study, centred on the probe's estimate.

Two parameters always, two optional:

``peak_lr``
    log-uniform on ``[estimate / lr_factor, estimate * lr_factor]`` (default factor 4: a
    factor of 16 in all, two steps of the benchmark's oracle grid either side).
``warmup_steps_plus_one``
    integer, log-uniform on ``[1, warmup_max + 1]``; the warmup is the value minus one, so no
    warmup is in the space and short warmups are searched as finely as long ones.
    ``warmup_max`` is ``warmup_factor`` times the estimate, at least ``min_warmup_fraction`` of
    the run and at most ``max_warmup_fraction`` of it.
``decay`` (only with ``decays``)
    categorical over the given shapes.
``min_lr_ratio`` (only with ``min_lr_ratios``)
    categorical floor as a fraction of the peak.

All counts are in steps of the *real* run; a trial maps them with the warmup transfer rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from autowarm._checks import is_finite_real, is_real
from autowarm._shapes import Decay
from autowarm.schedules import ScheduleConfig

__all__ = ["SearchSpace", "longest_warmup"]

PEAK_LR = "peak_lr"
WARMUP = "warmup_steps_plus_one"
DECAY = "decay"
MIN_LR_RATIO = "min_lr_ratio"


def longest_warmup(schedule: ScheduleConfig) -> int:
    """The longest warmup a tuned schedule of this shape may take: at least one update at the
    peak, and room for a ``warmup_stable_decay`` schedule's final decay."""
    return min(schedule.total_steps - 1, schedule.warmup_limit)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Where a study looks, relative to the probe's schedule.

    Args:
        lr_factor:
            The peak LR ranges over ``[estimate / lr_factor, estimate * lr_factor]``.
        warmup_factor:
            The warmup ranges up to ``warmup_factor`` times the estimate (see the bounds).
        min_warmup_fraction:
            The warmup range reaches at least this fraction of the run, so an estimate of 0
            still searches some warmup.
        max_warmup_fraction:
            The warmup never exceeds this fraction of the run.
        decays:
            Decay shapes to choose from, or ``None`` to keep the probe's.
        min_lr_ratios:
            Floors (fractions of the peak) to choose from, or ``None`` to keep the probe's.

    Raises:
        ValueError: For factors not above 1, fractions outside ``[0, 1)`` in the wrong order,
            an unknown decay name or a ratio outside ``[0, 1]``.
    """

    lr_factor: float = 4.0
    warmup_factor: float = 4.0
    min_warmup_fraction: float = 0.1
    max_warmup_fraction: float = 0.5
    # any sequence is taken, and kept as a tuple
    decays: Sequence[str] | None = None
    min_lr_ratios: Sequence[float] | None = None

    def __post_init__(self) -> None:
        for field in ("lr_factor", "warmup_factor"):
            value = getattr(self, field)
            if not is_finite_real(value) or not value > 1:
                raise ValueError(f"{field} must be a finite number > 1, but got {field}={value!r}")
        fractions = (self.min_warmup_fraction, self.max_warmup_fraction)
        if not all(is_real(f) for f in fractions) or not (
            0 <= self.min_warmup_fraction <= self.max_warmup_fraction < 1
        ):
            raise ValueError(
                "need 0 <= min_warmup_fraction <= max_warmup_fraction < 1, but got "
                f"min_warmup_fraction={self.min_warmup_fraction!r}, "
                f"max_warmup_fraction={self.max_warmup_fraction!r}"
            )
        if isinstance(self.decays, str):
            raise ValueError(
                f"decays must be a sequence of shape names, such as [{self.decays!r}], but got "
                f"the string {self.decays!r}"
            )
        if self.decays is not None:
            if not self.decays:
                raise ValueError("decays must be None or a non-empty sequence of shape names")
            object.__setattr__(self, "decays", tuple(Decay(d).value for d in self.decays))
        if self.min_lr_ratios is not None:
            if not self.min_lr_ratios or any(not 0 <= r <= 1 for r in self.min_lr_ratios):
                raise ValueError(
                    "min_lr_ratios must be None or non-empty fractions in [0, 1], but got "
                    f"{self.min_lr_ratios!r}"
                )
            object.__setattr__(self, "min_lr_ratios", tuple(float(r) for r in self.min_lr_ratios))

    def same_search(self, other: SearchSpace) -> bool:
        """Whether ``other`` searches the same space: equal, or differing only in the order
        the decay shapes and floors are listed (a study keeps its own order, which its trials'
        categorical distributions were built from)."""

        def key(space: SearchSpace) -> SearchSpace:
            return dataclasses.replace(
                space,
                decays=None if space.decays is None else tuple(sorted(set(space.decays))),
                min_lr_ratios=(
                    None
                    if space.min_lr_ratios is None
                    else tuple(sorted(set(space.min_lr_ratios)))
                ),
            )

        return key(self) == key(other)

    # bounds -------------------------------------------------------------------------------

    def lr_bounds(self, center: ScheduleConfig) -> tuple[float, float]:
        """Lowest and highest peak LR searched around ``center``."""
        return center.peak_lr / self.lr_factor, center.peak_lr * self.lr_factor

    def warmup_max(self, center: ScheduleConfig) -> int:
        """Longest warmup searched around ``center`` (in steps of the real run)."""
        total = center.total_steps
        hi = max(self.warmup_factor * center.warmup_steps, self.min_warmup_fraction * total)
        limit = longest_warmup(center)
        return max(1, min(int(hi), int(self.max_warmup_fraction * total), limit))

    # trials -------------------------------------------------------------------------------

    def distributions(
        self, center: ScheduleConfig
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        """The optuna distributions of every parameter, for enqueuing fixed schedules."""
        low, high = self.lr_bounds(center)
        dists: dict[str, optuna.distributions.BaseDistribution] = {
            PEAK_LR: optuna.distributions.FloatDistribution(low, high, log=True),
            WARMUP: optuna.distributions.IntDistribution(1, self.warmup_max(center) + 1, log=True),
        }
        if self.decays is not None:
            dists[DECAY] = optuna.distributions.CategoricalDistribution(self.decays)
        if self.min_lr_ratios is not None:
            dists[MIN_LR_RATIO] = optuna.distributions.CategoricalDistribution(self.min_lr_ratios)
        return dists

    def sample(self, trial: optuna.Trial, center: ScheduleConfig) -> ScheduleConfig:
        """The full-run schedule of ``trial``: its parameters applied to ``center``."""
        low, high = self.lr_bounds(center)
        params: dict[str, Any] = {
            PEAK_LR: trial.suggest_float(PEAK_LR, low, high, log=True),
            WARMUP: trial.suggest_int(WARMUP, 1, self.warmup_max(center) + 1, log=True),
        }
        if self.decays is not None:
            params[DECAY] = trial.suggest_categorical(DECAY, self.decays)
        if self.min_lr_ratios is not None:
            params[MIN_LR_RATIO] = trial.suggest_categorical(MIN_LR_RATIO, self.min_lr_ratios)
        return self.schedule(params, center)

    def schedule(self, params: Mapping[str, Any], center: ScheduleConfig) -> ScheduleConfig:
        """The full-run schedule that ``params`` (as sampled) stand for."""
        peak = float(params[PEAK_LR])
        ratio = center.min_lr / center.peak_lr if center.peak_lr > 0 else 0.0
        ratio = float(params.get(MIN_LR_RATIO, ratio))
        changes: dict[str, Any] = {"peak_lr": peak, "warmup_steps": 0, "min_lr": peak * ratio}
        if DECAY in params:
            changes["decay"] = params[DECAY]
        shape = center.replace(**changes)
        # The warmup range is the centre's; a sampled decay may leave less room (the final
        # decay of warmup_stable_decay): then the longest warmup that decay allows.
        return shape.replace(warmup_steps=min(int(params[WARMUP]) - 1, longest_warmup(shape)))

    def params_of(self, schedule: ScheduleConfig, center: ScheduleConfig) -> dict[str, Any]:
        """The parameters that stand for ``schedule``, clipped into the space (to enqueue)."""
        low, high = self.lr_bounds(center)
        params: dict[str, Any] = {
            PEAK_LR: min(max(schedule.peak_lr, low), high),
            WARMUP: min(schedule.warmup_steps, self.warmup_max(center)) + 1,
        }
        if self.decays is not None:
            decay = Decay(schedule.decay).value
            params[DECAY] = decay if decay in self.decays else self.decays[0]
        if self.min_lr_ratios is not None:
            ratio = schedule.min_lr / schedule.peak_lr if schedule.peak_lr > 0 else 0.0
            params[MIN_LR_RATIO] = min(self.min_lr_ratios, key=lambda r: abs(r - ratio))
        return params

    # records ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the study)."""
        data = dataclasses.asdict(self)
        for key in ("decays", "min_lr_ratios"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: For unknown keys or bad values.
        """
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown search-space keys {unknown}")
        kwargs = dict(data)
        for key in ("decays", "min_lr_ratios"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def describe(self, center: ScheduleConfig) -> str:
        """One line for the log: the ranges around ``center``."""
        low, high = self.lr_bounds(center)
        text = (
            f"peak LR {low:.3g}..{high:.3g} (log), warmup 0..{self.warmup_max(center)} steps (log)"
        )
        if self.decays is not None:
            text += f", decay in {list(self.decays)}"
        if self.min_lr_ratios is not None:
            text += f", floor ratio in {list(self.min_lr_ratios)}"
        return text
