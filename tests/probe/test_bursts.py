"""The bursts' blow-up rule, and the probe's reference loss at the initial weights."""

from __future__ import annotations

import math

import pytest
import torch

import autowarm
from autowarm.probe._bursts import _DivergenceWatch


def _feed(watch: _DivergenceWatch, losses: list[float]) -> int | None:
    for i, x in enumerate(losses):
        watch.update(x, True)
        if watch.blown:
            return i
    return None


def test_burst_blow_up_is_judged_against_the_given_start() -> None:
    ordinary = [1.0, 7.7, 3.6, 8.0, 5.0, 6.5, 4.9, 7.1]  # batch 0 easy, the rest ordinary
    assert _feed(_DivergenceWatch(4.0, sweep=False), ordinary) is not None  # against batch 0
    assert _feed(_DivergenceWatch(4.0, sweep=False, start=6.0), ordinary) is None
    blown = [6.0, 9.0, 20.0, 40.0, 80.0]
    assert _feed(_DivergenceWatch(4.0, sweep=False, start=6.0), blown) is not None


def test_sweep_minimum_counts_from_the_third_step() -> None:
    ordinary = [1.0, 7.7, 3.6, 8.0, 5.0, 6.5, 4.9, 7.1]
    assert _feed(_DivergenceWatch(4.0, sweep=True), ordinary) is None
    assert _feed(_DivergenceWatch(4.0, sweep=True), [*ordinary, 50.0, 90.0, 200.0]) == 9


def test_a_burst_blows_up_at_half_the_factor_times_its_start() -> None:
    # factor 4 and start 1: a smoothed loss above 2 (and above the start) is a blow-up
    assert _feed(_DivergenceWatch(4.0, sweep=False, beta=0.0, start=1.0), [1.0, 2.5]) == 1
    assert _feed(_DivergenceWatch(4.0, sweep=False, beta=0.0, start=1.0), [1.0, 1.9]) is None


def test_a_negative_start_blows_up_at_the_same_rise_as_a_positive_one() -> None:
    # factor 4: a rise of more than the start's size (1 x |start|) is a blow-up for either
    # sign; a start of -10 used to need a rise of 30 (to +20)
    watch = _DivergenceWatch(4.0, sweep=False, beta=0.0, start=-10.0)
    assert _feed(watch, [-10.0, 0.5]) == 1
    assert _feed(_DivergenceWatch(4.0, sweep=False, beta=0.0, start=-10.0), [-10.0, -0.5]) is None


def test_a_sweep_survives_one_non_finite_loss_but_not_two_in_a_row() -> None:
    nan = float("nan")
    sweep = _DivergenceWatch(4.0, sweep=True)
    for x in (1.0, 0.9, nan, 0.8, nan):  # never two in a row: bad batches, not divergence
        sweep.update(x, math.isfinite(x))
        assert not sweep.blown
    sweep.update(nan, False)
    assert sweep.blown
    burst = _DivergenceWatch(4.0, sweep=False, start=1.0)
    burst.update(nan, False)
    assert burst.blown  # outside a sweep one is enough


def _regression(offset: float) -> tuple[torch.nn.Module, list, object]:
    # A regression whose easiest batch comes first; the loss is MSE minus a constant, which
    # changes none of Adam's updates (a log-likelihood has such an offset).
    torch.manual_seed(0)
    x = torch.randn(2048, 16)
    y = x @ torch.randn(16, 1) + 0.3 * torch.randn(2048, 1)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 2048, 32)]
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    with torch.no_grad():
        mse = [float(torch.nn.functional.mse_loss(model(a), b)) for a, b in batches]
    k = min(range(len(batches)), key=mse.__getitem__)
    batches = [batches[k], *batches[:k], *batches[k + 1 :]]
    c = offset * mse[k]

    def criterion(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(out, target) - c

    return model, batches, criterion


@pytest.mark.parametrize("offset", [0.73, 0.997])
def test_a_constant_added_to_the_loss_changes_nothing(offset: float) -> None:
    # With the first batch's loss near 0 (offset 0.997) or well under the others' (0.73),
    # every burst used to stop as "blown up" and suggest() raised ProbeDivergedError.
    torch.set_num_threads(1)
    runs = []
    for c in (0.0, offset):
        model, batches, criterion = _regression(c)
        s = autowarm.suggest(model, batches, criterion=criterion, total_steps=1000, progress=False)
        assert not any("blew up" in v for v in s.signals["description"])
        runs.append((s.peak_lr, s.warmup_steps))
    assert runs[0][0] == pytest.approx(runs[1][0])
    assert math.isclose(runs[0][1], runs[1][1], abs_tol=1)
