"""The morning report: tables a program can read and a page a person wants to read.

:func:`report` turns a probe's :class:`~autowarm.Suggestion` or an ``autowarm tune`` study into
a :class:`Report`: pandas tables (``summary``, ``comparison``, ``trials``, ``trace``,
``signals``, ``regret``), the data of each figure (:class:`FigureData`, computed before anything
is drawn), and :meth:`Report.write`, which puts ``report.md``, a self-contained ``report.html``,
one CSV per table and one PNG per figure in a folder. The command is ``autowarm report``.
"""

from __future__ import annotations

from autowarm.reporting._figures import FigureData, Marker, Series
from autowarm.reporting._report import Report, report

__all__ = ["FigureData", "Marker", "Report", "Series", "report"]
