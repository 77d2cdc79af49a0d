"""95 % intervals, in the one form every estimate in ``metrics.json`` takes:
``{"value": v, "ci95": [lo, hi], "n": n}``.

Proportions (the pointing game) get the Wilson score interval (Wilson 1927), which stays inside
[0, 1] and behaves at 0 and 1 where the normal approximation does not; everything else gets a
seeded percentile bootstrap over images. A difference between two figures measured on the same
images (an explainer against a baseline) is bootstrapped *paired*: one resample of images for
both, so the interval is that of the difference, not of two independent means.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..io.text import describe  # noqa: F401  (the text form, kept importable here)

Z95 = 1.959963984540054
BOOTSTRAP = 2000


def estimate(value: float | None, lo: float | None, hi: float | None, n: int) -> dict[str, Any]:
    return {"value": _num(value), "ci95": [_num(lo), _num(hi)], "n": int(n)}


def t_interval(values: "np.ndarray | list[float]") -> dict[str, Any]:
    """The mean of a few independent values (one per trained model, say) with Student's t
    interval over them, and their ``sd``: where one more such value may be expected to average;
    no interval from fewer than two."""
    from scipy import stats

    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return {**estimate(mean, None, None, len(values)), "sd": None}
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / np.sqrt(len(values))
    return {**estimate(mean, mean - half, mean + half, len(values)), "sd": sd}


def wilson(successes: float, n: int) -> dict[str, Any]:
    """A proportion and its Wilson score interval. ``successes`` may be fractional (an expected
    number of hits, e.g. a pointing game with ties broken at random)."""
    if n <= 0:
        return estimate(None, None, None, 0)
    p = successes / n
    denom = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    return estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def proportion(hits: np.ndarray) -> dict[str, Any]:
    """Wilson interval of the mean of per-image hits in [0, 1] (NaN entries left out)."""
    hits = np.asarray(hits, np.float64)
    hits = hits[np.isfinite(hits)]
    return wilson(float(hits.sum()), len(hits))


def bootstrap_mean(values: np.ndarray, *, seed: int = 0, n_boot: int = BOOTSTRAP) -> dict[str, Any]:
    """The mean of the finite ``values`` and its percentile bootstrap interval."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return estimate(None, None, None, 0)
    if n == 1:
        return estimate(values[0], None, None, 1)
    means = _resampled_means(values[None], n_boot, seed)[0]
    return estimate(values.mean(), np.percentile(means, 2.5), np.percentile(means, 97.5), n)


def crossed_bootstrap_mean(values: np.ndarray, *, seed: int = 0, n_boot: int = BOOTSTRAP,
                           alpha: float = 0.05) -> dict[str, Any]:
    """The mean over images of each image's mean over draws, for ``values`` (images, draws) where
    every draw is shared by all images (one re-initialisation of the weights explains every
    image), with a percentile interval that resamples images and draws independently, both with
    replacement (the bootstrap of a crossed design: McCullagh 2000, Owen 2007). Resampling the
    images alone would leave out the draw-to-draw variance; NaN entries are left out of their
    image's mean, and images with none finite out of the figure (``n`` counts the rest). The
    interval's level is 1 - ``alpha`` (a simultaneous one: alpha over the number compared)."""
    values = np.asarray(values, np.float64)
    values = values[:, None] if values.ndim == 1 else values
    values = values[np.isfinite(values).any(axis=1)]
    n, draws = values.shape
    if n == 0:
        return estimate(None, None, None, 0)
    value = float(np.mean(np.nanmean(values, axis=1)))
    if n * draws == 1:
        return estimate(value, None, None, 1)
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot)
    step = max(1, 2_000_000 // (n * draws))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample whose draws are all NaN for an image
        for start in range(0, n_boot, step):
            size = min(step, n_boot - start)
            rows = rng.integers(0, n, size=(size, n))
            cols = rng.integers(0, draws, size=(size, draws))
            sample = values[rows[:, :, None], cols[:, None, :]]
            replicates[start:start + size] = np.nanmean(np.nanmean(sample, axis=2), axis=1)
    lo, hi = np.nanpercentile(replicates, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return estimate(value, lo, hi, n)


def bias_corrected(value: float, replicates: np.ndarray, n: int,
                   bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict[str, Any]:
    """A bootstrap-bias-corrected estimate with its percentile interval shifted by the same bias,
    and the uncorrected ``plugin`` value beside them.

    For statistics of averaged maps (the r of a template with a lesion-frequency map) the plug-in
    value is biased: a frequency map from n images is noisier than the class's, so r is pulled
    towards 0, and the resampled maps, noisier still, sit further below it (the bootstrap's
    estimate of the bias, mean(replicates) - plugin). The corrected estimate is
    2 * plugin - mean(replicates); the interval is the replicates' 2.5 and 97.5 percentiles moved
    by the same 2 * (plugin - mean(replicates)), so it is centred where the estimate is (both
    clipped to ``bounds``)."""
    reps = np.asarray(replicates, np.float64)
    reps = reps[np.isfinite(reps)]
    if value is None or not np.isfinite(value) or len(reps) == 0:
        return {**estimate(value, None, None, n), "plugin": _num(value)}
    shift = 2.0 * (value - reps.mean())
    lo, hi = np.clip(np.percentile(reps, [2.5, 97.5]) + shift, *bounds)
    return {**estimate(float(np.clip(value + shift / 2.0, *bounds)), lo, hi, n), "plugin": _num(value)}


def bootstrap_ratio(numerator: np.ndarray, denominator: np.ndarray, *, seed: int = 0,
                    n_boot: int = BOOTSTRAP) -> dict[str, Any]:
    """mean(numerator) / mean(denominator) over the same images (a lift), bootstrapped paired."""
    num, den = _paired(numerator, denominator)
    n = len(num)
    if n == 0 or den.mean() <= 0:
        return estimate(None, None, None, n)
    if n == 1:
        return estimate(num[0] / den[0], None, None, 1)
    means = _resampled_means(np.stack([num, den]), n_boot, seed)
    ratios = means[0] / np.where(means[1] > 0, means[1], np.nan)
    return estimate(num.mean() / den.mean(), np.nanpercentile(ratios, 2.5), np.nanpercentile(ratios, 97.5), n)


def paired_difference(a: np.ndarray, b: np.ndarray, *, seed: int = 0,
                      n_boot: int = BOOTSTRAP) -> dict[str, Any]:
    """mean(a - b) over the images where both are finite, with a paired bootstrap interval."""
    a, b = _paired(a, b)
    return bootstrap_mean(a - b, seed=seed, n_boot=n_boot)


def paired_exceedance_p(a: np.ndarray, b: np.ndarray, margin: float = 0.0, *, seed: int = 0,
                        n_boot: int = BOOTSTRAP) -> float:
    """One-sided bootstrap p of "mean(a - b) exceeds ``margin``" over the images where both are
    finite: the share of resampled mean differences at or below the margin, (k + 1) / (B + 1) so
    that it is never 0 (Davison and Hinkley 1997). Small p: the difference is larger than the
    margin; Holm-adjust it (:func:`xaicxr.analysis.stats.holm`) when several settings compete."""
    a, b = _paired(a, b)
    if len(a) < 2:
        return 1.0
    means = _resampled_means((a - b)[None], n_boot, seed)[0]
    return float((np.sum(means <= margin) + 1) / (n_boot + 1))


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def _resampled_means(rows: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(k, n_boot) means of each row of ``rows`` (k, n) over the same resamples of columns."""
    rng = np.random.default_rng(seed)
    n = rows.shape[1]
    out = np.empty((rows.shape[0], n_boot))
    step = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - start), n))
        out[:, start:start + len(idx)] = rows[:, idx].mean(axis=2)
    return out


def resampled_aucs(y: np.ndarray, score: np.ndarray, *, n_boot: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """ROC AUCs (ties count half) of ``n_boot`` resamples of the images, in one vectorised pass;
    resamples that hold only one class are left out.

    Per resample, the negatives drawn are counted at each distinct score level; each positive
    drawn then wins against those below its level and ties with those at it (the Mann-Whitney
    statistic), so nothing is sorted again and the cost is linear in the draws."""
    y = np.asarray(y, bool)
    score = np.asarray(score, np.float64)
    n = len(y)
    if n == 0 or n_boot < 1:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    levels = np.unique(score, return_inverse=True)[1].reshape(-1)
    n_levels = int(levels.max()) + 1
    out = []
    step = max(1, 2_000_000 // (n + n_levels))
    for start in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - start), n))
        b = len(idx)
        rows = np.repeat(np.arange(b), n)
        flat = rows * n_levels + levels[idx].reshape(-1)
        positive = y[idx].reshape(-1)
        neg_at = np.bincount(flat[~positive], minlength=b * n_levels).astype(np.float64)
        neg_below = (np.cumsum(neg_at.reshape(b, n_levels), axis=1) - neg_at.reshape(b, n_levels)).reshape(-1)
        wins = np.bincount(rows[positive], weights=neg_below[flat[positive]] + 0.5 * neg_at[flat[positive]],
                           minlength=b)
        n_pos = np.bincount(rows[positive], minlength=b).astype(np.float64)
        pairs = n_pos * (n - n_pos)
        out.append(wins[pairs > 0] / pairs[pairs > 0])
    return np.concatenate(out)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def wholly_above(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether estimate ``a``'s interval lies wholly above ``b``'s (they do not overlap)."""
    lo = (a or {}).get("ci95", [None, None])[0]
    hi = (b or {}).get("ci95", [None, None])[1]
    return lo is not None and hi is not None and lo > hi
