"""Faithfulness without lesion masks: does the model need the pixels a heatmap points at?

Two figures that work on real radiographs, where no lesion masks exist:

* **Deletion and insertion curves** (Petsiuk et al. 2018, RISE). Pixels are ranked by the map,
  most relevant first (ties in a seeded random order, so a flat map gives a random order). At
  each fraction f, *deletion* removes the top-f pixels and *insertion* removes all but them;
  the score is the model's probability of the target class. A faithful map makes the deletion
  curve fall early (low area) and the insertion curve rise early (high area). Insertion at f is
  ROAD's "least relevant first" removal of 1 - f of the pixels.
* **Template faithfulness**: a class template claims the region the model relies on for that
  class. Occluding its top-q region should cost that class more probability than occluding a
  random blobby region of the same area inside the lungs.

How removed pixels are filled matters as much as which are removed: that is a fill plugin
(:mod:`xaicxr.plugins.fill`; built in: ``"road"``, ROAD's noisy linear imputation, Rong et al.
2022, and ``"blur"``, the Gaussian-blurred image). Every function here takes a fill by name or
as an instance and has no rule of its own for any of them.

Every image the model sees goes through one compiled function per (model, fill, size): it
builds the perturbed batch from the images, their pixel ranks and a removal range, fills it
and runs the model, with a relaxed batch dimension so that no call retraces it. Curve points
shared by deletion and insertion (the original image, the fully removed one) are computed
once. A fill's randomness is drawn per (seed, image, perturbation), so results do not depend on the
batching (ROAD: up to its solver's tolerance). The rows are scored in fixed spans of one batch
each, in this process or on a cluster (``executor``, :mod:`xaicxr.executors.model_passes`):
the same batches either way, so the same figures.
Results are per image; :mod:`xaicxr.analysis.intervals` turns them into figures.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from xaicxr.plugins.fill import Fill, make_fill

FRACTIONS = np.linspace(0.0, 1.0, 11)
BATCH = 64
"""Perturbed images per call of the compiled scorer, and per executor task, of the curves."""
REFERENCE_SIZE = 224
REGION_SIGMA = 8.0
"""Random lung regions: smoothing of the noise field in pixels at 224 px, scaled."""


def scaled_sigma(sigma_at_224: float, shape: tuple[int, ...]) -> float:
    """A length given at 224 px, for an image of ``shape`` (H, W)."""
    return sigma_at_224 * max(shape[-2:]) / REFERENCE_SIZE


# --------------------------------------------------------------------------- ranking


def relevance_order(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, H, W) maps -> (N, H*W) flat pixel indices, most relevant first.

    Ties are broken by a seeded random permutation per image, so a flat map gives a random,
    reproducible order rather than a raster scan (which would delete the image top to bottom).
    NaN counts as least relevant.
    """
    maps = np.asarray(maps)
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    flat = np.where(np.isnan(flat), -np.inf, flat)
    tiebreak = np.random.default_rng(seed).random(flat.shape)
    return np.lexsort((tiebreak, -flat), axis=-1)


def _ranks(order: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, H*W) order -> (N, H, W) int32 rank of each pixel (0 = most relevant)."""
    ranks = np.empty(order.shape, np.int32)
    np.put_along_axis(ranks, order, np.arange(order.shape[1], dtype=np.int32)[None], axis=1)
    return ranks.reshape(len(order), *shape)


# --------------------------------------------------------------------------- the compiled model

_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def scoring_function(model: Any, fill: Fill | str, shape: tuple[int, int]) -> Any:
    """The compiled ``(images, fill_values, ranks, low, high, targets) -> p(target)`` of
    ``model`` for ``fill`` and image ``shape``, kept as long as the model lives.

    Each row removes the pixels whose rank is in [low, high) and has ``fill`` fill them from
    ``fill_values`` (:meth:`Fill.values`). Shapes: (B, H, W) float32, (B, H, W) float32,
    (B, H, W) int32, (B,) int32 x 3.
    """
    import tensorflow as tf

    fill = make_fill(fill)
    shape = tuple(int(s) for s in shape)
    cache = _compiled.setdefault(model, {})
    key = (fill.cache_key(), shape)
    fn = cache.get(key)
    if fn is not None:
        return fn
    image_spec = tf.TensorSpec((None, *shape), tf.float32)
    row_spec = tf.TensorSpec((None,), tf.int32)
    model_ref = weakref.ref(model)  # the cache must not keep its own key alive

    def score(images, fill_values, ranks, low, high, targets):
        removed = (ranks >= low[:, None, None]) & (ranks < high[:, None, None])
        probs = model_ref()(fill.apply(images, removed, fill_values)[..., None], training=False)
        return tf.gather(probs, targets, axis=1, batch_dims=1)

    fn = cache[key] = tf.function(
        score, autograph=False,
        input_signature=[image_spec, image_spec, tf.TensorSpec((None, *shape), tf.int32),
                         row_spec, row_spec, row_spec])
    return fn


def _perturbed_scores(model: Any, images: np.ndarray, targets: np.ndarray, fill: Fill | str,
                      rows: dict[str, np.ndarray], rank_maps: np.ndarray, *, batch_size: int,
                      seed: int, executor: Any = None) -> np.ndarray:
    """p(target) of every row: ``rows`` holds per-row ``image`` (index into ``images``),
    ``ranks`` (index into ``rank_maps``), ``low``, ``high`` (removed rank range) and ``tag``
    (a fill's randomness comes from (seed, image, tag), so it does not depend on the batching).
    ``executor`` (a :class:`~xaicxr.executors.model_passes.ModelExecutor`) computes the rows,
    one :class:`PerturbedScores` task per ``batch_size`` rows; None: ``model`` in this process,
    the same batches."""
    fill = make_fill(fill)
    task = PerturbedScores(images, fill.prepare(images), targets, fill, rows, rank_maps, seed)
    n = len(rows["image"])
    if executor is None:
        parts = [task(model, (start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    else:
        parts = executor.map_spans(task, n, batch_size)
    return np.concatenate(parts) if parts else np.empty(0, np.float32)


@dataclass(frozen=True, eq=False)
class PerturbedScores:
    """p(target) of one batch of perturbation rows (see :func:`_perturbed_scores`): a picklable
    task of ``ModelExecutor.map_spans``, so the rows can be scored on a cluster's workers.
    The images, the fill's prepared values and the rows travel once per call, not per batch."""

    images: np.ndarray
    prepared: Any
    targets: np.ndarray
    fill: Fill
    rows: dict[str, np.ndarray]
    rank_maps: np.ndarray
    seed: int

    def __call__(self, model: Any, span: tuple[int, int]) -> np.ndarray:
        part = slice(*span)
        image_rows = self.rows["image"][part]
        fill_values = self.fill.values(self.images, self.prepared, image_rows, self.rows["tag"][part], self.seed)
        fn = scoring_function(model, self.fill, self.images.shape[1:])
        return fn(self.images[image_rows], np.asarray(fill_values, np.float32),
                  self.rank_maps[self.rows["ranks"][part]], self.rows["low"][part].astype(np.int32),
                  self.rows["high"][part].astype(np.int32), self.targets[image_rows]).numpy()


def _as_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, 1), got {images.shape}")
    return np.ascontiguousarray(images)


def _as_targets(targets: np.ndarray, n: int) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.ndim == 0:
        targets = np.full(n, targets)
    if targets.shape != (n,):
        raise ValueError(f"targets must be {n} class indices, got shape {targets.shape}")
    return targets.astype(np.int32)


# --------------------------------------------------------------------------- curves


def curve_perturbations(fractions: np.ndarray, n_pixels: int) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """The distinct removals behind deletion and insertion curves, as rank ranges.

    Returns ``(ranges (P, 2), deletion (F,), insertion (F,))``: rows [low, high) of removed
    ranks, and for each fraction the row giving its deletion and insertion point. Deletion at
    f removes ranks [0, k), insertion [k, n) with k = round(f n); an empty range is the
    original image, so the shared points of the two curves (and repeated fractions) map to
    one row each.
    """
    fractions = np.asarray(fractions, np.float64)
    if fractions.ndim != 1 or len(fractions) < 2 or np.any((fractions < 0) | (fractions > 1)):
        raise ValueError("fractions must be at least two values in [0, 1]")
    counts = np.rint(fractions * n_pixels).astype(np.int64)
    wanted = [(0, k) for k in counts] + [(k, n_pixels) for k in counts]
    canonical = [(lo, hi) if hi > lo else (0, 0) for lo, hi in wanted]
    ranges, index = np.unique(np.array(canonical, np.int64), axis=0, return_inverse=True)
    index = index.reshape(-1)
    return ranges, index[:len(counts)], index[len(counts):]


def perturbation_curves(model: Any, images: np.ndarray, maps: np.ndarray, targets: np.ndarray,
                        *, fill: Fill | str = "road", fractions: np.ndarray = FRACTIONS,
                        batch_size: int | None = None, seed: int = 0,
                        executor: Any = None) -> dict[str, Any]:
    """Deletion and insertion curves of ``maps`` (Petsiuk et al. 2018) with a ``fill``.

    ``images`` (N, H, W) or (N, H, W, 1) in [0, 1], ``maps`` (N, H, W), ``targets`` (N,).
    Returns ``fractions`` (F,), ``deletion`` and ``insertion`` (N, F) probabilities of the
    target, their trapezoid areas ``deletion_auc`` (lower = more faithful) and
    ``insertion_auc`` (higher = more faithful) (N,), and ``passes_per_image``: the forward
    passes each image cost (2F - 2 for fractions that include 0 and 1). ``fill`` is a fill
    plugin's name (with its default options) or a :class:`~xaicxr.plugins.Fill`; ``executor``
    computes the forward passes, ``batch_size`` (default :data:`BATCH`) per task (None: ``model``
    in this process, the same batches).
    """
    images = _as_batch(images)
    maps = np.asarray(maps)
    if maps.shape != images.shape:
        raise ValueError(f"maps {maps.shape} must match the images {images.shape}")
    n, height, width = images.shape
    targets = _as_targets(targets, n)
    fractions = np.asarray(fractions, np.float64)
    ranges, deletion_row, insertion_row = curve_perturbations(fractions, height * width)
    n_ranges = len(ranges)
    image_index = np.repeat(np.arange(n), n_ranges)
    rows = {"image": image_index, "ranks": image_index,
            "low": np.tile(ranges[:, 0], n), "high": np.tile(ranges[:, 1], n),
            "tag": np.tile(np.arange(n_ranges), n)}
    rank_maps = _ranks(relevance_order(maps, seed), (height, width))
    scores = _perturbed_scores(model, images, targets, fill, rows, rank_maps,
                               batch_size=batch_size or BATCH, seed=seed, executor=executor).reshape(n, n_ranges)
    deletion, insertion = scores[:, deletion_row], scores[:, insertion_row]
    return {"fractions": fractions, "deletion": deletion, "insertion": insertion,
            "deletion_auc": np.trapezoid(deletion, fractions, axis=1),
            "insertion_auc": np.trapezoid(insertion, fractions, axis=1),
            "passes_per_image": n_ranges}


# --------------------------------------------------------------------------- regions


def _region_scores(model: Any, images: np.ndarray, targets: np.ndarray,
                   regions: list[np.ndarray], *, fill: Fill | str, batch_size: int, seed: int,
                   executor: Any = None) -> np.ndarray:
    """(1 + len(regions), N) p(target): the original images, then each (N, H, W) region set
    removed and filled."""
    n = len(images)
    sets = 1 + len(regions)
    image_index = np.tile(np.arange(n), sets)
    rank_maps = np.concatenate([np.zeros((1, *images.shape[1:]), np.int32)]
                               + [np.where(r, 0, 1).astype(np.int32) for r in regions])
    rows = {"image": image_index, "tag": np.repeat(np.arange(sets), n),
            "ranks": np.concatenate([np.zeros(n, np.int64)]
                                    + [1 + k * n + np.arange(n) for k in range(len(regions))]),
            "low": np.zeros(sets * n, np.int64),
            "high": np.repeat(np.minimum(np.arange(sets), 1), n)}
    return _perturbed_scores(model, images, targets, fill, rows, rank_maps,
                             batch_size=batch_size, seed=seed, executor=executor).reshape(sets, n)


def _region_batch(regions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    regions = np.asarray(regions, bool)
    if regions.shape == shape[1:]:
        regions = np.broadcast_to(regions, shape)
    if regions.shape != shape:
        raise ValueError(f"regions {regions.shape} must be (H, W) or match the images {shape}")
    return regions


def region_drop(model: Any, images: np.ndarray, targets: np.ndarray, regions: np.ndarray, *,
                fill: Fill | str = "road", batch_size: int = 64, seed: int = 0,
                executor: Any = None) -> np.ndarray:
    """(N,) p(target | image) - p(target | image with ``regions`` removed and filled);
    ``regions`` (N, H, W) or one (H, W) region for every image."""
    images = _as_batch(images)
    targets = _as_targets(targets, len(images))
    scores = _region_scores(model, images, targets, [_region_batch(regions, images.shape)],
                            fill=fill, batch_size=batch_size, seed=seed, executor=executor)
    return scores[0] - scores[1]


def random_lung_regions(lungs: np.ndarray, area: int | np.ndarray, *, seed: int = 0,
                        sigma: float) -> np.ndarray:
    """(N, H, W) bool: per image a random blobby region of ``area`` pixels inside its lungs
    (all lung pixels where the lungs are smaller).

    The ``area`` highest pixels, among the lung pixels, of a Gaussian-smoothed white-noise field
    (``sigma`` px): a thresholded smooth field gives compact blobs of about the size of a
    template's hot spot, which a random pixel set would not.
    """
    lungs = np.asarray(lungs, bool)
    if lungs.ndim != 3:
        raise ValueError(f"lungs must be (N, H, W), got {lungs.shape}")
    areas = np.broadcast_to(np.asarray(area, np.int64), (len(lungs),))
    rng = np.random.default_rng(seed)
    fields = ndimage.gaussian_filter(rng.standard_normal(lungs.shape), (0, sigma, sigma))
    regions = np.zeros_like(lungs)
    for region, lung, field, count in zip(regions, lungs, fields, areas):
        inside = np.flatnonzero(lung)
        if count >= len(inside):
            region[lung] = True
        elif count > 0:
            top = np.argpartition(-field.ravel()[inside], count - 1)[:count]
            region.ravel()[inside[top]] = True
    return regions


def template_region(template: np.ndarray, area: int, seed: int = 0) -> np.ndarray:
    """(H, W) bool: the ``area`` highest pixels of ``template`` (ties in a seeded order)."""
    template = np.asarray(template)
    order = relevance_order(template[None], seed)[0]
    region = np.zeros(template.size, bool)
    region[order[:area]] = True
    return region.reshape(template.shape)


def template_faithfulness(model: Any, images: np.ndarray, targets: np.ndarray,
                          template: np.ndarray, lungs: np.ndarray, *, q: float = 0.05,
                          fill: Fill | str = "road", draws: int = 3, seed: int = 0,
                          batch_size: int = 64, region_sigma: float | None = None,
                          executor: Any = None) -> dict[str, Any]:
    """Does the model need the region a class template claims?

    ``images`` of one class, ``targets`` that class, ``template`` (H, W), ``lungs`` (N, H, W)
    bool. The top ``q`` of the image area of the template is removed and filled in every image;
    so are ``draws`` random lung regions of the same area (:func:`random_lung_regions`,
    ``region_sigma`` default 8 px at 224 px, scaled). Returns ``template_drop`` (N,),
    ``random_drop`` (N,) (mean over draws; NaN where the lungs are empty), ``random_area``
    (N,) (smaller than ``area`` where the lungs are), ``area`` and ``q``. The original images
    are scored once for all regions.
    """
    images = _as_batch(images)
    n, height, width = images.shape
    targets = _as_targets(targets, n)
    lungs = np.asarray(lungs, bool)
    if lungs.shape != images.shape:
        raise ValueError(f"lungs {lungs.shape} must match the images {images.shape}")
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    area = max(1, int(round(q * height * width)))
    sigma = region_sigma if region_sigma is not None else scaled_sigma(REGION_SIGMA, images.shape)
    template_regions = np.broadcast_to(template_region(template, area, seed), images.shape)
    draw_seeds = np.random.SeedSequence([seed, 1]).generate_state(draws)
    random_regions = [random_lung_regions(lungs, area, seed=int(s), sigma=sigma)
                      for s in draw_seeds]
    scores = _region_scores(model, images, targets, [template_regions, *random_regions],
                            fill=fill, batch_size=batch_size, seed=seed, executor=executor)
    drops = scores[0] - scores[1:]
    random_drop = drops[1:].mean(axis=0) if draws else np.full(n, np.nan)
    random_drop = np.where(lungs.reshape(n, -1).any(axis=1), random_drop, np.nan)
    return {"template_drop": drops[0], "random_drop": random_drop,
            "random_area": lungs.reshape(n, -1).sum(axis=1).clip(max=area),
            "area": area, "q": q}
