"""Keras graph surgery shared by every explainer: find a layer (inside nested sub-models too),
and build one flat graph from the inputs to [that layer's activations, the class scores].

* **Target layer.** ``layer`` names a layer with a 4-D output (N, h, w, k). It is searched
  recursively: a layer inside a nested sub-model (a ``keras.applications.VGG19`` wrapped in a
  functional model is the classic case) is found by its own name, or by a path
  ``"vgg19/block5_conv4"`` when the name is ambiguous. ``layer=None`` picks the last 4-D layer
  that is not a pooling, dropout or padding layer (``block5_conv4`` for VGG19). An unknown name
  raises :class:`~xaicxr.errors.LayerNotFoundError`, whose message lists the candidates.
* **Score.** The scores are the output of the layer named ``logits`` (pre-softmax); a model
  without one is explained on its (first) output as it is.

TensorFlow and Keras are imported inside functions: plugin modules import this module, and
listing plugins must stay fast.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import ExplainerInputError, LayerNotFoundError

LOGITS = "logits"
"""Name of the layer of pre-softmax class scores every model ends in (what CAMs differentiate)."""
PROBS = "probs"
"""Name of the softmax layer after ``logits``: the model's output."""

TARGET_MARKER = "xaicxr_target"
"""Name of the identity layer that marks a nested target layer in a flattened model."""

_NOT_TARGETS = ("Pooling", "Dropout", "ZeroPadding", "Cropping", "UpSampling", "InputLayer", "GrayToColour",
                "ScaleToModel")
"""Layers never picked as the default target: no features of their own (the last two are the input
adapters xaicxr puts before a network)."""


_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_cache(model: Any) -> dict:
    """A dict that lives as long as ``model`` (weakly keyed): resolved layers, derived graphs
    and compiled functions go here, so repeated calls neither rebuild nor retrace, and a model
    that is dropped takes its entries with it."""
    return _models.setdefault(model, {})


@dataclass(frozen=True)
class LayerRef:
    """A layer of a model, possibly inside nested sub-models (``chain``, outermost first)."""

    path: str
    layer: Any
    chain: tuple[Any, ...]

    @property
    def nested(self) -> bool:
        return bool(self.chain)


def is_submodel(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model) and hasattr(layer, "layers")


def iter_layers(model: Any, _chain: tuple[Any, ...] = ()) -> Iterator[LayerRef]:
    """Every layer, depth first in graph order; a nested model is listed before its layers."""
    prefix = "/".join(m.name for m in _chain)
    for layer in model.layers:
        yield LayerRef(f"{prefix}/{layer.name}" if prefix else layer.name, layer, _chain)
        if is_submodel(layer):
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
        if not is_submodel(ref.layer) and not any(word in kind for word in _NOT_TARGETS):
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
    found = [r for r in iter_layers(model) if r.layer.name == LOGITS]
    return min(found, key=lambda r: len(r.chain)) if found else None


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
    """A Sequential model is always rebuilt (:func:`_inline`): one loaded from a file has called
    its layers twice (on building, then on its own inputs), so a layer's ``.output`` may belong
    to a graph the model's outputs do not come from, and its gradients would be None (all-zero,
    "degenerate" maps)."""
    import keras

    score_ref = score_layer(model)
    graph = None
    if not ref.nested and (score_ref is None or not score_ref.nested) and not isinstance(model, keras.Sequential):
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


def model_above(graph: Any) -> Any:
    """The part of an explainable graph (``ExplainableModel.model``: outputs [activations,
    scores]) above its target layer: a model from activations (N, h, w, k) to scores (N, C),
    made of the graph's own layers and weights (cached with ``graph``). Perturbation methods
    (Ablation-CAM) run altered activations through it without redoing the layers below.

    Raises :class:`~xaicxr.errors.LayerNotFoundError` when the scores depend on the inputs
    other than through the target layer (a skip connection around it).
    """
    import keras

    cache = model_cache(graph)
    if "above" not in cache:
        try:
            cache["above"] = keras.Model(graph.outputs[0], graph.outputs[1], name="xaicxr_above")
        except ValueError as err:
            raise LayerNotFoundError(
                "the scores do not depend on the target layer's activations alone (a connection "
                f"bypasses the layer: {err}); choose a layer that every path from the input to "
                "the scores goes through") from err
    return cache["above"]


def parent_layers(layer: Any, every_call: bool = False) -> list[Any]:
    """The layers (operations) feeding ``layer``'s first call, the graph it was built in, or
    every call (a layer shared by a nested model and its parent is called in both). Keras has no
    public API for a layer's inbound nodes; this is the one place that reads them."""
    nodes = layer._inbound_nodes if every_call else layer._inbound_nodes[:1]
    return [parent.operation for node in nodes for parent in node.parent_nodes]


def output_layer(graph: Any, index: int = 0) -> Any:
    """The layer (operation) that produced ``graph``'s output ``index`` (Keras' history of a
    symbolic tensor, read here only)."""
    return graph.outputs[index]._keras_history.operation


def parent_inputs(layer: Any) -> Any:
    """The symbolic tensor ``layer`` was first called on, or None when it took several (or has
    not been called in a graph): where a model is cut before its last layer."""
    try:
        x = layer.input
    except (AttributeError, ValueError):
        return None
    return None if isinstance(x, (list, tuple, dict)) else x
