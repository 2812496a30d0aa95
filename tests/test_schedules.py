"""ScheduleConfig: the step convention, every shape against hand-computed tables, validation."""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autowarm import Decay, ScheduleConfig, TransformersExportError

PEAK, W, T = 10.0, 2, 10

# Hand-computed LRs for steps 0..10 with peak 10, warmup 2, total 10 (see test comments).
TABLES: dict[str, tuple[dict[str, object], list[float]]] = {
    "constant": ({}, [0, 5, 10, 10, 10, 10, 10, 10, 10, 10, 10]),
    # (T - s) / (T - W) after warmup
    "linear": ({}, [0, 5, 10, 8.75, 7.5, 6.25, 5, 3.75, 2.5, 1.25, 0]),
    # 0.5 (1 + cos(pi p)), p = (s - 2) / 8
    "cosine": (
        {},
        [0, 5, 10, 9.6193977, 8.5355339, 6.9134172, 5, 3.0865828, 1.4644661, 0.3806023, 0],
    ),
    # two cycles: 0.5 (1 + cos(pi ((2p) mod 1))), 0 at p = 1
    "cosine_with_restarts": (
        {"num_cycles": 2},
        [0, 5, 10, 8.5355339, 5, 1.4644661, 10, 8.5355339, 5, 1.4644661, 0],
    ),
    # min_lr 1, power 2: 1 + 9 (1 - p)^2
    "polynomial": (
        {"power": 2.0, "min_lr": 1.0},
        [0, 5, 10, 7.890625, 6.0625, 4.515625, 3.25, 2.265625, 1.5625, 1.140625, 1],
    ),
    # timescale = W = 2: 10 / sqrt(s / 2)
    "inverse_sqrt": (
        {},
        [0, 5, 10, 8.1649658, 7.0710678, 6.3245553, 5.7735027, 5.3452248, 5, 4.7140452, 4.4721360],
    ),
    # decay over the last 40% (4 steps, from step 6), linear
    "warmup_stable_decay": (
        {"wsd_decay_fraction": 0.4},
        [0, 5, 10, 10, 10, 10, 10, 7.5, 5, 2.5, 0],
    ),
}


@pytest.mark.parametrize("decay", list(TABLES))
def test_hand_computed_table(decay: str) -> None:
    extra, expected = TABLES[decay]
    cfg = ScheduleConfig(peak_lr=PEAK, total_steps=T, warmup_steps=W, decay=decay, **extra)
    got = [cfg.lr_at(s) for s in range(T + 1)]
    assert got == pytest.approx(expected, abs=1e-6), decay


def test_every_decay_name_has_a_table() -> None:
    assert set(TABLES) == {d.value for d in Decay}


@pytest.mark.parametrize("decay", list(TABLES))
def test_edges(decay: str) -> None:
    extra, expected = TABLES[decay]
    cfg = ScheduleConfig(peak_lr=PEAK, total_steps=T, warmup_steps=W, decay=decay, **extra)
    assert cfg.lr_at(0) == 0.0  # transformers' convention: the first update has LR 0
    assert cfg.lr_at(W) == PEAK  # the peak is reached exactly at step == warmup_steps
    assert cfg.lr_at(W - 1) < PEAK
    assert cfg.lr_at(T - 1) == pytest.approx(expected[T - 1], abs=1e-6)  # last update
    assert cfg.lr_at(T + 50) == pytest.approx(expected[T], abs=1e-6)  # stays after the end
    assert cfg.multiplier(5) == pytest.approx(cfg.lr_at(5) / PEAK)
    assert cfg.lrs() == pytest.approx([cfg.lr_at(s) for s in range(T)])


def test_warmup_start_factor_and_floor() -> None:
    cfg = ScheduleConfig(
        peak_lr=PEAK, total_steps=T, warmup_steps=W, warmup_start_factor=0.1, min_lr=2.0
    )
    assert cfg.lr_at(0) == pytest.approx(1.0)
    assert cfg.lr_at(1) == pytest.approx(5.5)  # 0.1 + 0.9 * 1/2
    assert cfg.lr_at(2) == PEAK
    assert cfg.lr_at(6) == pytest.approx(6.0)  # 2 + 8 * 0.5
    assert cfg.lr_at(T) == pytest.approx(2.0)


def test_no_warmup_starts_at_peak() -> None:
    cfg = ScheduleConfig(peak_lr=PEAK, total_steps=T, warmup_steps=0, decay="linear")
    assert cfg.lr_at(0) == PEAK
    assert cfg.lr_at(5) == pytest.approx(5.0)


def _two_group_optimizer() -> torch.optim.Optimizer:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.AdamW([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}], lr=99.0)


def _run(sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in sched.optimizer.param_groups])
        sched.optimizer.step()
        sched.step()
    return out


@pytest.mark.parametrize("decay", list(TABLES))
def test_lambda_lr_two_groups(decay: str) -> None:
    extra, _ = TABLES[decay]
    cfg = ScheduleConfig(peak_lr=PEAK, total_steps=T, warmup_steps=W, decay=decay, **extra)
    opt = _two_group_optimizer()
    sched = cfg.lambda_lr(opt, group_scales=[1.0, 0.25])
    assert [g["initial_lr"] for g in opt.param_groups] == [PEAK, PEAK]
    got = _run(sched, T)
    for step, (lr_a, lr_b) in enumerate(got):
        assert lr_a == pytest.approx(cfg.lr_at(step), rel=1e-12, abs=1e-15)
        assert lr_b == pytest.approx(0.25 * cfg.lr_at(step), rel=1e-12, abs=1e-15)


def test_lambda_lr_default_groups_start_at_peak() -> None:
    cfg = ScheduleConfig(peak_lr=3e-4, total_steps=100, warmup_steps=0)
    opt = _two_group_optimizer()
    cfg.lambda_lr(opt)
    assert [g["lr"] for g in opt.param_groups] == [3e-4, 3e-4]


def test_lambda_lr_reads_the_groups_lr_scale_by_default() -> None:
    cfg = ScheduleConfig(peak_lr=2e-3, total_steps=100, warmup_steps=10)
    opt = _two_group_optimizer()
    opt.param_groups[1]["lr_scale"] = 0.1  # as suggest(param_groups=...) takes them
    sched = cfg.lambda_lr(opt)
    for step, (lr_a, lr_b) in enumerate(_run(sched, 30)):
        assert lr_a == pytest.approx(cfg.lr_at(step), rel=1e-12, abs=1e-15)
        assert lr_b == pytest.approx(0.1 * cfg.lr_at(step), rel=1e-12, abs=1e-15)
    # an explicit group_scales wins over the keys
    opt = _two_group_optimizer()
    opt.param_groups[1]["lr_scale"] = 0.1
    sched = cfg.lambda_lr(opt, group_scales=[1.0, 0.5])
    assert _run(sched, 12)[11][1] == pytest.approx(0.5 * cfg.lr_at(11))
    opt.param_groups[1]["lr_scale"] = 0.0
    with pytest.raises(ValueError, match="'lr_scale' must be a positive float"):
        cfg.lambda_lr(opt)


def test_lambda_lr_rejects_bad_group_scales() -> None:
    cfg = ScheduleConfig(peak_lr=1.0, total_steps=10, warmup_steps=2)
    for bad in ([1.0], [1.0, True], [1.0, "0.5"], [1.0, "x"], [1.0, None], 0.5, [1.0, 10**400]):
        with pytest.raises(ValueError, match="group_scales must be a list holding one positive"):
            cfg.lambda_lr(_two_group_optimizer(), group_scales=bad)  # type: ignore[arg-type]
    # any iterable of reals: a tuple, a numpy array
    cfg.lambda_lr(_two_group_optimizer(), group_scales=np.array([1.0, 0.5]))


def test_a_huge_integer_is_a_bad_value_not_an_overflow() -> None:
    huge = 10**400
    for kwargs in (
        {"peak_lr": huge},
        {"total_steps": huge},
        {"decay": "polynomial", "power": huge},
        {"decay": "cosine_with_restarts", "num_cycles": huge},
        {"decay": "inverse_sqrt", "timescale": huge},
    ):
        base: dict[str, Any] = {"peak_lr": 1e-3, "total_steps": 10, "warmup_steps": 0}
        name = next(k for k in kwargs if k != "decay")
        with pytest.raises(ValueError, match=f"{name} must be"):
            ScheduleConfig(**{**base, **kwargs})


@pytest.mark.parametrize("decay", list(TABLES))
def test_state_dict_resume_mid_run(decay: str) -> None:
    extra, _ = TABLES[decay]
    extra = {**extra, "min_lr": 1e-4} if "min_lr" in extra else extra
    cfg = ScheduleConfig(peak_lr=1e-3, total_steps=300, warmup_steps=40, decay=decay, **extra)
    full = _run(cfg.lambda_lr(_two_group_optimizer(), group_scales=[1.0, 0.5]), 300)
    for cut in (17, 150):  # mid-warmup and mid-decay
        opt = _two_group_optimizer()
        sched = cfg.lambda_lr(opt, group_scales=[1.0, 0.5])
        first = _run(sched, cut)
        buf = io.BytesIO()
        torch.save({"sched": sched.state_dict(), "opt": opt.state_dict()}, buf)
        buf.seek(0)
        ckpt = torch.load(buf, weights_only=True)  # plain data only
        # A fresh run built from a *different* config resumes on the checkpointed schedule.
        other = cfg.replace(peak_lr=5e-2, warmup_steps=0)
        opt2 = _two_group_optimizer()
        sched2 = other.lambda_lr(opt2, group_scales=[1.0, 0.5])
        opt2.load_state_dict(ckpt["opt"])
        sched2.load_state_dict(ckpt["sched"])
        rest = _run(sched2, 300 - cut)
        assert first + rest == full, (decay, cut)


def test_resume_with_last_epoch_without_state() -> None:
    cfg = ScheduleConfig(peak_lr=1.0, total_steps=100, warmup_steps=10)
    opt = _two_group_optimizer()
    sched = cfg.lambda_lr(opt, last_epoch=49)  # 50 updates already done
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr_at(50))
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr_at(51))


@pytest.mark.parametrize("decay", list(TABLES))
def test_scheduler_pickles_and_torch_saves(decay: str) -> None:
    extra, _ = TABLES[decay]
    cfg = ScheduleConfig(peak_lr=1.0, total_steps=50, warmup_steps=5, decay=decay, **extra)
    sched = cfg.lambda_lr(_two_group_optimizer())
    _run(sched, 7)
    clone = pickle.loads(pickle.dumps(sched))
    assert _run(clone, 20) == _run(sched, 20)
    buf = io.BytesIO()
    torch.save(sched, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.last_epoch == sched.last_epoch


def test_lightning_dict_steps_per_update() -> None:
    cfg = ScheduleConfig(peak_lr=1.0, total_steps=50, warmup_steps=5)
    opt = _two_group_optimizer()
    d = cfg.to_lightning(opt)
    assert d["optimizer"] is opt
    assert set(d["lr_scheduler"]) == {"scheduler", "interval", "frequency", "name"}
    assert d["lr_scheduler"]["interval"] == "step"
    assert d["lr_scheduler"]["frequency"] == 1
    assert isinstance(d["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LambdaLR)


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("peak_lr", 0.0),
        ("peak_lr", -1e-3),
        ("peak_lr", math.nan),
        ("peak_lr", math.inf),
        ("peak_lr", "3e-4"),
        ("peak_lr", True),
        ("total_steps", 0),
        ("total_steps", 10.0),
        ("warmup_steps", -1),
        ("warmup_steps", 101),
        ("warmup_steps", 2.5),
        ("decay", "cosine_annealing"),
        ("decay", 3),
        ("min_lr", -1.0),
        ("min_lr", 2.0),
        ("warmup_start_factor", 1.5),
        ("num_cycles", 0),
        ("power", 0.0),
        ("timescale", 0),
        ("wsd_decay_fraction", 0.0),
        ("wsd_decay_shape", "exp"),
    ],
)
def test_invalid_field_names_field_and_value(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"peak_lr": 1.0, "total_steps": 100, "warmup_steps": 10}
    kwargs[field] = value
    with pytest.raises(ValueError, match=field) as info:
        ScheduleConfig(**kwargs)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


def test_unknown_decay_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"'cosine_with_restarts'.*but got decay='cosin'"):
        ScheduleConfig(peak_lr=1.0, total_steps=10, warmup_steps=1, decay="cosin")


def test_wsd_phases_must_fit() -> None:
    with pytest.raises(ValueError, match="wsd_decay_fraction"):
        ScheduleConfig(
            peak_lr=1.0,
            total_steps=10,
            warmup_steps=9,
            decay="warmup_stable_decay",
            wsd_decay_fraction=0.5,
        )
    # The limit is on whole decay steps: round(0.25 * 10) = 2 (half to even), so a warmup of 8
    # fits and 9 does not, as the message says.
    wsd = dict(peak_lr=1.0, total_steps=10, decay="warmup_stable_decay", wsd_decay_fraction=0.25)
    assert ScheduleConfig(warmup_steps=8, **wsd).warmup_limit == 8  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"<= total_steps - wsd_decay_steps.*\(2 decay steps\)"):
        ScheduleConfig(warmup_steps=9, **wsd)  # type: ignore[arg-type]


def test_frozen() -> None:
    cfg = ScheduleConfig(peak_lr=1.0, total_steps=10, warmup_steps=1)
    with pytest.raises(AttributeError):
        cfg.peak_lr = 2.0  # type: ignore[misc]


def test_transformers_error_names_closest_type() -> None:
    cfg = ScheduleConfig(
        peak_lr=1.0, total_steps=10, warmup_steps=2, decay="cosine_with_restarts", min_lr=0.1
    )
    with pytest.raises(TransformersExportError, match="closest transformers type is"):
        cfg.to_transformers()
    cfg = ScheduleConfig(peak_lr=1.0, total_steps=10, warmup_steps=2, warmup_start_factor=0.1)
    with pytest.raises(TransformersExportError, match="cosine_warmup_with_min_lr"):
        cfg.to_trainer_args()


@pytest.mark.parametrize(
    ("field", "value", "owner"),
    [
        ("num_cycles", 3, "cosine_with_restarts"),
        ("power", 2.0, "polynomial"),
        ("timescale", 50, "inverse_sqrt"),
        ("wsd_decay_fraction", 0.3, "warmup_stable_decay"),
        ("wsd_decay_shape", "cosine", "warmup_stable_decay"),
    ],
)
def test_a_shape_parameter_of_another_decay_is_refused(
    field: str, value: object, owner: str
) -> None:
    # It would change nothing, and saving would drop it (so the loaded config would differ).
    base = ScheduleConfig(peak_lr=1.0, total_steps=100, warmup_steps=10, decay=owner)
    base = base.replace(**{field: value})
    with pytest.raises(
        ValueError, match=rf"{field}={value!r} applies to decay '{owner}'.*'cosine'"
    ):
        ScheduleConfig(peak_lr=1.0, total_steps=100, warmup_steps=10, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="applies to decay"):
        dataclasses.replace(base, decay="cosine")
    # replace() that changes the decay puts the old decay's parameters back to their defaults
    switched = base.replace(decay="cosine")
    assert switched == ScheduleConfig(peak_lr=1.0, total_steps=100, warmup_steps=10)
    assert ScheduleConfig.from_dict(switched.to_dict()) == switched
    # ... unless they are given again with it, for a decay that uses them
    assert base.replace(decay=owner, **{field: value}) == base


def test_warmup_limit_is_what_the_shape_leaves() -> None:
    base = ScheduleConfig(peak_lr=1.0, total_steps=200, warmup_steps=10)
    assert base.warmup_limit == 200
    wsd = base.replace(decay="warmup_stable_decay", wsd_decay_fraction=0.25)
    assert wsd.warmup_limit == 150
    assert wsd.replace(warmup_steps=150).warmup_steps == 150
    with pytest.raises(ValueError, match="warmup_steps"):
        wsd.replace(warmup_steps=151)


@pytest.mark.parametrize("decay", ["cosine", "cosine_with_restarts", "polynomial", "linear"])
def test_past_the_run_the_lr_holds_also_when_warmup_is_the_whole_run(decay: str) -> None:
    # with warmup_steps == total_steps the LR at total_steps is the peak (or the floor for
    # linear, as transformers): it used to fall to the floor one step later
    cfg = ScheduleConfig(peak_lr=2e-3, total_steps=4, warmup_steps=4, decay=decay)
    assert cfg.lr_at(5) == cfg.lr_at(4) == cfg.lr_at(10**400)


def test_a_numpy_integer_step_is_read_as_its_value() -> None:
    cfg = ScheduleConfig(
        peak_lr=1e-3, total_steps=255, warmup_steps=40, decay="inverse_sqrt", timescale=100
    )
    assert cfg.lr_at(np.uint8(200)) == cfg.lr_at(200)  # not uint8 arithmetic: 5x the peak
    long = ScheduleConfig(peak_lr=1e-3, total_steps=100_000, warmup_steps=10, decay="linear")
    assert long.lr_at(np.int16(5000)) == long.lr_at(5000)


def test_wsd_decay_steps_round_the_fraction_of_the_run() -> None:
    cfg = ScheduleConfig(peak_lr=1.0, total_steps=10, warmup_steps=0,
                         decay="warmup_stable_decay", wsd_decay_fraction=0.27)  # fmt: skip
    assert cfg.wsd_decay_steps == 3  # 2.7 rounds to 3, not down to 2


def test_inverse_sqrt_without_warmup_or_time_scale_decays_on_10000_steps() -> None:
    cfg = ScheduleConfig(peak_lr=1.0, total_steps=30_000, warmup_steps=0, decay="inverse_sqrt")
    assert cfg.effective_timescale == 10_000
    assert cfg.lr_at(10_000) == pytest.approx(2**-0.5)  # 1 / sqrt((10000 + 10000) / 10000)


@pytest.mark.parametrize("field", ["min_lr", "warmup_start_factor"])
def test_a_negative_zero_is_stored_and_saved_as_zero(field: str, tmp_path: Path) -> None:
    cfg = ScheduleConfig(peak_lr=1e-3, total_steps=10, warmup_steps=2, **{field: -0.0})
    assert math.copysign(1.0, getattr(cfg, field)) == 1.0
    assert cfg == ScheduleConfig(peak_lr=1e-3, total_steps=10, warmup_steps=2)
    path = cfg.save(tmp_path / "s.yaml")
    assert "-0.0" not in path.read_text()
