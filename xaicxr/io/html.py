"""Pieces of the HTML report: tables of estimates, notes, figures. The report stage and every
metric's report section (:meth:`xaicxr.plugins.Metric.section`) build their HTML from these,
so a third-party metric's section looks like the built-in ones."""

from __future__ import annotations

import html as _html
from typing import Any
from urllib.parse import quote

import numpy as np

from .text import describe


def escape(text: Any) -> str:
    return _html.escape(str(text))


class Raw(str):
    """A cell that is already HTML (an estimate with the baseline it is measured against)."""


def is_estimate(value: Any) -> bool:
    """Whether ``value`` is a ``{"value", "ci95", "n"}`` record."""
    return isinstance(value, dict) and "value" in value and "ci95" in value


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: an estimate as ``0.62 [0.48, 0.75]``, a bool as yes/no, a float rounded,
    None as a dash; anything else escaped."""
    if value is None:
        return "–"
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict) and "value" in value:
        return estimate_html(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.{digits}f}"
    return escape(value)


def estimate_html(e: dict[str, Any]) -> str:
    """:func:`~xaicxr.io.text.describe` with the interval kept on one line: a narrow cell
    breaks between the value and its interval, not inside the interval."""
    text = describe(e)
    value, _, interval = text.partition(" ")
    return f'{escape(value)} <span style="white-space: nowrap">{escape(interval)}</span>' if interval else escape(text)


EMPTY = ("–", "-", "")
"""What :func:`fmt` makes of a cell with nothing in it (None, an estimate without a value)."""


def table(header: list[str], rows: list[list[Any]], css: str | None = None) -> str:
    """A table of :func:`fmt` cells (``css``: its class). A column whose every cell is empty is
    left out (a figure that does not apply to this run), except the first, which names the rows;
    a table without rows is nothing at all."""
    if not rows:
        return ""
    cells = [[fmt(c) for c in row] for row in rows]
    keep = [k for k in range(len(header))
            if k == 0 or any(k < len(row) and row[k] not in EMPTY for row in cells)]
    head = "".join(f"<th>{escape(header[k])}</th>" for k in keep)
    body = "".join("<tr>" + "".join(f"<td>{row[k] if k < len(row) else fmt(None)}</td>" for k in keep) + "</tr>"
                   for row in cells)
    opening = f'<table class="{escape(css)}">' if css else "<table>"
    return f"{opening}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(name: str, alt: str) -> str:
    """An ``<img>`` of a PNG in the report folder, with its caption."""
    src = escape(quote(name))
    return f'<figure><img src="{src}" alt="{escape(alt)}"><figcaption>{escape(alt)}</figcaption></figure>'


def note(text: str) -> str:
    return f"<p class='note'>{escape(text)}</p>"


def versus(skill: dict[str, Any] | None) -> Raw | None:
    """``class_prior: 0.12 [0.02, 0.22]``: a skill and the baseline it is measured against."""
    return Raw(f"{escape(skill['baseline'])}: {estimate_html(skill)}") if skill else None
