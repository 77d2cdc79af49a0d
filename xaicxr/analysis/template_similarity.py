"""How alike are two templates of one class, and how alike is a run's template to itself?

The follow-up to the seed paper (robust heatmap templates, 2021) asks for templates that stay
put when the data change. Two templates are compared as maps:

- ``pearson``: Pearson r over pixels (blind to scale and offset);
- ``ssim``: SSIM (Wang et al. 2004, ``skimage.metrics.structural_similarity``) with
  ``data_range`` 1, the range heatmaps are stored in, so a template that keeps its shape but
  loses half its height scores below 1.

Templates of different sizes are resampled to the smaller size (:func:`resample`).

A number alone does not say whether two runs disagree more than chance allows, so each run
gets a reference band (:func:`split_half_band`): its heatmaps of a class are split into two
random halves, each half aggregated by the same aggregator (a median template's halves are
median templates), and the two half templates compared the same way, over several random
partitions. The mean over partitions is the figure, and the 2.5-97.5 percentiles over the
partitions are reported as ``partition_spread``: the spread over random splits of the same
images, not a confidence interval. A half holds n/2 images, so half templates agree less than
two templates of n images would; ``pearson_full_size`` applies the Spearman-Brown step
2r / (1 + r) to each partition's r (the agreement expected of two independent n-image means);
SSIM has no such correction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..io.heatmap_store import HeatmapStore
from ..plugins.aggregator import Aggregator
from .aggregation import build_templates
from .reliability import spearman_brown
from .stats import pearson

SSIM_DATA_RANGE = 1.0
SSIM_WINDOW = 7
MIN_IMAGES = 4
"""A class needs at least this many heatmaps for two halves of two maps each."""


def common_shape(shapes: list[tuple[int, ...]]) -> tuple[int, int]:
    """The smaller size, per axis, of (H, W) template shapes."""
    return int(min(s[0] for s in shapes)), int(min(s[1] for s in shapes))


def resample(template: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``template`` at ``shape`` (bilinear, anti-aliased when shrinking); unchanged if it fits."""
    template = np.asarray(template, np.float64)
    if template.shape == tuple(shape):
        return template
    from skimage.transform import resize

    return resize(template, shape, order=1, anti_aliasing=True, preserve_range=True)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps of one shape, data range 1, a 7 x 7 window (smaller on tiny maps)."""
    from skimage.metrics import structural_similarity

    side = min(a.shape)
    window = min(SSIM_WINDOW, side if side % 2 else side - 1)
    if window < 3:
        return float("nan")
    return float(structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                       data_range=SSIM_DATA_RANGE, win_size=window))


def similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Pearson r and SSIM of two templates, the larger resampled to the smaller's size."""
    shape = common_shape([np.shape(a), np.shape(b)])
    a, b = resample(a, shape), resample(b, shape)
    return {"pearson": pearson(a, b), "ssim": ssim(a, b)}


def split_half_band(store_path: str | Path, aggregators: Mapping[str, Aggregator], *,
                    by: str, correct_only: bool, shapes: Mapping[str, tuple[int, int]],
                    partitions: int = 10, seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """``{aggregator: {class: band}}`` of one heatmap store: per class, the Pearson r
    (raw and Spearman-Brown stepped up) and SSIM of the templates of two random halves of
    the class's heatmaps, over ``partitions`` random partitions (each class split in half
    separately), compared at ``shapes[aggregator]``. Costs two read passes of the store per
    partition, all aggregators at once; the heatmaps are selected as the templates stage
    selects them (``by``, ``correct_only``)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    with HeatmapStore(store_path) as store:
        classes, labels, predictions = store.classes, store.labels, store.predictions
    group = labels if by == "true" else predictions
    selected = (group >= 0) & (group < len(classes))
    if correct_only:
        selected &= labels == predictions
    members = {cls: np.flatnonzero(selected & (group == k)) for k, cls in enumerate(classes)}
    wanted = [cls for cls in classes if len(members[cls]) >= MIN_IMAGES]
    rng = np.random.default_rng(seed)
    scores: dict[str, dict[str, list[tuple[float, float]]]] = {name: {c: [] for c in classes}
                                                               for name in aggregators}
    for _ in range(partitions if wanted else 0):
        half = np.zeros(len(labels), bool)
        for rows in members.values():
            half[rng.permutation(rows)[:len(rows) // 2]] = True
        sides = [build_templates(store_path, aggregators, by=by, correct_only=correct_only, rows=rows)
                 for rows in (half, selected & ~half)]
        for name, agg in aggregators.items():
            for cls in wanted:
                a, b = (resample(agg.finalize(side[name][cls]), shapes[name]) for side in sides)
                scores[name][cls].append((pearson(a, b), ssim(a, b)))
    return {name: {cls: _band(per_class[cls], len(members[cls])) for cls in classes}
            for name, per_class in scores.items()}


def _band(scores: list[tuple[float, float]], n: int) -> dict[str, Any]:
    if n < MIN_IMAGES:
        return {"n": n, "partitions": 0, "reason": f"fewer than {MIN_IMAGES} heatmaps"}
    r = np.array([s[0] for s in scores])
    return {"n": n, "half_n": [n // 2, n - n // 2], "partitions": len(scores),
            "pearson": _spread(r), "pearson_full_size": _spread(np.array([spearman_brown(v) for v in r])),
            "ssim": _spread(np.array([s[1] for s in scores]))}


def _spread(values: np.ndarray) -> dict[str, Any]:
    """Mean over partitions and the 2.5-97.5 percentiles over partitions (not an interval)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return {"mean": None, "partition_spread": [None, None]}
    return {"mean": float(values.mean()),
            "partition_spread": [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]}
