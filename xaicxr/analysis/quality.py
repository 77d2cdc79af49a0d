"""Template quality: do a class's heatmaps agree with each other, and do they point at the disease?

Every figure streams over batches of heatmaps (N, H, W) with memory independent of N:

- ``consistency``: mean pairwise Pearson r of a class's heatmaps. With z_i the centred,
  unit-norm flattened maps, the mean over pairs i != j of <z_i, z_j> equals
  (||sum z_i||^2 - n) / (n (n - 1)), so one running sum suffices.
- ``split_half``: Pearson r between the mean templates of two random halves of the class,
  for ``n_splits`` random partitions kept side by side; reported as mean and 95 % interval.
- ``pointing_game``: share of heatmaps whose maximum lies inside the lesion mask.
- ``lesion_energy``: mean share of heatmap mass inside the lesion; ``lesion_area`` the mean
  share of the image the lesion covers; ``energy_lift`` their ratio (1 = chance).
- ``miou``: mean IoU between the Otsu-thresholded heatmap and the lesion (CheXlocalize).
- ``lung_energy``: mean share of heatmap mass inside the lung fields; low values flag
  shortcut learning (evidence outside the lungs: borders, text marks, devices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.filters import threshold_otsu

from .stats import EPS, finite_mean, pearson


def _unit_rows(maps: np.ndarray) -> np.ndarray:
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norms, out=np.zeros_like(flat), where=norms > EPS)


def energy_share(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per map: share of its mass inside the mask (NaN for an all-zero map)."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    inside = (flat * masks.reshape(len(masks), -1)).sum(axis=1)
    total = flat.sum(axis=1)
    return np.divide(inside, total, out=np.full(len(maps), np.nan), where=total > EPS)


def points_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per map: whether its maximum lies in the mask; a flat map points nowhere (a miss)."""
    flat = maps.reshape(len(maps), -1)
    peak = flat.argmax(axis=1)
    hit = masks.reshape(len(masks), -1)[np.arange(len(maps)), peak]
    return hit & (np.ptp(flat, axis=1) > 0)


def otsu_iou(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    out = np.zeros(len(maps))
    for i, (m, mask) in enumerate(zip(maps, masks)):
        if m.max() - m.min() < EPS:
            continue
        region = m > threshold_otsu(m.astype(np.float64))
        union = np.logical_or(region, mask).sum()
        out[i] = np.logical_and(region, mask).sum() / union if union else 0.0
    return out


@dataclass
class ClassQuality:
    """Running figures for one class; ``update`` with batches, ``result`` at the end."""

    shape: tuple[int, int]
    n_splits: int = 20
    seed: int = 0
    n: int = 0
    unit_sum: np.ndarray = field(init=False)
    half_sums: np.ndarray = field(init=False)
    half_counts: np.ndarray = field(init=False)
    pointing: list[float] = field(default_factory=list)
    lesion_energy: list[float] = field(default_factory=list)
    lesion_area: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    lung_energy: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        size = int(np.prod(self.shape))
        self.unit_sum = np.zeros(size)
        self.half_sums = np.zeros((self.n_splits, 2, size))
        self.half_counts = np.zeros((self.n_splits, 2))
        self.rng = np.random.default_rng(self.seed)

    def update(self, maps: np.ndarray, lesion: np.ndarray | None = None,
               lung: np.ndarray | None = None) -> None:
        maps = np.asarray(maps, np.float32)
        if len(maps) == 0:
            return
        self.n += len(maps)
        self.unit_sum += _unit_rows(maps).sum(axis=0)
        flat = maps.reshape(len(maps), -1).astype(np.float64)
        sides = self.rng.integers(0, 2, size=(self.n_splits, len(maps)))
        for s in range(self.n_splits):
            for h in (0, 1):
                pick = sides[s] == h
                self.half_sums[s, h] += flat[pick].sum(axis=0)
                self.half_counts[s, h] += pick.sum()
        if lesion is not None:
            has = lesion.reshape(len(lesion), -1).any(axis=1)
            if has.any():
                m, l = maps[has], lesion[has]
                self.pointing.extend(points_inside(m, l).astype(float))
                self.lesion_energy.extend(energy_share(m, l))
                self.lesion_area.extend(l.reshape(len(l), -1).mean(axis=1))
                self.iou.extend(otsu_iou(m, l))
        if lung is not None:
            self.lung_energy.extend(energy_share(maps, lung))

    def result(self) -> dict:
        out: dict = {"n": self.n}
        n = self.n
        out["consistency"] = (float((self.unit_sum @ self.unit_sum - n) / (n * (n - 1)))
                              if n > 1 else None)
        rs = [pearson(self.half_sums[s, 0] / c[0], self.half_sums[s, 1] / c[1])
              for s, c in enumerate(self.half_counts) if c.min() > 0]
        rs = [r for r in rs if np.isfinite(r)]
        out["split_half"] = float(np.mean(rs)) if rs else None
        out["split_half_ci95"] = ([float(np.percentile(rs, 2.5)), float(np.percentile(rs, 97.5))]
                                  if rs else None)
        if self.pointing:
            energy = finite_mean(self.lesion_energy)
            area = float(np.mean(self.lesion_area))
            out.update({"pointing_game": float(np.mean(self.pointing)), "lesion_energy": energy,
                        "lesion_area": area,
                        "energy_lift": energy / area if energy is not None and area > 0 else None,
                        "miou": float(np.mean(self.iou)), "n_lesion": len(self.pointing)})
        if self.lung_energy:
            out["lung_energy"] = finite_mean(self.lung_energy)
        return out


def distinctiveness(templates: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Pearson r between every pair of class templates (lower = more class-specific)."""
    names = list(templates)
    return {a: {b: pearson(templates[a], templates[b]) for b in names} for a in names}
