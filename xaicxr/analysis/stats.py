"""Small statistics shared by the analysis modules."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two arrays of any shape (NaN when either is constant)."""
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > EPS else float("nan")

