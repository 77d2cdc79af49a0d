"""Maps that know nothing about the lesion, scored exactly like an explainer's maps.

A localisation figure means something only next to what an uninformed map earns on the same
images: lesions lie inside the lungs, so a map that is merely "somewhere in the lungs" already
beats a map spread over the whole image, and a class whose lesions always sit in the same place
is pointed at by its average lesion mask without looking at the image. An explainer's *skill*
is its figure minus the best of these (:func:`skill`), with a paired interval.

- ``uniform``: flat over the image;
- ``lungs``: flat inside the image's own lung mask;
- ``lungs_blurred``: that mask blurred (sigma = 1/24 of the image size, 4 px at 96 px);
- ``class_prior``: the mean lesion mask of the class over the *training* images (a map of where
  this class's lesions usually are);
- ``random``: independent uniform noise per pixel (seeded).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from scipy import ndimage

from .intervals import bootstrap_ratio, estimate, paired_difference
from .localisation import Targets

NAMES = ("uniform", "lungs", "lungs_blurred", "class_prior", "random")
SKILL_FIGURES = ("pointing_game", "pointing_game_tolerance", "lesion_energy", "energy_lift",
                 "energy_lift_lungs", "miou", "iou_50", "iobb_hit_25")
"""Figures where more is better and a baseline is a meaningful floor (lung energy is not: the
``lungs`` baseline has 1 by construction)."""


def baseline_maps(name: str, lung: np.ndarray | None, prior: np.ndarray | None, shape: tuple[int, int],
                  n: int, *, seed: int = 0) -> np.ndarray | None:
    """(n, H, W) maps of baseline ``name`` (or one (H, W) map for all); None when the masks it
    needs are missing."""
    if name == "uniform":
        return np.ones(shape, np.float32)
    if name == "random":
        return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)
    if name == "class_prior":
        return None if prior is None or not np.any(prior) else np.asarray(prior, np.float32)
    if lung is None:
        return None
    lung = np.asarray(lung, np.float32)
    if name == "lungs":
        return lung
    if name == "lungs_blurred":
        sigma = max(shape) / 24.0
        return np.stack([ndimage.gaussian_filter(m, sigma) for m in lung]).astype(np.float32)
    raise ValueError(f"unknown baseline {name!r}; baselines: {', '.join(NAMES)}")


def baseline_scores(targets: Targets, prior: np.ndarray | None, shape: tuple[int, int], *,
                    seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per-image scores of every baseline that the masks allow, on ``targets``' images."""
    out = {}
    for name in NAMES:
        maps = baseline_maps(name, targets.lung, prior, shape, len(targets), seed=seed)
        if maps is not None:
            out[name] = targets.scores(maps)
    return out


def skill(figures: dict[str, Any], scores: dict[str, np.ndarray],
          baselines: dict[str, dict[str, Any]], baseline_scores: dict[str, dict[str, np.ndarray]],
          targets: Targets, *, seed: int = 0) -> dict[str, Any]:
    """For each figure: the best baseline on these images, and the explainer's figure minus it
    with a paired bootstrap interval (positive and excluding 0: better than knowing nothing)."""
    out = {}
    score_key = {"pointing_game": "pointing", "pointing_game_tolerance": "pointing_tolerance",
                 "lesion_energy": "lesion_energy", "miou": "miou"}
    for figure in SKILL_FIGURES:
        if figure not in figures:
            continue
        candidates = {b: f[figure]["value"] for b, f in baselines.items()
                      if figure in f and f[figure]["value"] is not None}
        if not candidates:
            continue
        best = max(candidates, key=candidates.get)
        if figure in score_key or figure.startswith("iou_"):
            key = score_key.get(figure, figure)
            diff = paired_difference(scores[key], baseline_scores[best][key], seed=seed)
        elif figure.startswith("iobb_hit_"):
            diff = paired_difference(_hits(scores["iobb"], figure), _hits(baseline_scores[best]["iobb"], figure),
                                     seed=seed)
        else:
            denominator = targets.lesion_area if figure == "energy_lift" else targets.lesion_lung_share
            diff = _lift_difference(scores["lesion_energy"], baseline_scores[best]["lesion_energy"],
                                    denominator, seed=seed)
        out[figure] = {"baseline": best, **diff}
    return out


def _hits(covered: np.ndarray, figure: str) -> np.ndarray:
    """Per-image IoBB hits (NaN without a lesion) of ``iobb_hit_<T in %>``."""
    threshold = int(figure.rsplit("_", 1)[1]) / 100
    return np.where(np.isfinite(covered), covered >= threshold, np.nan)


def _lift_difference(energy: np.ndarray, baseline_energy: np.ndarray, area: np.ndarray, *,
                     seed: int) -> dict[str, Any]:
    """lift(explainer) - lift(baseline) = (mean(e) - mean(b)) / mean(area) over the same images:
    one ratio of paired means, bootstrapped with one resample for all three."""
    keep = np.isfinite(energy) & np.isfinite(baseline_energy) & np.isfinite(area)
    if keep.sum() < 2:
        return estimate(None, None, None, int(keep.sum()))
    e, b, a = energy[keep], baseline_energy[keep], area[keep]
    ratio = bootstrap_ratio(e - b, a, seed=seed)
    return estimate((e.mean() - b.mean()) / a.mean(), ratio["ci95"][0], ratio["ci95"][1], int(keep.sum()))


def class_priors(blocks: Iterable[tuple[np.ndarray | None, np.ndarray]], n_classes: int) -> dict[int, np.ndarray]:
    """The mean lesion mask of each class over images that have a lesion, from ``(lesion masks
    (n, H, W) or None, labels (n,))`` blocks of training images (memory: one sum per class)."""
    sums: dict[int, np.ndarray] = {}
    counts = np.zeros(n_classes, int)
    for lesion, labels in blocks:
        if lesion is None:
            continue
        has = lesion.reshape(len(lesion), -1).any(axis=1)
        for k in range(n_classes):
            pick = (np.asarray(labels) == k) & has
            if pick.any():
                sums[k] = sums.get(k, 0) + lesion[pick].sum(axis=0, dtype=np.float64)
                counts[k] += int(pick.sum())
    return {k: (total / counts[k]).astype(np.float32) for k, total in sums.items()}
