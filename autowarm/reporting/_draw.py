"""Drawing a :class:`~autowarm.reporting._figures.FigureData` with matplotlib.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, so nothing
touches the caller's global figure state or backend.
"""

from __future__ import annotations

import io
from typing import Any

from autowarm._imports import require
from autowarm.reporting._figures import FigureData

_WARN = "tab:red"


def draw(data: FigureData) -> Any:
    """A matplotlib ``Figure`` of ``data`` (matplotlib imported here, with an install hint)."""
    require("matplotlib", "drawing report figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    mappable = None
    for i, s in enumerate(data.series):
        style: dict[str, Any] = {"label": s.label}
        if s.highlight:
            style.update(color=_WARN, linestyle="--")
        else:
            style.update(color=f"C{i % 10}" if i % 10 != 3 else "C9")  # C3 is the warning red
        if s.kind == "scatter":
            style.pop("linestyle", None)
            if s.color_values is not None:
                style.pop("color")
                mappable = ax.scatter(s.x, s.y, c=s.color_values, cmap="viridis_r", **style)
            else:
                size = 90 if s.marker in ("*", "D") else 30
                edge = None if s.marker in ("x", "+") else "black"  # unfilled: keep the colour
                ax.scatter(s.x, s.y, s=size, marker=s.marker, edgecolors=edge, zorder=3, **style)
        elif s.kind == "step":
            ax.step(s.x, s.y, where="post", **style)
        else:
            ax.plot(s.x, s.y, linewidth=1.4, **style)
    for m in data.markers:
        if m.axis == "x":  # a choice: dashed black; a threshold: dotted grey
            ax.axvline(m.value, color="black", linestyle="--", linewidth=1.1, label=m.label)
        else:
            ax.axhline(m.value, color="0.45", linestyle=":", linewidth=1.3, label=m.label)
    ax.set_xscale(data.xscale)
    ax.set_yscale(data.yscale)
    if data.ylim is not None:
        ax.set_ylim(*data.ylim)
    ax.set_title(data.title, fontsize=11)
    ax.set_xlabel(data.xlabel)
    ax.set_ylabel(data.ylabel)
    ax.grid(True, alpha=0.3)
    if mappable is not None:
        fig.colorbar(mappable, ax=ax, label=data.colorbar_label or "")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def png_bytes(data: FigureData) -> bytes:
    """``data`` drawn and encoded as PNG."""
    fig = draw(data)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
