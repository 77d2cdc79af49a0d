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

How removed pixels are filled matters as much as which are removed: a constant is out of
distribution, so a drop may measure the shape of the hole rather than the information removed
(Rong et al. 2022, ROAD). Two fills:

* ``"blur"``: the pixel takes the value of the Gaussian-blurred image (the classic baseline).
* ``"road"``: ROAD's noisy linear imputation. Every removed pixel equals the weighted mean of
  its 8 neighbours (1/6 for the 4 direct, 1/12 for the 4 diagonal ones, as in the ROAD
  reference code), known pixels fixed; Gaussian noise (std 0.01 of the [0, 1] range) is added
  to the imputed pixels and the result clipped to [0, 1]. Unlike ROAD, which renormalises
  the weights of border pixels over the neighbours that exist, neighbours outside the image
  count as known zeros: every row of the system then keeps the weights summing to 1, so it is
  symmetric positive definite even when every pixel is removed (the solution is then zero,
  where ROAD's system is singular), and conjugate gradients converge. Radiograph borders are
  dark or zero-padded, so the difference stays at the edge.

The ROAD system is solved for a whole batch at once in TensorFlow, compiled with XLA:
conjugate gradients with the stencil written as shifted sums, preconditioned by an additive
multilevel (BPX) sum over a pyramid of 2x coarser grids with bilinear transfers (Bramble,
Pasciak and Xu 1990). That keeps the iteration count at 9-14 at 32 px, 14-18 at 96 px and
17-26 at 224 px for blob-shaped removals (smoothed maps), where plain CG needs 30-90 at 64 px
and grows with the size of the removed region. The solve stops when every image's residual is
below ``ROAD_TOLERANCE`` times its right-hand side (a maximum error of about 1e-4 against a
direct sparse solve, 100 times below the noise) or after ``ROAD_MAX_ITERATIONS``.

Every image the model sees goes through one compiled function per (model, fill, size): it
builds the perturbed batch from the images, their pixel ranks and a removal range, fills it
and runs the model, with a relaxed batch dimension so that no call retraces it. Curve points
shared by deletion and insertion (the original image, the fully removed one) are computed
once. ROAD's noise is drawn per (seed, image, perturbation), so results do not depend on the
batching (up to the solver tolerance: a batch iterates until its slowest image converges).
Results are per image; :mod:`xaicxr.analysis.intervals` turns them into figures.
"""

from __future__ import annotations

import weakref
from typing import Any, Literal

import numpy as np
from scipy import ndimage

Fill = Literal["road", "blur"]

FRACTIONS = np.linspace(0.0, 1.0, 11)
REFERENCE_SIZE = 224
BLUR_SIGMA = 5.0
"""Blur fill: Gaussian sigma in pixels at 224 px, scaled with the image size."""
REGION_SIGMA = 8.0
"""Random lung regions: smoothing of the noise field in pixels at 224 px, scaled."""
ROAD_NOISE = 0.01
ROAD_DIAGONAL_WEIGHT = 1.0 / 12.0
ROAD_TOLERANCE = 1e-4
ROAD_MAX_ITERATIONS = 200
COARSEST_GRID = 4


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


# --------------------------------------------------------------------------- fills


def fill_blur(images: np.ndarray, removed: np.ndarray, sigma: float) -> np.ndarray:
    """(N, H, W) images with the ``removed`` pixels replaced by the Gaussian-blurred image
    (``sigma`` in pixels, reflected borders)."""
    images = np.asarray(images, np.float32)
    return np.where(removed, _blurred(images, sigma), images)


def _blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(np.asarray(images, np.float32), (0, sigma, sigma),
                                   mode="reflect")


def fill_road(images: np.ndarray, removed: np.ndarray, noise: float = ROAD_NOISE,
              seed: int = 0) -> np.ndarray:
    """(N, H, W) images with the ``removed`` pixels imputed by ROAD's noisy linear imputation
    (Rong et al. 2022; see the module docstring), noise from ``seed``. Known pixels are
    returned unchanged."""
    images = np.asarray(images, np.float32)
    removed = np.asarray(removed, bool)
    if images.ndim != 3 or removed.shape != images.shape:
        raise ValueError(f"images {images.shape} and removed {removed.shape} must both be "
                         "(N, H, W)")
    noise_field = (np.random.default_rng(seed).standard_normal(images.shape, np.float32)
                   * np.float32(noise))
    fn = _road_fill_fn(images.shape[1:])
    return np.concatenate([fn(images[i:i + 64], removed[i:i + 64], noise_field[i:i + 64]).numpy()
                           for i in range(0, len(images), 64)] or [images])


_road_fills: dict[tuple[int, int], Any] = {}
_road_solvers: dict[tuple[int, int], Any] = {}


def _road_fill_fn(shape: tuple[int, int]) -> Any:
    import tensorflow as tf

    shape = tuple(int(s) for s in shape)
    fn = _road_fills.get(shape)
    if fn is None:
        spec = tf.TensorSpec((None, *shape), tf.float32)
        fn = _road_fills[shape] = tf.function(
            _road_fill, input_signature=[spec, tf.TensorSpec((None, *shape), tf.bool), spec],
            autograph=False)
    return fn


def _road_solver(shape: tuple[int, int]) -> Any:
    """:func:`road_impute` compiled with XLA for images of ``shape``: fused, the many small
    stencil and vector operations of an iteration run 2 to 3 times faster on CPU than as
    separate TensorFlow kernels. XLA compiles once per batch size, so callers pad batches to
    powers of two (:func:`_road_fill`)."""
    import tensorflow as tf

    fn = _road_solvers.get(shape)
    if fn is None:
        fn = _road_solvers[shape] = tf.function(
            road_impute, jit_compile=True, autograph=False,
            input_signature=[tf.TensorSpec((None, *shape), tf.float32),
                             tf.TensorSpec((None, *shape), tf.bool)])
    return fn


def _road_fill(images: Any, removed: Any, noise: Any) -> Any:
    """TF ops: (B, H, W) images, removed (bool), noise (already scaled) -> filled images.

    The batch is padded with rows that remove nothing (solved in zero iterations) up to a power
    of two, so that the XLA solver sees few distinct batch sizes."""
    import tensorflow as tf

    shape = (int(images.shape[1]), int(images.shape[2]))
    rows = tf.shape(images)[0]
    buckets = tf.constant([4 * 2 ** i for i in range(24)], tf.int32)
    bucket = tf.gather(buckets, tf.searchsorted(buckets, rows[None]))[0]
    padding = [[0, bucket - rows], [0, 0], [0, 0]]
    imputed = _road_solver(shape)(tf.pad(images, padding), tf.pad(removed, padding))[:rows]
    return tf.where(removed, tf.clip_by_value(imputed + noise, 0.0, 1.0), images)


def road_impute(images: Any, removed: Any, tolerance: float = ROAD_TOLERANCE,
                max_iterations: int = ROAD_MAX_ITERATIONS, return_iterations: bool = False) -> Any:
    """TF ops: the noiseless ROAD imputation of (B, H, W) ``images`` (static H, W) at the
    ``removed`` pixels; known pixels pass through. With ``return_iterations``, also the number
    of conjugate-gradient iterations the batch took.

    The unknowns x satisfy x_i - sum_j w_ij x_j = sum_k w_ik v_k (j unknown neighbours, k known
    ones, zeros outside the image): (I - W) x = b, symmetric positive definite. Computed with
    the batch as the last axis, so that every shifted sum reads contiguous rows.
    """
    import tensorflow as tf

    height, width = int(images.shape[1]), int(images.shape[2])
    levels = max(0, int(np.floor(np.log2(min(height, width) / COARSEST_GRID))))
    block = 2 ** levels
    pad = [[0, -height % block], [0, -width % block], [0, 0]]
    unknown = tf.pad(tf.transpose(tf.cast(removed, tf.float32), [1, 2, 0]), pad)
    known = tf.pad(tf.transpose(images, [1, 2, 0]), pad) * (1.0 - unknown)

    def operator(x):
        return unknown * (x - _neighbour_mean(x))

    def precondition(residual):
        coarse = [residual]
        for _ in range(levels):
            coarse.append(_restrict(coarse[-1]))
        total = coarse[-1]
        for finer in reversed(coarse[:-1]):
            total = finer + _prolong(total)
        return unknown * total

    def dot(a, b):
        return tf.reduce_sum(a * b, axis=[0, 1], keepdims=True)

    rhs = unknown * _neighbour_mean(known)
    limit = tf.constant(tolerance ** 2, tf.float32) * dot(rhs, rhs)
    z = precondition(rhs)
    start = (tf.constant(0), tf.zeros_like(rhs), rhs, z, dot(rhs, z))

    def unconverged(i, x, r, p, rz):
        return (i < max_iterations) & tf.reduce_any(dot(r, r) > limit)

    def step(i, x, r, p, rz):
        ap = operator(p)
        alpha = tf.math.divide_no_nan(rz, dot(p, ap))
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition(r)
        rz_next = dot(r, z)
        return i + 1, x, r, z + tf.math.divide_no_nan(rz_next, rz) * p, rz_next

    iterations, solution, *_ = tf.while_loop(unconverged, step, start)
    out = tf.transpose((known + solution)[:height, :width], [2, 0, 1])
    return (out, iterations) if return_iterations else out


def _smooth121(x: Any) -> Any:
    """The 3x3 kernel [1, 2, 1] x [1, 2, 1] over axes 0 and 1, zeros outside."""
    import tensorflow as tf

    p = tf.pad(x, [[1, 1], [1, 1], [0, 0]])
    rows = p[:-2] + 2.0 * p[1:-1] + p[2:]
    return rows[:, :-2] + 2.0 * rows[:, 1:-1] + rows[:, 2:]


def _neighbour_mean(x: Any) -> Any:
    """ROAD's weighted 8-neighbour mean. The weights (1/6 direct, 1/12 diagonal) are
    (1/12) [1 2 1; 2 4 2; 1 2 1] without its centre: one separable smoothing and a subtraction."""
    return _smooth121(x) * ROAD_DIAGONAL_WEIGHT - x * (4.0 * ROAD_DIAGONAL_WEIGHT)


def _prolong(coarse: Any) -> Any:
    """Bilinear (cell-centred) 2x upsampling: nearest copy, then [1 2 1]/4 in each direction."""
    import tensorflow as tf

    h, w, b = tf.unstack(tf.shape(coarse))
    copied = tf.broadcast_to(coarse[:, None, :, None, :], [h, 2, w, 2, b])
    return _smooth121(tf.reshape(copied, [2 * h, 2 * w, b])) * (1.0 / 16.0)


def _restrict(fine: Any) -> Any:
    """The exact transpose of :func:`_prolong`, so the preconditioner stays symmetric."""
    import tensorflow as tf

    smoothed = _smooth121(fine) * (1.0 / 16.0)
    h, w, b = tf.unstack(tf.shape(smoothed))
    return tf.reduce_sum(tf.reshape(smoothed, [h // 2, 2, w // 2, 2, b]), axis=[1, 3])


# --------------------------------------------------------------------------- the compiled model

_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def scoring_function(model: Any, fill: Fill, shape: tuple[int, int]) -> Any:
    """The compiled ``(images, fill_values, ranks, low, high, targets) -> p(target)`` of
    ``model`` for ``fill`` and image ``shape``, kept as long as the model lives.

    Each row removes the pixels whose rank is in [low, high) and fills them from
    ``fill_values``: the blurred image (blur), or the scaled noise added to the imputation
    (ROAD). Shapes: (B, H, W) float32, (B, H, W) float32, (B, H, W) int32, (B,) int32 x 3.
    """
    import tensorflow as tf

    if fill not in ("road", "blur"):
        raise ValueError(f"fill must be 'road' or 'blur', got {fill!r}")
    shape = tuple(int(s) for s in shape)
    cache = _compiled.setdefault(model, {})
    key = (fill, shape)
    fn = cache.get(key)
    if fn is not None:
        return fn
    image_spec = tf.TensorSpec((None, *shape), tf.float32)
    row_spec = tf.TensorSpec((None,), tf.int32)
    model_ref = weakref.ref(model)  # the cache must not keep its own key alive

    def score(images, fill_values, ranks, low, high, targets):
        removed = (ranks >= low[:, None, None]) & (ranks < high[:, None, None])
        if fill == "blur":
            perturbed = tf.where(removed, fill_values, images)
        else:
            perturbed = _road_fill(images, removed, fill_values)
        probs = model_ref()(perturbed[..., None], training=False)
        return tf.gather(probs, targets, axis=1, batch_dims=1)

    fn = cache[key] = tf.function(
        score, autograph=False,
        input_signature=[image_spec, image_spec, tf.TensorSpec((None, *shape), tf.int32),
                         row_spec, row_spec, row_spec])
    return fn


def _perturbed_scores(model: Any, images: np.ndarray, targets: np.ndarray, fill: Fill,
                      rows: dict[str, np.ndarray], rank_maps: np.ndarray, *, batch_size: int,
                      seed: int, blur_sigma: float | None, road_noise: float) -> np.ndarray:
    """p(target) of every row: ``rows`` holds per-row ``image`` (index into ``images``),
    ``ranks`` (index into ``rank_maps``), ``low``, ``high`` (removed rank range) and ``tag``
    (ROAD noise comes from (seed, image, tag), so it does not depend on the batching)."""
    fn = scoring_function(model, fill, images.shape[1:])
    if fill == "blur":
        blurred = _blurred(images, blur_sigma if blur_sigma is not None
                           else scaled_sigma(BLUR_SIGMA, images.shape))
    out = np.empty(len(rows["image"]), np.float32)
    for start in range(0, len(out), batch_size):
        part = slice(start, start + batch_size)
        image_rows = rows["image"][part]
        if fill == "blur":
            fill_values = blurred[image_rows]
        else:
            fill_values = np.stack([
                np.random.default_rng([seed, int(i), int(t)]).standard_normal(images.shape[1:],
                                                                              np.float32)
                for i, t in zip(image_rows, rows["tag"][part])]) * np.float32(road_noise)
        out[part] = fn(images[image_rows], fill_values, rank_maps[rows["ranks"][part]],
                       rows["low"][part].astype(np.int32), rows["high"][part].astype(np.int32),
                       targets[image_rows]).numpy()
    return out


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
                        *, fill: Fill = "road", fractions: np.ndarray = FRACTIONS,
                        batch_size: int = 64, seed: int = 0, blur_sigma: float | None = None,
                        road_noise: float = ROAD_NOISE) -> dict[str, Any]:
    """Deletion and insertion curves of ``maps`` (Petsiuk et al. 2018) with a ``fill``.

    ``images`` (N, H, W) or (N, H, W, 1) in [0, 1], ``maps`` (N, H, W), ``targets`` (N,).
    Returns ``fractions`` (F,), ``deletion`` and ``insertion`` (N, F) probabilities of the
    target, their trapezoid areas ``deletion_auc`` (lower = more faithful) and
    ``insertion_auc`` (higher = more faithful) (N,), and ``passes_per_image``: the forward
    passes each image cost (2F - 2 for fractions that include 0 and 1). ``blur_sigma``
    defaults to 5 px at 224 px, scaled.
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
                               batch_size=batch_size, seed=seed, blur_sigma=blur_sigma,
                               road_noise=road_noise).reshape(n, n_ranges)
    deletion, insertion = scores[:, deletion_row], scores[:, insertion_row]
    return {"fractions": fractions, "deletion": deletion, "insertion": insertion,
            "deletion_auc": np.trapezoid(deletion, fractions, axis=1),
            "insertion_auc": np.trapezoid(insertion, fractions, axis=1),
            "passes_per_image": n_ranges}


# --------------------------------------------------------------------------- regions


def _region_scores(model: Any, images: np.ndarray, targets: np.ndarray,
                   regions: list[np.ndarray], *, fill: Fill, batch_size: int, seed: int,
                   blur_sigma: float | None, road_noise: float) -> np.ndarray:
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
                             batch_size=batch_size, seed=seed, blur_sigma=blur_sigma,
                             road_noise=road_noise).reshape(sets, n)


def _region_batch(regions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    regions = np.asarray(regions, bool)
    if regions.shape == shape[1:]:
        regions = np.broadcast_to(regions, shape)
    if regions.shape != shape:
        raise ValueError(f"regions {regions.shape} must be (H, W) or match the images {shape}")
    return regions


def region_drop(model: Any, images: np.ndarray, targets: np.ndarray, regions: np.ndarray, *,
                fill: Fill = "road", batch_size: int = 64, seed: int = 0,
                blur_sigma: float | None = None, road_noise: float = ROAD_NOISE) -> np.ndarray:
    """(N,) p(target | image) - p(target | image with ``regions`` removed and filled);
    ``regions`` (N, H, W) or one (H, W) region for every image."""
    images = _as_batch(images)
    targets = _as_targets(targets, len(images))
    scores = _region_scores(model, images, targets, [_region_batch(regions, images.shape)],
                            fill=fill, batch_size=batch_size, seed=seed, blur_sigma=blur_sigma,
                            road_noise=road_noise)
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
                          fill: Fill = "road", draws: int = 3, seed: int = 0,
                          batch_size: int = 64, region_sigma: float | None = None,
                          blur_sigma: float | None = None,
                          road_noise: float = ROAD_NOISE) -> dict[str, Any]:
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
                            fill=fill, batch_size=batch_size, seed=seed, blur_sigma=blur_sigma,
                            road_noise=road_noise)
    drops = scores[0] - scores[1:]
    random_drop = drops[1:].mean(axis=0) if draws else np.full(n, np.nan)
    random_drop = np.where(lungs.reshape(n, -1).any(axis=1), random_drop, np.nan)
    return {"template_drop": drops[0], "random_drop": random_drop,
            "random_area": lungs.reshape(n, -1).sum(axis=1).clip(max=area),
            "area": area, "q": q}
