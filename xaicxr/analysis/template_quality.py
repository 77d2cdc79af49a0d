"""Figures of a template itself, not of the maps it was built from.

The paper's claim is about templates ("the regions the model relies on for each condition"), so
a template is scored as a map in its own right, per aggregator (a mean and a median template of
the same maps are different maps and get different numbers):

- ``lesion_frequency_r``: Pearson r with the class's lesion-frequency map (the share of the
  class's images whose lesion covers each pixel), bootstrap-bias-corrected (the plug-in r of a
  frequency map from n images is pulled towards 0; ``plugin`` keeps it), the interval moved by the
  same bias. Both maps are estimates from images, so the bootstrap resamples images for both
  (:func:`frequency_r`): each replicate rebuilds the template with its aggregator and the
  frequency map from the masks, of the same draw where they are the same images;
- ``peak_in_lungs``: whether the template's maximum lies in the lungs (of most images);
- ``as_fixed_map``: the template used as the map of every image of its class, scored like an
  explainer (pointing game, energy, lifts): how well "the template" localises each lesion;
- template faithfulness (occluding the template's top region, :mod:`.faithfulness`) is added by
  the quality stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..plugins.aggregator import Aggregator
from .intervals import bias_corrected, estimate
from .localisation import Targets, class_figures
from .stats import pearson


TEMPLATE_BOOT = 1000
"""Bootstrap replicates of ``lesion_frequency_r`` for an aggregator with a small state."""

SKETCH_BOOT = 200
"""Replicates for an aggregator whose state holds more than :data:`SKETCH_STATE_PER_PIXEL`
values per pixel (the histogram sketches of ``median`` and ``trimmed-mean``: 512 counters per
pixel): each replicate runs its ``init``, ``update`` and ``finalize``, whose cost grows with the
state: on 50 maps of 64 x 64 px, 8-18 ms per replicate for ``median`` and 33 ms for
``trimmed-mean`` against 0.2 ms for ``mean`` (1.6 s against 0.25 s for a class's interval)."""

SKETCH_STATE_PER_PIXEL = 16

RESAMPLED = {"paired": "paired images", "independent": "independent",
             "masks": "lesion masks only (template held fixed)"}
"""What a ``lesion_frequency_r`` interval resampled (its ``resampled`` field): the images of
the template and of the masks together (they are the same images), each set on its own (they
are not), or, where the template's heatmaps were not given, the masks alone: that interval
leaves out the template's own sampling noise and is too narrow."""


def template_figures(template: np.ndarray, targets: Targets, *, n: int, seed: int = 0,
                     n_boot: int = TEMPLATE_BOOT, maps: np.ndarray | None = None,
                     aggregator: Aggregator | None = None, paired: bool = True) -> dict[str, Any]:
    """Figures of one (H, W) template on its class's images (``targets``). ``maps``: the
    heatmaps the template aggregated, with the ``aggregator`` that built it, for the interval of
    ``lesion_frequency_r`` (:func:`frequency_r`); ``paired``: ``maps[i]`` is of the same image as
    ``targets``' row i."""
    out: dict[str, Any] = {"n": int(n)}
    template = np.asarray(template, np.float64)
    peak = np.unravel_index(int(np.argmax(template)), template.shape)
    if targets.lung is not None and len(targets):
        out["peak_in_lungs"] = bool(targets.lung[:, peak[0], peak[1]].mean() >= 0.5)
    if targets.lesion is not None and targets.has_lesion.any():
        out["lesion_frequency_r"] = frequency_r(template, targets.lesion, maps=maps, aggregator=aggregator,
                                                paired=paired, seed=seed, n_boot=n_boot)
    out["as_fixed_map"] = class_figures(targets.scores(template), targets, seed=seed)
    return out


def frequency_r(template: np.ndarray, lesion: np.ndarray, *, maps: np.ndarray | None = None,
                aggregator: Aggregator | None = None, paired: bool = True, seed: int = 0,
                n_boot: int = TEMPLATE_BOOT) -> dict[str, Any]:
    """Pearson r of ``template`` with the frequency map of the lesion masks (N, H, W) of the
    images that have a lesion, bias-corrected, with its bootstrap interval.

    The template is as much an estimate from a sample of images as the frequency map is, so
    each replicate draws images with replacement and rebuilds both: the template from the drawn
    images' ``maps`` with ``aggregator`` (``init``, ``update``, ``finalize``: whatever built
    it), the frequency map from their masks. With ``paired`` (``maps`` and ``lesion`` row for
    row of the same images) one draw serves both, so variation the two share (an image whose
    lesion and heatmap are both off-centre) moves them together; otherwise the template's images
    and the masks' images are drawn independently. Replicates whose draw holds no lesion are
    left out. Without ``maps`` or ``aggregator`` only the masks are resampled (the interval
    leaves out the template's noise; ``resampled`` says so).
    """
    lesion = np.asarray(lesion, bool)
    flat = lesion.reshape(len(lesion), -1).astype(np.float64)
    has_lesion = flat.any(axis=1)
    n_lesion = int(has_lesion.sum())
    value = pearson(template, flat[has_lesion].mean(axis=0))
    if maps is None or aggregator is None:
        return {**_masks_only_r(template, flat[has_lesion], value, seed=seed, n_boot=n_boot),
                "resampled": RESAMPLED["masks"]}
    maps = np.asarray(maps)
    if paired and len(maps) != len(lesion):
        raise ValueError(f"paired: {len(maps)} maps and {len(lesion)} lesion masks cannot be of the same images")
    shape = tuple(template.shape)
    replicates = replicates_for(aggregator, shape, n_boot)
    resampled = {"resampled": RESAMPLED["paired" if paired else "independent"], "n_boot": replicates,
                 "n_maps": len(maps)}
    if n_lesion < 2 or len(maps) < 2:
        return {**_no_interval(value, n_lesion), **resampled}
    rng = np.random.default_rng(seed)
    rs = np.empty(replicates)
    for b in range(replicates):
        drawn_maps = rng.integers(0, len(maps), len(maps))
        drawn_masks = drawn_maps if paired else rng.integers(0, len(lesion), len(lesion))
        counts = np.bincount(drawn_masks, minlength=len(lesion)) * has_lesion
        if not counts.any():
            rs[b] = np.nan
            continue
        state = aggregator.update(aggregator.init(shape), maps[drawn_maps])
        rs[b] = pearson(aggregator.finalize(state), counts @ flat / counts.sum())
    return {**bias_corrected(value, rs, n_lesion, bounds=(-1.0, 1.0)), **resampled}


def replicates_for(aggregator: Aggregator, shape: tuple[int, ...], n_boot: int = TEMPLATE_BOOT) -> int:
    """``n_boot`` replicates, or a fifth of them (at most :data:`SKETCH_BOOT`) for an aggregator
    whose state is large (the per-replicate cost is mostly its ``init`` and ``finalize``)."""
    state = aggregator.init(shape)
    size = sum(np.size(v) for v in state.values() if isinstance(v, np.ndarray))
    large = size > SKETCH_STATE_PER_PIXEL * int(np.prod(shape))
    return max(min(n_boot // 5, SKETCH_BOOT), 20) if large else n_boot


def _no_interval(value: float, n: int) -> dict[str, Any]:
    plain = estimate(value, None, None, n)
    return {**plain, "plugin": plain["value"]}


def _masks_only_r(template: np.ndarray, masks: np.ndarray, value: float, *, seed: int,
                  n_boot: int) -> dict[str, Any]:
    if len(masks) < 2:
        return _no_interval(value, len(masks))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(masks), np.full(len(masks), 1.0 / len(masks)), size=n_boot)
    frequencies = counts @ masks / len(masks)
    return {**bias_corrected(value, np.array([pearson(template, f) for f in frequencies]), len(masks),
                             bounds=(-1.0, 1.0)), "n_boot": n_boot}


def distinctiveness(templates: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Pearson r between every pair of class templates (lower = more class-specific)."""
    names = list(templates)
    return {a: {b: pearson(templates[a], templates[b]) for b in names} for a in names}
