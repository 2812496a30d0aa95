"""The data behind each report figure, computed from the tables before anything is drawn.

Every builder returns a :class:`FigureData` (or ``None`` when its table has nothing to show);
:mod:`autowarm.reporting._draw` turns one into a matplotlib figure. Tests check these objects,
not pixels. Axis labels always carry their unit in parentheses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from autowarm.probe.signals import change_tolerance, newest_weight
from autowarm.schedules import Decay, ScheduleConfig

LR_LABEL = "learning rate (absolute)"
STEP_LABEL = "optimizer step (updates)"
BURST_STEP_LABEL = "updates done before the batch, within the burst (count; the first batch at 0)"
"""The bursts' loss axis: a batch's loss is read before its own update."""
UPDATES_LABEL = "updates done, v_hat read after the last (count; the first update is 1)"
"""The second-moment figures' axis: Adam's statistics are read after an update."""
LOSS_LABEL = "smoothed training loss (task units)"
VALUE_LABEL = "trial value: final validation loss (task units)"
MAX_POINTS = 2000  # a schedule is drawn from at most this many points


@dataclass(frozen=True)
class Series:
    """One line or set of points.

    Attributes:
        label: legend text.
        x: abscissae.
        y: ordinates (same length as ``x``).
        kind: ``"line"``, ``"scatter"`` or ``"step"`` (a staircase, e.g. best so far).
        highlight: drawn in the warning style (an unstable burst, a diverged point).
        color_values: per-point values mapped to colour (scatter only), else ``None``.
        marker: matplotlib marker of a scatter (``"o"``, ``"*"``, ``"D"``).
    """

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    kind: str = "line"
    highlight: bool = False
    color_values: tuple[float, ...] | None = None
    marker: str = "o"


@dataclass(frozen=True)
class Marker:
    """A reference line across the axes: ``axis="x"`` is vertical at ``value``."""

    axis: str
    value: float
    label: str


@dataclass(frozen=True)
class FigureData:
    """Everything one figure shows.

    Attributes:
        name: file stem of the PNG (``range_test`` -> ``range_test.png``).
        title: the figure's title.
        xlabel: x axis label, unit in parentheses.
        ylabel: y axis label, unit in parentheses.
        series: the data drawn.
        markers: reference lines (chosen peak, chosen warmup, tolerances).
        xscale: ``"linear"``, ``"log"`` or ``"symlog"`` (linear below 1, log above: counts
            from 0, such as warmup steps, spread as the study searched them).
        yscale: ``"linear"`` or ``"log"``.
        ylim: y range to show (``None``: matplotlib's choice).
        colorbar_label: label of the colour scale when a series has ``color_values``.
        caption: one or two sentences under the figure.
    """

    name: str
    title: str
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]
    markers: tuple[Marker, ...] = ()
    xscale: str = "linear"
    yscale: str = "linear"
    ylim: tuple[float, float] | None = None
    colorbar_label: str | None = None
    caption: str = ""

    @property
    def n_points(self) -> int:
        """Number of data points over all series."""
        return sum(len(s.x) for s in self.series)


def floats(values: object) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=float))


# ---------------------------------------------------------------------------- probe figures
def range_test_figure(
    trace: pd.DataFrame,
    peak_lr: float,
    who: str = "chosen",
    signals: pd.DataFrame | None = None,
) -> FigureData | None:
    """Smoothed loss against LR during the range test, the ``who`` (chosen) peak marked, and
    (from ``signals``) the sweep's steepest descent and lowest point on the curve."""
    if trace.empty or "phase" not in trace:
        return None
    rows = trace[(trace["phase"] == "range_test") & np.isfinite(trace["loss_smoothed"])]
    if rows.empty:
        return None
    y = rows["loss_smoothed"].to_numpy(float)
    # Divergence sends the loss up by orders of magnitude; show the sweep's useful part.
    top = float(min(y.max(), 1.5 * y[0] if y[0] > 0 else y.max()))
    bottom = float(y.min())
    pad = 0.05 * max(top - bottom, 1e-12)
    lrs = rows["lr"].to_numpy(float)
    series = [Series("range test", floats(lrs), floats(y))]
    points: dict[int, tuple[list[str], float, str]] = {}  # curve index: labels, LR, marker
    for label, name, marker in (
        ("steepest descent", "range_test.steepest_lr", "v"),
        ("lowest", "range_test.min_loss_lr", "o"),
    ):
        lr = _signal(signals, name) if signals is not None else math.nan
        if math.isfinite(lr) and lr > 0:
            at = int(np.argmin(np.abs(np.log(lrs) - math.log(lr))))  # its point on the curve
            # one point where both fall (a marker drawn over the other, the legend naming both)
            points.setdefault(at, ([], lr, marker))[0].append(label)
    for at, (labels, lr, marker) in points.items():
        label = " and ".join(labels)
        series.append(
            Series(f"{label} {lr:.3g}", (lr,), (float(y[at]),), "scatter", marker=marker)
        )
    return FigureData(
        name="range_test",
        title="LR range test: smoothed loss as the LR grows",
        xlabel=LR_LABEL + ", log scale",
        ylabel=LOSS_LABEL,
        series=tuple(series),
        markers=(Marker("x", peak_lr, f"{who} peak {peak_lr:.3g}"),),
        xscale="log",
        ylim=(bottom - pad, top + pad),
        caption="One exponential sweep from the initial weights; the loss is a bias-corrected "
        "EMA, cut above 1.5 times its start where it diverges. The points mark the sweep's "
        "steepest descent and its lowest loss. The dashed line is the probe's "
        "peak LR, which is not read off this curve: the sweep sets the candidates (up to its "
        "edge), and short bursts at each of them choose among them (the rationale gives their "
        "losses).",
    )


_BURST_NAME = re.compile(r"^burst(\d+)\.W(\d+)\.stable$")


def burst_table(trace: pd.DataFrame, signals: pd.DataFrame) -> pd.DataFrame:
    """One row per burst after the range test: ``burst``, ``phase``, ``warmup_steps``,
    ``peak_lr``, ``steps``, ``stable`` (``"yes"``, ``"no"`` or ``"unknown"``)."""
    cols = ["burst", "phase", "warmup_steps", "peak_lr", "steps", "stable"]
    if trace.empty or "phase" not in trace:
        return pd.DataFrame(columns=cols)
    judged: dict[int, tuple[int, bool | None]] = {}
    if not signals.empty and "name" in signals:
        for rec in signals[["name", "value"]].to_dict("records"):
            m = _BURST_NAME.match(str(rec["name"]))
            if m:
                judged[int(m.group(1))] = (int(m.group(2)), float(rec["value"]) >= 0.5)
    rows = []
    bursts = trace[trace["phase"] != "range_test"]
    for burst in sorted(int(b) for b in bursts["burst"].unique()):
        g = bursts[bursts["burst"] == burst]
        lrs = g["lr"].to_numpy(float)
        peak = float(np.nanmax(lrs))
        w_seen = int(np.argmax(lrs >= peak * (1 - 1e-9)))  # steps before the peak is reached
        w, stable = judged.get(burst, (w_seen, None))
        rows.append(
            {
                "burst": burst,
                "phase": str(g["phase"].iloc[0]),
                "warmup_steps": int(w),
                "peak_lr": peak,
                "steps": len(g),
                "stable": "unknown" if stable is None else ("yes" if stable else "no"),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def bursts_figure(trace: pd.DataFrame, signals: pd.DataFrame) -> FigureData | None:
    """The loss trace of every burst after the range test, unstable ones highlighted."""
    table = burst_table(trace, signals)
    if table.empty:
        return None
    from autowarm.probe.signals import stability_curve

    start = _signal(signals, "bursts.start_loss")
    series = []
    for b in table.itertuples(index=False):
        g = trace[trace["burst"] == b.burst].sort_values("step")
        # the curve the stability rules judged (a running median of 3, then the EMA), up to
        # the first non-finite loss: a one-batch spike is not drawn as a catapult
        curve = stability_curve(
            g["loss"].to_numpy(dtype=float), start_loss=start if math.isfinite(start) else None
        )
        tag = {"yes": "", "no": ", unstable", "unknown": ""}[str(b.stable)]
        if b.phase == "warmup" and b.warmup_steps == 0:
            tag += ", no ramp"
        label = f"burst {b.burst}: W={b.warmup_steps}, peak {b.peak_lr:.3g}{tag}"
        series.append(
            Series(
                label,
                floats(g["step"].iloc[: curve.size]),
                floats(curve),
                highlight=bool(b.stable == "no"),
            )
        )
    return FigureData(
        name="bursts",
        title="Probe bursts: smoothed loss of each (W-step ramp, then the peak)",
        xlabel=BURST_STEP_LABEL,
        ylabel=LOSS_LABEL,
        series=tuple(series),
        caption="Each burst restarts from the initial weights. Each line is the loss the "
        "stability rules read: a running median of 3 consecutive batches (centred: a point "
        "also reads the next batch's loss; a one-batch spike is left out, and the spike rule "
        "reads the raw losses), then an EMA, up to the first non-finite loss. A line that "
        "ends early with no red dash ended by design (the no-ramp check runs what the budget "
        "leaves). Dashed red lines are bursts the rules rejected (spikes, oscillation, a rise "
        "above the start, divergence). The peaks are compared by the mean raw loss of each "
        "burst's last quarter (the rationale's tail losses), not by these curves' ends.",
    )


def second_moment_figure(
    trace: pd.DataFrame,
    signals: pd.DataFrame,
    warmup_steps: int,
    tolerance: float,
    who: str = "chosen",
) -> FigureData | None:
    """Relative error of Adam's ``v_hat`` against step, for each burst; warmup marked. The
    caption says how the settling step was found (:func:`settling_sentence`)."""
    series = _burst_series(trace, signals, "rel_error", np.isfinite)
    if not series:
        return None
    settling = _signal(signals, "second_moment.settling_step")
    # when v_hat's change per update set the settling step, this curve does not show it
    by_change = (
        math.isfinite(settling)
        and math.ceil(settling) == warmup_steps
        and _signal(signals, "second_moment.change_estimate") == settling
    )
    note = " (set by v_hat's change per update: next figure)" if by_change else ""
    markers = [
        Marker("y", tolerance, f"settled below {tolerance:g}"),
        Marker("x", float(warmup_steps), f"{who} warmup {warmup_steps}{note}"),
    ]
    # in whole updates, as the warmup takes it and the caption says it (ceil): a marker of
    # its own only where it is not the warmup's line
    if math.isfinite(settling) and math.ceil(settling) != warmup_steps:
        markers.append(Marker("x", settling, f"settling step {math.ceil(settling)}"))
    return FigureData(
        name="second_moment",
        title="Adam's second moment: relative error of v_hat by step",
        xlabel=UPDATES_LABEL,
        ylabel="relative error sqrt(kappa / n_eff) (fraction)",
        series=tuple(series),
        markers=tuple(markers),
        caption="How far Adam's running estimate of the squared gradient is from its "
        "expectation; warmup shorter than the settling step normalises the first updates by "
        "a poor estimate. " + settling_sentence(signals),
    )


def second_moment_change_figure(
    trace: pd.DataFrame, signals: pd.DataFrame, warmup_steps: int, who: str = "chosen"
) -> FigureData | None:
    """How far ``v_hat`` moves per update (``vhat_change``) against step, for each burst, with
    the closed form the probe extrapolates it by (its ``second_moment.innovation``) out to the
    step where it reaches its tolerance: where a warmup "extrapolated from vhat_change" comes
    from, which the relative-error figure does not show. ``None`` without the column."""
    # positive values only: the axis is logarithmic
    series = _burst_series(trace, signals, "vhat_change", lambda v: v > 0)
    if not series:
        return None
    # beta2 and the tolerance as settling_step reads and applies them
    beta2 = float(trace["beta2"].min()) if "beta2" in trace else math.nan
    tol = change_tolerance(beta2)
    innovation = _signal(signals, "second_moment.innovation")
    estimate = _signal(signals, "second_moment.change_estimate")
    caption = (
        "The relative change of Adam's v_hat over one update: about 1/t early on, while its "
        "bias correction still weighs the first gradients heavily."
    )
    if math.isfinite(innovation) and math.isfinite(estimate) and 0 < beta2 < 1:
        end = max(estimate * 1.3, float(max(max(x.x) for x in series)))
        t = np.unique(np.geomspace(1.0, end, 80))
        series.append(
            Series(
                f"closed form: {innovation:.3g} x (1-beta2)/(1-beta2^t)",
                floats(t),
                floats(innovation * newest_weight(t, beta2)),
                kind="line",
            )
        )
        caption += (
            f" The closed form, fitted to the bursts (innovation {innovation:.3g}, beta2 "
            f"{beta2:g}), reaches the tolerance {tol:g} at update {math.ceil(estimate)}."
        )
    return FigureData(
        name="second_moment_change",
        title="Adam's second moment: change of v_hat per update",
        xlabel=UPDATES_LABEL,
        ylabel="relative change of v_hat per update (fraction)",
        series=tuple(series),
        markers=(Marker("y", tol, f"settled below {tol:g}"),)
        # a log axis has no 0: no warmup, no line
        + (
            (Marker("x", float(warmup_steps), f"{who} warmup {warmup_steps}"),)
            if warmup_steps
            else ()
        ),
        xscale="log",
        yscale="log",
        caption=caption,
    )


def _burst_series(
    trace: pd.DataFrame, signals: pd.DataFrame, column: str, drawn: Callable[[pd.Series], Any]
) -> list[Series]:
    """One series of the trace's ``column`` per burst after the range test, on the rows where
    ``drawn(values)`` holds, against the update it was read after (``step + 1``, as the probe
    reads its statistics); unstable bursts highlighted. Empty without the column."""
    if trace.empty or column not in trace:
        return []
    series = []
    for b in burst_table(trace, signals).itertuples(index=False):
        g = trace[(trace["burst"] == b.burst) & drawn(trace[column])]
        if not g.empty:
            series.append(
                Series(
                    f"burst {b.burst}: W={b.warmup_steps}, peak {b.peak_lr:.3g}",
                    floats(g["step"] + 1),
                    floats(g[column]),
                    highlight=bool(b.stable == "no"),
                )
            )
    return series


def settling_sentence(signals: pd.DataFrame) -> str:
    """How the probe's settling step was found, from its ``second_moment.*`` signals: measured
    within the bursts, the last update they observed (a lower bound), or extrapolated by the
    closed form of ``rel_error`` (from ``kappa``) or of ``vhat_change`` (from its innovation)
    whose step it is (:func:`autowarm.probe.signals.settling_step`)."""
    if signals.empty or "name" not in signals:
        return ""
    hit = signals[signals["name"] == "second_moment.settling_step"]
    if hit.empty:
        return ""
    value = float(hit["value"].iloc[0])
    desc = str(hit["description"].iloc[0]) if "description" in hit else ""
    if not math.isfinite(value):
        return "No settling step could be read from the bursts."
    steps = math.ceil(value)  # as the warmup takes it
    if "(measured)" in desc:
        return f"The settling step, {steps}, was measured within the bursts."
    if "not settled by the last update observed" in desc:
        return (
            f"The bursts ended before v_hat settled: the settling step, {steps}, is the "
            "last update they observed, a lower bound."
        )
    if _signal(signals, "second_moment.change_estimate") == value:
        innovation = _signal(signals, "second_moment.innovation")
        how = (
            f"vhat_change (its innovation, {innovation:.3g}, times Adam's averaging weight "
            "falls to its tolerance there)"
        )
    elif _signal(signals, "second_moment.rel_error_estimate") == value:
        how = "kappa (rel_error = sqrt(kappa / n_eff) reaches its tolerance there)"
    else:  # a suggestion saved before these signals were recorded
        how = "a closed form (the rationale gives it)"
    text = f"Past the bursts the settling step, {steps}, is extrapolated from {how}."
    if _signal(signals, "second_moment.lower_bound") == 1.0:
        text += " It is only a lower bound: " + desc.split("only a lower bound: ")[-1].rstrip(")")
        text += "."
    return text


def _signal(signals: pd.DataFrame, name: str) -> float:
    if signals.empty or "name" not in signals:
        return math.nan
    hit = signals.loc[signals["name"] == name, "value"]
    return float(hit.iloc[0]) if len(hit) else math.nan


def schedule_points(
    cfg: ScheduleConfig, max_points: int = MAX_POINTS
) -> tuple[list[int], list[float]]:
    """Steps and LRs of ``cfg``: every step of a short run, else an even subsample that keeps
    the end of warmup and the last step."""
    n = cfg.total_steps
    if n <= max_points:
        steps = list(range(n))
    else:
        grid = np.linspace(0, n - 1, max_points).round().astype(int)
        extra = [cfg.warmup_steps - 1, cfg.warmup_steps] if cfg.warmup_steps else []
        steps = sorted({int(s) for s in grid} | {s for s in extra if 0 <= s < n})
    return steps, [cfg.lr_at(s) for s in steps]


def schedule_figure(cfg: ScheduleConfig, *, name: str = "schedule", what: str = "") -> FigureData:
    """LR against step over the whole run, the end of warmup marked; ``what`` (such as "the
    schedule to train with") opens the title."""
    steps, lrs = schedule_points(cfg)
    markers: tuple[Marker, ...] = ()
    if cfg.warmup_steps:
        markers = (Marker("x", float(cfg.warmup_steps), f"warmup end ({cfg.warmup_steps})"),)
    return FigureData(
        name=name,
        title=(f"{what[:1].upper()}{what[1:]}: " if what else "")
        + f"{Decay(cfg.decay).value} schedule, peak {cfg.peak_lr:.3g}, "
        f"{cfg.warmup_steps} warmup steps",
        xlabel=STEP_LABEL,
        ylabel=LR_LABEL,
        series=(Series("learning rate", floats(steps), floats(lrs)),),
        markers=markers,
        caption=f"{cfg.total_steps} steps; at x = k, the LR of update k + 1 (the first update "
        f"uses the LR at 0); floor {cfg.min_lr:g}.",
    )
