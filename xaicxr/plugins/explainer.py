"""The explainer plugin contract and the mechanism every explainer shares.

Contract: ``Explainer(**options).explain(model, images, targets, layer=None)`` takes ``images``
(N, H, W, C) float32 as the model takes them and ``targets`` (N,) class indices, and returns
(N, H, W) float32 in [0, 1] at input resolution. ``targets`` may also be a score
(:mod:`xaicxr.plugins.targets`): a :class:`~xaicxr.plugins.targets.Target` (class logit, class
probability, a binary task's score) or any callable from the logits (N, C) to one score per
image; class indices mean the explainer's :attr:`~Explainer.default_target` bound to them (the
class logit; RISE and Score-CAM: the class probability, as their papers).

What is shared, so that every explainer is comparable:

* **Layer and score**: found by :mod:`xaicxr.kerasgraph` (a layer by name or path, nested
  models included; the ``logits`` layer as the model's output: gradients of softmax
  probabilities saturate and mix in the other classes). What is explained is the target's score
  of those logits (:mod:`xaicxr.plugins.targets`), handed to every method as an argument.
* **Maps.** A raw map at layer resolution is upsampled bilinearly to the input size
  (``tf.image.resize``), then normalised per image: by its maximum after a ReLU for CAM-style
  maps, min-max for signed or offset maps (saliency). A map that is all zero, constant (a
  positive constant too: it would come back all ones and earn a flat map's chance share), or has
  a non-finite value is *degenerate*: it comes back as zeros and flagged, never as NaN
  (``explain_with_info`` returns the flags). One rule for every explainer: every one subclasses
  :class:`Explainer` and finishes its maps with :func:`finish_maps`.
* **CAMs** (:class:`CAMExplainer`): forward pass, gradient, map, upsampling and normalisation
  compiled into one TensorFlow function; a CAM method overrides only how channels are weighted.

TensorFlow is imported inside functions: plugin modules import this module, and listing
plugins must stay fast.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import ExplainerInputError
from ..kerasgraph import ExplainableModel, explainable_model, model_cache, resolve_layer, score_layer
from .options import Configurable
from .targets import ClassLogit, Target, as_target

TINY = float(np.finfo(np.float32).tiny)
FLAT = 1e-5
"""A map whose values spread less than this share of its maximum is constant (upsampling a
constant leaves rounding noise of a few float32 ulps): degenerate, even when positive."""


class DegenerateMapsWarning(UserWarning):
    """:meth:`Explainer.explain` returned maps without signal (zeros, flagged): never silent."""


def finish_maps(raw: Any, size: tuple[int, int], signed: bool = False) -> tuple[Any, Any]:
    """Raw maps (..., h, w) -> (maps (..., H, W) in [0, 1], degenerate (...) bool), TF ops.

    ReLU then divide by the maximum (``signed=False``), or min-max (``signed=True``).
    Usable inside a ``tf.function`` and eagerly, so every explainer finishes identically.
    """
    import tensorflow as tf

    raw = tf.convert_to_tensor(raw, tf.float32)
    lead = tf.shape(raw)[:-2]
    hw = tf.shape(raw)[-2:]
    flat = tf.reshape(raw, tf.concat([[-1], hw, [1]], axis=0))
    finite = tf.reduce_all(tf.math.is_finite(flat), axis=[1, 2, 3])
    flat = tf.where(tf.math.is_finite(flat), flat, 0.0)
    if not signed:
        flat = tf.nn.relu(flat)
    up = tf.image.resize(flat, size, method="bilinear")
    hi = tf.reduce_max(up, axis=[1, 2, 3], keepdims=True)
    lo = tf.reduce_min(up, axis=[1, 2, 3], keepdims=True) if signed else tf.zeros_like(hi)
    span = hi - lo
    spread = hi - tf.reduce_min(up, axis=[1, 2, 3], keepdims=True)
    ok = finite & (span[:, 0, 0, 0] > TINY) & (spread[:, 0, 0, 0] > FLAT * tf.abs(hi[:, 0, 0, 0]))
    ok4 = ok[:, None, None, None]
    maps = tf.where(ok4, tf.clip_by_value((up - lo) / tf.where(ok4, span, 1.0), 0.0, 1.0), 0.0)
    maps = tf.reshape(maps, tf.concat([lead, size], axis=0))
    return maps, tf.reshape(tf.logical_not(ok), lead)


def compile_once(fn: Any, *signature: Any) -> Any:
    """``fn`` as a ``tf.function`` over ``signature`` (``tf.TensorSpec``s whose batch dimension
    is None), traced once for every batch size: a last short batch costs only its own images, as
    padding it to the batch size would not, and on CPU static shapes buy nothing (XLA was slower).

    TensorFlow's "N out of the last M calls ... triggered tf.function retracing" counts traces
    per Python code object, so the compiled functions made from one nested ``def`` for several
    models, layers or explainers (each traced once, as it must be) add up to that warning though
    none retraces. Wrapped in a ``functools.partial``, each function is counted on its own."""
    import functools

    import tensorflow as tf

    return tf.function(functools.partial(fn), input_signature=list(signature), autograph=False)


_finishers: dict[tuple[tuple[int, int], bool], Any] = {}


def _finish_fn(size: tuple[int, int], signed: bool) -> Any:
    import tensorflow as tf

    key = (tuple(size), signed)
    fn = _finishers.get(key)
    if fn is None:
        fn = _finishers[key] = compile_once(lambda raw: finish_maps(raw, key[0], signed),
                                            tf.TensorSpec((None, None, None), tf.float32))
    return fn


# --------------------------------------------------------------------------- base classes


class Explainer(Configurable, ABC):
    """Base of explainer plugins: every explainer subclasses it (the registry refuses a class
    that does not), so every explainer has the same public surface and the same degenerate rule.

    Public: :meth:`explain` and :meth:`explain_with_info` (one map per image), :meth:`explain_all`
    and :meth:`explain_all_with_info` (every class), :meth:`resolve_layer`. An explainer object
    holds only its options; what is explained (the target) is an argument of every call, never
    state of the object, so one object can serve several jobs and threads.

    A subclass implements :meth:`raw_maps`; one with a faster path for finished maps (a compiled
    function, one forward pass for every class) overrides :meth:`compute_maps` or
    :meth:`compute_all`. Class attributes: ``uses_layer`` (False for input-space methods such as
    saliency), ``signed`` (min-max normalisation instead of ReLU + max), ``default_target`` (what
    class indices mean), ``reads_score`` (True where the method computes what it explains with
    the target's ``score`` / ``class_scores``, so it honours any target; False: it is refused
    targets other than its default).
    """

    uses_layer: ClassVar[bool] = True
    signed: ClassVar[bool] = False
    default_target: ClassVar[type[Target]] = ClassLogit
    reads_score: ClassVar[bool] = False

    # ---- public API

    def resolve_layer(self, model: Any, layer: str | None = None) -> str:
        """The path of the layer that ``explain(..., layer)`` will use ("" if none is used)."""
        return resolve_layer(model, layer).path if self.uses_layer else ""

    def explain(self, model: Any, images: Any, targets: Any,
                layer: str | None = None) -> np.ndarray:
        """(N, H, W) float32 maps in [0, 1] of ``targets`` (N,); see the module docstring.
        ``targets="all"`` (or a classwise target bound to ``"all"``) is :meth:`explain_all`:
        (N, C, H, W), every class."""
        maps, degenerate = self.explain_with_info(model, images, targets, layer)
        if np.any(degenerate):
            warnings.warn(DegenerateMapsWarning(
                f"{type(self).__name__}: {int(np.sum(degenerate))} of {np.size(degenerate)} maps are degenerate (no "
                "signal: all zero, constant or non-finite) and came back as zeros; explain_with_info returns "
                "which (a layer the score does not depend on, or a saturated softmax: explain its logits)"),
                stacklevel=2)
        return maps

    def explain_with_info(self, model: Any, images: Any, targets: Any,
                          layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(maps (N, H, W), degenerate (N,) bool)``; for ``targets="all"``, those of
        :meth:`explain_all_with_info`."""
        if isinstance(targets, str) and targets == "all":
            return self.explain_all_with_info(model, images, layer)
        if isinstance(targets, Target) and targets.every_class:
            return self.explain_all_with_info(model, images, layer, target=targets)
        images = check_images(model, images)
        target, classes = self.bind_target(targets, len(images), self.n_classes(model, layer))
        if len(images) == 0:
            return _empty(images, ())
        return self.compute_maps(model, images, classes, layer, target)

    def explain_all(self, model: Any, images: Any, layer: str | None = None,
                    target: Target | None = None) -> np.ndarray:
        """(N, C, H, W) maps of every class's score of ``target`` (a classwise target; None: the
        explainer's default)."""
        maps, _ = self.explain_all_with_info(model, images, layer, target)
        return maps

    def explain_all_with_info(self, model: Any, images: Any, layer: str | None = None,
                              target: Target | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(maps (N, C, H, W), degenerate (N, C))``."""
        images = check_images(model, images)
        target = self.every_class_target(target)
        n_classes = self.n_classes(model, layer)
        if len(images) == 0:
            return _empty(images, (n_classes,))
        return self.compute_all(model, images, layer, target)

    def bind_target(self, targets: Any, n: int, n_classes: int) -> tuple[Target, np.ndarray]:
        """``targets`` of :meth:`explain` as a target and the (N,) class indices fed to it;
        refuses a target this explainer does not read."""
        target = as_target(targets, self.default_target)
        self.check_target(target)
        target.check(n_classes)
        return target, target.indices(n, n_classes)

    def check_target(self, target: Target) -> None:
        """Raise unless this explainer explains ``target`` (any, where it reads the score)."""
        if not self.reads_score and not isinstance(target, self.default_target):
            raise ExplainerInputError(f"{type(self).__name__} explains class indices only (it does not read "
                                      f"the target's score); target {target.label!r} needs an explainer that does")

    def every_class_target(self, target: Target | None = None) -> Target:
        """``target`` (None: the default) checked to have a score per class (all-class mode)."""
        target = self.default_target() if target is None else target
        self.check_target(target)
        if not target.classwise:
            raise ExplainerInputError(f"target {target.label!r} has one score per image, not one per class; "
                                      "all-class mode (targets = \"all\") needs a class logit or probability")
        return target

    def n_classes(self, model: Any, layer: str | None = None) -> int:
        """The number of scores the model's ``logits`` give."""
        if self.uses_layer:
            return self.explainable(model, layer).n_classes
        ref = score_layer(model)
        return int((ref.layer.output if ref is not None else model.outputs[0]).shape[-1])

    # ---- for subclasses

    @abstractmethod
    def raw_maps(self, model: Any, images: np.ndarray, classes: np.ndarray, layer: str | None,
                 target: Target) -> Any:
        """Raw (N, h, w) maps of ``target``'s score at layer (or input) resolution, before
        upsampling and normalising; ``classes`` (N,) are the indices ``target.score`` takes."""

    def compute_maps(self, model: Any, images: np.ndarray, classes: np.ndarray, layer: str | None,
                     target: Target) -> tuple[np.ndarray, np.ndarray]:
        """Finished maps and degenerate flags of checked, non-empty inputs: :meth:`raw_maps`
        upsampled and normalised by :func:`finish_maps`."""
        return finish_batch(self.raw_maps(model, images, classes, layer, target), images, self.signed)

    def compute_all(self, model: Any, images: np.ndarray, layer: str | None,
                    target: Target) -> tuple[np.ndarray, np.ndarray]:
        """(N, C, H, W) maps and (N, C) flags of every class's score: here one
        :meth:`compute_maps` per class; subclasses that share the forward pass override it."""
        runs = [self.compute_maps(model, images, np.full(len(images), c), layer, target)
                for c in range(self.n_classes(model, layer))]
        return np.stack([m for m, _ in runs], axis=1), np.stack([d for _, d in runs], axis=1)

    def explainable(self, model: Any, layer: str | None) -> ExplainableModel:
        return explainable_model(model, layer)


def finish_batch(raw: Any, images: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`finish_maps` of raw (N, h, w) maps to the size of ``images`` (N, H, W, C), compiled
    once per size: finished maps as NumPy, and their degenerate flags."""
    maps, flags = _finish_fn(tuple(images.shape[1:3]), signed)(raw)
    return maps.numpy().astype(np.float32, copy=False), flags.numpy().astype(bool)


def _empty(images: np.ndarray, lead: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, *lead, *images.shape[1:3]), np.float32), np.zeros((0, *lead), bool)


class CAMExplainer(Explainer):
    """The class-activation-map family as one compiled TensorFlow function per
    (model, layer, mode, input shape, options, target): forward pass to [activations, logits],
    gradient of the target's score with respect to the activations, :meth:`cam`, upsampling
    and normalisation.

    A variant overrides :meth:`channel_weights` (Grad-CAM: spatial mean of the gradients), or
    :meth:`cam` when its weights are per position (LayerCAM). All-class mode shares one
    forward pass between the classes (:meth:`compute_all`). The differentiated score is the
    target's score of the logits, so every variant honours every target.
    """

    reads_score = True

    allclass_method: ClassVar[Literal["loop", "jacobian"]] = "loop"
    """How all-class mode gets C gradients from one forward pass: C backward passes from a
    persistent tape ("loop"), or one ``batch_jacobian`` ("jacobian"). On VGG19 224 px, 4 classes,
    2 CPU cores, "loop" took 0.97-0.98x the time of one class in three runs, "jacobian"
    0.99-1.5x (``benchmarks/explain.py --jacobian``): the backward pass from the logits to
    ``block5_conv4`` is tiny next to the forward pass."""

    def channel_weights(self, activations: Any, gradients: Any) -> Any:
        """(N, h, w, k) activations and gradients -> (N, k) channel weights (TF ops)."""
        raise NotImplementedError(f"{type(self).__name__} overrides neither channel_weights nor cam")

    def cam(self, activations: Any, gradients: Any) -> Any:
        """(N, h, w) raw map: ReLU of the weighted sum of the activation channels."""
        import tensorflow as tf

        weights = self.channel_weights(activations, gradients)
        return tf.nn.relu(tf.einsum("nhwk,nk->nhw", activations, weights))

    # ---- compiled mechanism

    def compute_maps(self, model: Any, images: np.ndarray, classes: np.ndarray, layer: str | None,
                     target: Target) -> tuple[np.ndarray, np.ndarray]:
        fn = self._compiled(model, self.explainable(model, layer), "single", images.shape[1:], target)
        maps, flags = fn(images, classes.astype(np.int32))
        return maps.numpy(), flags.numpy().astype(bool)

    def compute_all(self, model: Any, images: np.ndarray, layer: str | None,
                    target: Target) -> tuple[np.ndarray, np.ndarray]:
        exp = self.explainable(model, layer)
        maps, flags = self._compiled(model, exp, self.allclass_method, images.shape[1:], target)(images)
        return maps.numpy(), flags.numpy().astype(bool)

    def raw_maps(self, model: Any, images: np.ndarray, classes: np.ndarray, layer: str | None,
                 target: Target) -> Any:
        """Uncompiled raw maps (for subclasses and checks; ``explain`` uses the compiled path)."""
        return self.class_maps(self.explainable(model, layer).model, images, classes, target)

    def class_maps(self, graph: Any, images: Any, classes: Any, target: Target) -> Any:
        """(N, h, w) raw maps of ``target``'s score (``classes``: the class indices it is
        given), traced inside the compiled function; ``graph`` maps images to [activations,
        logits]. Gradient-based methods leave it alone; a method that needs no gradient
        (Eigen-CAM) or other forward passes (Ablation-CAM) overrides it, and
        :meth:`every_class_maps` for all-class mode."""
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)  # frozen layers would otherwise break the chain to the activations
            acts, logits = graph(images, training=False)
            score = target.score(logits, classes)
        grads = tape.gradient(score, acts, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return self.cam(acts, grads)

    def every_class_maps(self, graph: Any, images: Any, method: str, target: Target) -> Any:
        """(N, C, h, w) raw maps of every class's score (``target.class_scores``) from one
        forward pass (``allclass_method``)."""
        import tensorflow as tf

        with tf.GradientTape(persistent=method == "loop", watch_accessed_variables=False) as tape:
            tape.watch(images)
            acts, logits = graph(images, training=False)
            table = target.class_scores(logits)
            n_classes = int(logits.shape[-1])
            scores = [table[:, c] for c in range(n_classes)] if method == "loop" else None
        zero = tf.UnconnectedGradients.ZERO
        if method == "loop":
            grads = tf.stack([tape.gradient(s, acts, unconnected_gradients=zero) for s in scores],
                             axis=1)
        else:
            grads = tape.batch_jacobian(table, acts, unconnected_gradients=zero)
        del tape
        shape = tf.shape(grads)
        flat_grads = tf.reshape(grads, tf.concat([[-1], shape[2:]], axis=0))
        flat_acts = tf.repeat(acts, n_classes, axis=0)
        raw = self.cam(flat_acts, flat_grads)
        return tf.reshape(raw, tf.concat([shape[:2], tf.shape(raw)[1:]], axis=0))

    def _compiled(self, model: Any, exp: ExplainableModel, mode: str, image_shape: tuple,
                  target: Target) -> Any:
        cache = model_cache(model)
        key = ("cam", type(self), repr(sorted(self.options().items())), exp.layer, mode,
               tuple(image_shape), target.key)
        fn = cache.get(key)
        if fn is None:
            fn = cache[key] = self._compile(exp.model, mode, tuple(image_shape), target)
        return fn

    def _compile(self, graph: Any, mode: str, image_shape: tuple, target: Target) -> Any:
        import tensorflow as tf

        size = image_shape[:2]
        spec = tf.TensorSpec((None, *image_shape), tf.float32)
        if mode == "single":
            def single(images, classes):
                return finish_maps(self.class_maps(graph, images, classes, target), size, self.signed)
            return compile_once(single, spec, tf.TensorSpec((None,), tf.int32))

        def every_class(images):
            return finish_maps(self.every_class_maps(graph, images, mode, target), size, self.signed)
        return compile_once(every_class, spec)


# --------------------------------------------------------------------------- inputs


def check_images(model: Any, images: Any) -> np.ndarray:
    """``images`` as float32 (N, H, W, C) matching the model input; (N, H, W) gains C = 1."""
    images = np.asarray(images, dtype=np.float32)
    expected = tuple(model.inputs[0].shape[1:])
    if images.ndim == 3 and len(expected) == 3 and expected[-1] == 1:
        images = images[..., None]
    fits = images.ndim == 4 and all(e is None or e == s for e, s in zip(expected, images.shape[1:]))
    if not fits:
        raise ExplainerInputError(f"images have shape {images.shape}; model {model.name!r} takes "
                                  f"(N, {', '.join(str(e) for e in expected)})")
    return np.ascontiguousarray(images)
