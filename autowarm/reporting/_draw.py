"""Drawing a :class:`~autowarm.reporting._figures.FigureData` with matplotlib.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, so nothing
touches the caller's global figure state or backend.
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import Any

from autowarm._imports import require
from autowarm.reporting._figures import FigureData, Series

_WARN = "tab:red"
_PALETTE = ("C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9", "C7")
"""Series colours by index: matplotlib's cycle without red (the warning colour), ordered so
that the first few are far apart (cyan, next to blue, comes late)."""


_HALF_WIDTH_CHARS = 46
"""The longest legend label that fits in half the figure's width at the legend's size."""
_RINGS = ("s",)
"""Scatter markers drawn hollow and larger: they mark points another series already draws
(a reference trial among the completed ones), whose colour shows through."""


def draw(data: FigureData) -> Any:
    """A matplotlib ``Figure`` of ``data`` (matplotlib imported here, with an install hint)."""
    require("matplotlib", "drawing report figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import Collection
    from matplotlib.figure import Figure

    # The legend goes below the axes, two entries a row (one, when a label is too long for
    # half the width: it ran off the figure), so it never hides a curve or a marker (inside,
    # "best" put it over the chosen warmup's line); the figure grows to hold it.
    labels = [s.label for s in data.series] + [m.label for m in data.markers]
    entries = len(labels)
    columns = 2 if max(map(len, labels), default=0) <= _HALF_WIDTH_CHARS else 1
    rows = -(-entries // columns)
    fig = Figure(figsize=(7.5, 4.2 + 0.19 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mappables = [_series(ax, s, i) for i, s in enumerate(data.series)]
    for m in data.markers:
        if m.axis == "x":  # a choice: dashed black; a threshold: dotted grey
            ax.axvline(m.value, color="black", linestyle="--", linewidth=1.1, label=m.label)
        else:
            ax.axhline(m.value, color="0.45", linestyle=":", linewidth=1.3, label=m.label)
    if data.xscale == "symlog":
        ax.set_xscale("symlog", linthresh=1.0)
        # counts from 0: no negative ticks (all at 0, the default view is symmetric about it)
        xs = [x for s in data.series for x in s.x if math.isfinite(x)]
        ax.set_xlim(-0.3, max(2.0, 1.6 * max(xs, default=0.0)))
    else:
        ax.set_xscale(data.xscale)
    ax.set_yscale(data.yscale)
    if data.xlabel.endswith("(count)") and data.xscale == "linear":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no trial 1.5
    if data.ylim is not None:
        ax.set_ylim(*data.ylim)
    ax.set_title(textwrap.fill(data.title, 72), fontsize=11)  # a long title wraps, not cut
    # long labels (a study's metric) wrapped to the axis they run along, not cut at the edge
    ax.set_xlabel(textwrap.fill(data.xlabel, 90))
    ax.set_ylabel(textwrap.fill(data.ylabel, 50))
    ax.grid(True, alpha=0.3)
    for mappable in filter(None, mappables):
        fig.colorbar(mappable, ax=ax, label=textwrap.fill(data.colorbar_label or "", 50))
    if entries:
        legend = fig.legend(loc="outside lower center", ncols=columns, fontsize=8, frameon=False)
        # a colour-mapped series' swatch takes one value's colour (the worst, say): grey
        mapped = {s.label for s in data.series if s.color_values is not None}
        for handle, text in zip(legend.legend_handles, legend.get_texts(), strict=False):
            if text.get_text() in mapped and isinstance(handle, Collection):
                handle.set_array(None)  # else its colour map repaints it
                handle.set_facecolor("0.6")
                handle.set_edgecolor("0.3")
    return fig


def _series(ax: Any, s: Series, i: int) -> Any:
    # Returns the colour-mapped scatter, if this series is one, for the colour bar.
    color = _WARN if s.highlight else _PALETTE[i % len(_PALETTE)]
    if s.kind == "scatter" and s.color_values is not None:
        return ax.scatter(s.x, s.y, c=s.color_values, cmap="viridis", label=s.label)
    if s.kind == "scatter":
        size = 90 if s.marker in ("*", "D") else 110 if s.marker in _RINGS else 30
        edge = None if s.marker in ("x", "+") else "black"  # unfilled markers keep the colour
        paint: dict[str, Any] = {"color": color, "edgecolors": edge}
        if s.marker in _RINGS:  # around points of another series, whose colour shows through
            paint = {"facecolors": "none", "edgecolors": color, "linewidths": 1.6}
        ax.scatter(
            s.x,
            s.y,
            s=size,
            marker=s.marker,
            **paint,
            zorder=4 if s.marker == "*" else 3,  # the probe's star stays visible on a diamond
            label=s.label,
            clip_on=False,  # a point drawn at the axes' edge (off its range) is seen whole
        )
        return None
    style = "--" if s.highlight else "-"
    if s.kind == "step":
        ax.step(s.x, s.y, where="post", color=color, linestyle=style, label=s.label)
    else:
        ax.plot(s.x, s.y, color=color, linestyle=style, linewidth=1.4, label=s.label)
    return None


def png_bytes(data: FigureData) -> bytes:
    """``data`` drawn and encoded as PNG."""
    from autowarm._outputs import PNG_SOFTWARE

    fig = draw(data)
    buf = io.BytesIO()
    # the Software text chunk tells autowarm's plots from other images (_outputs.is_png)
    fig.savefig(buf, format="png", metadata={"Software": PNG_SOFTWARE})
    return buf.getvalue()
