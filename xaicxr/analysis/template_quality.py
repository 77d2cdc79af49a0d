"""Figures of a template itself, not of the maps it was built from.

The paper's claim is about templates ("the regions the model relies on for each condition"), so
a template is scored as a map in its own right, per aggregator (a mean and a median template of
the same maps are different maps and get different numbers):

- ``lesion_frequency_r``: Pearson r with the class's lesion-frequency map (the share of the
  class's images whose lesion covers each pixel), bootstrap-bias-corrected (the plug-in r of a
  frequency map from n images is pulled towards 0; ``plugin`` keeps it), the interval moved by the
  same bias;
- ``peak_in_lungs``: whether the template's maximum lies in the lungs (of most images);
- ``as_fixed_map``: the template used as the map of every image of its class, scored like an
  explainer (pointing game, energy, lifts): how well "the template" localises each lesion;
- template faithfulness (occluding the template's top region, :mod:`.faithfulness`) is added by
  the quality stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .intervals import bias_corrected, estimate
from .localisation import Targets, class_figures
from .stats import pearson


def template_figures(template: np.ndarray, targets: Targets, *, n: int, seed: int = 0,
                     n_boot: int = 1000) -> dict[str, Any]:
    """Figures of one (H, W) template on its class's images (``targets``)."""
    out: dict[str, Any] = {"n": int(n)}
    template = np.asarray(template, np.float64)
    peak = np.unravel_index(int(np.argmax(template)), template.shape)
    if targets.lung is not None and len(targets):
        out["peak_in_lungs"] = bool(targets.lung[:, peak[0], peak[1]].mean() >= 0.5)
    if targets.lesion is not None and targets.has_lesion.any():
        masks = targets.lesion[targets.has_lesion].astype(np.float64)
        out["lesion_frequency_r"] = _frequency_r(template, masks, seed=seed, n_boot=n_boot)
    out["as_fixed_map"] = class_figures(targets.scores(template), targets, seed=seed)
    return out


def _frequency_r(template: np.ndarray, masks: np.ndarray, *, seed: int, n_boot: int) -> dict[str, Any]:
    value = pearson(template, masks.mean(axis=0))
    if len(masks) < 2:
        return estimate(value, None, None, len(masks))
    rng = np.random.default_rng(seed)
    flat = masks.reshape(len(masks), -1)
    counts = rng.multinomial(len(masks), np.full(len(masks), 1.0 / len(masks)), size=n_boot)
    frequencies = counts @ flat / len(masks)
    return bias_corrected(value, np.array([pearson(template, f) for f in frequencies]), len(masks),
                          bounds=(-1.0, 1.0))


def distinctiveness(templates: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Pearson r between every pair of class templates (lower = more class-specific)."""
    names = list(templates)
    return {a: {b: pearson(templates[a], templates[b]) for b in names} for a in names}
