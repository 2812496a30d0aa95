"""The data behind each figure, then the drawn figure: titles, labelled axes with units, data."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import optuna
import pandas as pd
import pytest

import autowarm
from autowarm.reporting import FigureData
from autowarm.reporting._figures import (
    Series,
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
    assert ax.get_title().replace("\n", " ") == f.title  # long titles wrap, never cut
    # labels may be wrapped onto several lines, never changed
    assert ax.get_xlabel().replace("\n", " ") == f.xlabel
    assert ax.get_ylabel().replace("\n", " ") == f.ylabel
    drawn = [line for line in ax.get_lines() if len(line.get_xdata()) > 2]
    drawn += [c for c in ax.collections if len(c.get_offsets()) > 0]
    assert drawn, f"{f.name}: nothing drawn on the axes"
    # the legend sits below the axes (fig.legend), naming every series and marker, so that
    # it hides no curve and no marker
    assert len(fig.legends) == 1 and ax.get_legend() is None
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names == [s.label for s in f.series] + [m.label for m in f.markers]
    fig.canvas.draw()  # the layout runs at drawing
    legend_box = fig.legends[0].get_window_extent(fig.canvas.get_renderer())
    assert legend_box.y1 <= ax.get_window_extent().y0  # wholly below the plotting area
    # and within the figure's width (a long label in two columns ran off both sides)
    assert legend_box.x0 >= 0 and legend_box.x1 <= fig.bbox.width


def test_probe_figures(suggestion: autowarm.Suggestion) -> None:
    rep = suggestion.report()
    assert set(rep.figures) == {
        "range_test",
        "second_moment",
        "second_moment_change",
        "bursts",
        "schedule",
    }
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


def test_the_change_figure_shows_the_closed_form_out_to_its_settling_step(
    suggestion: autowarm.Suggestion,
) -> None:
    # a warmup "extrapolated from vhat_change" stood apart from everything the relative-error
    # figure draws: this one draws vhat_change and the closed form that set it
    f = suggestion.report().figures["second_moment_change"]
    first = suggestion.trace[
        (suggestion.trace["burst"] == 1) & (suggestion.trace["vhat_change"] > 0)
    ]
    assert f.series[0].x == tuple(first["step"] + 1) and f.series[0].y == tuple(
        first["vhat_change"]
    )
    assert (f.xscale, f.yscale) == ("log", "log")
    sig = dict(zip(suggestion.signals["name"], suggestion.signals["value"], strict=True))
    estimate = float(sig["second_moment.change_estimate"])
    if math.isfinite(estimate):
        closed = f.series[-1]
        assert closed.label.startswith("closed form")
        tol = next(m.value for m in f.markers if m.axis == "y")
        # the curve crosses the tolerance at the step the probe extrapolated
        crossing = np.interp(-math.log(tol), -np.log(closed.y), closed.x)
        assert crossing == pytest.approx(estimate, rel=0.05)


# the second moment's part of a probe's rationale, as the probe writes it (demo's, and an
# earlier probe's whose vhat_change had no closed form)
def _second_moment_rows(value: float, description: str, **more: float) -> pd.DataFrame:
    # The probe's second_moment.* signal rows: settling_step, and the named others
    # (lower_bound, rel_error_estimate, innovation, change_estimate) as given.
    names = ["second_moment.settling_step", *(f"second_moment.{k}" for k in more)]
    return pd.DataFrame(
        {
            "name": names,
            "value": [value, *more.values()],
            "unit": "",
            "description": [description, *("" for _ in more)],
        }
    )


def test_second_moment_caption_says_what_set_the_settling_step(
    suggestion: autowarm.Suggestion,
) -> None:
    def caption(value: float, description: str, **more: float) -> str:
        # the probe's signals, its second-moment rows replaced; the report of that suggestion
        kept = suggestion.signals[~suggestion.signals["name"].str.startswith("second_moment.")]
        rows = _second_moment_rows(value, description, **more)
        probe = dataclasses.replace(suggestion, signals=pd.concat([kept, rows], ignore_index=True))
        return autowarm.report(probe).figures["second_moment"].caption

    by_change = caption(
        98.87,
        "v_hat settled (extrapolated from vhat_change)",
        lower_bound=0.0,
        rel_error_estimate=37.4,
        innovation=0.942,
        change_estimate=98.87,
    )
    assert "kappa" not in by_change
    assert by_change.endswith(
        "Past the bursts the settling step, 99, is extrapolated from vhat_change (its "
        "innovation, 0.942, times Adam's averaging weight falls to its tolerance there)."
    )
    by_kappa = caption(
        75.35,
        "v_hat settled (extrapolated from rel_error; only a lower bound: drift/vhat_change "
        "cannot be extrapolated)",
        lower_bound=1.0,
        rel_error_estimate=75.35,
        innovation=2.5,
        change_estimate=math.nan,
    )
    assert "is extrapolated from kappa (rel_error = sqrt(kappa / n_eff)" in by_kappa
    assert "vhat_change (its" not in by_kappa
    assert by_kappa.endswith("It is only a lower bound: drift/vhat_change cannot be extrapolated.")
    measured = caption(31.0, "v_hat settled (measured)")
    assert "was measured within the bursts" in measured and "extrapolated" not in measured
    floor = caption(40.0, "v_hat not settled by the last update observed (a lower bound)")
    assert "is the last update they observed, a lower bound" in floor
    assert "extrapolated" not in floor
    older = caption(120.0, "v_hat settled (extrapolated)")  # saved before the estimate rows
    assert "extrapolated from a closed form" in older and "kappa" not in older
    # the report's own figure, from the probe's own signals
    from autowarm.reporting._figures import settling_sentence

    f = suggestion.report().figures["second_moment"]
    assert f.caption.endswith(settling_sentence(suggestion.signals))


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


def test_bursts_draw_the_curve_the_stability_rules_read(suggestion: autowarm.Suggestion) -> None:
    # The figure used to draw the raw EMA, so a one-batch spike the rules filter out showed
    # as an 18% rise on a burst drawn stable: now each line's rise is the signal's.
    sig = suggestion.signals.set_index("name")["value"]
    start = float(sig["bursts.start_loss"])
    f = suggestion.report().figures["bursts"]
    table = burst_table(suggestion.trace, suggestion.signals)
    for series, b in zip(f.series, table.itertuples(index=False), strict=True):
        rise = sig[f"burst{b.burst}.W{b.warmup_steps}.rise_above_start"]
        if np.isfinite(rise):
            assert max(series.y) / start - 1 == pytest.approx(rise, rel=1e-9, abs=1e-12)


def test_the_settling_marker_counts_whole_updates_as_the_caption(
    suggestion: autowarm.Suggestion,
) -> None:
    from autowarm.reporting._figures import second_moment_figure

    signals = suggestion.signals.copy()
    row = signals["name"] == "second_moment.settling_step"
    signals.loc[row, "value"] = 102.3  # 103 updates, as the caption and the warmup say
    labels = [
        [m.label for m in second_moment_figure(suggestion.trace, signals, w, 0.25).markers]
        for w in (103, 150)
    ]
    assert not any("settling step" in m for m in labels[0])  # the warmup's line says it
    assert "settling step 103" in labels[1]


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
    stopped = next(s for s in history.series if s.label.startswith("pruned/failed"))
    assert stopped.x == (6.0, 7.0)
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


def test_a_study_report_titles_the_probes_figures_as_its_starting_point(
    study: optuna.Study,
) -> None:
    # a reader took the probe's warmup marker (84) in three figures for the chosen schedule's
    rep = autowarm.report(study)
    for name in ("range_test", "second_moment", "bursts"):
        assert rep.figures[name].title.startswith("The probe (where the study started): ")
    assert rep.figures["schedule"].title.startswith("The schedule to train with: ")
    assert not rep.figures["history"].title.startswith("The probe")


def test_range_test_marks_its_steepest_and_lowest_points_on_the_curve(
    suggestion: autowarm.Suggestion,
) -> None:
    # only the chosen peak was marked: a reader saw it a decade left of the visible minimum
    f = range_test_figure(suggestion.trace, suggestion.peak_lr, signals=suggestion.signals)
    assert f is not None
    by = {s.label.split(" ")[0]: s for s in f.series[1:]}
    signals = suggestion.signals.set_index("name")["value"]
    curve = dict(zip(f.series[0].x, f.series[0].y, strict=True))
    for key, name in (
        ("steepest", "range_test.steepest_lr"),
        ("lowest", "range_test.min_loss_lr"),
    ):
        point = by[key]
        assert point.kind == "scatter" and point.x == (signals[name],)
        assert point.y[0] in curve.values()  # drawn on the curve, at its nearest LR
    assert "not read off this curve" in f.caption


def test_the_second_moment_figure_says_when_the_other_statistic_set_the_warmup(
    suggestion: autowarm.Suggestion,
) -> None:
    f = suggestion.report().figures["second_moment"]
    label = next(m.label for m in f.markers if m.axis == "x" and m.label.startswith("chosen"))
    signals = suggestion.signals.set_index("name")["value"]
    by_change = signals["second_moment.change_estimate"] == signals["second_moment.settling_step"]
    assert label.endswith("(set by v_hat's change per update: next figure)") == bool(by_change)


def test_steepest_and_lowest_at_one_point_are_one_marker_naming_both(
    suggestion: autowarm.Suggestion,
) -> None:
    signals = suggestion.signals.copy()
    lowest = signals.loc[signals["name"] == "range_test.min_loss_lr", "value"].iloc[0]
    signals.loc[signals["name"] == "range_test.steepest_lr", "value"] = lowest
    f = range_test_figure(suggestion.trace, suggestion.peak_lr, signals=signals)
    assert f is not None
    assert [s.label for s in f.series[1:]] == [f"steepest descent and lowest {lowest:.3g}"]


def test_the_warmup_note_names_v_hat_only_when_it_set_that_warmup(
    suggestion: autowarm.Suggestion,
) -> None:
    # a warmup of 200 from the bursts was labelled "set by v_hat's change" beside a settling
    # step of 99 that v_hat's change did set
    from autowarm.reporting._figures import second_moment_figure

    signals = suggestion.signals.copy()
    settle = signals["name"] == "second_moment.settling_step"
    change = signals["name"] == "second_moment.change_estimate"
    signals.loc[settle | change, "value"] = 98.5
    labels = {
        w: next(
            m.label
            for m in second_moment_figure(suggestion.trace, signals, w, 0.25).markers  # type: ignore[union-attr]
            if m.label.startswith("chosen")
        )
        for w in (99, 200)
    }
    assert labels[99].endswith("(set by v_hat's change per update: next figure)")
    assert labels[200] == "chosen warmup 200"


def test_the_study_figures_mark_the_reference_trials_and_give_the_confirmed_values(
    suggestion: autowarm.Suggestion,
) -> None:
    from autowarm.reporting._study_figures import REFERENCE_LABEL

    from .conftest import make_study
    from .test_tables import _confirm

    study = make_study(suggestion, n_trials=7)
    T = optuna.trial.TrialState
    _confirm(study, {4: T.COMPLETE, 0: T.COMPLETE}, full={4: 0.4321, 0: 0.4012})
    rep = autowarm.report(study)
    history = rep.figures["history"]
    refs = {s.label: s for s in history.series}[REFERENCE_LABEL]
    # trials 1-3 are the no-warmup, 2/(1-beta2) and 10% references (make_study)
    assert refs.x == (1.0, 2.0, 3.0) and refs.y == (0.61, 0.58, 0.53)
    assert refs.marker == "s"
    # full-length values are on another scale than the compressed ones: said, not drawn
    assert (
        "Confirmed at full length (on the full run's scale, so not drawn here), best first: "
        "trial 0: 0.4012; trial 4: 0.4321." in history.caption
    )
    scatter = rep.figures["trials_scatter"]
    ringed = {s.label: s for s in scatter.series}[REFERENCE_LABEL]
    assert ringed.x == (0.0, 400.0, 40.0)
    for f in (history, scatter):
        check_drawn(f)


def test_a_trial_that_also_stands_for_a_reference_is_marked_as_one(
    suggestion: autowarm.Suggestion,
) -> None:
    from autowarm.reporting._study import trials_table
    from autowarm.reporting._study_figures import REFERENCE_LABEL, history_figure

    from .conftest import make_study

    trials = trials_table(make_study(suggestion))
    trials.loc[trials["number"] == 0, "also_roles"] = "ten_percent"
    f = history_figure(trials)
    assert f is not None
    assert {s.label: s for s in f.series}[REFERENCE_LABEL].x == (0.0, 1.0, 2.0, 3.0)
    assert (
        "Squares ring the reference schedules: the probe's peak LR with no warmup, with "
        "2/(1-beta2) steps and with 10% of the run." in f.caption
    )
    # an optimizer with no second moment (SGD) has no 2/(1-beta2) reference: none is named
    sgd = trials[trials["role"] != "untuned_2_over_1_minus_beta2"]
    f = history_figure(sgd)
    assert f is not None and "2/(1-beta2)" not in f.caption
    assert "the probe's peak LR with no warmup and with 10% of the run." in f.caption


def test_series_colours_are_distinct_and_never_the_warning_red() -> None:
    pytest.importorskip("matplotlib", reason="matplotlib not installed (extra plot)")
    from matplotlib.colors import to_rgb

    from autowarm.reporting._draw import _PALETTE, _WARN

    rgb = [np.array(to_rgb(c)) for c in _PALETTE]
    red = np.array(to_rgb(_WARN))
    assert all(np.abs(c - red).sum() > 0.3 for c in rgb)
    # the first six (the bursts a probe draws) pairwise far apart: blue and cyan were
    # bursts 1 and 4
    for i in range(6):
        for j in range(i):
            assert np.abs(rgb[i] - rgb[j]).sum() > 0.35, (_PALETTE[i], _PALETTE[j])


def test_a_legend_with_long_labels_stays_within_the_figure() -> None:
    # two columns of a 60-character label ran off both sides of the figure
    series = tuple(
        Series(f"series {i}: " + "a long label " * 4, (0.0, 1.0, 2.0), (1.0, 0.5, 0.2))
        for i in range(3)
    )
    check_drawn(
        FigureData(
            name="long",
            title="Long labels",
            xlabel="x (count)",
            ylabel="y (units)",
            series=series,
            caption="Three series.",
        )
    )
