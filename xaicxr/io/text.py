"""An estimate (``{value, ci95, n}``, :mod:`xaicxr.analysis.intervals`) as text, for the
terminal, the report and study tables."""

from __future__ import annotations

from typing import Any


def describe(e: dict[str, Any] | None, digits: int = 2) -> str:
    """``0.62 [0.48, 0.75]``: an estimate and its interval as text (``-`` if there is none)."""
    if not e or e.get("value") is None:
        return "-"
    lo, hi = e.get("ci95", [None, None])
    interval = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and hi is not None else ""
    return f"{e['value']:.{digits}f}{interval}"
