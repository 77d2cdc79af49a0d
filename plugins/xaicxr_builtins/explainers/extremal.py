"""``extremal``: extremal perturbations (Fong, Patrick and Vedaldi, ICCV 2019), deletion game.

The other explainers rank pixels and leave it to the deletion curves to find out whether the
model needs them; this one searches for the region directly. For each area ``a`` of ``areas``
(a share of the image) it optimises a smooth mask ``m`` so that removing the masked pixels (they
take the blurred image's values, the blur fill) lowers the target's score as much as possible,
with the mask held to that area:

    minimise  s(x * (1 - m) + blur(x) * m) + area_weight * mean((sort(m) - r_a)^2)

``r_a`` is the sorted ideal mask (a share ``a`` of ones, the rest zeros): the paper's area
constraint, which leaves the mask free to choose *where* but not *how much*. The mask is
``sigmoid`` of a ``grid`` x ``grid`` parameter field upsampled bilinearly (smooth, as the paper's
masks), optimised by Adam for ``steps`` steps from an even 0.5. The map is the sum of the masks
over the areas (the paper's saliency: a pixel in the smallest region counts in every larger
one), min-max normalised.

Differences from the reference implementation (TorchRay) kept on purpose: the blur fill of the
faithfulness metrics instead of a blur pyramid, bilinear upsampling instead of a smooth-max
kernel, a constant area weight instead of a growing one, and the softmax probability as the
default score (bounded, so the deletion game cannot run off to minus infinity). The defaults
(``grid`` 16, ``learning_rate`` 0.1, ``area_weight`` 10, 300 steps) were set on a constructed
model that reads only the mean of one square (tests/test_extremal.py): there the top 1/16 of
every mask lies on the square; an area weight of 300 (TorchRay's, against logits) held the mask
to its area but left it nowhere near the square after 150 steps. Every area and
image of a batch is optimised in one compiled function (``batch`` images at a time).

Cost: ``steps`` forward and backward passes per image and area: with the defaults 2.6 to 5.6 s
per 64 px image of the demo's model on 2 cores (50 covid films in 130 to 282 s, depending on the
machine's load; benchmarks/extremal_covid.py): give it a ``split = "val"`` study or a
``max_images`` of its own.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from xaicxr.kerasgraph import model_cache
from xaicxr.plugins import Explainer
from xaicxr.plugins.options import at_least
from xaicxr.plugins.targets import ClassProbability, Target

from .tfkv import logits_model


class ExtremalPerturbation(Explainer):
    """Extremal perturbations, deletion game (see the module docstring). ``areas``: shares of
    the image, each in (0, 1); ``steps``: Adam steps; ``grid``: mask parameters per side;
    ``learning_rate``; ``area_weight``: weight of the area constraint; ``fill``: what a removed
    pixel becomes, the image blurred (``blur_sigma`` px at 224 px, scaled) or the image's mean
    grey (``fade``, TorchRay's fade perturbation to a constant); ``batch``: images per compiled
    call."""

    uses_layer = False
    signed = True
    reads_score = True
    default_target = ClassProbability

    def __init__(self, areas: list[float] = [0.05, 0.1, 0.2], steps: int = 300, grid: int = 16,  # noqa: B006
                 learning_rate: float = 0.1, area_weight: float = 10.0, blur_sigma: float = 20.0,
                 fill: Literal["blur", "fade"] = "blur", batch: int = 16) -> None:
        if not areas or any(not 0.0 < a < 1.0 for a in areas):
            raise ValueError(f"'areas' must be shares of the image in (0, 1), got {areas}")
        if not (np.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"'learning_rate' must be a positive number, got {learning_rate}")
        if not (np.isfinite(area_weight) and area_weight >= 0):
            raise ValueError(f"'area_weight' must be a number >= 0, got {area_weight}")
        if fill not in ("blur", "fade"):
            raise ValueError(f"'fill' must be 'blur' or 'fade', got {fill!r}")
        if not (np.isfinite(blur_sigma) and blur_sigma > 0):
            raise ValueError(f"'blur_sigma' must be a positive number of pixels, got {blur_sigma}")
        self.areas = [float(a) for a in areas]
        self.steps, self.grid = at_least("steps", steps, 1), at_least("grid", grid, 2)
        self.learning_rate, self.area_weight, self.blur_sigma = learning_rate, area_weight, blur_sigma
        self.fill = fill
        self.batch = at_least("batch", batch, 1)

    def masks(self, model: Any, images: Any, targets: Any) -> np.ndarray:
        """The optimised masks (N, A, H, W) in [0, 1], one per area of ``areas``, of ``targets``
        (class indices (N,) or a target)."""
        from xaicxr.plugins.explainer import check_images

        images = check_images(model, images)
        target, classes = self.bind_target(targets, len(images), self.n_classes(model, None))
        return self._masks(model, images, classes, target)

    def raw_maps(self, model: Any, images: np.ndarray, classes: np.ndarray, layer: str | None,
                 target: Target) -> Any:
        return self._masks(model, images, classes, target).sum(axis=1)

    def _masks(self, model: Any, images: np.ndarray, classes: np.ndarray, target: Target) -> np.ndarray:
        from scipy import ndimage

        from xaicxr.analysis.faithfulness import scaled_sigma

        key = ("extremal", repr(sorted(self.options().items())), images.shape[1:], target.key)
        cache = model_cache(model)
        if key not in cache:
            cache[key] = self._build(logits_model(model), tuple(images.shape[1:]), target)
        if self.fill == "fade":
            blurred = np.broadcast_to(images.mean(axis=(1, 2, 3), keepdims=True), images.shape).astype(np.float32)
        else:
            sigma = scaled_sigma(self.blur_sigma, images.shape[1:3])
            blurred = ndimage.gaussian_filter(images, (0, sigma, sigma, 0), mode="reflect").astype(np.float32)
        classes = classes.astype(np.int32)
        return np.concatenate([cache[key](images[i:i + self.batch], blurred[i:i + self.batch],
                                          classes[i:i + self.batch]).numpy()
                               for i in range(0, len(images), self.batch)])

    def _build(self, graph: Any, shape: tuple[int, ...], target: Target) -> Any:
        import tensorflow as tf

        from xaicxr.plugins.explainer import compile_once

        height, width = shape[0], shape[1]
        n_areas, pixels = len(self.areas), height * width
        ones = np.rint(np.array(self.areas) * pixels).astype(np.int64)
        ideal = tf.constant(np.stack([np.r_[np.zeros(pixels - k), np.ones(k)] for k in ones]), tf.float32)
        steps, rate, weight, grid = self.steps, self.learning_rate, self.area_weight, self.grid
        beta1, beta2, eps = 0.9, 0.999, 1e-8

        def optimise(images, blurred, classes):
            n = tf.shape(images)[0]
            rows = n * n_areas
            x = tf.repeat(images, n_areas, axis=0)
            fill = tf.repeat(blurred, n_areas, axis=0)
            cls = tf.repeat(classes, n_areas)
            r = tf.tile(ideal, [n, 1])

            def mask_of(params):
                up = tf.image.resize(tf.sigmoid(params)[..., None], (height, width), "bilinear")
                return tf.clip_by_value(up, 0.0, 1.0)

            def energy(params):
                m = mask_of(params)
                score = target.score(graph([x * (1.0 - m) + fill * m], training=False), cls)
                area = tf.reduce_mean(tf.square(tf.sort(tf.reshape(m, (rows, -1)), axis=1) - r), axis=1)
                return tf.reduce_sum(score + weight * area)

            def adam(t, params, first, second):
                with tf.GradientTape() as tape:
                    tape.watch(params)
                    value = energy(params)
                grad = tape.gradient(value, params)
                first = beta1 * first + (1 - beta1) * grad
                second = beta2 * second + (1 - beta2) * tf.square(grad)
                step = tf.cast(t + 1, tf.float32)
                params -= rate * (first / (1 - beta1 ** step)) / (tf.sqrt(second / (1 - beta2 ** step)) + eps)
                return t + 1, params, first, second

            zeros = tf.zeros((rows, grid, grid))
            _, params, _, _ = tf.while_loop(lambda t, *_: t < steps, adam, (tf.constant(0), zeros, zeros, zeros),
                                            parallel_iterations=1)
            return tf.reshape(mask_of(params)[..., 0], (n, n_areas, height, width))

        image_spec = tf.TensorSpec((None, *shape), tf.float32)
        return compile_once(optimise, image_spec, image_spec, tf.TensorSpec((None,), tf.int32))
