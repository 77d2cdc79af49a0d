"""Are a class's heatmaps consistent with each other? Consistency and split-half reliability.

Both say nothing about faithfulness on their own (an untrained network's templates can be
perfectly reliable: the randomisation test is what tells): they say whether a template is a
stable summary of its class.

- **Consistency**: the mean Pearson r over pairs of different images of the class.
- **Split-half reliability**: the Pearson r between the mean maps of two random halves of the
  class, corrected to the full class size by the Spearman-Brown formula 2r / (1 + r) (the
  reliability of a mean of n maps, where each half has n / 2). The mean over random partitions
  is the figure. Its 95 % interval is a grouped jackknife over images (20 groups, each left out
  in turn, the same partitions throughout; normal approximation): a bootstrap does not work
  here, because a resample of n images holds only about 0.63 n distinct ones and the
  reliability of a mean depends on how many maps it averages, so every resample would come out
  low. The spread over partitions of the same images is reported beside it, named as what it
  is (``partition_spread``), because it is not an interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .intervals import Z95, estimate
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


def split_half(maps: np.ndarray, *, partitions: int = 20, seed: int = 0, groups: int = 20) -> dict[str, Any]:
    """Spearman-Brown corrected split-half reliability of the mean map of ``maps`` (n, H, W)."""
    n = len(maps)
    if n < 4:
        return {**estimate(None, None, None, n), "partition_spread": [None, None], "partitions": 0}
    flat = np.asarray(maps, np.float64).reshape(n, -1)
    rng = np.random.default_rng(seed)
    sides = np.array([rng.permutation(n) < n // 2 for _ in range(partitions)])   # (P, n): True = half A
    group = rng.permutation(n) % min(groups, n)
    g = int(group.max()) + 1
    # per partition, side and group: the sum of the maps and their number
    sums = np.zeros((partitions, 2, g, flat.shape[1]))
    counts = np.zeros((partitions, 2, g))
    for side in (0, 1):
        member = sides if side == 0 else ~sides
        for k in range(g):
            pick = member & (group == k)[None]
            counts[:, side, k] = pick.sum(axis=1)
            sums[:, side, k] = pick.astype(np.float64) @ flat
    whole = np.array([_reliability(sums[p].sum(axis=1), counts[p].sum(axis=1)) for p in range(partitions)])
    own = whole[np.isfinite(whole)]
    if not len(own):
        return {**estimate(None, None, None, n), "partition_spread": [None, None], "partitions": 0}
    left_out = np.array([np.nanmean([_reliability(sums[p].sum(axis=1) - sums[p][:, k], counts[p].sum(axis=1) - counts[p][:, k])
                                     for p in range(partitions)]) for k in range(g)])
    left_out = left_out[np.isfinite(left_out)]
    value = float(own.mean())
    if len(left_out) > 1:
        se = float(np.sqrt((len(left_out) - 1) / len(left_out) * ((left_out - left_out.mean()) ** 2).sum()))
        lo, hi = max(-1.0, value - Z95 * se), min(1.0, value + Z95 * se)
    else:
        lo = hi = None
    return {**estimate(value, lo, hi, n),
            "partition_spread": [float(np.percentile(own, 2.5)), float(np.percentile(own, 97.5))],
            "partitions": int(len(own)), "interval": f"grouped jackknife ({g} groups)"}


def _reliability(side_sums: np.ndarray, side_counts: np.ndarray) -> float:
    """Spearman-Brown corrected r between the mean maps of two halves given their sums."""
    if side_counts.min() < 1:
        return float("nan")
    return spearman_brown(pearson(side_sums[0] / side_counts[0], side_sums[1] / side_counts[1]))
