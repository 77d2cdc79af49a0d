"""Small statistics shared by the analysis modules."""

from __future__ import annotations

from typing import Iterable

import numpy as np

EPS = 1e-12


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two arrays of any shape (NaN when either is constant)."""
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > EPS else float("nan")


def finite_mean(values: Iterable[float | None]) -> float | None:
    """Mean over the finite values; None if there are none, so metrics.json never holds NaN."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None
