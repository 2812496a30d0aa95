from __future__ import annotations

import dataclasses
import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from autowarm.probe.signals import (
    BurstSignals,
    RangeTestResult,
    SettlingResult,
    burst_stability,
    ema,
    n_eff,
    range_test,
    settling_step,
    signals_frame,
    steps_for_n_eff,
    untuned_warmup_steps,
)

# ---------------------------------------------------------------------------------------------
# ema, n_eff, untuned rule
# ---------------------------------------------------------------------------------------------


def _ema_loop(values: list[float], beta: float) -> list[float]:
    m, k, out = 0.0, 0, []
    for x in values:
        if math.isfinite(x):
            m, k = beta * m + (1 - beta) * x, k + 1
        out.append(m / (1 - beta**k) if k else math.nan)
    return out


def test_ema_matches_loop_and_skips_nonfinite() -> None:
    values = [math.nan, 3.0, 1.0, math.inf, 2.0, math.nan, -1.0, 4.0]
    for beta in (0.0, 0.5, 0.9, 0.98):
        np.testing.assert_allclose(ema(values, beta), _ema_loop(values, beta), rtol=1e-12)
    out = ema(values, 0.9)
    assert math.isnan(out[0]) and out[3] == out[2] and out[5] == out[4]
    assert np.all(np.isnan(ema([math.nan, math.inf], 0.9)))
    assert ema([], 0.9).shape == (0,)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40),
    st.integers(0, 40),
    st.floats(0.0, 0.99),
)
def test_ema_nan_insertion_invariance(values: list[float], where: int, beta: float) -> None:
    where = min(where, len(values))
    with_nan = [*values[:where], math.nan, *values[where:]]
    a, b = ema(values, beta), ema(with_nan, beta)
    np.testing.assert_allclose(np.delete(b, where), a, rtol=1e-9, atol=1e-9)
    assert np.all(a >= min(values) - 1e-9) and np.all(a <= max(values) + 1e-9)


def test_ema_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), but got beta=1.0"):
        ema([1.0], 1.0)
    with pytest.raises(ValueError, match="values must be one-dimensional"):
        ema([[1.0, 2.0]])


@pytest.mark.parametrize("beta2", [0.0, 0.5, 0.9, 0.95, 0.999])
def test_n_eff_is_inverse_sum_of_squared_weights(beta2: float) -> None:
    for t in range(1, 60):
        w = (1 - beta2) * beta2 ** (t - np.arange(1, t + 1)) / (1 - beta2**t)
        assert w.sum() == pytest.approx(1.0)
        assert n_eff(t, beta2) == pytest.approx(1 / np.sum(w**2), rel=1e-9), f"{t=} {beta2=}"
    assert n_eff(0, beta2) == 0.0
    assert n_eff(1e7, beta2) == pytest.approx((1 + beta2) / (1 - beta2))
    arr = n_eff(np.array([1.0, 2.0, 3.0]), beta2)
    assert isinstance(arr, np.ndarray) and arr.shape == (3,)


@pytest.mark.parametrize("beta2", [0.9, 0.95, 0.98, 0.999, 0.9999])
@pytest.mark.parametrize("frac", [0.01, 0.3, 0.7, 0.99])
def test_steps_for_n_eff_matches_numeric_solve(beta2: float, frac: float) -> None:
    c = (1 + beta2) / (1 - beta2)
    target = frac * c
    numeric = brentq(lambda t: n_eff(t, beta2) - target, 0.0, 1e9)
    assert steps_for_n_eff(target, beta2) == pytest.approx(numeric, rel=1e-9)
    assert steps_for_n_eff(c, beta2) == math.inf
    assert steps_for_n_eff(0.0, beta2) == 0.0


def test_steps_for_n_eff_beta2_zero() -> None:
    assert steps_for_n_eff(0.5, 0.0) == 1.0 and steps_for_n_eff(2.0, 0.0) == math.inf


def test_untuned_warmup_steps() -> None:
    assert int(2 / (1 - 0.999)) == 1999  # pytorch_warmup's truncation
    assert untuned_warmup_steps(0.999) == 2000
    assert untuned_warmup_steps(0.95) == 40
    assert untuned_warmup_steps(0.98) == 100
    assert untuned_warmup_steps(0.99) == 200
    with pytest.raises(ValueError, match=r"beta2 must be in \[0, 1\), but got beta2=1.0"):
        untuned_warmup_steps(1.0)


# ---------------------------------------------------------------------------------------------
# range_test
# ---------------------------------------------------------------------------------------------

X0 = -3.5  # log10 LR of the inflection (steepest descent) of the synthetic sweep


def _sweep(n: int = 200, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    lrs = np.logspace(-7, 1, n)
    x = np.log10(lrs)
    loss = 1.0 + 0.75 * (1 - np.tanh((x - X0) / 0.5)) + np.exp(4 * (x + 0.5))
    rng = np.random.default_rng(seed)
    return lrs, loss * (1 + noise * rng.standard_normal(n))


def test_range_test_noise_free_valley() -> None:
    lrs, loss = _sweep()
    r = range_test(lrs, loss, smooth_beta=0.0)
    step = 8 / 199
    assert r.ok and not r.flat
    assert abs(np.log10(r.steepest_lr) - X0) <= step
    # dL/d(ln lr) at the inflection: -0.75 / 0.5 / ln(10)
    assert r.steepest_slope == pytest.approx(-1.5 / math.log(10), rel=0.01)
    run_min = np.minimum.accumulate(loss)
    expected = int(np.flatnonzero(loss > 4 * run_min)[0])
    assert r.diverged and r.diverge_index == expected and r.diverge_lr == lrs[expected]
    assert r.valley_start_lr < r.valley_lr < r.valley_end_lr <= r.min_loss_lr
    assert r.valley_start_lr <= r.steepest_lr <= r.valley_end_lr
    assert r.min_loss == pytest.approx(loss[: expected - 1].min(), rel=1e-3)
    assert r.n_points == 200 and r.n_finite == 200 and r.n_used == expected - 10 - 1


def test_range_test_noisy_smoothed() -> None:
    lrs, loss = _sweep(noise=0.02, seed=3)
    r = range_test(lrs, loss)
    # The EMA (beta=0.9, a window of ~10 points = 0.4 decades here) lags the curve.
    assert abs(np.log10(r.steepest_lr) - X0) < 0.6
    assert r.diverged and np.log10(r.diverge_lr) == pytest.approx(-0.2, abs=0.3)
    assert r.steepest_lr < r.min_loss_lr < r.diverge_lr
    assert "diverged" in r.reason


@pytest.mark.parametrize("n_nan", [1, 5, 30])
def test_range_test_appending_nan_changes_nothing(n_nan: int) -> None:
    lrs, loss = _sweep(noise=0.02, seed=1)
    lrs, loss = lrs[:185], loss[:185]  # the sweep already diverged inside this part
    base = range_test(lrs, loss)
    more_lrs = np.concatenate([lrs, lrs[-1] * 1.1 ** np.arange(1, n_nan + 1)])
    for tail in (np.nan, np.inf):
        more = range_test(more_lrs, np.concatenate([loss, np.full(n_nan, tail)]))
        assert dataclasses.replace(more, n_points=base.n_points, n_finite=base.n_finite) == base
    # NaN placeholders for the LR too (lists kept aligned)
    nan_lr = range_test(np.append(lrs, [np.nan] * n_nan), np.append(loss, [np.nan] * n_nan))
    assert nan_lr.steepest_lr == base.steepest_lr and nan_lr.valley_lr == base.valley_lr


def test_range_test_nan_before_divergence_is_divergence() -> None:
    lrs, loss = _sweep()
    loss = loss.copy()
    loss[120] = np.nan
    r = range_test(lrs, loss, smooth_beta=0.0)
    assert r.diverged and r.diverge_index == 120 and "non-finite" in r.reason
    assert r.n_used == 120 - 10 - 1


@pytest.mark.parametrize(
    "losses",
    [
        [2.0, 1.9, 1.8, 1.7, 1.6],
        [math.nan] * 50,
        [2.0, 1.9, 1.8, math.nan] + [1.0] * 40,
        [],
    ],
)
def test_range_test_too_few_points_is_flagged(losses: list[float]) -> None:
    lrs = np.logspace(-6, 0, len(losses))
    r = range_test(lrs, losses)
    assert not r.ok and "too few points" in r.reason
    assert math.isnan(r.steepest_lr) and math.isnan(r.valley_lr)


def test_range_test_flat_curve() -> None:
    rng = np.random.default_rng(0)
    lrs = np.logspace(-7, -3, 100)
    r = range_test(lrs, 0.4 * (1 + 0.005 * rng.standard_normal(100)))
    assert r.ok and r.flat and "flat" in r.reason and r.descent < 0.05
    assert not r.diverged


def test_range_test_divergence_threshold_optional() -> None:
    lrs, loss = _sweep()
    r = range_test(lrs, loss, smooth_beta=0.0, diverge_factor=None)
    assert not r.diverged and r.diverge_index == -1 and math.isnan(r.diverge_lr)


def test_range_test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"len\(lrs\)=3 and len\(losses\)=2"):
        range_test([1e-3, 1e-2, 1e-1], [1.0, 2.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        range_test([1e-1, 1e-2, 1e-3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="diverge_factor must be > 1 or None"):
        range_test([1e-3, 1e-2], [1.0, 2.0], diverge_factor=0.5)


# ---------------------------------------------------------------------------------------------
# burst_stability
# ---------------------------------------------------------------------------------------------


def _descent(n: int = 300, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    base = 2.3 * (0.4 + 0.6 * np.exp(-t / 75))
    return base * (1 + noise * np.random.default_rng(seed).standard_normal(n))


def test_monotone_descent_is_stable() -> None:
    r = burst_stability(_descent())
    assert r.ok and not r.unstable and r.reason.startswith("stable")
    assert r.tv_ratio == pytest.approx(1.0) and r.excess_tv == 0.0
    assert r.n_spikes == 0 and r.first_spike_step == -1 and r.rise_above_start <= 0
    assert r.net_decrease == pytest.approx(1 - np.mean(_descent()[-30:]) / 2.3)
    assert r.final_loss == pytest.approx(np.mean(_descent()[-30:]))


@pytest.mark.parametrize("seed", range(10))
def test_noisy_descent_is_stable(seed: int) -> None:
    r = burst_stability(_descent(noise=0.05, seed=seed))
    assert not r.unstable, r.reason
    assert r.noise == pytest.approx(0.05 * 0.6, rel=0.5)  # noise SD over the average level


def test_catapult() -> None:
    t = np.arange(300)
    x = _descent(noise=0.02) * (1 + 1.5 * np.exp(-(((t - 20) / 8.0) ** 2)))
    r = burst_stability(x)
    assert r.unstable and "catapult" in r.reason
    assert r.rise_above_start > 0.5
    assert r.net_decrease > 0  # it still came down in the end


def test_odd_first_batch_sets_neither_start_nor_oscillation() -> None:
    x = _descent(noise=0.01, seed=2)
    for first in (1.6, 3.5):  # an easy or a hard first batch, 30-50% off the level around it
        x[0] = first
        r = burst_stability(x)
        assert not r.unstable, r.reason
        assert r.start_loss == pytest.approx(2.3, rel=0.03)  # the median-filtered first point


def test_start_loss_is_the_reference() -> None:
    x = _descent(noise=0.01, seed=2)
    r = burst_stability(x, start_loss=1.6)  # e.g. a mean over batches that sits lower
    assert r.start_loss == 1.6 and "catapult" in r.reason
    assert r.rise_above_start == pytest.approx(2.3 / 1.6 - 1, abs=0.03)


def test_single_spike() -> None:
    x = _descent(noise=0.01, seed=4)
    outlier = x.copy()
    outlier[120] *= 3.0  # one odd batch
    assert burst_stability(outlier).n_spikes == 0
    r = burst_stability(outlier, spike_min_steps=1)
    assert r.n_spikes == 1 and r.first_spike_step == 120 and not r.unstable
    damaged = x.copy()
    damaged[120:130] *= 1.5  # the loss stays up for 10 steps
    r = burst_stability(damaged)
    assert r.n_spikes == 1 and r.first_spike_step == 120
    assert not r.unstable  # max_spikes=1 tolerates one
    assert burst_stability(damaged, max_spikes=0).unstable


def test_repeated_spikes_are_unstable() -> None:
    x = _descent(noise=0.01, seed=5)
    for c in (100, 180, 250):
        x[c : c + 6] *= 1.5
    r = burst_stability(x)
    assert r.unstable and "spikes" in r.reason and r.n_spikes == 3 and r.first_spike_step == 100


def test_oscillation() -> None:
    t = np.arange(300)
    r = burst_stability(_descent(noise=0.01) * (1 + 0.3 * np.sin(t / 5.0)))
    assert r.unstable and "oscillation" in r.reason
    assert r.tv_ratio > 2 and r.excess_tv > 1


def test_a_steady_rise_is_named_a_rise_not_an_oscillation() -> None:
    # A loss that climbs 5% without a wobble (below the catapult's 10%) travels only upward:
    # the same rule holds it unstable, and its reason says it rose.
    r = burst_stability(1.0 + 0.05 * np.linspace(0.0, 1.0, 60))
    assert r.unstable and "rise: " in r.reason and "oscillation" not in r.reason
    assert r.net_decrease < 0
    # An up-and-down travel that also ends higher is still an oscillation.
    t = np.arange(300)
    wobble = (1.0 + 0.0005 * t) * (1 + 0.3 * np.sin(t / 5.0))
    r = burst_stability(wobble)
    assert r.unstable and "oscillation" in r.reason and "rise: " not in r.reason


def test_nan_tail() -> None:
    x = _descent(noise=0.01)
    x[150:] = np.nan
    r = burst_stability(x)
    assert r.ok and r.unstable and r.nonfinite and r.first_nonfinite_step == 150
    assert "nonfinite" in r.reason and r.final_loss == math.inf and r.n_steps == 300


def test_inf_midway_is_nonfinite() -> None:
    x = _descent()
    x[77] = np.inf
    r = burst_stability(x)
    assert r.nonfinite and r.first_nonfinite_step == 77


@pytest.mark.parametrize(
    ("losses", "unstable"),
    [([2.3, 2.2], False), ([], False), ([2.3, math.nan, 2.0, 1.9, 1.8, 1.7], True)],
)
def test_burst_too_few_points_is_flagged(losses: list[float], unstable: bool) -> None:
    r = burst_stability(losses)
    assert not r.ok and r.unstable is unstable and "too few" in r.reason
    assert r.nonfinite is unstable


def test_burst_is_scale_free() -> None:
    t = np.arange(300)
    for x in (_descent(noise=0.03), _descent(noise=0.02) * (1 + np.exp(-(((t - 20) / 8.0) ** 2)))):
        a, b = burst_stability(x), burst_stability(1000 * x)
        assert a.unstable == b.unstable and a.n_spikes == b.n_spikes
        for name in ("net_decrease", "rise_above_start", "tv_ratio", "excess_tv", "noise"):
            assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-9), name


def test_burst_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="start_loss must be finite"):
        burst_stability([1.0] * 10, start_loss=math.nan)
    with pytest.raises(ValueError, match="min_points must be an integer >= 3"):
        burst_stability([1.0] * 10, min_points=2)


# ---------------------------------------------------------------------------------------------
# settling_step
# ---------------------------------------------------------------------------------------------


def _stats_frame(last_step: int, beta2: float = 0.999, kappa: float = 2.0) -> pd.DataFrame:
    t = np.arange(1, last_step + 1, dtype=float)
    neff = n_eff(t, beta2)
    k = np.where(t >= 3, kappa, np.nan)
    return pd.DataFrame(
        {
            "step": t.astype(int),
            "vhat_mean": 1.0,
            "g2_mean": 1.0,
            "drift": 1 + 2 * np.exp(-t / 20),  # inside (2/3, 1.5) from t = 20 ln 4 = 27.7
            "vhat_change": np.where(t > 1, 1 / t, np.nan),  # <= 0.01 from t = 100
            "kappa": k,
            "n_eff": neff,
            "rel_error": np.sqrt(k / neff),
            "beta2": beta2,
        }
    )


def test_settling_on_known_frame() -> None:
    t_star = steps_for_n_eff(200.0, 0.999)  # sqrt(2 / n_eff) = 0.1 <=> n_eff = 200
    r = settling_step(_stats_frame(400))
    assert r.settled and not r.extrapolated
    assert r.settling_step == math.ceil(t_star)
    assert r.last_criterion == "rel_error"
    # vhat_change is 1/t; its typical value (the median of the last 5 rows) 1/(t-2) passes
    # 0.01 at t = 102
    assert r.drift_step == 28 and r.change_step == 102 and r.rel_error_step == math.ceil(t_star)
    assert r.beta2 == 0.999 and r.kappa == 2.0


def test_settling_extrapolates_with_closed_form() -> None:
    r = settling_step(_stats_frame(150))
    numeric = brentq(lambda t: math.sqrt(2 / n_eff(t, 0.999)) - 0.1, 1.0, 1e6)
    assert not r.settled and r.extrapolated and r.last_criterion == "rel_error"
    assert r.settling_step == pytest.approx(numeric, rel=1e-9)
    assert "rel_error" in r.reason and math.isnan(r.rel_error_step)


def test_settling_heavier_tails_need_more_steps() -> None:
    light = settling_step(_stats_frame(100, kappa=2.0)).settling_step
    heavy = settling_step(_stats_frame(100, kappa=8.0)).settling_step
    assert heavy > 3.5 * light  # n_eff needed scales with kappa


def test_settling_saturation_for_small_beta2() -> None:
    r = settling_step(_stats_frame(300, beta2=0.95))
    # sqrt(2/39) = 0.23 > 0.1 is out of reach: n_eff >= 0.8 * 39 instead, at t = 41.9
    assert r.settled and r.settling_step == math.ceil(steps_for_n_eff(0.8 * 39, 0.95))
    short = settling_step(_stats_frame(30, beta2=0.95))
    assert short.extrapolated and short.settling_step == pytest.approx(
        steps_for_n_eff(0.8 * 39, 0.95)
    )


def test_settling_infers_beta2_without_column() -> None:
    frame = _stats_frame(400).drop(columns="beta2")
    r = settling_step(frame)
    assert r.beta2 == pytest.approx(0.999, abs=1e-9)
    assert r.settling_step == settling_step(_stats_frame(400)).settling_step


def test_settling_infers_beta2_zero() -> None:
    # n_eff is 1 at every update only for beta2 = 0: it used to be read as "too close to 1 to
    # tell" (nan), and the trace extrapolated to 182 updates instead of settling at once.
    frame = _stats_frame(20, beta2=0.0).drop(columns="beta2").assign(drift=1.0)
    frame["vhat_change"] = np.where(frame["step"] > 1, 0.5, np.nan)
    r = settling_step(frame, rel_error_tol=10.0)
    assert r.beta2 == 0.0 and r.settled


def test_settling_late_blip_and_window() -> None:
    frame = _stats_frame(400)
    frame.loc[frame["step"] == 300, "drift"] = 2.0
    assert settling_step(frame).settling_step == 301
    windowed = settling_step(frame, window=20)
    assert (
        windowed.settled
        and windowed.settling_step == settling_step(_stats_frame(400)).settling_step
    )


def test_settling_lower_bound_when_drift_never_settles() -> None:
    frame = _stats_frame(400)
    frame["drift"] = 3.0
    r = settling_step(frame)
    assert not r.settled and r.extrapolated and r.last_criterion == "drift"
    assert r.settling_step == 400 and "lower bound" in r.reason
    assert "drift not yet" in r.reason and "nan" not in r.reason


def test_settling_extrapolates_vhat_change_beside_rel_error() -> None:
    # A 20-step burst at beta2 = 0.999 with drift settled: neither rel_error nor vhat_change
    # (1/t per step here) has settled. Both have closed forms, so the answer is no lower bound.
    frame = _stats_frame(20)
    frame["drift"] = 1.0
    r = settling_step(frame)
    assert not r.settled and r.extrapolated and not r.at_floor
    assert "rel_error" in r.reason and "vhat_change not yet" in r.reason
    # a criterion that did settle says so ("drift at update 1" read as unsettled)
    assert re.search(r"drift settled at update \d+", r.reason)
    assert "lower bound" not in r.reason
    t = np.arange(11.0, 21.0)  # the second half of the rows
    innovation = float(np.median((1 / t) * (1 - 0.999**t) / (1 - 0.999)))
    assert r.innovation == pytest.approx(innovation, rel=1e-12)
    t_change = math.log(1 - 0.001 * innovation / 0.01) / math.log(0.999)
    assert r.change_estimate == pytest.approx(t_change, rel=1e-12)
    t_rel = steps_for_n_eff(200.0, 0.999)
    assert r.settling_step == pytest.approx(max(t_rel, t_change), rel=1e-12)
    assert f"t={t_change:.1f}" in r.reason
    assert r.rel_error_estimate == pytest.approx(t_rel, rel=1e-12)
    assert r.decided_by == "rel_error" and not r.lower_bound and r.not_extrapolated == ""
    # with kappa small, vhat_change's closed form is the later one and decides
    light = settling_step(frame.assign(kappa=0.5, rel_error=np.sqrt(0.5 / frame["n_eff"])))
    assert light.decided_by == "vhat_change" and light.settling_step == light.change_estimate


def _adam_second_moment_frame(
    updates: int, beta2: float, heavy_tails: bool, coords: int = 4000
) -> pd.DataFrame:
    # The frame SecondMomentMonitor would write for stationary gradients (Gaussian, or
    # Student-t with 5 degrees of freedom): Adam's bias-corrected v_hat, its L1 change.
    rng = np.random.default_rng(0)
    v = np.zeros(coords)
    before = None
    rows = []
    for t in range(1, updates + 1):
        g = rng.standard_t(5, coords) if heavy_tails else rng.standard_normal(coords)
        v = beta2 * v + (1 - beta2) * g * g
        vhat = v / (1 - beta2**t)
        change = math.nan if before is None else np.abs(vhat - before).sum() / before.sum()
        before = vhat
        neff = float(n_eff(float(t), beta2))
        rows.append(
            {"step": t, "drift": 1.0, "vhat_change": change, "kappa": 2.0,
             "n_eff": neff, "rel_error": math.sqrt(2.0 / neff)}
        )  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("beta2", [0.999, 0.99])
@pytest.mark.parametrize("heavy_tails", [False, True])
def test_settling_of_a_short_trace_predicts_the_long_one(beta2: float, heavy_tails: bool) -> None:
    # What a 20- or 40-update probe extrapolates for vhat_change is what a 600-update one
    # measures: the answer does not grow with the probe's budget. (Within 15%: the measured
    # step is the first after which every row passes, so one late heavy-tailed g^2 moves it.)
    frame = _adam_second_moment_frame(600, beta2, heavy_tails)
    measured = settling_step(frame, rel_error_tol=0.25)
    assert measured.settled and measured.last_criterion == "vhat_change"
    for updates in (20, 40):
        short = settling_step(frame.iloc[:updates], rel_error_tol=0.25)
        assert short.extrapolated and not short.at_floor
        assert short.settling_step == pytest.approx(measured.settling_step, rel=0.1)


def test_one_large_gradient_does_not_hold_vhat_change_unsettled() -> None:
    # One row's jump (a single large g^2) late in the trace: the change criterion reads the
    # typical change of the last rows, so it is not pushed to the end of the trace.
    frame = _stats_frame(400)
    frame.loc[frame["step"] == 300, "vhat_change"] = 0.05
    r = settling_step(frame)
    assert r.settled and r.change_step == 102
    frame.loc[frame["step"].between(300, 302), "vhat_change"] = 0.05  # three rows: it counts
    assert settling_step(frame).change_step == 305


def test_settling_lower_bound_when_the_innovation_is_not_stationary() -> None:
    # v_hat moving 30% per step at t ~ 20 is a gradient scale still changing (innovation far
    # above 2): no closed form follows it, so the last update observed is a lower bound.
    frame = _stats_frame(20, kappa=0.02)  # rel_error settled: only vhat_change is open
    frame["drift"] = 1.0
    frame["vhat_change"] = 0.3
    r = settling_step(frame)
    assert r.innovation > 2.0 and math.isnan(r.change_estimate)
    assert r.at_floor and r.settling_step == 20.0
    assert "only a lower bound: vhat_change cannot be extrapolated" in r.reason
    assert r.lower_bound and r.decided_by == "last update" and r.not_extrapolated == "vhat_change"


def test_settling_degenerate_frames() -> None:
    empty = settling_step(_stats_frame(0))
    assert not empty.settled and math.isnan(empty.settling_step)
    no_kappa = _stats_frame(50)
    no_kappa["kappa"] = np.nan
    no_kappa["rel_error"] = np.nan
    r = settling_step(no_kappa)
    # No kappa (all-zero or underflowed squared gradients): rel_error has no closed form, but
    # what vhat_change measured still sets the step, as a lower bound. It used to give nan, so
    # the probe's least warmup silently became 0.
    assert not r.settled and r.extrapolated and "kappa unknown" in r.reason
    assert r.settling_step == r.change_estimate > 50 and r.decided_by == "vhat_change"
    assert r.lower_bound and r.not_extrapolated == "rel_error" and math.isnan(r.rel_error_estimate)


def test_settling_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"missing \['kappa', 'rel_error'\]"):
        settling_step(_stats_frame(5).drop(columns=["kappa", "rel_error"]))
    with pytest.raises(TypeError, match=r"moment_stats must be a pandas\.DataFrame"):
        settling_step({"step": [1]})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="saturation"):
        settling_step(_stats_frame(5), saturation=1.0)


# ---------------------------------------------------------------------------------------------
# signals_frame
# ---------------------------------------------------------------------------------------------


def test_signals_frame() -> None:
    results = [
        range_test(*_sweep()),
        burst_stability(_descent()),
        settling_step(_stats_frame(400)),
    ]
    frame = signals_frame(*results)
    assert list(frame.columns) == ["source", "name", "value", "text", "unit", "description"]
    expected = sum(len(dataclasses.fields(r)) for r in results)
    assert len(frame) == expected and frame["value"].dtype == np.float64
    assert set(frame["source"]) == {"RangeTestResult", "BurstSignals", "SettlingResult"}
    assert (frame["unit"] != "").all() and (frame["description"] != "").all()
    row = frame[(frame["source"] == "BurstSignals") & (frame["name"] == "unstable")].iloc[0]
    assert row["value"] == 0.0 and row["text"] == "False"
    reason = frame[frame["name"] == "reason"]
    assert reason["value"].isna().all() and reason["text"].str.len().gt(0).all()
    with pytest.raises(TypeError, match="dataclass instances"):
        signals_frame(BurstSignals)


def test_results_are_frozen_and_plain() -> None:
    for r in (range_test(*_sweep()), burst_stability(_descent()), settling_step(_stats_frame(9))):
        assert isinstance(r, (RangeTestResult, BurstSignals, SettlingResult))
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.reason = "x"  # type: ignore[misc]
        assert all(type(v) in (bool, int, float, str) for v in r.to_dict().values()), r


def test_range_test_easy_first_batch_is_not_the_minimum() -> None:
    # Batch 0 happens to be easy (loss 1) and the next ones are ordinary (about 7): the sweep
    # must not "diverge" from that one batch. It diverges where the loss really blows up.
    rng = np.random.default_rng(0)
    lrs = np.logspace(-7, 1, 48)
    loss = 7.0 + rng.normal(0.0, 1.5, 48)
    loss[:4] = [1.0, 7.7, 3.6, 8.0]
    loss[30:40] -= np.linspace(0.0, 4.0, 10)  # the descent
    loss[40:] = 3.0 * 2.0 ** np.arange(8)  # the blow-up
    r = range_test(lrs, loss, skip_begin=4)
    assert r.diverged and r.diverge_index >= 40
    assert 30 <= int(np.searchsorted(lrs, r.min_loss_lr)) < 45


def test_a_sweep_falling_from_zero_is_not_flat() -> None:
    lrs = np.logspace(-6, 0, 100)
    r = range_test(lrs, np.r_[np.zeros(20), -np.linspace(0, 5, 80)], smooth_beta=0.0, skip_begin=0)
    assert not r.flat and r.descent == math.inf
    still = range_test(lrs, np.zeros(100), smooth_beta=0.0, skip_begin=0)
    assert still.flat and still.descent == 0.0


@pytest.mark.parametrize("scale", [1e-160, 1.0, 1e160])
def test_burst_rules_read_the_same_at_any_loss_magnitude(scale: float) -> None:
    # The noise SD squared second differences, which overflowed past ~1e154: an inf noise
    # then hid the oscillation and catapult rules.
    osc = 2 + 0.5 * np.sin(np.arange(200) / 3)
    want = burst_stability(osc)
    got = burst_stability(osc * scale)
    assert got.unstable and want.unstable
    assert "catapult" in got.reason and "oscillation" in got.reason
    assert got.excess_tv == pytest.approx(want.excess_tv, rel=1e-9)
    assert got.rise_above_start == pytest.approx(want.rise_above_start, rel=1e-9)


def test_losses_whose_differences_overflow_are_unstable_not_stable() -> None:
    # finite losses near the float limit: tv and the noise SD overflow to inf/nan, and the
    # catapult and oscillation rules, compared with nan, stayed silent ("stable")
    x = 2 + 0.05 * np.random.default_rng(0).standard_normal(40)
    x[::2] = 1.7e308
    r = burst_stability(x, start_loss=2.0)
    assert r.unstable and "overflow" in r.reason
    tail = burst_stability(np.r_[np.linspace(2.0, 1.0, 40), np.nan], start_loss=2.0)
    assert tail.unstable and "overflow" not in tail.reason  # a NaN tail is "nonfinite" alone


def test_n_eff_for_a_beta2_too_small_for_log1p() -> None:
    # 1 - 1e-17 rounds to 1, and log1p(-1) is a domain error: such a beta2 is 0 to n_eff
    assert n_eff(5.0, 1e-17) == n_eff(5.0, 0.0) == 1.0
    assert n_eff(0.0, 1e-17) == 0.0
    from autowarm.probe._moments import _n_eff_host, _n_eff_tensor

    assert _n_eff_host(5.0, 1e-17) == 1.0
    assert float(_n_eff_tensor(torch.tensor(5.0), 1e-17)) == 1.0


def test_beta2_too_close_to_1_to_tell_is_nan_not_a_crash() -> None:
    # n_eff(t, b) for b within 1e-8 of 1 lies a few parts in 1e9 below t; the root finder
    # crashed where rounding left it no sign change, and solved the rounding noise elsewhere.
    for eps in (1e-8, 3e-9, 1e-12):
        frame = pd.DataFrame(
            {"step": [12000.0], "drift": [1.0], "vhat_change": [1e-4], "kappa": [2.0],
             "n_eff": [n_eff(12000.0, 1 - eps)], "rel_error": [0.013]}
        )  # fmt: skip
        got = settling_step(frame).beta2
        assert math.isnan(got) or got == pytest.approx(1 - eps, abs=1e-10), eps
    # near 1 the gap t - n_eff is about (t (1 - beta2))^2 / 12: exact, not rounding
    assert 1 - n_eff(12000.0, 1 - 1e-8) / 12000.0 == pytest.approx(1.2e-9, rel=1e-3)
    with pytest.raises(ValueError, match=r"moment_stats\['beta2'\] must be in \[0, 1\)"):
        settling_step(_stats_frame(50).assign(beta2=1.0))


def test_settling_reads_a_frame_observed_every_few_updates() -> None:
    # The monitor reports vhat_change over one step at any `every`: a frame with every fourth
    # row settles within a few steps of the full one (the typical change spans more steps).
    full = settling_step(_stats_frame(400))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparse = settling_step(_stats_frame(400).iloc[::4])
    assert sparse.settled and sparse.last_criterion == full.last_criterion
    assert full.settling_step <= sparse.settling_step <= full.settling_step + 8
