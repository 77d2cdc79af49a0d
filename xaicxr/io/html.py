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
        return describe(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.{digits}f}"
    return escape(value)


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(name: str, alt: str) -> str:
    """An ``<img>`` of a PNG in the report folder, with its caption."""
    src = escape(quote(name))
    return f'<figure><img src="{src}" alt="{escape(alt)}"><figcaption>{escape(alt)}</figcaption></figure>'


def note(text: str) -> str:
    return f"<p class='note'>{escape(text)}</p>"


def versus(skill: dict[str, Any] | None) -> Raw | None:
    """``class_prior: 0.12 [0.02, 0.22]``: a skill and the baseline it is measured against."""
    return Raw(f"{escape(skill['baseline'])}: {describe(skill)}") if skill else None
