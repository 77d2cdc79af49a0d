"""Does the model rely on the annotated region? Measured on real films, where no counterfactual
twin can be rendered.

The region an expert marked (a box or a mask) is filled (ROAD's imputation, or blur) and the
class probability's drop is compared, image by image, with the drop when a region of the same
shape and area, placed at random away from the marked one with about the same share of lung
(inside the lungs for a lesion in the lungs), is filled the same way. A model whose evidence is the finding loses more when the finding goes than when the
same amount of lung goes; a model that reads something else (the film's source, text marks,
the heart's size for a lung finding) loses about the same either way. The comparison is paired
per image, and its interval resamples both the images and each image's random placements.

Filling a region is not removing a lesion (the fill may leave traces, and a box holds more than
the lesion), so this is weaker evidence than the phantoms' twins; it is the ground-truth check
available on real films, and it is read before any localisation figure.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .intervals import BOOTSTRAP, bootstrap_mean, estimate

LUNG_SHARE_TOLERANCE = 0.2
"""A random region counts when its share of lung is within this of the annotated region's own
(a lesion in the lungs is compared with lung, a heart box with what else lies beside the lungs:
filling bright mediastinum and filling lung are not the same change)..."""
MAX_OVERLAP = 0.25
"""...and at most this share of it overlaps the annotated region."""
MIN_IMAGES = 10
"""Fewer images than this with a placement: reliance is not decided (a percentile interval of a
handful of images is its extremes)."""
TRIES = 400


def random_regions(region: np.ndarray, lung: np.ndarray, count: int, rng: np.random.Generator, *,
                   tolerance: float = LUNG_SHARE_TOLERANCE, max_overlap: float = MAX_OVERLAP,
                   tries: int = TRIES) -> np.ndarray:
    """(k, H, W) bool, k <= ``count``: ``region`` shifted to random places whose share of lung
    is within ``tolerance`` of the region's own and that lie mostly off the region itself (same
    shape, same area; fewer than ``count`` when the image leaves no such place)."""
    ys, xs = np.nonzero(region)
    height, width = region.shape
    area = len(ys)
    found: list[np.ndarray] = []
    if not area or not lung.any():
        return np.zeros((0, height, width), bool)
    own_share = lung[ys, xs].sum() / area
    dy = rng.integers(-ys.min(), height - ys.max(), size=tries)
    dx = rng.integers(-xs.min(), width - xs.max(), size=tries)
    for oy, ox in zip(dy, dx):
        ty, tx = ys + oy, xs + ox
        if abs(lung[ty, tx].sum() / area - own_share) > tolerance or region[ty, tx].sum() > max_overlap * area:
            continue
        shifted = np.zeros_like(region, dtype=bool)
        shifted[ty, tx] = True
        found.append(shifted)
        if len(found) == count:
            break
    return np.stack(found) if found else np.zeros((0, height, width), bool)


def paired_two_level(region_drops: np.ndarray, random_drops: np.ndarray, *, seed: int = 0,
                     n_boot: int = BOOTSTRAP) -> dict[str, Any]:
    """Mean over images of (region drop - mean random drop) with a percentile interval from a
    two-level bootstrap: images with replacement, then each image's placements with replacement
    (``random_drops`` (N, R), NaN where an image had fewer placements)."""
    n = len(region_drops)
    per_image = region_drops - np.nanmean(random_drops, axis=1)
    if n == 0:
        return estimate(None, None, None, 0)
    if n == 1:
        return estimate(per_image[0], None, None, 1)
    rng = np.random.default_rng(seed)
    counts = np.isfinite(random_drops).sum(axis=1)
    order = np.argsort(~np.isfinite(random_drops), axis=1, kind="stable")
    packed = np.take_along_axis(random_drops, order, axis=1)  # each row's placements first
    replicates = np.empty(n_boot)
    for b in range(n_boot):
        images = rng.integers(0, n, size=n)
        draws = (rng.random((n, random_drops.shape[1])) * counts[images, None]).astype(int)
        random_mean = packed[images[:, None], draws].mean(axis=1)
        replicates[b] = np.mean(region_drops[images] - random_mean)
    return estimate(per_image.mean(), np.percentile(replicates, 2.5), np.percentile(replicates, 97.5), n)


def filled_in_process(probability: Callable[[np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    """``filled(images, removed, fill, seed)`` -> (N, C): the images filled and scored here,
    the noise of row i drawn from ``(seed, i, 0)`` as :meth:`Fill.fill` does."""
    return lambda images, removed, fill, seed: probability(fill.fill(images, removed, seed=seed))


def region_reliance(probability: Callable[[np.ndarray], np.ndarray], images: np.ndarray, region: np.ndarray,
                    lung: np.ndarray, k: int, fills: dict[str, Any], *, regions: int, margin: float,
                    seed: int = 0, filled: Callable[..., np.ndarray] | None = None,
                    min_images: int = MIN_IMAGES) -> dict[str, Any]:
    """One class's figures on its images (N, H, W) with their annotated ``region`` masks and
    ``lung`` fields: per fill, the drop of the class-``k`` probability when the region is filled,
    when same-area random lung regions are, and their paired difference; ``relies_on_region``
    when the difference's lower 95 % bound exceeds ``margin`` for every fill.

    ``probability(images)`` -> (N, C); ``fills`` ``{name: Fill}``; ``filled(images, removed,
    fill, seed)`` -> (N, C) fills and scores (:func:`filled_in_process` by default; the metric
    passes one that does both on the run's executor)."""
    filled = filled or filled_in_process(probability)
    rng = np.random.default_rng(seed)
    placed = [random_regions(r, l, regions, rng) for r, l in zip(region, lung)]
    usable = np.array([len(p) > 0 for p in placed])
    out: dict[str, Any] = {"n": int(usable.sum()), "n_without_placement": int((~usable).sum()),
                           "random_regions": int(regions), "margin": margin,
                           "region_area": bootstrap_mean(region.reshape(len(region), -1).mean(axis=1), seed=seed)}
    if not usable.any():
        out.update(fills={}, relies_on_region=None,
                   note="no image leaves room for a region of the same shape inside its lungs")
        return out
    images, region = images[usable], region[usable]
    placed = [p for p in placed if len(p)]
    original = probability(images)[:, k]
    out["p_original"] = bootstrap_mean(original, seed=seed)
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(placed)])
    slot = np.concatenate([np.arange(len(p)) for p in placed])
    out["fills"] = {}
    for name, fill in fills.items():
        on_region = filled(images, region, fill, seed)[:, k]
        shifted = filled(images[owner], np.concatenate(placed), fill, seed + 1)[:, k]
        random_drops = np.full((len(images), regions), np.nan)
        random_drops[owner, slot] = original[owner] - shifted
        region_drops = original - on_region
        out["fills"][name] = {
            "drop_region": bootstrap_mean(region_drops, seed=seed),
            "drop_random": bootstrap_mean(np.nanmean(random_drops, axis=1), seed=seed),
            "difference": paired_two_level(region_drops, random_drops, seed=seed)}
    lows = [f["difference"]["ci95"][0] for f in out["fills"].values()]
    out["relies_on_region"] = bool(all(lo is not None and lo > margin for lo in lows))
    if out["n"] < min_images:
        out["relies_on_region"] = None
        out["note"] = (f"{out['n']} image(s) with room for a matched random region, fewer than {min_images}: "
                       "not decided")
    return out
