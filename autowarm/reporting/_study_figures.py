"""The data behind a study's figures: optimisation history and the (warmup, peak LR) scatter."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from autowarm.reporting._figures import LR_LABEL, VALUE_LABEL, FigureData, Series, floats
from autowarm.reporting._study import best_row, completed
from autowarm.study import _attrs as A

REFERENCE_LABEL = "reference schedule"
_REFERENCE_PHRASES = {
    A.ROLE_NO_WARMUP: "with no warmup",
    A.ROLE_UNTUNED: "with 2/(1-beta2) steps",
    A.ROLE_TEN_PERCENT: "with 10% of the run",
}


def _complete(trials: pd.DataFrame) -> pd.DataFrame:
    ordered: pd.DataFrame = completed(trials).sort_values("number")
    return ordered


def _roles(rows: pd.DataFrame) -> pd.Series:
    # each trial's roles: its own and those it also stands for (``also_roles``)
    own = rows["role"].fillna("").astype(str).map(lambda r: [r])
    if "also_roles" not in rows:
        return own
    also = rows["also_roles"].fillna("").astype(str).str.split(",")
    both: pd.Series = own + also
    return both


def _references(done: pd.DataFrame) -> pd.DataFrame:
    """The reference schedules' trials (:data:`~autowarm.study._attrs.REFERENCE_ROLES`),
    including one that stands for a reference as well as its own role (``also_roles``)."""
    mine = _roles(done).map(lambda roles: any(r in A.REFERENCE_ROLES for r in roles))
    picked: pd.DataFrame = done[mine.astype(bool)]
    return picked


def _reference_sentence(refs: pd.DataFrame) -> str:
    """What the squares mark: the references this study ran (an optimizer without a second
    moment has no ``2/(1-beta2)`` one); empty without any."""
    present = {r for roles in _roles(refs) for r in roles}
    phrases = [_REFERENCE_PHRASES[r] for r in A.REFERENCE_ROLES if r in present]
    if not phrases:
        return ""
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f" Squares ring the reference schedules: the probe's peak LR {listed}."


def _marked(rows: pd.DataFrame, label: str, marker: str, x: str, y: str) -> list[Series]:
    """``rows`` as one scatter series of ``marker`` at columns ``(x, y)``; none if empty."""
    if rows.empty:
        return []
    return [Series(label, floats(rows[x]), floats(rows[y]), "scatter", marker=marker)]


def _confirmed_sentence(trials: pd.DataFrame, most: int = 6) -> str:
    """The full-length confirmations' values, best first, as a sentence (they are on the full
    run's scale, so not drawn with the compressed values); empty when none finished."""
    if "full_value" not in trials:
        return ""
    full = trials[~np.isnan(trials["full_value"].to_numpy(dtype=float))]
    if full.empty:
        return ""
    full = full.sort_values("full_value")
    parts = [
        f"trial {int(n)}: " + ("diverged" if math.isinf(v) else f"{v:.4g}")
        for n, v in zip(full["number"], full["full_value"].astype(float), strict=True)
    ]
    more = f" and {len(parts) - most} more" if len(parts) > most else ""
    return (
        " Confirmed at full length (on the full run's scale, so not drawn here), best first: "
        + "; ".join(parts[:most])
        + more
        + "."
    )


def history_figure(
    trials: pd.DataFrame, maximize: bool = False, value_label: str = VALUE_LABEL
) -> FigureData | None:
    """Each completed trial's value by trial number, the best so far (``maximize``: the
    highest so far), the reference schedules' and the probe's trials, the chosen trial when
    that is not the best here; the caption gives the full-length confirmations' values."""
    done = _complete(trials)
    if done.empty:
        return None
    values = done["value"]
    series = [
        Series("completed trial", floats(done["number"]), floats(values), "scatter"),
        Series(
            "best so far",
            floats(done["number"]),
            floats(values.cummax() if maximize else values.cummin()),
            "step",
        ),
    ]
    refs = _references(done)
    series += _marked(refs, REFERENCE_LABEL, "s", "number", "value")
    series += _marked(
        done[done["role"] == A.ROLE_PROBE], "probe's estimate", "*", "number", "value"
    )
    caption = (
        "Higher is better: the study maximises its value."
        if maximize
        else "Lower is better. Trials are compressed runs, so their values compare with each "
        "other, not with a full run's loss."
    )
    caption += _reference_sentence(refs)
    chosen = best_row(trials, maximize)
    best = float(values.max() if maximize else values.min())
    if chosen is not None and float(chosen["value"]) != best:
        # a full-length confirmation chose another trial than the lowest compressed one, or
        # the lower ones' schedules diverged when confirmed at full length
        by_confirmation = math.isfinite(float(chosen.get("full_value", math.nan)))
        series.append(
            Series(
                "chosen (best at full length)"
                if by_confirmation
                else "chosen (the better ones diverged at full length)",
                (float(chosen["number"]),),
                (float(chosen["value"]),),
                "scatter",
                marker="D",
            )
        )
        caption += f" The diamond is the chosen trial {int(chosen['number'])}, " + (
            "chosen by its full-length confirmation run rather than by this value."
            if by_confirmation
            else "the best whose schedule did not diverge when confirmed at full length "
            "(the better values' schedules did)."
        )
    caption += _confirmed_sentence(trials)
    stopped = trials[trials["state"].isin(["pruned", "fail"])]
    stopped = stopped[np.isfinite(stopped["last_intermediate_value"])]
    ylim = None
    stopped_label = "pruned/failed (last reported value)"
    if len(stopped):
        last = stopped["last_intermediate_value"].to_numpy(dtype=float)
        # one trial cut off far above the others would squash the completed ones flat: the
        # axis keeps to them (a span either side), and such points sit on its edge
        lo, hi = float(values.min()), float(values.max())
        span = (hi - lo) or abs(hi) * 0.1 or 1.0
        bottom, top = lo - span, hi + span
        outside = (last < bottom) | (last > top)
        if outside.any():
            ylim = (bottom, top)
            last = np.clip(last, bottom, top)
            caption += (
                f" {int(outside.sum())} pruned or failed trial(s) whose last value lies off "
                "this range are drawn at its edge."
            )
            stopped_label = "pruned/failed (last reported value; off-range ones at the edge)"
        series.append(
            Series(
                stopped_label,
                floats(stopped["number"]),
                floats(last),
                "scatter",
                highlight=True,
                marker="x",
            )
        )
    return FigureData(
        name="history",
        title="Optimisation history: trial value by trial number",
        xlabel="trial number (count)",
        ylabel=value_label,
        series=tuple(series),
        ylim=ylim,
        caption=caption,
    )


def scatter_figure(
    trials: pd.DataFrame, maximize: bool = False, value_label: str = VALUE_LABEL
) -> FigureData | None:
    """Completed trials at (warmup, peak LR), coloured by value; the reference schedules'
    trials ringed by squares, the probe's starred, the chosen one (``maximize``: higher
    values are better) a diamond."""
    done = _complete(trials)
    done = done[np.isfinite(done["peak_lr"]) & (done["warmup_steps"] >= 0)]
    if done.empty:
        return None
    series = [
        Series(
            "completed trial",
            floats(done["warmup_steps"]),
            floats(done["peak_lr"]),
            "scatter",
            color_values=floats(done["value"]),
        )
    ]
    refs = _references(done)
    series += _marked(refs, REFERENCE_LABEL, "s", "warmup_steps", "peak_lr")
    series += _marked(
        done[done["role"] == A.ROLE_PROBE], "probe's estimate", "*", "warmup_steps", "peak_lr"
    )
    chosen = best_row(trials, maximize)  # the confirmed best, if the study confirmed any
    best = done[done["number"] == (-1 if chosen is None else int(chosen["number"]))]
    if len(best):
        series.append(
            Series(
                "best",
                floats(best["warmup_steps"]),
                floats(best["peak_lr"]),
                "scatter",
                highlight=True,
                marker="D",
            )
        )
    return FigureData(
        name="trials_scatter",
        title="Trials: warmup and peak LR, coloured by value",
        xlabel="warmup of the full run (optimizer steps), log scale above 1",
        ylabel=LR_LABEL + ", log scale",
        series=tuple(series),
        xscale="symlog",
        yscale="log",
        colorbar_label=value_label,
        caption=(
            "Each point is a completed trial; "
            + (
                "brighter is better (a higher value: the study maximises it"
                if maximize
                else "darker is better (lower loss"
            )
            + "; the colour bar gives the value)."
            + _reference_sentence(refs)
        ),
    )
