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
  of those logits, read in one place, :meth:`Explainer.score`.
* **Maps.** A raw map at layer resolution is upsampled bilinearly to the input size
  (``tf.image.resize``), then normalised per image: by its maximum after a ReLU for CAM-style
  maps, min-max for signed or offset maps (saliency). A map that is all zero, constant, or has
  a non-finite value is *degenerate*: it comes back as zeros and flagged, never as NaN
  (``explain_with_info`` returns the flags; ``explain`` keeps them in ``last_degenerate``).
* **CAMs** (:class:`CAMExplainer`): forward pass, gradient, map, upsampling and normalisation
  compiled into one TensorFlow function; a CAM method overrides only how channels are weighted.

TensorFlow is imported inside functions: plugin modules import this module, and listing
plugins must stay fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Literal

import numpy as np

from ..errors import ExplainerInputError
from ..kerasgraph import ExplainableModel, explainable_model, model_cache, resolve_layer, score_layer
from .options import Configurable
from .targets import ClassLogit, Target, as_target

TINY = float(np.finfo(np.float32).tiny)


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
    ok = finite & (span[:, 0, 0, 0] > TINY)
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


class Explainer(Configurable):
    """Base of explainer plugins. A subclass implements :meth:`raw_maps`; options are typed
    keyword arguments of its ``__init__`` stored as attributes of the same name.

    Class attributes: ``uses_layer`` (False for input-gradient methods such as saliency),
    ``signed`` (min-max normalisation instead of ReLU + max), ``default_target`` (what class
    indices mean), ``reads_score`` (True where the method computes what it explains with
    :meth:`score` / :meth:`class_scores`, so it honours any target; a subclass that picks the
    class logit itself leaves it False and is refused other targets).
    """

    uses_layer: ClassVar[bool] = True
    signed: ClassVar[bool] = False
    default_target: ClassVar[type[Target]] = ClassLogit
    reads_score: ClassVar[bool] = False

    last_degenerate: np.ndarray | None = None
    _active_target: Target | None = None

    def resolve_layer(self, model: Any, layer: str | None = None) -> str:
        """The path of the layer that ``explain(..., layer)`` will use ("" if none is used)."""
        return resolve_layer(model, layer).path if self.uses_layer else ""

    # ---- the score: what is explained

    @property
    def target(self) -> Target:
        """The target of the explanation under way (:meth:`scoring`), else the default."""
        return self._active_target if self._active_target is not None else self.default_target()

    @contextmanager
    def scoring(self, target: Target) -> Iterator[Target]:
        """Explain ``target`` inside the block (all-class mode of a probability, say)."""
        previous, self._active_target = self._active_target, target
        try:
            yield target
        finally:
            self._active_target = previous

    def score(self, logits: Any, classes: Any) -> Any:
        """(N,) the explained score from the logits (N, C) and class indices (N,) (TF ops): the
        one place an explainer turns the model's outputs into what it explains."""
        return self.target.score(logits, classes)

    def class_scores(self, logits: Any) -> Any:
        """(N, C) every class's score, for all-class modes (classwise targets only)."""
        return self.target.class_scores(logits)

    def bind_target(self, targets: Any, n: int, n_classes: int) -> tuple[Target, np.ndarray]:
        """``targets`` of :meth:`explain` as a target and the (N,) class indices fed to it."""
        target = as_target(targets, self.default_target)
        if not self.reads_score and not isinstance(target, self.default_target):
            raise ExplainerInputError(f"{type(self).__name__} explains class indices only (it does not read "
                                      f"Explainer.score); target {target.label!r} needs an explainer that does")
        target.check(n_classes)
        return target, target.indices(n, n_classes)

    # ---- public API

    def explain(self, model: Any, images: Any, targets: Any,
                layer: str | None = None) -> np.ndarray:
        """(N, H, W) float32 maps in [0, 1] of ``targets`` (N,); see the module docstring.
        ``targets="all"`` (or a classwise target bound to ``"all"``) is :meth:`explain_all`:
        (N, C, H, W), every class."""
        if isinstance(targets, str) and targets == "all":
            return self.explain_all(model, images, layer)
        if isinstance(targets, Target) and targets.every_class:
            with self.scoring(targets):
                return self.explain_all(model, images, layer)
        maps, _ = self.explain_with_info(model, images, targets, layer)
        return maps

    def explain_with_info(self, model: Any, images: Any, targets: Any,
                          layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(maps (N, H, W), degenerate (N,) bool)``."""
        images = check_images(model, images)
        n_classes = self._n_classes(model, layer)
        target, targets = self.bind_target(targets, len(images), n_classes)
        if len(images) == 0:
            return self._empty(images, ())
        with self.scoring(target):
            raw = self.raw_maps(model, images, targets, layer)
        return self._finish(raw, images)

    def explain_all(self, model: Any, images: Any, layer: str | None = None) -> np.ndarray:
        """(N, C, H, W) maps of every class."""
        maps, _ = self.explain_all_with_info(model, images, layer)
        return maps

    def explain_all_with_info(self, model: Any, images: Any,
                              layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(maps (N, C, H, W), degenerate (N, C))`` of :attr:`target`'s class scores; here one
        ``explain`` per class, subclasses that can share the forward pass override it."""
        images = check_images(model, images)
        n_classes = self._n_classes(model, layer)
        target = self.every_class_target()
        runs = [self.explain_with_info(model, images, target.bind(np.full(len(images), c)), layer)
                for c in range(n_classes)]
        return self._store_flags(np.stack([m for m, _ in runs], axis=1),
                                 np.stack([d for _, d in runs], axis=1))

    # ---- for subclasses

    def every_class_target(self) -> Target:
        """:attr:`target`, checked to have a score per class (all-class mode)."""
        target = self.target
        if not target.classwise:
            raise ExplainerInputError(f"target {target.label!r} has one score per image, not one per class; "
                                      "all-class mode (targets = \"all\") needs a class logit or probability")
        return target

    def raw_maps(self, model: Any, images: np.ndarray, targets: np.ndarray,
                 layer: str | None) -> Any:
        """Raw (N, h, w) maps at layer (or input) resolution, before upsampling/normalising."""
        raise NotImplementedError

    def explainable(self, model: Any, layer: str | None) -> ExplainableModel:
        return explainable_model(model, layer)

    def _n_classes(self, model: Any, layer: str | None) -> int:
        if self.uses_layer:
            return self.explainable(model, layer).n_classes
        ref = score_layer(model)
        return int((ref.layer.output if ref is not None else model.outputs[0]).shape[-1])

    def _finish(self, raw: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, flags = _finish_fn(tuple(images.shape[1:3]), self.signed)(raw)
        return self._store_flags(maps.numpy(), flags.numpy())

    def _store_flags(self, maps: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.last_degenerate = flags.astype(bool)
        return maps.astype(np.float32, copy=False), self.last_degenerate

    def _empty(self, images: np.ndarray, lead: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        return self._store_flags(np.zeros((0, *lead, *images.shape[1:3]), np.float32),
                                 np.zeros((0, *lead), bool))


class CAMExplainer(Explainer):
    """The class-activation-map family as one compiled TensorFlow function per
    (model, layer, mode, input shape, options, target): forward pass to [activations, logits],
    gradient of the target's :meth:`score` with respect to the activations, :meth:`cam`,
    upsampling and normalisation.

    A variant overrides :meth:`channel_weights` (Grad-CAM: spatial mean of the gradients), or
    :meth:`cam` when its weights are per position (LayerCAM). All-class mode shares one
    forward pass between the classes (:meth:`explain_all_with_info`). The differentiated score
    is :meth:`score` of the logits (the target's), so every variant honours every target.
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
        raise NotImplementedError

    def cam(self, activations: Any, gradients: Any) -> Any:
        """(N, h, w) raw map: ReLU of the weighted sum of the activation channels."""
        import tensorflow as tf

        weights = self.channel_weights(activations, gradients)
        return tf.nn.relu(tf.einsum("nhwk,nk->nhw", activations, weights))

    # ---- compiled mechanism

    def explain_with_info(self, model: Any, images: Any, targets: Any,
                          layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        images = check_images(model, images)
        exp = self.explainable(model, layer)
        target, targets = self.bind_target(targets, len(images), exp.n_classes)
        if len(images) == 0:
            return self._empty(images, ())
        with self.scoring(target):
            fn = self._compiled(model, exp, "single", images.shape[1:])
            maps, flags = fn(images, targets.astype(np.int32))
        return self._store_flags(maps.numpy(), flags.numpy())

    def explain_all_with_info(self, model: Any, images: Any,
                              layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        images = check_images(model, images)
        exp = self.explainable(model, layer)
        self.every_class_target()
        if len(images) == 0:
            return self._empty(images, (exp.n_classes,))
        maps, flags = self._compiled(model, exp, self.allclass_method, images.shape[1:])(images)
        return self._store_flags(maps.numpy(), flags.numpy())

    def raw_maps(self, model: Any, images: np.ndarray, targets: np.ndarray,
                 layer: str | None) -> Any:
        """Uncompiled raw maps (for subclasses and checks; ``explain`` uses the compiled path)."""
        return self.class_maps(self.explainable(model, layer).model, images, targets)

    def class_maps(self, graph: Any, images: Any, targets: Any) -> Any:
        """(N, h, w) raw maps of :meth:`score` (``targets``: the class indices it is given), traced
        inside the compiled function; ``graph`` maps images to [activations, logits].
        Gradient-based methods leave it alone;
        a method that needs no gradient (Eigen-CAM) or other forward passes (Ablation-CAM)
        overrides it, and :meth:`every_class_maps` for all-class mode."""
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)  # frozen layers would otherwise break the chain to the activations
            acts, logits = graph(images, training=False)
            score = self.score(logits, targets)
        grads = tape.gradient(score, acts, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return self.cam(acts, grads)

    def every_class_maps(self, graph: Any, images: Any, method: str) -> Any:
        """(N, C, h, w) raw maps of every class's score (:meth:`class_scores`) from one forward
        pass (``allclass_method``)."""
        import tensorflow as tf

        with tf.GradientTape(persistent=method == "loop", watch_accessed_variables=False) as tape:
            tape.watch(images)
            acts, logits = graph(images, training=False)
            table = self.class_scores(logits)
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

    def _compiled(self, model: Any, exp: ExplainableModel, mode: str, image_shape: tuple) -> Any:
        cache = model_cache(model)
        key = ("cam", type(self), repr(sorted(self.options().items())), exp.layer, mode,
               tuple(image_shape), self.target.key)
        fn = cache.get(key)
        if fn is None:
            fn = cache[key] = self._compile(exp.model, mode, tuple(image_shape))
        return fn

    def _compile(self, graph: Any, mode: str, image_shape: tuple) -> Any:
        """The compiled function of :attr:`target` (bound now, so a later trace scores the same)."""
        import tensorflow as tf

        size, target = image_shape[:2], self.target
        spec = tf.TensorSpec((None, *image_shape), tf.float32)
        if mode == "single":
            def single(images, targets):
                with self.scoring(target):
                    return finish_maps(self.class_maps(graph, images, targets), size, self.signed)
            return compile_once(single, spec, tf.TensorSpec((None,), tf.int32))

        def every_class(images):
            with self.scoring(target):
                return finish_maps(self.every_class_maps(graph, images, mode), size, self.signed)
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


def check_targets(targets: Any, n: int, n_classes: int) -> np.ndarray:
    """``targets`` as int (N,) class indices in [0, n_classes)."""
    targets = np.asarray(targets)
    if targets.ndim == 0:
        targets = np.full(n, targets)
    if targets.shape != (n,) or (n and not np.issubdtype(targets.dtype, np.integer)):
        raise ExplainerInputError(f"targets must be {n} class indices (one per image), got "
                                  f"shape {targets.shape} dtype {targets.dtype}")
    if n and (targets.min() < 0 or targets.max() >= n_classes):
        raise ExplainerInputError(f"targets must be class indices in [0, {n_classes}), got "
                                  f"{targets.min()}..{targets.max()}")
    return targets.astype(np.int64)
