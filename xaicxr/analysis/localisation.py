"""Does a map point at the lesion? Per-image localisation scores against a ground-truth mask.

Every function takes maps (N, H, W) and masks (N, H, W) bool and returns one value per image;
:func:`class_figures` turns them into the figures of one class with 95 % intervals.

- **Pointing game** (Zhang et al. 2018, "Top-down neural attention by excitation backprop"): a
  hit when the map's maximum lies inside the lesion, or within ``tolerance`` pixels of it (they
  use 15 px at 224 px, :func:`default_tolerance`). When several pixels share the maximum (a flat
  map, a map constant inside the lungs) the hit is the share of those pixels that hit, i.e. the
  expected hit of a random choice among them, so an uninformed flat map scores chance and not 0.
- **Lesion energy**: the share of the map's mass inside the lesion. Divided by the lesion's share
  of the image it is the **energy lift** (1 = a map spread evenly over the image); divided by
  the lesion's share of the lungs it is the **lung lift** (1 = a map spread evenly over the
  lungs, which is what a model that merely "looks at the lungs" earns: lesions lie in the lungs).
- **mIoU**: IoU of the Otsu-thresholded map with the lesion (as CheXlocalize thresholds maps).
- **IoU at thresholds** (CheXlocalize's segmentation of a map by a fixed threshold): the map
  min-max normalised, then IoU of the pixels at or above ``t`` with the lesion, ``t`` in
  :data:`IOU_THRESHOLDS`.
- **IoBB hit rate** (in the style of Wang et al. CVPR 2017, "ChestX-ray8", who box every
  region of a cut map): the min-max normalised map cut at half, the bounding box of its connected region holding the maximum, and the share of that
  box covered by the ground truth (intersection over the detected box); a hit when it reaches
  ``T`` in :data:`IOBB_THRESHOLDS`. It forgives a box that is too small, so it is read beside
  the IoU.
- **Lung energy**: the share of the map's mass inside the lung fields; low values flag evidence
  outside the lungs (borders, text marks, devices).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from .intervals import bootstrap_mean, bootstrap_ratio, proportion
from .stats import EPS

IOU_THRESHOLDS = (0.25, 0.5, 0.75)
"""Shares of a map's maximum at which it is cut into a region for the IoU."""
IOBB_THRESHOLDS = (0.1, 0.25, 0.5)
"""Wang et al.'s T(IoBB) thresholds (they report 0.1 to 0.7)."""
BOX_CUT = 0.5
"""The share of the maximum at which a map is cut before its box is taken (IoBB)."""

TOLERANCE_AT_224 = 15.0
"""Zhang et al. (2018) count a hit within 15 px of the lesion in 224 px images."""


def default_tolerance(size: int, at_224: float = TOLERANCE_AT_224) -> float:
    """The pointing-game tolerance in pixels for images of ``size`` px."""
    return at_224 * size / 224.0


def near(masks: np.ndarray, tolerance: float) -> np.ndarray:
    """Pixels within ``tolerance`` (Euclidean, in pixels) of each mask; the mask itself at 0."""
    masks = np.asarray(masks, bool)
    if tolerance <= 0:
        return masks
    out = np.zeros_like(masks)
    for i, mask in enumerate(masks):
        if mask.any():
            out[i] = ndimage.distance_transform_edt(~mask) <= tolerance
    return out


def pointing_hits(maps: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per image: the share of the map's maximal pixels that lie in ``targets`` (a mask, or
    :func:`near` of one); NaN where the target is empty (no lesion to point at)."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    hit_region = np.asarray(targets, bool).reshape(len(maps), -1)
    peak = flat >= flat.max(axis=1, keepdims=True)
    hits = (peak & hit_region).sum(axis=1) / peak.sum(axis=1)
    return np.where(hit_region.any(axis=1), hits, np.nan)


def energy_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per map: share of its mass inside the mask (NaN for an all-zero map)."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    inside = (flat * np.asarray(masks).reshape(len(masks), -1)).sum(axis=1)
    total = flat.sum(axis=1)
    return np.divide(inside, total, out=np.full(len(maps), np.nan), where=total > EPS)


def otsu_iou(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per map: IoU of its Otsu-thresholded region with the mask (0 for a flat map)."""
    out = np.zeros(len(maps))
    for i, (m, mask) in enumerate(zip(maps, masks)):
        if m.max() - m.min() < EPS:
            continue
        region = m > threshold_otsu(np.asarray(m, np.float64))
        union = np.logical_or(region, mask).sum()
        out[i] = np.logical_and(region, mask).sum() / union if union else 0.0
    return out


def min_max(maps: np.ndarray) -> np.ndarray:
    """Each map rescaled to [0, 1] by its own minimum and maximum (CheXlocalize normalises so
    before cutting, Wang et al. rescale to [0, 255]); a flat map becomes all zeros."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = high - low
    out = np.divide(flat - low, span, out=np.zeros_like(flat), where=span > EPS)
    return out.reshape(np.shape(maps))


def iou_at(maps: np.ndarray, masks: np.ndarray, threshold: float) -> np.ndarray:
    """Per map: IoU with the mask of the pixels at or above ``threshold`` of the min-max
    normalised map (0 for a flat map)."""
    flat = min_max(maps).reshape(len(maps), -1)
    truth = np.asarray(masks, bool).reshape(len(maps), -1)
    peak = flat.max(axis=1, keepdims=True)
    region = (flat >= threshold * peak) & (peak > EPS)
    union = (region | truth).sum(axis=1)
    return np.divide((region & truth).sum(axis=1), union, out=np.zeros(len(maps)), where=union > 0)


def iobb(maps: np.ndarray, masks: np.ndarray, cut: float = BOX_CUT) -> np.ndarray:
    """Per map: the share of its detected box inside the mask (Wang et al.'s intersection over
    the detected bounding box, in the style of their box from a cut map); the box bounds the
    connected region, at or above ``cut`` of the min-max normalised map, that holds the maximum.
    0 for a flat map."""
    out = np.zeros(len(maps))
    for i, (m, mask) in enumerate(zip(min_max(maps), np.asarray(masks, bool))):
        top = m.max()
        if top <= EPS:
            continue
        labelled, _ = ndimage.label(m >= cut * top)
        peak = labelled[np.unravel_index(np.argmax(m), m.shape)]
        rows, cols = np.nonzero(labelled == peak)
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        out[i] = box.mean()
    return out


class Targets:
    """The masks of a set of images, with everything the scores need derived once (the
    tolerance regions cost a distance transform per image) and shared by every map scored on
    them: an explainer's maps, each uninformed baseline, a template."""

    def __init__(self, lesion: np.ndarray | None, lung: np.ndarray | None, tolerance: float,
                 near_lesion: np.ndarray | None = None) -> None:
        self.lesion = None if lesion is None else np.asarray(lesion, bool)
        self.lung = None if lung is None else np.asarray(lung, bool)
        self.tolerance = float(tolerance)
        if self.lesion is not None and near_lesion is None:
            near_lesion = near(self.lesion, self.tolerance)
        self.near_lesion = near_lesion
        if self.lesion is not None:
            has = self.lesion.reshape(len(self.lesion), -1).any(axis=1)
            self.has_lesion = has
            self.lesion_area = np.where(has, self.lesion.reshape(len(has), -1).mean(axis=1), np.nan)
            if self.lung is not None:
                lung_area = self.lung.reshape(len(has), -1).sum(axis=1)
                in_lung = (self.lesion & self.lung).reshape(len(has), -1).sum(axis=1)
                self.lesion_lung_share = np.where(has & (lung_area > 0), in_lung / np.maximum(lung_area, 1), np.nan)
            else:
                self.lesion_lung_share = None

    def __len__(self) -> int:
        ref = self.lesion if self.lesion is not None else self.lung
        return 0 if ref is None else len(ref)

    def scores(self, maps: np.ndarray, degenerate: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per-image scores of ``maps`` (N, H, W), or of one (H, W) map used on every image.

        ``degenerate`` flags explainer maps that came back all zero (no signal): they count as
        a miss everywhere (pointing 0, energy 0, IoU 0). Only an uninformed map that is flat on
        purpose earns the chance share of the pointing game."""
        maps = np.asarray(maps, np.float32)
        if maps.ndim == 2:
            maps = np.broadcast_to(maps, (len(self), *maps.shape))
        miss = np.zeros(len(maps), bool) if degenerate is None else np.asarray(degenerate, bool)
        out: dict[str, np.ndarray] = {}
        if self.lesion is not None:
            for key, region in (("pointing", self.lesion), ("pointing_tolerance", self.near_lesion)):
                out[key] = np.where(miss & self.has_lesion, 0.0, pointing_hits(maps, region))
            energy = np.where(miss, 0.0, energy_share(maps, self.lesion))
            out["lesion_energy"] = np.where(self.has_lesion, energy, np.nan)
            out["miou"] = np.where(self.has_lesion, otsu_iou(maps, self.lesion), np.nan)
            for t in IOU_THRESHOLDS:
                iou = np.where(miss, 0.0, iou_at(maps, self.lesion, t))
                out[f"iou_{round(100 * t)}"] = np.where(self.has_lesion, iou, np.nan)
            covered = np.where(miss, 0.0, iobb(maps, self.lesion))
            out["iobb"] = np.where(self.has_lesion, covered, np.nan)
        if self.lung is not None:
            has_lung = self.lung.reshape(len(self.lung), -1).any(axis=1)
            energy = np.where(miss, 0.0, energy_share(maps, self.lung))
            out["lung_energy"] = np.where(has_lung, energy, np.nan)
        return out

    def take(self, rows: np.ndarray) -> "Targets":
        """The targets of a subset of the images."""
        return Targets(None if self.lesion is None else self.lesion[rows],
                       None if self.lung is None else self.lung[rows], self.tolerance,
                       None if self.near_lesion is None else self.near_lesion[rows])


def class_figures(scores: dict[str, np.ndarray], targets: Targets, *, seed: int = 0) -> dict[str, Any]:
    """The figures of one class from its per-image scores, each with its 95 % interval:
    Wilson for the pointing game, bootstrap for the rest (lifts are ratios of means)."""
    out: dict[str, Any] = {}
    if "pointing" in scores and np.isfinite(scores["pointing"]).any():
        out["pointing_game"] = proportion(scores["pointing"])
        out["pointing_game_tolerance"] = proportion(scores["pointing_tolerance"])
        out["tolerance_px"] = round(targets.tolerance, 2)
        out["lesion_energy"] = bootstrap_mean(scores["lesion_energy"], seed=seed)
        out["lesion_area"] = bootstrap_mean(targets.lesion_area, seed=seed)
        out["energy_lift"] = bootstrap_ratio(scores["lesion_energy"], targets.lesion_area, seed=seed)
        if targets.lesion_lung_share is not None:
            out["energy_lift_lungs"] = bootstrap_ratio(scores["lesion_energy"], targets.lesion_lung_share,
                                                       seed=seed)
        out["miou"] = bootstrap_mean(scores["miou"], seed=seed)
        for t in IOU_THRESHOLDS:
            if f"iou_{round(100 * t)}" in scores:
                out[f"iou_{round(100 * t)}"] = bootstrap_mean(scores[f"iou_{round(100 * t)}"], seed=seed)
        if "iobb" in scores:
            for t in IOBB_THRESHOLDS:
                covered = scores["iobb"]
                out[f"iobb_hit_{round(100 * t)}"] = proportion(np.where(np.isfinite(covered), covered >= t, np.nan))
    if "lung_energy" in scores:
        out["lung_energy"] = bootstrap_mean(scores["lung_energy"], seed=seed)
    return out
