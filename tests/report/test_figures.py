"""The data behind each figure, then the drawn figure: titles, labelled axes with units, data."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import optuna
import pandas as pd
import pytest

import autowarm
from autowarm.reporting import FigureData
from autowarm.reporting._figures import (
    burst_table,
    range_test_figure,
    schedule_figure,
    schedule_points,
)
from autowarm.schedules import ScheduleConfig

UNIT = re.compile(r"^\w.*\([^)]+\)")  # a label names its unit in parentheses


def check_data(f: FigureData) -> None:
    assert f.title and f.caption, f.name
    assert UNIT.search(f.xlabel), f"{f.name}: x label {f.xlabel!r} has no unit"
    assert UNIT.search(f.ylabel), f"{f.name}: y label {f.ylabel!r} has no unit"
    assert f.series and f.n_points > 0, f.name
    for s in f.series:
        assert len(s.x) == len(s.y) > 0, (f.name, s.label)
        assert np.isfinite(s.x).all() and np.isfinite(s.y).all(), (f.name, s.label)


def check_drawn(f: FigureData) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib not installed (extra plot)")
    from autowarm.reporting._draw import draw

    fig = draw(f)
    ax = fig.axes[0]
    assert ax.get_title() == f.title
    assert ax.get_xlabel() == f.xlabel and ax.get_ylabel() == f.ylabel
    drawn = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
    drawn += [c for c in ax.collections if len(c.get_offsets()) > 0]
    assert drawn, f"{f.name}: nothing drawn on the axes"
    assert ax.get_legend() is not None


def test_probe_figures(suggestion: autowarm.Suggestion) -> None:
    rep = suggestion.report()
    assert set(rep.figures) == {"range_test", "second_moment", "bursts", "schedule"}
    for f in rep.figures.values():
        check_data(f)
        check_drawn(f)


def test_range_test_data(suggestion: autowarm.Suggestion) -> None:
    f = range_test_figure(suggestion.trace, suggestion.peak_lr)
    assert f is not None and f.xscale == "log"
    sweep = suggestion.trace[suggestion.trace["phase"] == "range_test"]
    finite = sweep[np.isfinite(sweep["loss_smoothed"])]
    assert f.series[0].x == tuple(finite["lr"]) and f.series[0].y == tuple(finite["loss_smoothed"])
    assert [m.value for m in f.markers if m.axis == "x"] == [suggestion.peak_lr]


def test_second_moment_marks_warmup(suggestion: autowarm.Suggestion) -> None:
    f = suggestion.report().figures["second_moment"]
    x_marks = {m.label.split(" ")[0]: m.value for m in f.markers if m.axis == "x"}
    assert x_marks["chosen"] == suggestion.warmup_steps
    assert [m.value for m in f.markers if m.axis == "y"] == [0.25]  # the probe's tolerance
    first = suggestion.trace[suggestion.trace["burst"] == 1]
    first = first[np.isfinite(first["rel_error"])]
    assert f.series[0].x == tuple(first["step"] + 1)  # read after update step + 1
    assert f.series[0].y == tuple(first["rel_error"])


# the second moment's part of a probe's rationale, as the probe writes it (demo's, and an
# earlier probe's whose vhat_change had no closed form)
_BY_CHANGE = (
    "Adam's second moment is extrapolated to settle after 99 updates (not settled by update 40 "
    "(vhat_change unsettled; rel_error at update 37, drift at update 1, vhat_change not yet); "
    "rel_error = sqrt(kappa/n_eff(t)) with kappa=2.34, beta2=0.999 reaches 0.25 (or "
    "saturation) at n_eff=37.43, t=37.4; vhat_change per step = innovation * "
    "(1-beta2)/(1-beta2^t) with innovation 0.942 reaches 0.01 at t=98.9)."
)
_BY_KAPPA = (
    "Adam's second moment is extrapolated to settle after 75 steps (not settled by step 40 "
    "(rel_error, vhat_change unsettled; rel_error not yet, drift at step 1, vhat_change not "
    "yet); rel_error = sqrt(kappa/n_eff(t)) with kappa=4.71, beta2=0.999 reaches 0.25 (or "
    "saturation) at n_eff=75.35, t=75.4; only a lower bound: drift/vhat_change cannot be "
    "extrapolated)."
)


def _settling(value: float, description: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "name": ["second_moment.settling_step"],
            "value": [value],
            "unit": ["steps"],
            "description": [description],
        }
    )


def test_second_moment_caption_says_what_set_the_settling_step(
    suggestion: autowarm.Suggestion,
) -> None:
    def caption(value: float, description: str, rationale: str) -> str:
        # the probe's signals, its settling step replaced; the report of that suggestion
        signals = suggestion.signals[suggestion.signals["name"] != "second_moment.settling_step"]
        signals = pd.concat([signals, _settling(value, description)], ignore_index=True)
        probe = dataclasses.replace(suggestion, signals=signals, rationale=rationale)
        return autowarm.report(probe).figures["second_moment"].caption

    by_change = caption(98.87282735163626, "v_hat settled (extrapolated)", _BY_CHANGE)
    assert "kappa" not in by_change
    assert by_change.endswith(
        "Past the bursts the settling step, 99, is extrapolated from vhat_change (its "
        "innovation, 0.942, times Adam's averaging weight falls to its tolerance there)."
    )
    by_kappa = caption(75.35, "v_hat settled (extrapolated)", _BY_KAPPA)
    assert "is extrapolated from kappa (rel_error = sqrt(kappa / n_eff)" in by_kappa
    assert "vhat_change (its" not in by_kappa
    assert by_kappa.endswith("It is only a lower bound: drift/vhat_change cannot be extrapolated.")
    measured = caption(31.0, "v_hat settled (measured)", "")
    assert "was measured within the bursts" in measured and "extrapolated" not in measured
    floor = caption(40.0, "v_hat not settled by the last update observed (a lower bound)", "")
    assert "is the last update they observed, a lower bound" in floor
    assert "extrapolated" not in floor
    unknown = caption(120.0, "v_hat settled (extrapolated)", "")  # a rationale that says not
    assert "extrapolated from a closed form" in unknown and "kappa" not in unknown
    # the report's own figure: from the probe's own signals and rationale
    from autowarm.reporting._figures import settling_sentence

    f = suggestion.report().figures["second_moment"]
    assert f.caption.endswith(settling_sentence(suggestion.signals, suggestion.rationale))


def test_bursts_mark_unstable(suggestion: autowarm.Suggestion) -> None:
    table = burst_table(suggestion.trace, suggestion.signals)
    f = suggestion.report().figures["bursts"]
    assert len(f.series) == len(table)
    for s, b in zip(f.series, table.itertuples(index=False), strict=True):
        assert s.highlight == (b.stable == "no")
        assert ("unstable" in s.label) == (b.stable == "no")
        assert f"W={b.warmup_steps}" in s.label
    # each burst's W and verdict come from the signals table
    names = {n for n in suggestion.signals["name"] if n.endswith(".stable")}
    assert {f"burst{b.burst}.W{b.warmup_steps}.stable" for b in table.itertuples()} == names


def test_schedule_points_short_and_long() -> None:
    cfg = ScheduleConfig(peak_lr=1e-3, total_steps=100, warmup_steps=10)
    steps, lrs = schedule_points(cfg)
    assert steps == list(range(100)) and lrs == cfg.lrs()
    long = ScheduleConfig(peak_lr=1e-3, total_steps=100_000, warmup_steps=1234, min_lr=1e-5)
    steps, lrs = schedule_points(long)
    assert len(steps) <= 2002 and steps[0] == 0 and steps[-1] == 99_999
    assert {1233, 1234} <= set(steps) and max(lrs) == pytest.approx(1e-3)
    assert lrs == [long.lr_at(s) for s in steps]
    f = schedule_figure(long)
    assert [m.value for m in f.markers] == [1234]
    check_data(f)


def test_study_figures(study: optuna.Study) -> None:
    rep = autowarm.report(study)
    assert {"history", "trials_scatter", "schedule", "range_test"} <= set(rep.figures)
    for f in rep.figures.values():
        check_data(f)
        check_drawn(f)
    history = rep.figures["history"]
    by = {s.label: s for s in history.series}
    assert by["best so far"].y == (0.52, 0.52, 0.52, 0.52, 0.515, 0.515)
    assert by["probe's estimate"].x == (0.0,)
    assert by["pruned/failed (last reported value)"].x == (6.0, 7.0)
    scatter = rep.figures["trials_scatter"]
    dots = scatter.series[0]
    assert dots.color_values == (0.52, 0.61, 0.58, 0.53, 0.515, 0.55)
    assert scatter.yscale == "log" and scatter.colorbar_label
    assert rep.figures["schedule"].series[0].y[20] == pytest.approx(max(dots.y))  # best: W=20


def test_no_pyplot_state_leaks(suggestion: autowarm.Suggestion, tmp_path: object) -> None:
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    suggestion.report().to_html()
    assert plt.get_fignums() == before
