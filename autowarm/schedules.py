r"""``ScheduleConfig``: the one carrier of a learning-rate schedule in autowarm.

The probe produces one, the study searches over them, and every export (``LambdaLR``,
transformers, ``TrainingArguments``, Lightning, JSON/YAML files) is a method on it.

Step convention
---------------
A *step* is one optimizer update (after gradient accumulation). The LR used for update number
``step + 1`` is ``lr_at(step)``: the first update uses ``lr_at(0)``. This is the convention of
``LambdaLR`` when ``scheduler.step()`` is called after every ``optimizer.step()``, and of
transformers.

- Warmup (``step < warmup_steps``) is linear from ``warmup_start_factor * peak_lr`` at step 0 to
  ``peak_lr``; the peak is reached at ``step == warmup_steps`` (so with ``warmup_steps=W`` the
  first ``W`` updates run below the peak and update ``W + 1`` is the first at the peak). With
  ``warmup_start_factor=0`` (the default, as in transformers) the first update has LR 0.
- Decay runs from ``warmup_steps`` to ``total_steps`` and ends at ``min_lr``:
  ``lr = min_lr + (peak_lr - min_lr) * f(progress)`` with ``f`` the shape's factor, 1 at the end
  of warmup. ``lr_at(total_steps) == min_lr`` (for shapes that reach their floor); the last update
  of the run uses ``lr_at(total_steps - 1)``. Steps past ``total_steps`` hold the value at
  ``total_steps`` (the floor, where there is a decay phase).

.. math::

    \mathrm{lr}(s) = \begin{cases}
        \eta \left(a + (1 - a)\, s / W\right) & s < W \\
        \eta_{\min} + (\eta - \eta_{\min})\, f\left(\frac{s - W}{T - W}\right)
            & s \ge W
    \end{cases}

with :math:`\eta` = ``peak_lr``, :math:`a` = ``warmup_start_factor``, :math:`W` =
``warmup_steps``, :math:`T` = ``total_steps``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autowarm._checks import is_finite_real, is_int, is_real
from autowarm._config_io import SHAPE_FIELDS
from autowarm._shapes import Decay, ScheduleLambda, WsdShape, schedule_multiplier

if TYPE_CHECKING:
    import torch
    from torch.optim.lr_scheduler import LambdaLR

__all__ = ["Decay", "ScheduleConfig", "TransformersExportError"]


class TransformersExportError(ValueError):
    """A schedule that transformers cannot express exactly; the message names the closest type."""


def _bad(name: str, rule: str, value: object) -> ValueError:
    hint = ""
    if "an int" in rule and isinstance(value, float) and value.is_integer() and value >= 1:
        # 1e4 in YAML or JSON is a float, though a whole number is meant
        hint = f": an int is written without a point or exponent ({int(value)}, not {value!r})"
    elif name == "warmup_steps" and isinstance(value, float) and 0 < value < 1:
        # transformers 5 dropped warmup_ratio; a ratio passed as warmup_steps reads as this
        hint = (
            ": warmup_steps counts updates, not a fraction of the run; pass "
            f"round({value!r} * total_steps) for {value:.0%} warmup"
        )
    return ValueError(
        f"{name} must be {rule}, but got {name}={_shown(value)} ({type(value).__name__}){hint}"
    )


def _shown(value: object) -> str:
    # repr, but an int too long for Python's int-to-str limit (4300 digits) by its size
    try:
        return repr(value)
    except ValueError:
        if isinstance(value, int):
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
        raise


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """A validated, immutable learning-rate schedule: linear warmup, then a decay shape.

    See the module docstring for the step convention and the formula.

    Args:
        peak_lr: LR at the end of warmup (absolute, > 0).
        total_steps: optimizer updates in the whole run (>= 1).
        warmup_steps: updates of linear warmup, ``0 <= warmup_steps <= total_steps``.
        decay: shape after warmup; one of ``constant``, ``linear``, ``cosine``,
            ``cosine_with_restarts``, ``polynomial``, ``inverse_sqrt``, ``warmup_stable_decay``,
            by name or as a :class:`Decay`; the field is always the :class:`Decay`.
        min_lr: absolute LR the decay ends at (the floor), ``0 <= min_lr <= peak_lr``.
        warmup_start_factor: fraction of ``peak_lr`` at step 0, in ``[0, 1]``.
        num_cycles: hard restarts of ``cosine_with_restarts`` (int >= 1).
        power: exponent of ``polynomial`` (> 0).
        timescale: time scale of ``inverse_sqrt``; ``None`` means ``warmup_steps`` (or 10000
            without warmup), as in transformers.
        wsd_decay_fraction: share of ``total_steps`` spent in the final decay of
            ``warmup_stable_decay`` (in ``(0, 1]``); the stable phase is what remains.
        wsd_decay_shape: ``linear``, ``cosine`` or ``1-sqrt``, the final decay of
            ``warmup_stable_decay`` (a name or a :class:`WsdShape`; the field is the enum).

    Raises:
        ValueError: any field of the wrong type or out of range; the message names the field and
            the value.

    Example:
        >>> cfg = ScheduleConfig(peak_lr=1e-3, total_steps=100, warmup_steps=10)
        >>> cfg.lr_at(0), cfg.lr_at(5), cfg.lr_at(10)
        (0.0, 0.0005, 0.001)
    """

    peak_lr: float
    total_steps: int
    warmup_steps: int
    decay: Decay = Decay.COSINE
    min_lr: float = 0.0
    warmup_start_factor: float = 0.0
    num_cycles: int = 1
    power: float = 1.0
    timescale: int | None = None
    wsd_decay_fraction: float = 0.2
    wsd_decay_shape: WsdShape = WsdShape.LINEAR

    if TYPE_CHECKING:
        # The constructor takes a shape by its name too ("linear"), which __post_init__ turns
        # into the enum; the fields are always the enums, so cfg.decay.value type-checks.
        def __init__(
            self,
            peak_lr: float,
            total_steps: int,
            warmup_steps: int,
            decay: Decay | str = ...,
            min_lr: float = ...,
            warmup_start_factor: float = ...,
            num_cycles: int = ...,
            power: float = ...,
            timescale: int | None = ...,
            wsd_decay_fraction: float = ...,
            wsd_decay_shape: WsdShape | str = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not is_finite_real(self.peak_lr) or self.peak_lr <= 0:
            raise _bad("peak_lr", "a finite float > 0", self.peak_lr)
        set_(self, "peak_lr", float(self.peak_lr))
        if not is_int(self.total_steps) or not 1 <= self.total_steps <= _MAX_STEPS:
            raise _bad("total_steps", "an int in [1, 2**53]", self.total_steps)
        set_(self, "total_steps", int(self.total_steps))
        if not is_int(self.warmup_steps) or not 0 <= self.warmup_steps <= self.total_steps:
            raise _bad(
                "warmup_steps", f"an int in [0, total_steps={self.total_steps}]", self.warmup_steps
            )
        set_(self, "warmup_steps", int(self.warmup_steps))
        if not isinstance(self.decay, str):
            raise _bad("decay", "a str", self.decay)
        set_(self, "decay", Decay(self.decay))
        if not is_real(self.min_lr) or not 0.0 <= self.min_lr <= self.peak_lr:
            raise _bad("min_lr", f"a float in [0, peak_lr={self.peak_lr}]", self.min_lr)
        set_(self, "min_lr", float(self.min_lr) + 0.0)  # + 0.0: -0.0 is stored as 0.0
        if not is_real(self.warmup_start_factor) or not 0.0 <= self.warmup_start_factor <= 1.0:
            raise _bad("warmup_start_factor", "a float in [0, 1]", self.warmup_start_factor)
        set_(self, "warmup_start_factor", float(self.warmup_start_factor) + 0.0)
        self._check_shape_parameters()

    def _check_shape_parameters(self) -> None:
        set_ = object.__setattr__
        if not is_int(self.num_cycles) or not 1 <= self.num_cycles <= _MAX_STEPS:
            raise _bad("num_cycles", "an int in [1, 2**53]", self.num_cycles)
        set_(self, "num_cycles", int(self.num_cycles))
        if not is_finite_real(self.power) or self.power <= 0:
            raise _bad("power", "a finite float > 0", self.power)
        set_(self, "power", float(self.power))
        if self.timescale is not None and (
            not is_int(self.timescale) or not 1 <= self.timescale <= _MAX_STEPS
        ):
            raise _bad("timescale", "None or an int in [1, 2**53]", self.timescale)
        if self.timescale is not None:
            set_(self, "timescale", int(self.timescale))
        frac = self.wsd_decay_fraction
        if not is_real(frac) or not 0.0 < frac <= 1.0:
            raise _bad("wsd_decay_fraction", "a float in (0, 1]", frac)
        set_(self, "wsd_decay_fraction", float(frac))
        if not isinstance(self.wsd_decay_shape, str):
            raise _bad("wsd_decay_shape", "a str", self.wsd_decay_shape)
        set_(self, "wsd_decay_shape", WsdShape(self.wsd_decay_shape))
        self._check_other_decays_parameters()
        if self.decay is Decay.WARMUP_STABLE_DECAY and (
            self.warmup_steps + self.wsd_decay_steps > self.total_steps
        ):
            raise ValueError(
                "warmup_steps must be <= total_steps - wsd_decay_steps, the final decay's "
                "max(1, round(wsd_decay_fraction * total_steps)) updates, but got "
                f"warmup_steps={self.warmup_steps}, wsd_decay_fraction={frac!r} "
                f"({self.wsd_decay_steps} decay steps), total_steps={self.total_steps}"
            )

    def _check_other_decays_parameters(self) -> None:
        # A shape parameter of a decay other than this one would change nothing, and saving
        # would drop it (the loaded config would then differ from this one).
        fields = type(self).__dataclass_fields__
        for owner, names in SHAPE_FIELDS.items():
            if owner is self.decay:
                continue
            for name in names:
                value = getattr(self, name)
                if value != fields[name].default:
                    raise ValueError(
                        f"{name}={_plain(value)!r} applies to decay {owner.value!r}, not to decay "
                        f"{Decay(self.decay).value!r}: leave it at its default "
                        f"({_plain(fields[name].default)!r}), or pass decay={owner.value!r}"
                    )

    # ------------------------------------------------------------------ derived quantities
    @property
    def wsd_decay_steps(self) -> int:
        """Updates in the final decay of ``warmup_stable_decay`` (at least 1)."""
        return max(1, round(self.wsd_decay_fraction * self.total_steps))

    @property
    def warmup_limit(self) -> int:
        """Longest warmup this shape allows: ``total_steps``, or for ``warmup_stable_decay``
        what its final decay leaves (``total_steps - wsd_decay_steps``)."""
        if self.decay is Decay.WARMUP_STABLE_DECAY:
            return self.total_steps - self.wsd_decay_steps
        return self.total_steps

    @property
    def effective_timescale(self) -> int:
        """The ``inverse_sqrt`` time scale actually used."""
        if self.timescale is not None:
            return self.timescale
        return self.warmup_steps or 10_000

    @property
    def warmup_fraction(self) -> float:
        """``warmup_steps / total_steps``."""
        return self.warmup_steps / self.total_steps

    def _lambda(self, group_scale: float = 1.0) -> ScheduleLambda:
        return ScheduleLambda(
            decay=Decay(self.decay).value,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            warmup_start_factor=self.warmup_start_factor,
            floor=self.min_lr / self.peak_lr,
            num_cycles=self.num_cycles,
            power=self.power,
            timescale=self.effective_timescale,
            wsd_decay_steps=self.wsd_decay_steps,
            wsd_decay_shape=WsdShape(self.wsd_decay_shape).value,
            group_scale=group_scale,
        )

    # ------------------------------------------------------------------ uses
    def multiplier(self, step: int) -> float:
        """Factor on ``peak_lr`` for update ``step + 1`` (see the step convention)."""
        if not is_int(step) or step < 0:
            raise _bad("step", "an int >= 0", step)
        return schedule_multiplier(step, self._lambda())

    def lr_at(self, step: int) -> float:
        """Absolute LR for update ``step + 1``: ``peak_lr * multiplier(step)``."""
        return self.peak_lr * self.multiplier(step)

    def lrs(self) -> list[float]:
        """LRs of every update of the run: ``[lr_at(0), ..., lr_at(total_steps - 1)]``."""
        lam = self._lambda()
        return [self.peak_lr * schedule_multiplier(s, lam) for s in range(self.total_steps)]

    def lambda_lr(
        self,
        optimizer: torch.optim.Optimizer,
        last_epoch: int = -1,
        *,
        group_scales: Sequence[float] | None = None,
    ) -> LambdaLR:
        """A plain ``LambdaLR`` driving ``optimizer`` along this schedule.

        Every parameter group's base LR is set to ``peak_lr`` (times its entry of
        ``group_scales``, for discriminative LRs), so group ``i`` follows
        ``group_scales[i] * lr_at(step)``. Without ``group_scales``, each group's
        ``"lr_scale"`` key is its scale (1 where it has none): the groups given to
        ``autowarm.suggest(param_groups=...)`` drive an optimizer built from them as the
        probe trained them. Call ``scheduler.step()`` after each
        ``optimizer.step()``. The lambda is a module-level callable object of plain attributes,
        so the scheduler pickles and ``state_dict()`` round-trips: ``load_state_dict`` brings
        back the checkpointed schedule itself (peak, warmup, length), whatever config this
        scheduler was built from. To resume on another schedule (a longer run), pass
        ``last_epoch`` instead of loading the old state.

        Args:
            optimizer: the optimizer to drive; its groups' ``lr`` and ``initial_lr`` are set.
            last_epoch: ``-1`` for a fresh run; to resume without a saved scheduler state, the
                number of updates already done minus one.
            group_scales: optional factor per parameter group (default: each group's
                ``"lr_scale"``, else 1).

        Returns:
            ``torch.optim.lr_scheduler.LambdaLR``.
        """
        from torch.optim.lr_scheduler import LambdaLR

        n = len(optimizer.param_groups)
        if group_scales is None:
            scales = lr_scale_keys(optimizer)
        else:
            given = _as_list(group_scales)
            if given is None or len(given) != n or not all(_is_scale(x) for x in given):
                raise ValueError(
                    f"group_scales must be a list holding one positive float per parameter "
                    f"group ({n}), but got group_scales={group_scales!r}"
                )
            scales = [float(x) for x in given]
        if not is_int(last_epoch) or last_epoch < -1:
            raise _bad("last_epoch", "an int >= -1", last_epoch)
        for group in optimizer.param_groups:
            group["lr"] = self.peak_lr
            group["initial_lr"] = self.peak_lr
        lambdas = [self._lambda(scale) for scale in scales]
        return LambdaLR(optimizer, lambdas, last_epoch=last_epoch)  # type: ignore[arg-type]

    def to_transformers(self) -> dict[str, Any]:
        """Keyword arguments of ``transformers.get_scheduler`` giving this schedule (the same LR
        at every update of the run, to floating-point rounding: transformers computes the
        linear and polynomial decays to a floor in another order, 1 ulp apart at some steps).

        Build the optimizer with ``lr=peak_lr`` (transformers multiplies the optimizer's LR, and
        ``polynomial`` reads ``optimizer.defaults["lr"]``), then
        ``get_scheduler(optimizer=opt, **cfg.to_transformers())``.

        The LRs are equal for every update of the run (steps ``0`` to ``total_steps - 1``).
        After the run they can part: :meth:`lr_at` holds its last value, while transformers'
        ``cosine`` turns back up, its ``cosine_with_restarts`` drops to 0 and its
        ``inverse_sqrt`` keeps decaying. Give ``total_steps`` the real run's number of updates
        (``max_steps``).

        Raises:
            TransformersExportError: the schedule has no exact transformers equivalent; the
                message names the closest type.
        """
        from autowarm._hf_export import transformers_kwargs

        return transformers_kwargs(self)

    def to_trainer_args(self) -> dict[str, Any]:
        """``TrainingArguments`` fields for this schedule (transformers 5.x names).

        ``learning_rate``, ``warmup_steps`` (an absolute int), ``lr_scheduler_type``,
        ``lr_scheduler_kwargs`` and ``max_steps``: ``TrainingArguments(**cfg.to_trainer_args(),
        output_dir=...)``.

        Raises:
            TransformersExportError: as :meth:`to_transformers`.
        """
        hf = self.to_transformers()
        return {
            "learning_rate": self.peak_lr,
            "warmup_steps": hf["num_warmup_steps"],
            "lr_scheduler_type": hf["name"],
            "lr_scheduler_kwargs": dict(hf["scheduler_specific_kwargs"]),
            "max_steps": self.total_steps,
        }

    def to_lightning(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The dict ``LightningModule.configure_optimizers`` returns, stepping per update.

        ``interval="step"`` makes Lightning call ``scheduler.step()`` after every optimizer
        update; do not call it yourself as well.
        """
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.lambda_lr(optimizer),
                "interval": "step",
                "frequency": 1,
                "name": "autowarm",
            },
        }

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping with the format name and version (inverse of ``from_dict``)."""
        from autowarm._config_io import config_to_dict

        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleConfig:
        """Validate a mapping (as written by ``to_dict``); unknown keys raise ``ValueError``."""
        from autowarm._config_io import config_from_dict

        return config_from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the config as ``.json`` or ``.yaml``/``.yml`` (chosen by the suffix), atomically.

        An existing file at ``path`` is replaced only when autowarm wrote it (a schedule
        config or an ``autowarm export``) or it is empty.

        Raises:
            ValueError: another suffix, or ``path`` is a folder.
            FileExistsError: ``path`` holds another file (a training config of the user's,
                say); it is left as it was.
        """
        from autowarm._config_io import save_config

        return save_config(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> ScheduleConfig:
        """Read a ``.json`` or ``.yaml`` config; never executes content.

        Raises:
            FileNotFoundError: no such file.
            ValueError: unreadable content, unknown keys, wrong types or out-of-range values;
                the message names the field and the value.
        """
        from autowarm._config_io import load_config

        return load_config(Path(path))

    def replace(self, **changes: Any) -> ScheduleConfig:
        """A copy with some fields changed (validated again).

        Changing ``decay`` puts the shape parameters of the old decay (``num_cycles``,
        ``power``, ...) back to their defaults unless they are passed too, so
        ``cfg.replace(decay="linear")`` works from any decay. (``dataclasses.replace`` does
        not: it refuses a parameter the new decay does not use.)
        """
        if "decay" in changes:
            fields = type(self).__dataclass_fields__
            kept = (
                SHAPE_FIELDS.get(Decay(changes["decay"]), ())
                if _is_decay(changes["decay"])
                else ()
            )
            for names in SHAPE_FIELDS.values():
                for name in names:
                    if name not in changes and name not in kept:
                        changes[name] = fields[name].default
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, (Decay, WsdShape)) else value


def _is_decay(value: Any) -> bool:
    return isinstance(value, str) and value in {d.value for d in Decay}


# Step counts stay exact as floats (the shapes compute in float64), and a Python int too
# large for a float cannot overflow there.
_MAX_STEPS = 2**53


def lr_scale_keys(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each parameter group's ``"lr_scale"`` key (1 where it has none), in order: the ratio of
    the group's LR to the schedule's, as :meth:`ScheduleConfig.lambda_lr` applies it.

    Raises:
        ValueError: If a key is not a positive finite real.
    """
    keys = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    if not all(_is_scale(x) for x in keys):
        raise ValueError(
            "a parameter group's 'lr_scale' must be a positive float, but the "
            f"optimizer's groups have {keys!r}"
        )
    return [float(x) for x in keys]


def _as_list(x: object) -> list[Any] | None:
    """The items of a list, tuple, array or other iterable; ``None`` for a str, a mapping or
    anything not iterable."""
    if isinstance(x, (str, bytes, Mapping)):
        return None
    try:
        return list(x)  # type: ignore[call-overload,no-any-return]
    except TypeError:
        return None


def _is_scale(x: object) -> bool:
    return is_finite_real(x) and float(x) > 0  # type: ignore[arg-type]  # a numbers.Real
