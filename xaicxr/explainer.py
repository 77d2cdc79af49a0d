"""The base classes of explainer plugins, and the work every explainer shares.

Contract: ``Explainer(**options).explain(model, images, targets, layer=None)`` takes ``images``
(N, H, W, C) float32 as the model takes them and ``targets`` (N,) class indices, and returns
(N, H, W) float32 in [0, 1] at input resolution.

What is shared, so that every explainer is comparable:

* **Target layer.** ``layer`` names a layer with a 4-D output (N, h, w, k). It is searched
  recursively: a layer inside a nested sub-model (a ``keras.applications.VGG19`` wrapped in a
  functional model is the classic case) is found by its own name, or by a path
  ``"vgg19/block5_conv4"`` when the name is ambiguous. ``layer=None`` picks the last 4-D layer
  that is not a pooling, dropout or padding layer (``block5_conv4`` for VGG19). An unknown name
  raises :class:`LayerNotFoundError`, whose message lists the candidates.
* **Score.** The explained score is the output of the layer named ``logits`` (pre-softmax, see
  :mod:`xaicxr.models`); gradients of softmax probabilities saturate and mix in the other
  classes. A model without a ``logits`` layer is explained on its (first) output as it is,
  which for a softmax model means on probabilities.
* **Maps.** A raw map at layer resolution is upsampled bilinearly to the input size
  (``tf.image.resize``), then normalised per image: by its maximum after a ReLU for CAM-style
  maps, min-max for signed or offset maps (saliency). A map that is all zero, constant, or has
  a non-finite value is *degenerate*: it comes back as zeros and flagged, never as NaN
  (``explain_with_info`` returns the flags; ``explain`` keeps them in ``last_degenerate``).

TensorFlow and Keras are imported inside functions: plugin modules import this module, and
listing plugins must stay fast.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Literal

import numpy as np

from .errors import XaicxrError

SCORE_LAYER = "logits"
TARGET_MARKER = "xaicxr_target"
"""Name of the identity layer that marks a nested target layer in a flattened model."""

TINY = float(np.finfo(np.float32).tiny)
_NOT_TARGETS = ("Pooling", "Dropout", "ZeroPadding", "Cropping", "UpSampling", "InputLayer")


class LayerNotFoundError(XaicxrError):
    """The target layer does not exist, or its output is not (N, h, w, k)."""


class ExplainerInputError(XaicxrError):
    """Images or targets that do not fit the model."""


# --------------------------------------------------------------------------- per-model cache


_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_models_by_id: dict[int, tuple[Any, dict]] = {}


def model_cache(model: Any) -> dict:
    """A dict that lives as long as ``model`` (weakly keyed): resolved layers, derived graphs
    and compiled functions go here, so repeated calls neither rebuild nor retrace."""
    try:
        return _models.setdefault(model, {})
    except TypeError:
        entry = _models_by_id.get(id(model))
        if entry is None or entry[0] is not model:
            entry = _models_by_id[id(model)] = (model, {})
        return entry[1]


# --------------------------------------------------------------------------- layer lookup


@dataclass(frozen=True)
class LayerRef:
    """A layer of a model, possibly inside nested sub-models (``chain``, outermost first)."""

    path: str
    layer: Any
    chain: tuple[Any, ...]

    @property
    def nested(self) -> bool:
        return bool(self.chain)


def _is_submodel(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model) and hasattr(layer, "layers")


def iter_layers(model: Any, _chain: tuple[Any, ...] = ()) -> Iterator[LayerRef]:
    """Every layer, depth first in graph order; a nested model is listed before its layers."""
    prefix = "/".join(m.name for m in _chain)
    for layer in model.layers:
        yield LayerRef(f"{prefix}/{layer.name}" if prefix else layer.name, layer, _chain)
        if _is_submodel(layer):
            yield from iter_layers(layer, _chain + (layer,))


def _output_rank(layer: Any) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, TypeError):
        return None


def spatial_layers(model: Any) -> list[LayerRef]:
    """The layers an explanation can target: 4-D outputs, input layers excluded."""
    return [ref for ref in iter_layers(model)
            if type(ref.layer).__name__ != "InputLayer" and _output_rank(ref.layer) == 4]


def default_layer(model: Any) -> LayerRef:
    """The last 4-D layer that is not pooling/dropout/padding, looking inside nested models."""
    for ref in reversed(spatial_layers(model)):
        kind = type(ref.layer).__name__
        if not _is_submodel(ref.layer) and not any(word in kind for word in _NOT_TARGETS):
            return ref
    raise LayerNotFoundError(f"model {model.name!r} has no layer with a 4-D output (N, h, w, k) "
                             "to explain")


def resolve_layer(model: Any, layer: str | None) -> LayerRef:
    """Find ``layer`` by name (recursively, shallowest first) or by ``outer/inner`` path."""
    cache = model_cache(model)
    key = ("layer", layer)
    if key not in cache:
        cache[key] = default_layer(model) if layer is None else _find_layer(model, layer)
    return cache[key]


def _find_layer(model: Any, layer: str) -> LayerRef:
    refs = list(iter_layers(model))
    matches = [r for r in refs if r.path == layer] or sorted(
        (r for r in refs if r.layer.name == layer), key=lambda r: len(r.chain))
    if matches and _output_rank(matches[0].layer) == 4:
        return matches[0]
    listing = ", ".join(r.path for r in spatial_layers(model)) or "none"
    if not matches:
        raise LayerNotFoundError(f"layer {layer!r} is not in model {model.name!r}; "
                                 f"layers with a 4-D output (N, h, w, k): {listing}")
    ref = matches[0]
    shape = tuple(ref.layer.output.shape)
    raise LayerNotFoundError(f"layer {ref.path!r} has output shape {shape}, not (N, h, w, k); "
                             f"layers with a 4-D output: {listing}")


def score_layer(model: Any) -> LayerRef | None:
    """The ``logits`` layer, searched like a target layer; None if the model has none."""
    found = [r for r in iter_layers(model) if r.layer.name == SCORE_LAYER]
    return min(found, key=lambda r: len(r.chain)) if found else None


# --------------------------------------------------------------------------- gradient model


@dataclass(frozen=True)
class ExplainableModel:
    """``model(images) -> [activations (N,h,w,k), scores (N,C)]`` as one flat functional graph.

    ``target_name`` is the layer of ``model`` whose ``.output`` is the activation tensor (the
    original layer for a flat model, an identity marker for a nested one), for libraries such
    as tf-keras-vis that look the layer up themselves.
    """

    model: Any
    target_name: str
    layer: str
    n_classes: int

    def logits_model(self) -> Any:
        """The graph cut at the scores, taking a list of inputs (as tf-keras-vis calls it)."""
        import keras

        return keras.Model(self.model.inputs, self.model.outputs[1], name="xaicxr_logits")


def model_inputs(model: Any) -> Any:
    """The model's input tensor, or the list of them if it has several (Keras warns when a
    single-input model is built on a one-element list and then called on a tensor)."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def explainable_model(model: Any, layer: str | None) -> ExplainableModel:
    """The (cached) flat model with outputs [target layer activations, scores]."""
    ref = resolve_layer(model, layer)
    cache = model_cache(model)
    key = ("explainable", ref.path)
    if key not in cache:
        cache[key] = _build_explainable(model, ref)
    return cache[key]


def _build_explainable(model: Any, ref: LayerRef) -> ExplainableModel:
    import keras

    score_ref = score_layer(model)
    graph = None
    if not ref.nested and (score_ref is None or not score_ref.nested):
        scores = score_ref.layer.output if score_ref is not None else model.outputs[0]
        try:
            graph = keras.Model(model_inputs(model), [ref.layer.output, scores],
                                name="xaicxr_explainable")
            target_name = ref.layer.name
        except ValueError:  # the layer's first call belongs to another model (shared layers)
            graph = None
    if graph is None:
        graph = _inline(model, ref, score_ref)
        target_name = TARGET_MARKER
    if len(graph.outputs[1].shape) != 2:
        raise ExplainerInputError(f"the score of model {model.name!r} has shape "
                                  f"{tuple(graph.outputs[1].shape)}; expected (N, classes)")
    return ExplainableModel(graph, target_name, ref.path, int(graph.outputs[1].shape[-1]))


def _inline(model: Any, ref: LayerRef, score_ref: LayerRef | None) -> Any:
    """Rebuild ``model`` on fresh inputs with the sub-models on the way to the target layer
    inlined, so that its activations and the scores are tensors of one graph.

    The layers (and so the weights) are the model's own; only the graph is new. The target's
    output passes through an identity layer named ``xaicxr_target`` that the rest of the graph
    consumes, so differentiating with respect to that tensor is differentiating the score.
    """
    import keras

    wanted = {id(ref.layer)} | ({id(score_ref.layer)} if score_ref is not None else set())
    open_models = {id(m) for m in ref.chain} | (
        {id(m) for m in score_ref.chain} if score_ref is not None else set())
    captured: dict[str, Any] = {}
    marker = keras.layers.Identity(name=TARGET_MARKER)

    def operation(op: Any) -> Any:
        if id(op) in open_models:
            return lambda *args, **kwargs: run(op, args[0])
        if id(op) not in wanted:
            return op

        def call(*args: Any, **kwargs: Any) -> Any:
            out = op(*args, **kwargs)
            if op is ref.layer and "acts" not in captured:
                out = captured["acts"] = marker(out)
            if score_ref is not None and op is score_ref.layer:
                captured.setdefault("scores", out)
            return out

        return call

    def run(m: Any, x: Any) -> Any:
        if isinstance(m, keras.Sequential):
            for layer in m.layers:
                x = operation(layer)(x)
            return x
        if hasattr(m, "_run_through_graph") and hasattr(m, "_nodes_by_depth"):
            return m._run_through_graph(x, operation_fn=operation)
        raise LayerNotFoundError(f"cannot look inside {m.name!r} ({type(m).__name__}): only "
                                 "functional and Sequential sub-models can be opened; choose a "
                                 "layer outside it")

    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype) for t in model.inputs]
    outputs = run(model, inputs[0] if len(inputs) == 1 else inputs)
    scores = captured.get("scores")
    if scores is None:
        scores = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    if "acts" not in captured:
        raise LayerNotFoundError(f"layer {ref.path!r} is not on the path from the inputs of "
                                 f"{model.name!r} to its output")
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, [captured["acts"], scores],
                       name="xaicxr_explainable")


# --------------------------------------------------------------------------- maps


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


_finishers: dict[tuple[tuple[int, int], bool], Any] = {}


def _finish_fn(size: tuple[int, int], signed: bool) -> Any:
    import tensorflow as tf

    key = (tuple(size), signed)
    fn = _finishers.get(key)
    if fn is None:
        spec = tf.TensorSpec((None, None, None), tf.float32)
        fn = _finishers[key] = tf.function(lambda raw: finish_maps(raw, key[0], signed),
                                           input_signature=[spec], autograph=False)
    return fn


# --------------------------------------------------------------------------- base classes


class Explainer:
    """Base of explainer plugins. A subclass implements :meth:`raw_maps`; options are typed
    keyword arguments of its ``__init__`` stored as attributes of the same name.

    Class attributes: ``uses_layer`` (False for input-gradient methods such as saliency),
    ``signed`` (min-max normalisation instead of ReLU + max).
    """

    uses_layer: ClassVar[bool] = True
    signed: ClassVar[bool] = False

    last_degenerate: np.ndarray | None = None

    def options(self) -> dict[str, Any]:
        """The options this explainer was made with (for the ``params`` of a heatmap store)."""
        params = inspect.signature(type(self).__init__).parameters
        return {name: getattr(self, name) for name, p in params.items()
                if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                and hasattr(self, name)}

    def resolve_layer(self, model: Any, layer: str | None = None) -> str:
        """The path of the layer that ``explain(..., layer)`` will use ("" if none is used)."""
        return resolve_layer(model, layer).path if self.uses_layer else ""

    # ---- public API

    def explain(self, model: Any, images: Any, targets: Any,
                layer: str | None = None) -> np.ndarray:
        """(N, H, W) float32 maps in [0, 1] of ``targets`` (N,); see the module docstring.
        ``targets="all"`` is :meth:`explain_all`: (N, C, H, W), every class."""
        if isinstance(targets, str) and targets == "all":
            return self.explain_all(model, images, layer)
        maps, _ = self.explain_with_info(model, images, targets, layer)
        return maps

    def explain_with_info(self, model: Any, images: Any, targets: Any,
                          layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(maps (N, H, W), degenerate (N,) bool)``."""
        images = check_images(model, images)
        n_classes = self._n_classes(model, layer)
        targets = check_targets(targets, len(images), n_classes)
        if len(images) == 0:
            return self._empty(images, ())
        raw = self.raw_maps(model, images, targets, layer)
        return self._finish(raw, images)

    def explain_all(self, model: Any, images: Any, layer: str | None = None) -> np.ndarray:
        """(N, C, H, W) maps of every class."""
        maps, _ = self.explain_all_with_info(model, images, layer)
        return maps

    def explain_all_with_info(self, model: Any, images: Any,
                              layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(maps (N, C, H, W), degenerate (N, C))``; here one ``explain`` per class,
        subclasses that can share the forward pass override it."""
        images = check_images(model, images)
        n_classes = self._n_classes(model, layer)
        runs = [self.explain_with_info(model, images, np.full(len(images), c), layer)
                for c in range(n_classes)]
        return self._store_flags(np.stack([m for m, _ in runs], axis=1),
                                 np.stack([d for _, d in runs], axis=1))

    # ---- for subclasses

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
    (model, layer, mode, input shape): forward pass to [activations, logits], gradient of the
    target logits with respect to the activations, :meth:`cam`, upsampling and normalisation.

    A variant overrides :meth:`channel_weights` (Grad-CAM: spatial mean of the gradients), or
    :meth:`cam` when its weights are per position (LayerCAM). All-class mode shares one
    forward pass between the classes (:meth:`explain_all_with_info`).
    """

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
        targets = check_targets(targets, len(images), exp.n_classes)
        if len(images) == 0:
            return self._empty(images, ())
        fn = self._compiled(model, exp, "single", images.shape[1:])
        maps, flags = fn(images, targets.astype(np.int32))
        return self._store_flags(maps.numpy(), flags.numpy())

    def explain_all_with_info(self, model: Any, images: Any,
                              layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        images = check_images(model, images)
        exp = self.explainable(model, layer)
        if len(images) == 0:
            return self._empty(images, (exp.n_classes,))
        maps, flags = self._compiled(model, exp, self.allclass_method, images.shape[1:])(images)
        return self._store_flags(maps.numpy(), flags.numpy())

    def raw_maps(self, model: Any, images: np.ndarray, targets: np.ndarray,
                 layer: str | None) -> Any:
        """Uncompiled raw maps (for subclasses and checks; ``explain`` uses the compiled path)."""
        return self._raw_single(self.explainable(model, layer).model, images, targets)

    def _raw_single(self, graph: Any, images: Any, targets: Any) -> Any:
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)  # frozen layers would otherwise break the chain to the activations
            acts, logits = graph(images, training=False)
            score = tf.gather(logits, tf.cast(targets, tf.int32), axis=1, batch_dims=1)
        grads = tape.gradient(score, acts, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return self.cam(acts, grads)

    def _raw_all(self, graph: Any, images: Any, method: str) -> Any:
        import tensorflow as tf

        with tf.GradientTape(persistent=method == "loop", watch_accessed_variables=False) as tape:
            tape.watch(images)
            acts, logits = graph(images, training=False)
            n_classes = int(logits.shape[-1])
            scores = [logits[:, c] for c in range(n_classes)] if method == "loop" else None
        zero = tf.UnconnectedGradients.ZERO
        if method == "loop":
            grads = tf.stack([tape.gradient(s, acts, unconnected_gradients=zero) for s in scores],
                             axis=1)
        else:
            grads = tape.batch_jacobian(logits, acts, unconnected_gradients=zero)
        del tape
        shape = tf.shape(grads)
        flat_grads = tf.reshape(grads, tf.concat([[-1], shape[2:]], axis=0))
        flat_acts = tf.repeat(acts, n_classes, axis=0)
        raw = self.cam(flat_acts, flat_grads)
        return tf.reshape(raw, tf.concat([shape[:2], tf.shape(raw)[1:]], axis=0))

    def _compiled(self, model: Any, exp: ExplainableModel, mode: str, image_shape: tuple) -> Any:
        cache = model_cache(model)
        key = ("cam", type(self), repr(sorted(self.options().items())), exp.layer, mode,
               tuple(image_shape))
        fn = cache.get(key)
        if fn is None:
            fn = cache[key] = self._compile(exp.model, mode, tuple(image_shape))
        return fn

    def _compile(self, graph: Any, mode: str, image_shape: tuple) -> Any:
        import tensorflow as tf

        size = image_shape[:2]
        spec = tf.TensorSpec((None, *image_shape), tf.float32)
        if mode == "single":
            @tf.function(input_signature=[spec, tf.TensorSpec((None,), tf.int32)], autograph=False)
            def single(images, targets):
                return finish_maps(self._raw_single(graph, images, targets), size, self.signed)
            return single

        @tf.function(input_signature=[spec], autograph=False)
        def every_class(images):
            return finish_maps(self._raw_all(graph, images, mode), size, self.signed)
        return every_class


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
