"""The probe plan's pure pieces: peak choice, ramps, sweep clean-up, the decision."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from autowarm.probe import signals as sig
from autowarm.probe._bursts import MOMENT_COLUMNS, Budget, BurstResult
from autowarm.probe._search import (
    BurstVerdict,
    SearchSettings,
    _drop_isolated_nonfinite,
    _judge,
    _moment_frame,
    _peak_ladder,
    _settling,
    active_settings,
    choose_peak,
    needs_ramp,
    parse_settings,
    ramp_lrs,
    range_test_lrs,
    settings_label,
    sweep_smoothing,
    use_settings,
)


def _rt(**changes: object) -> sig.RangeTestResult:
    lrs = np.geomspace(1e-6, 1.0, 60)
    x = np.log10(lrs)
    loss = 2.0 - 1.5 / (1 + np.exp(-(x + 3) * 3)) + np.where(x > -1, (x + 1) ** 2 * 20, 0)
    base = sig.range_test(lrs, loss, skip_begin=5, skip_end=1)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_choose_peak_is_min_loss_lr_over_divisor() -> None:
    rt = _rt(min_loss_lr=0.1, diverged=False, diverge_lr=math.nan)
    peak, why = choose_peak(rt, 10.0)
    assert peak == pytest.approx(0.01)
    assert "0.1" in why and "10" in why


def test_choose_peak_never_above_divergence_edge() -> None:
    rt = _rt(min_loss_lr=0.1, diverged=True, diverge_lr=0.05)
    peak, _ = choose_peak(rt, 10.0)
    assert peak == pytest.approx(0.005)


def test_choose_peak_on_a_synthetic_sweep() -> None:
    rt = _rt()
    assert rt.ok and math.isfinite(rt.min_loss_lr)
    peak, _ = choose_peak(rt, 10.0)
    assert peak == pytest.approx(rt.min_loss_lr / 10)
    assert peak < rt.min_loss_lr


def test_ramp_follows_the_schedule_convention() -> None:
    assert ramp_lrs(1.0, 4, 2) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert ramp_lrs(0.5, 0, 3) == [0.5, 0.5, 0.5]


def test_range_test_lrs_log_spaced() -> None:
    lrs = range_test_lrs(7, 1e-6, 1.0)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    ratios = np.diff(np.log10(lrs))
    assert np.allclose(ratios, 1.0)


def test_isolated_nan_is_dropped_trailing_kept() -> None:
    nan = math.nan
    lrs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    losses = [1.0, nan, 0.9, 0.8, nan, nan]
    kl, kx, steps = _drop_isolated_nonfinite(lrs, losses)
    assert kl == [1.0, 3.0, 4.0, 5.0, 6.0]
    assert steps == [0, 2, 3, 4, 5]
    assert kx[:3] == [1.0, 0.9, 0.8]
    assert all(math.isnan(v) for v in kx[3:])
    # a single trailing NaN is divergence, kept
    assert _drop_isolated_nonfinite([1.0, 2.0], [1.0, nan])[0] == [1.0, 2.0]


# --- needs_ramp: the no-ramp burst against the ramped one, step for step ---------------------


def _verdict(losses: list[float], *, warmup: int, unstable: bool = False) -> BurstVerdict:
    rows = [
        {"step": i, "lr": 0.1, "loss": x, "finite": math.isfinite(x)} for i, x in enumerate(losses)
    ]
    burst = BurstResult("warmup", 1, rows, False, False, 0.1, warmup)
    signals = sig.burst_stability(losses)
    if unstable:
        signals = dataclasses.replace(signals, unstable=True, reason="spikes")
    return BurstVerdict(burst, signals)


def _noisy_curve(n: int, seed: int = 0) -> np.ndarray:
    # A decreasing loss plus batch-to-batch noise that both bursts share (same batches).
    rng = np.random.default_rng(seed)
    return 1.0 / (1.0 + 0.1 * np.arange(n)) + 0.2 * rng.random(n) + 0.5


def test_needs_ramp_no_when_the_bursts_agree_within_noise() -> None:
    ramped = _noisy_curve(40)
    jitter = np.random.default_rng(1).normal(0.0, 1e-3, 40)
    needed, why = needs_ramp(
        _verdict(list(ramped + jitter), warmup=0), _verdict(list(ramped), warmup=10)
    )
    assert not needed
    assert "steps 30-39" in why and "paired difference" in why


def test_needs_ramp_yes_for_a_small_shift_hidden_in_large_shared_noise() -> None:
    # A shift of 0.01 is far below the batch noise (0.2) but the same on every batch: the
    # paired comparison sees it where an unpaired one would call it a tie.
    ramped = _noisy_curve(40)
    needed, why = needs_ramp(
        _verdict(list(ramped + 0.01), warmup=0), _verdict(list(ramped), warmup=10)
    )
    assert needed
    assert "+0.01" in why


def test_needs_ramp_compares_the_same_steps_when_the_no_ramp_burst_is_shorter() -> None:
    # The ramped burst is 40 steps; a 20-step no-ramp burst is compared on steps 15-19
    # (counted from 0, as in the trace).
    ramped = list(_noisy_curve(40))
    shorter = [x - 0.05 for x in ramped[:20]]
    needed, why = needs_ramp(_verdict(shorter, warmup=0), _verdict(ramped, warmup=10))
    assert not needed and "steps 15-19" in why
    # Against the ramped burst's own tail (a later, lower stretch) it would have looked worse.
    assert np.mean(shorter[-5:]) > np.mean(ramped[-10:])


def test_needs_ramp_yes_when_the_no_ramp_burst_is_unstable_or_not_finite() -> None:
    ramped = list(_noisy_curve(40))
    needed, why = needs_ramp(
        _verdict(ramped, warmup=0, unstable=True), _verdict(ramped, warmup=10)
    )
    assert needed and "unstable" in why and "spikes" in why
    tail_nan = [*ramped[:-1], math.nan]
    needed, why = needs_ramp(_verdict(tail_nan, warmup=0), _verdict(ramped, warmup=10))
    assert needed and "non-finite" in why


def test_parse_settings_reads_each_field_as_its_type() -> None:
    got = parse_settings(
        ["lr_min=1e-6", " refine = true", "ladder_min_steps=8", "drift_band=0.01,2"]
    )
    assert got == {
        "lr_min": 1e-6,
        "refine": True,
        "ladder_min_steps": 8,
        "drift_band": (0.01, 2.0),
    }
    assert isinstance(got["ladder_min_steps"], int) and isinstance(got["lr_min"], float)
    assert SearchSettings(**got).refine is True
    label = settings_label(got)
    assert label == "drift_band=0.01:2.0,ladder_min_steps=8,lr_min=1e-06,refine=true"
    assert parse_settings(label.split(",")) == got  # the label reads back
    odd = {"lr_min": 1.2345678901e-6}
    assert parse_settings(settings_label(odd).split(",")) == odd  # exactly, not to 6 digits
    assert parse_settings([]) == {}


@pytest.mark.parametrize(
    ("pair", "match"),
    [
        ("lr_min", "KEY=VALUE such as lr_min=1e-6"),
        ("=3", "KEY=VALUE"),
        ("lr_mn=1e-6", "unknown probe setting 'lr_mn'; the settings are: lr_min, lr_max"),
        ("refine=maybe", "'refine' takes a value like its default refine=false"),
        ("ladder_min_steps=2.5", "'ladder_min_steps' takes a value like its default"),
        ("drift_band=1", "'drift_band' takes a value like its default drift_band=0.001:1.5"),
        ("lr_min=small", "'lr_min' takes a value like its default lr_min=1e-07, but got 'small'"),
    ],
)
def test_parse_settings_says_what_to_pass(pair: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_settings([pair])


def test_use_settings_applies_inside_the_block_only() -> None:
    assert active_settings() == SearchSettings()
    variant = SearchSettings(lr_min=1e-5)
    with use_settings(variant) as inside:
        assert inside is variant and active_settings() is variant
        with use_settings(SearchSettings(refine=True)):
            assert active_settings().refine and active_settings().lr_min == 1e-7
        assert active_settings() is variant
    assert active_settings() == SearchSettings()
    with pytest.raises(RuntimeError), use_settings(variant):
        raise RuntimeError("the block failed")
    assert active_settings() == SearchSettings()


# --- the peak ladder's one-standard-error rule, step for step --------------------------------


class _LadderRunner:
    """Bursts whose losses are one shared noisy curve plus an offset that depends on the peak."""

    def __init__(self, offsets: dict[float, float], *, jitter: float = 1e-3) -> None:
        self.offsets, self.jitter = offsets, jitter
        self.start_loss: float | None = None
        self.budget = Budget(1000)
        self.peaks: list[float] = []

    def run(self, lrs: list[float], *, phase: str, peak_lr: float, warmup_steps: int):
        self.peaks.append(peak_lr)
        offset = next(v for p, v in self.offsets.items() if math.isclose(p, peak_lr))
        jitter = np.random.default_rng(len(self.peaks)).normal(0.0, self.jitter, len(lrs))
        losses = _noisy_curve(len(lrs)) + offset + jitter
        for _ in lrs:
            self.budget.take()
        rows = [
            {"step": i, "lr": lr, "loss": float(x), "finite": True}
            for i, (lr, x) in enumerate(zip(lrs, losses, strict=True))
        ]
        return BurstResult(phase, len(self.peaks), rows, False, False, peak_lr, warmup_steps)


def test_ladder_compares_candidates_step_for_step() -> None:
    # Larger peaks end 0.01 lower on every batch, far below the batch noise (0.2) that all
    # bursts share: the paired comparison sees the difference, so the edge wins outright. An
    # unpaired standard error would have called all three a tie and taken the smallest peak.
    edge = 1.0
    offsets = {edge / 10: 0.02, edge / 10**0.5: 0.01, edge: 0.0, edge / 10**1.5: 0.03}
    runner = _LadderRunner(offsets)
    _, best = _peak_ladder(runner, edge, 40, 10, [], refine=False)  # type: ignore[arg-type]
    assert best is not None and best.burst.peak_lr == pytest.approx(edge)
    assert sorted(runner.peaks) == pytest.approx([edge / 10, edge / 10**0.5, edge])


def test_ladder_takes_the_smallest_peak_within_noise() -> None:
    # Differences well inside the step-to-step jitter of the paired differences are ties.
    edge = 1.0
    offsets = {edge / 10: 0.0002, edge / 10**0.5: 0.0001, edge: 0.0, edge / 10**1.5: 0.0003}
    runner = _LadderRunner(offsets, jitter=0.05)
    _, best = _peak_ladder(runner, edge, 40, 10, [], refine=False)  # type: ignore[arg-type]
    assert len(runner.peaks) == 3
    assert best is not None and best.burst.peak_lr == pytest.approx(min(runner.peaks))


def test_a_catapult_from_the_first_update_is_seen_against_the_initial_loss() -> None:
    # The loss at the initial weights is 2.3; the first update at the peak throws it to 5.4,
    # and it recovers. Read alone, the filtered trace starts at the top of the catapult.
    n = np.arange(1, 40)
    losses = [2.3, *(5.4 * np.exp(-n / 25.0) + 0.5 + 0.02 * np.cos(n))]
    burst = BurstResult(
        "warmup",
        1,
        [{"step": i, "lr": 0.1, "loss": float(x), "finite": True} for i, x in enumerate(losses)],
        False,
        False,
        0.1,
        0,
    )
    assert _judge(burst).stable
    judged = _judge(burst, 2.3)
    assert not judged.stable and "catapult" in judged.signals.reason


def test_one_hard_first_batch_is_no_catapult_against_the_initial_loss() -> None:
    # Batch 0 is 30% harder than the loss at the initial weights (the median of several
    # batches, 7.37); the rest descends. The first point must not start the curve high.
    n = np.arange(1, 40)
    losses = [9.55, *(7.3 * np.exp(-n / 15.0) + 0.5 + 0.05 * np.cos(n))]
    burst = BurstResult(
        "peak_ladder",
        1,
        [{"step": i, "lr": 0.01, "loss": float(x), "finite": True} for i, x in enumerate(losses)],
        False,
        False,
        0.01,
        10,
    )
    judged = _judge(burst, 7.37)
    assert judged.stable, judged.signals.reason


def test_the_sweeps_smoothing_spans_the_same_decades_at_any_length() -> None:
    # A noise-free U-shaped loss against log LR, minimum at 1e-3, read from sweeps of 16, 50
    # and 150 points (the probe's shortest, its benchmark length, its longest). With one EMA
    # factor (0.9) for all, the edge moved 0.87 decades, from 2.1e-2 (16 points) to 2.9e-3
    # (150 points); now 0.41, most of it the 16-point sweep's spacing of 0.53 decades.
    settings = SearchSettings()
    assert sweep_smoothing(50, settings) == 0.9  # the factor LR finders use, at 50 points
    edges = []
    for n in (16, 50, 150):
        lrs = np.asarray(range_test_lrs(n, settings.lr_min, settings.lr_max))
        loss = 1.0 + 0.1 * (np.log10(lrs) + 3.0) ** 2
        rt = sig.range_test(
            lrs, loss, smooth_beta=sweep_smoothing(n, settings), skip_begin=1, skip_end=1
        )
        edges.append(math.log10(rt.min_loss_lr))
    assert max(edges) - min(edges) < 0.5, edges


def test_the_second_moment_is_read_on_the_chosen_peaks_burst() -> None:
    def verdict(peak: float, kappa: float) -> BurstVerdict:
        rows = [
            {"step": i, "lr": peak, "loss": 1.0 / (i + 1), "finite": True}
            | {c: 1.0 for c in MOMENT_COLUMNS}
            | {"kappa": kappa}
            for i in range(20)
        ]
        burst = BurstResult("peak_ladder", 1, rows, False, False, peak, 5)
        return BurstVerdict(burst, sig.burst_stability(burst.losses))

    ladder = [verdict(0.01, 2.0), verdict(0.03, 5.0), verdict(0.1, 9.0)]

    class Runner:
        has_second_moment = True

    frame = _moment_frame(Runner(), ladder, ladder[1])  # type: ignore[arg-type]
    assert frame is not None and (frame["kappa"] == 5.0).all()
    assert (_moment_frame(Runner(), ladder)["kappa"] == 2.0).all()  # type: ignore[arg-type,index]


def test_an_update_the_loss_scaler_skipped_is_not_read_as_unsettled() -> None:
    # Adam's second moment on stationary Gaussian gradients, observed at every update, with one
    # update skipped by the AMP loss scaler (no step, no statistics). Its row of NaNs used to
    # fail every criterion: settled at 252 instead of 103 (skipped at row 250), or not at all,
    # a lower bound at the trace's end (skipped at the last row).
    rng = np.random.default_rng(0)
    beta2, v, before, clean = 0.999, np.zeros(2000), None, []
    for t in range(1, 301):
        v = beta2 * v + (1 - beta2) * rng.standard_normal(2000) ** 2
        vhat = v / (1 - beta2**t)
        n = float(sig.n_eff(float(t), beta2))
        change = math.nan if before is None else float(np.abs(vhat - before).sum() / before.sum())
        before = vhat
        stats = dict.fromkeys(MOMENT_COLUMNS, 1.0) | {
            "vhat_change": change, "kappa": 2.0, "n_eff": n, "rel_error": math.sqrt(2.0 / n)
        }  # fmt: skip
        clean.append(stats)

    def settling_with_skip(at: int | None) -> sig.SettlingResult | None:
        rows, stats = [], iter(clean)
        for i in range(301 if at is not None else 300):
            skipped = i == at
            row = dict.fromkeys(MOMENT_COLUMNS, math.nan) if skipped else next(stats)
            rows.append({"step": i, "loss": 1.0, "finite": True, "skipped": skipped} | row)
        burst = BurstResult("peak_ladder", 1, rows, False, False, 0.01, 5)
        chosen = BurstVerdict(burst, sig.burst_stability(burst.losses))

        class Runner:
            has_second_moment = True

        return _settling(Runner(), [chosen], SearchSettings(), beta2, chosen)  # type: ignore[arg-type]

    reference = settling_with_skip(None)
    assert reference is not None and reference.settled
    for at in (250, 300):
        skipped = settling_with_skip(at)
        assert skipped is not None and skipped.settled
        assert skipped.settling_step == reference.settling_step
