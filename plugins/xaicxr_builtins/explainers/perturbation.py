"""Input-space explainers with many model passes per image: ``integrated-gradients``,
``occlusion``, ``rise``.

No target layer: they differentiate or perturb the input and read the ``logits`` layer (as
``saliency``), turned into the explained score by the target each call is given. What they share (:class:`_Batched`): every perturbed or interpolated input of a
group of images goes through the model inside one compiled TensorFlow function per group, in
chunks of at most ``batch`` model inputs per pass (a ``tf.foldl`` that adds each chunk's
contribution to the maps, so memory does not grow with the number of passes). A group holds
``max(1, batch // passes_per_image)`` images, so a pass is at most ``batch`` inputs. Maps are
normalised min-max as ``saliency`` (``signed``), except occlusion (ReLU then max, as the CAMs).

Integrated Gradients sits here rather than next to ``saliency`` (``tfkv.py``): that module
wraps tf-keras-vis, while IG is native and shares the chunked, compiled mechanism with the
perturbation methods.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar, Literal

import numpy as np

from xaicxr.kerasgraph import model_cache
from xaicxr.plugins import Explainer
from xaicxr.plugins.explainer import check_images, compile_once, finish_batch
from xaicxr.plugins.options import at_least
from xaicxr.plugins.targets import ClassProbability, Target

from .tfkv import logits_model


class _Batched(Explainer):
    """Compiled, chunked, grouped passes (see the module docstring). A subclass gives
    :meth:`passes` (model inputs per image) and :meth:`build` (the function of a group)."""

    uses_layer = False
    signed = True
    reads_score = True
    batch: int

    def passes(self, size: tuple[int, int]) -> int:
        raise NotImplementedError

    def build(self, graph: Any, shape: tuple[int, ...], target: Target) -> Any:
        raise NotImplementedError

    def run(self, model: Any, images: np.ndarray, target: Target, *per_image: np.ndarray) -> np.ndarray:
        """The compiled function of ``target`` on groups of ``images`` (and per-image arrays),
        concatenated."""
        key = ("input-space", type(self), repr(sorted(self.options().items())), images.shape[1:],
               target.key)
        cache = model_cache(model)
        if key not in cache:
            cache[key] = self.build(logits_model(model), tuple(images.shape[1:]), target)
        group = max(1, self.batch // self.passes(images.shape[1:3]))
        return np.concatenate([cache[key](*(a[i:i + group] for a in (images, *per_image))).numpy()
                               for i in range(0, len(images), group)])

    def fold(self, n: int, body: Any, initial: Any) -> Any:
        """``initial`` plus ``body(j, valid)`` over chunks ``j`` of ``min(batch, n)`` indices
        into ``range(n)``; the last chunk repeats index n - 1, with ``valid`` 0 there."""
        import tensorflow as tf

        k = max(1, min(self.batch, n))

        def step(total: Any, i: Any) -> Any:
            j = i * k + tf.range(k)
            return total + body(tf.minimum(j, n - 1), tf.cast(j < n, tf.float32))

        return tf.foldl(step, tf.range((n + k - 1) // k), initializer=initial,
                        parallel_iterations=1)


class IntegratedGradients(_Batched):
    """Integrated Gradients (Sundararajan et al. 2017): a_i = (x_i - x'_i) * (1/S) sum_s
    d logit_t / d x_i at x' + alpha_s (x - x'), alpha_s = (s + 1/2) / S (midpoint Riemann sum,
    S = ``steps`` passes). Baseline x': ``black`` (zeros) or ``blur`` (the image Gaussian-blurred,
    sigma ``blur_sigma`` px at 224 px scaled with the image size, reflected borders: the blur
    fill of the faithfulness metrics). ``logit_t``: the target's score (the class logit by
    default). Completeness: sum_i a_i ~ logit_t(x) - logit_t(x').
    Map = |sum over channels of a| (absolute, as ``saliency``), min-max normalised;
    :meth:`attributions` gives the raw signed a. ``batch``: interpolated inputs per pass."""

    def __init__(self, steps: int = 32, baseline: Literal["black", "blur"] = "black",
                 blur_sigma: float = 5.0, batch: int = 32) -> None:
        self.steps, self.baseline, self.blur_sigma, self.batch = steps, baseline, blur_sigma, batch

    def passes(self, size: tuple[int, int]) -> int:
        return self.steps

    def baselines(self, images: np.ndarray) -> np.ndarray:
        if self.baseline == "black":
            return np.zeros_like(images)
        from scipy import ndimage

        from xaicxr.analysis.faithfulness import scaled_sigma

        sigma = scaled_sigma(self.blur_sigma, images.shape[1:3])
        return ndimage.gaussian_filter(images, (0, sigma, sigma, 0), mode="reflect")

    def attributions(self, model: Any, images: Any, targets: Any) -> np.ndarray:
        """Raw (N, H, W, C) attributions a of ``targets`` (class indices (N,) or a target),
        before any map step."""
        images = check_images(model, images)
        target, classes = self.bind_target(targets, len(images), self.n_classes(model, None))
        return self._attributions(model, images, classes, target)

    def _attributions(self, model: Any, images: np.ndarray, classes: np.ndarray, target: Target) -> np.ndarray:
        return self.run(model, images, target, self.baselines(images), classes.astype(np.int32))

    def raw_maps(self, model: Any, images: np.ndarray, classes: np.ndarray, layer: str | None,
                 target: Target) -> Any:
        return np.abs(self._attributions(model, images, classes, target).sum(-1))

    def build(self, graph: Any, shape: tuple[int, ...], target: Target) -> Any:
        import tensorflow as tf

        spec = tf.TensorSpec((None, *shape), tf.float32)

        def integrate(images, baselines, targets):
            delta = images - baselines

            def body(j, valid):
                k, alpha = valid.shape[0], (tf.cast(j, tf.float32) + 0.5) / self.steps
                path = baselines[:, None] + alpha[:, None, None, None] * delta[:, None]
                x = tf.reshape(path, (-1, *shape))
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x)
                    logits = graph([x], training=False)
                    score = target.score(logits, tf.repeat(targets, k))
                grads = tape.gradient(score, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                return tf.einsum("gkhwc,k->ghwc", tf.reshape(grads, (-1, k, *shape)), valid)

            return delta * self.fold(self.steps, body, tf.zeros_like(images)) / self.steps

        return compile_once(integrate, spec, spec, tf.TensorSpec((None,), tf.int32))


class _Masked(_Batched):
    """Methods that score masked copies of the image. A classwise target (class logit or
    probability) is scored for every class from the same passes, so all-class mode costs what
    one class does; any other target (a binary task's score) as one score per image. A subclass
    gives :meth:`make_masks` (mask indices -> (k, H, W), from small constants), :meth:`perturb`,
    :meth:`weigh` (scores -> weights of the masks, per score) and :meth:`scale` (raw sum -> map);
    ``uses_clean``: whether :meth:`weigh` reads the scores of the unperturbed image (one more
    forward pass per image)."""

    uses_clean: ClassVar[bool] = True

    @staticmethod
    def score_table(logits: Any, classes: Any, target: Target) -> Any:
        """(N, S): every class's score (S = C) for a classwise target, else the score (S = 1)."""
        if target.classwise:
            return target.class_scores(logits)
        return target.score(logits, classes)[:, None]

    def raw_maps(self, model: Any, images: np.ndarray, classes: np.ndarray, layer: str | None,
                 target: Target) -> Any:
        raw = self.run(model, images, target, classes.astype(np.int32))
        return raw[np.arange(len(images)), classes] if target.classwise else raw[:, 0]

    def every_class(self, model: Any, images: np.ndarray, target: Target | None = None) -> np.ndarray:
        """Raw (N, C, H, W) maps of every class's score of ``target`` (None: the default)."""
        target = self.default_target() if target is None else target
        return self.run(model, images, target, np.zeros(len(images), np.int32))

    def compute_all(self, model: Any, images: np.ndarray, layer: str | None,
                    target: Target) -> tuple[np.ndarray, np.ndarray]:
        raw = self.every_class(model, images, target)
        maps, flags = finish_batch(raw.reshape(-1, *raw.shape[2:]), images, self.signed)
        return maps.reshape(raw.shape), flags.reshape(raw.shape[:2])

    def build(self, graph: Any, shape: tuple[int, ...], target: Target) -> Any:
        import tensorflow as tf

        size = shape[:2]
        n = self.passes(size)
        scores_per_image = int(graph.outputs[0].shape[-1]) if target.classwise else 1

        def masked(images, classes):
            clean = (self.score_table(graph([images], training=False), classes, target)[:, None]
                     if self.uses_clean else None)

            def body(j, valid):
                k = valid.shape[0]
                m = self.make_masks(j, size)
                x = tf.reshape(self.perturb(images[:, None], m[None, ..., None]), (-1, *shape))
                scores = tf.reshape(self.score_table(graph([x], training=False), tf.repeat(classes, k), target),
                                    (-1, k, scores_per_image))
                weights = self.weigh(scores, clean) * valid[:, None]
                return tf.einsum("gkc,khw->gchw", weights, m)

            start = tf.zeros(tf.stack([tf.shape(images)[0], scores_per_image, *size]))
            return self.scale(self.fold(n, body, start), size)

        return compile_once(masked, tf.TensorSpec((None, *shape), tf.float32),
                            tf.TensorSpec((None,), tf.int32))


class Occlusion(_Masked):
    """Occlusion (Zeiler & Fergus 2014): a ``patch`` x ``patch`` square slides with ``stride``
    (plus a last position flush with the bottom and right edges, so every pixel is covered),
    filled with ``fill``: ``black`` (0) or ``mean`` (the image's mean over pixels and channels,
    the paper's grey square). Map(p) = mean over the squares covering pixel p of the drop
    s(x) - s(occluded x), s the target's score: by default the class logit, as the CAMs. Normalised as
    the CAMs: ReLU (squares whose occlusion raises the logit count as no evidence), then max.
    ``batch``: occluded images per pass."""

    signed = False

    def __init__(self, patch: int = 16, stride: int = 8, fill: Literal["black", "mean"] = "mean",
                 batch: int = 64) -> None:
        self.patch, self.stride = at_least("patch", patch, 1), at_least("stride", stride, 1)
        self.fill, self.batch = fill, at_least("batch", batch, 1)

    def starts(self, length: int) -> tuple[int, list[int]]:
        side = max(1, min(self.patch, length))
        starts = list(range(0, length - side + 1, max(1, self.stride)))
        return side, starts + ([length - side] if starts[-1] != length - side else [])

    def passes(self, size: tuple[int, int]) -> int:
        return len(self.starts(size[0])[1]) * len(self.starts(size[1])[1])

    def make_masks(self, j: Any, size: tuple[int, int]) -> Any:
        import tensorflow as tf

        (h, tops), (w, lefts) = self.starts(size[0]), self.starts(size[1])
        top, left = tf.gather(tops, j // len(lefts)), tf.gather(lefts, j % len(lefts))
        rows = tf.range(size[0])[None] - top[:, None]
        cols = tf.range(size[1])[None] - left[:, None]
        rows, cols = ((d >= 0) & (d < side) for d, side in ((rows, h), (cols, w)))
        return tf.cast(rows[:, :, None] & cols[:, None, :], tf.float32)

    def perturb(self, images: Any, masks: Any) -> Any:
        import tensorflow as tf

        fill = tf.reduce_mean(images, axis=[2, 3, 4], keepdims=True) if self.fill == "mean" else 0.0
        return images * (1.0 - masks) + fill * masks

    def weigh(self, scores: Any, clean: Any) -> Any:
        return clean - scores

    def scale(self, total: Any, size: tuple[int, int]) -> Any:
        covers = []  # squares covering each row (column): the count is their outer product
        for length in size:
            side, starts = self.starts(length)
            covers.append(np.zeros(length, np.float32))
            for start in starts:
                covers[-1][start:start + side] += 1.0
        return total / np.outer(*covers)


class RISE(_Masked):
    """RISE (Petsiuk et al. 2018): ``masks`` binary grids of ``cells`` x ``cells`` cells, each
    kept with probability ``p``, upsampled bilinearly to (cells + 1) * ceil(H / cells) pixels
    a side and cropped to H x W at a random shift in [0, ceil(H / cells)) (as the authors'
    code). Map = sum_i s(x * M_i) M_i / (N p), s the target's score: by default P_c, the
    softmax probability of class c (of the ``logits``, as the paper), N = ``masks``. Masks
    depend only on ``seed`` and the image size: deterministic. The paper's map has an offset
    (about the mean probability): min-max normalised. ``batch``: masked images per pass."""

    default_target = ClassProbability

    uses_clean = False

    def __init__(self, masks: int = 1000, cells: int = 7, p: float = 0.5, seed: int = 0,
                 batch: int = 64) -> None:
        if not 0.0 < p < 1.0:
            raise ValueError(f"'p' (the share of cells kept) must be in (0, 1), got {p}")
        self.masks, self.cells = at_least("masks", masks, 1), at_least("cells", cells, 1)
        self.p, self.seed, self.batch = p, at_least("seed", seed, 0), at_least("batch", batch, 1)

    def passes(self, size: tuple[int, int]) -> int:
        return self.masks

    def make_masks(self, j: Any, size: tuple[int, int]) -> Any:
        import tensorflow as tf

        grids, shifts = rise_draws(self.masks, self.cells, self.p, self.seed, size)
        cell = [-(-side // self.cells) for side in size]  # ceil(H / cells), ceil(W / cells)
        up = [(self.cells + 1) * c for c in cell]
        up = tf.image.resize(tf.gather(grids, j)[..., None], up, "bilinear")[..., 0]
        shift = tf.gather(shifts, j)
        up = tf.gather(up, shift[:, :1] + tf.range(size[0])[None], axis=1, batch_dims=1)
        return tf.gather(up, shift[:, 1:] + tf.range(size[1])[None], axis=2, batch_dims=1)

    def perturb(self, images: Any, masks: Any) -> Any:
        return images * masks

    def weigh(self, scores: Any, clean: Any) -> Any:
        return scores

    def scale(self, total: Any, size: tuple[int, int]) -> Any:
        return total / (self.masks * self.p)


@cache
def rise_draws(masks: int, cells: int, p: float, seed: int,
               size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """RISE's random draws, once per setting: the binary grids (masks, cells, cells) float32 and
    the crop shifts (masks, 2) int32 in [0, ceil(side / cells))."""
    rng = np.random.default_rng(seed)
    grids = (rng.random((masks, cells, cells)) < p).astype(np.float32)
    shifts = rng.integers(0, [-(-side // cells) for side in size], (masks, 2)).astype(np.int32)
    return grids, shifts
