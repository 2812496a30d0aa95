"""Rendering a report as Markdown (figures beside it) and as one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from autowarm.reporting._figures import FigureData

MAX_ROWS = 40  # longer tables are cut on the page; the CSV has every row

# the summary fields a reader sees first, with their labels
_HEADLINE = (
    ("status", "status"),
    ("chosen_by", "chosen by"),
    ("chosen_trial", "chosen trial"),
    ("warmup_steps", "warmup (steps)"),
    ("warmup_frac", "warmup (fraction of the run)"),
    ("peak_lr", "peak LR"),
    ("decay", "decay"),
    ("min_lr", "floor LR"),
    ("total_steps", "total steps"),
    ("probe_steps", "probe steps"),
    ("probe_wall_seconds", "probe wall time (s)"),
    ("deciding_signal", "probe's deciding signal"),
    ("confidence", "probe's confidence"),
    ("low_confidence_reasons", "probe's low-confidence reasons"),
    ("warmup_steps_low", "near-best warmup, low (steps)"),
    ("warmup_steps_high", "near-best warmup, high (steps)"),
    ("peak_lr_low", "near-best peak LR, low"),
    ("peak_lr_high", "near-best peak LR, high"),
    ("range_rule", "near-best rule"),
    ("n_trials", "trials"),
    ("n_complete", "completed"),
    ("n_pruned", "pruned"),
    ("n_failed", "failed"),
    ("n_running", "running"),
    ("n_waiting", "queued, not started"),
    ("best_value", "best value (best of the completed trials)"),
    ("chosen_full_value", "chosen trial's full-length value"),
    ("metric", "metric"),
)


_RANGE_COLUMNS = frozenset(
    {"warmup_steps_low", "warmup_steps_high", "peak_lr_low", "peak_lr_high"}
)


def fmt(value: object, digits: int = 4) -> str:
    """A cell as text: ``digits`` significant digits for floats (4 unless told), blank for
    NaN, a whole float without its ``.0``."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value)


MAX_DIGITS = 6  # past this a long table (a trace) reads as noise; its CSV has every digit


# columns of relative differences, shown as signed percentages on the page (1.249 read as
# "1.25 times the best"; it is 125% worse); their CSVs keep the fraction
PERCENT_COLUMNS = frozenset({"vs_best"})


def _percent(value: object) -> str:
    # fixed notation: +1,250%, +0.213%, <0.01% for what is no difference to read
    if not isinstance(value, float) or math.isnan(value):
        return fmt(value)
    pct = 100 * value
    if pct == 0:
        return "0%"
    if math.isinf(pct) or abs(pct) >= 100:
        return f"{pct:+,.0f}%"
    if abs(pct) < 0.01:
        return f"{'+' if pct > 0 else '-'}<0.01%"
    return f"{pct:+.3g}%"


def texts_apart(values: Sequence[object]) -> list[str]:
    """``values`` as text, the floats with the fewest significant digits, 4 at least, that
    show distinct values as distinct (:data:`MAX_DIGITS` at most)."""
    floats = {v for v in values if isinstance(v, float) and not math.isnan(v)}
    digits = 4
    while digits < MAX_DIGITS and len({fmt(v, digits) for v in floats}) < len(floats):
        digits += 1
    return [fmt(v, digits) for v in values]


def table_texts(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame``'s cells as text: a :data:`PERCENT_COLUMNS` column as signed percentages,
    every other through :func:`texts_apart` (two trials whose values differ in the 6th digit
    are not shown as equal, and a column of round numbers stays short)."""
    texts = [
        [_percent(v) for v in frame.iloc[:, i]]
        if frame.columns[i] in PERCENT_COLUMNS
        else texts_apart(list(frame.iloc[:, i]))
        for i in range(frame.shape[1])
    ]
    out = pd.DataFrame(dict(enumerate(texts)), index=frame.index)
    out.columns = frame.columns
    return out


def headline(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """``(label, text)`` pairs of the summary row; unknowns (NaN, or -1 in an int column:
    steps, a trial number), and a probe's zero trial counts, left out. A float -1 (a best
    value) is a value like any other."""
    row = summary.iloc[0]
    out = []
    # a range whose ends are equal (every trial that met the rule has one schedule): said
    # so, not shown as "0 to 0", which reads as a certainty
    single = (
        all(
            fmt(row[f"{k}_low"]) != "" and row[f"{k}_low"] == row[f"{k}_high"]
            for k in ("warmup_steps", "peak_lr")
        )
        and int(row["warmup_steps_low"]) != -1
    )
    for col, label in _HEADLINE:
        if single and col in _RANGE_COLUMNS:
            if col == "warmup_steps_low":
                out.append(
                    ("near-best range", "none: the trials that met the rule share one schedule")
                )
            continue
        value = row[col]
        text = fmt(value)
        integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        unknown = text == "" or (integer and value == -1)
        if not unknown and not (col.startswith("n_") and text == "0" and row["n_trials"] == 0):
            out.append((label, text))
    return out


def _shown(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if len(frame) <= MAX_ROWS:
        return frame, ""
    return frame.head(MAX_ROWS), f"First {MAX_ROWS} of {len(frame)} rows."


def _md(text: str) -> str:
    """Text as Markdown shows it: ``<``, ``>`` and ``&`` as entities, so a reason such as
    ``<class 'torch.Tensor'>`` or a study name with a tag is shown, not taken for HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a GitHub pipe table (``|`` in cells escaped, and ``<``, ``>``, ``&``)."""
    cols = [_md_cell(str(c)) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table_texts(frame).itertuples(index=False):
        cells = [_md_cell(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(
    title: str,
    status_text: str,
    notes: tuple[str, ...],
    rationale: str,
    tables: Mapping[str, pd.DataFrame],
    figures: Mapping[str, FigureData],
    rationale_title: str = "Why",
) -> str:
    """The Markdown page; figures and CSVs are referenced by their file names."""
    out = [f"# {_md(title)}", "", f"> {_md(status_text)}", ""]
    out += [f"- {_md(n)}" for n in notes] + ([""] if notes else [])
    out += ["## Summary", "", "| | |", "|---|---|"]
    out += [
        f"| {_md_cell(label)} | {_md_cell(text)} |" for label, text in headline(tables["summary"])
    ]
    if rationale:
        out += ["", f"## {rationale_title}", "", _md(rationale)]
    out += ["", "## Figures", ""]
    for f in figures.values():
        title_md = _md(f.title)
        out += [f"### {title_md}", "", f"![{title_md}]({f.name}.png)", "", _md(f.caption), ""]
    out += ["## Tables", ""]
    for name, frame in tables.items():
        shown, cut = _shown(frame)
        out += [f"### {name}", "", f"[{name}.csv]({name}.csv)", ""]
        out += [markdown_table(shown), ""] + ([cut, ""] if cut else [])
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.status{padding:.6em 1em;border-radius:4px;background:#eef6ee;border:1px solid #9c9}
.status.running,.status.incomplete{background:#fff6e0;border-color:#e0b040}
.status.no_result{background:#fdecea;border-color:#d9534f}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:13px}.cut{color:#777;font-size:13px}
.scroll{overflow-x:auto}.summary td{text-align:left}
"""


def to_html(
    title: str,
    status: str,
    status_text: str,
    notes: tuple[str, ...],
    rationale: str,
    tables: Mapping[str, pd.DataFrame],
    pngs: Mapping[str, tuple[FigureData, bytes]],
    rationale_title: str = "Why",
) -> str:
    """One page with every figure embedded as a base64 PNG; nothing is loaded from outside."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="status {e(status)}">{e(status_text)}</p>',
    ]
    if notes:
        out.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    out.append('<h2>Summary</h2><table class="summary">')
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in headline(tables["summary"])]
    out.append("</table>")
    if rationale:
        out.append(f"<h2>{e(rationale_title)}</h2><p>{e(rationale)}</p>")
    out.append("<h2>Figures</h2>")
    for f, png in pngs.values():
        data = base64.b64encode(png).decode("ascii")
        out.append(
            f'<figure id="{e(f.name)}"><img alt="{e(f.title)}" src="data:image/png;base64,'
            f'{data}"><figcaption>{e(f.caption)}</figcaption></figure>'
        )
    out.append("<h2>Tables</h2>")
    for name, frame in tables.items():
        shown, cut = _shown(frame)
        body = table_texts(shown).to_html(index=False, escape=True, border=0)
        out.append(f'<h3>{e(name)}</h3><div class="scroll">{body}</div>')
        if cut:
            out.append(f'<p class="cut">{e(cut)} Every row is in {e(name)}.csv.</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"
