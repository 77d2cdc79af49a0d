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



def holm(p_values: "np.ndarray | list[float]") -> np.ndarray:
    """Holm's step-down adjustment (Holm 1979) of ``p_values``: the family-wise error rate of
    rejecting every hypothesis whose adjusted p is below alpha stays at alpha, whatever their
    dependence. Sorted ascending, the i-th smallest p (from 0) is multiplied by (m - i), the
    running maximum taken, and capped at 1."""
    p = np.asarray(p_values, np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out
