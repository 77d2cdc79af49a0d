"""Are a class's heatmaps consistent with each other? Consistency and split-half reliability.

Both say nothing about faithfulness on their own (an untrained network's templates can be
perfectly reliable: the randomisation test is what tells): they say whether a template is a
stable summary of its class.

- **Consistency**: the mean Pearson r over pairs of different images of the class.
- **Split-half reliability**: the Pearson r between the mean maps of two random halves of the
  class, corrected to the full class size by the Spearman-Brown formula 2r / (1 + r) (the
  reliability of a mean of n maps, where each half has n / 2). The mean over random partitions
  is the figure; its 95 % interval comes from a bootstrap over images (a new partition for
  every resample, with every copy of a resampled image on the same side: a copy on each side
  would correlate the halves by itself); the spread over partitions of the same images is
  reported beside it, named as what it is (``partition_spread``), because it is not an interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .intervals import estimate
from .stats import EPS, pearson


def _unit_rows(maps: np.ndarray) -> np.ndarray:
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > EPS)


def consistency(maps: np.ndarray, *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Mean pairwise Pearson r of ``maps`` (n, H, W), with a bootstrap interval over images.

    With z_i the centred unit-norm maps and G = Z Z^T, a resample that draws image i c_i times
    has mean r over pairs of distinct draws (c^T G c - sum c_i^2 G_ii) / (n^2 - sum c_i^2)."""
    n = len(maps)
    if n < 2:
        return estimate(None, None, None, n)
    z = _unit_rows(maps)
    gram = z @ z.T
    diag = np.diag(gram)
    value = (gram.sum() - diag.sum()) / (n * (n - 1))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    same = (counts ** 2) @ diag
    pairs = n * n - (counts ** 2).sum(axis=1)
    values = (np.einsum("bi,ij,bj->b", counts, gram, counts) - same) / np.where(pairs > 0, pairs, np.nan)
    return estimate(value, np.nanpercentile(values, 2.5), np.nanpercentile(values, 97.5), n)


def spearman_brown(r: float) -> float:
    return 2 * r / (1 + r) if r > -1 else float("nan")


def split_half(maps: np.ndarray, *, partitions: int = 20, seed: int = 0, n_boot: int = 200) -> dict[str, Any]:
    """Spearman-Brown corrected split-half reliability of the mean map of ``maps`` (n, H, W)."""
    n = len(maps)
    if n < 4:
        return {**estimate(None, None, None, n), "partition_spread": [None, None], "partitions": 0}
    flat = np.asarray(maps, np.float64).reshape(n, -1)
    rng = np.random.default_rng(seed)
    own = np.array([_split(flat, np.arange(n), np.ones(n), rng) for _ in range(partitions)])
    own = own[np.isfinite(own)]
    boot = np.array([_split(flat, *np.unique(rng.integers(0, n, n), return_counts=True), rng)
                     for _ in range(n_boot)])
    boot = boot[np.isfinite(boot)]
    if not len(own):
        return {**estimate(None, None, None, n), "partition_spread": [None, None], "partitions": 0}
    lo, hi = (np.percentile(boot, 2.5), np.percentile(boot, 97.5)) if len(boot) else (None, None)
    return {**estimate(own.mean(), lo, hi, n),
            "partition_spread": [float(np.percentile(own, 2.5)), float(np.percentile(own, 97.5))],
            "partitions": int(len(own))}


def _split(flat: np.ndarray, images: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> float:
    """Spearman-Brown corrected r between the (count-weighted) mean maps of a random halving of
    the distinct ``images``."""
    order = rng.permutation(len(images))
    sides = order[:len(order) // 2], order[len(order) // 2:]
    means = [counts[s] @ flat[images[s]] / counts[s].sum() for s in sides]
    return spearman_brown(pearson(*means))
