"""The backbone plugin contract: ``Backbone.build(classes)`` returns the Keras model, and the
lookup of pretrained weights every backbone shares (Keras cache or a path; never a download).

Kept free of TensorFlow imports, so listing plugins and inspecting data stay fast; plugins
import Keras when they build (and :mod:`xaicxr.io.layers` for the preprocessing layer). The
shared parts of building one: :func:`classification_head`, :func:`freeze_through`, and
:class:`KerasApplication`, a ``keras.applications`` family as a backbone in a few class
attributes (the built-in ``resnet50`` ... ``convnexttiny``; a third party's, as the extras'
``chexnet``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from ..errors import WeightsNotFoundError, XaicxrError
from ..kerasgraph import LOGITS, PROBS

__all__ = ["Backbone", "KerasApplication", "LOGITS", "PROBS", "classification_head", "freeze_through",
           "keras_cache_dir", "cached_keras_weights", "weights_file", "weights_problem"]


def keras_cache_dir() -> Path:
    """Where ``keras.utils.get_file`` caches downloads: ``$KERAS_HOME`` or ``~/.keras``, then ``models/``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def cached_keras_weights(filename: str, application: str) -> Path:
    """The ImageNet weights file ``filename`` from the Keras cache, or an error that says how to
    get it. Never downloads: runs must work offline and fail with instructions instead."""
    path = keras_cache_dir() / filename
    if not path.is_file():
        raise WeightsNotFoundError(
            f"ImageNet weights for {application} are not in the Keras cache: {path} does not exist. "
            f"On a machine with internet, run: python -c \"import keras; keras.applications.{application}("
            f"include_top=False, weights='imagenet')\" and copy ~/.keras/models/{filename} "
            f"to {path}; or set [backbone] weights = \"/path/to/{filename}\" in the config; "
            "or use weights = \"none\" to train from scratch.")
    return path


def weights_file(weights: str, filename: str, application: str) -> Path | None:
    """What a backbone's ``weights`` option names: ``"none"`` (None), ``"imagenet"`` (the cached
    file ``filename`` of ``keras.applications.<application>``), or a path that must exist."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return cached_keras_weights(filename, application)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"{application}: weights file {path} does not exist")
    return path


def weights_problem(exc: BaseException, path: Path | str | None) -> str:
    """Keras' reason a weights file did not load, without the tensor values it prints (a wrong
    file gave kilobytes of them), plus where a whole model file belongs."""
    text = " ".join(str(exc).split())
    for cut in (" Target variable:", " value=["):
        if cut in text:
            text = text[:text.index(cut)]
    text = text if len(text) <= 400 else text[:400] + " ..."
    if path is not None and str(path).endswith(".keras"):
        text += (" (this is a whole model file: to explain a model trained elsewhere, give it as "
                 "[model] path instead of [backbone])")
    return text.rstrip(".")


class Backbone:
    """``build(classes)`` returns an uncompiled Keras model that takes grayscale images
    (N, S, S, 1) in [0, 1], ends in a ``logits`` layer and a softmax ``probs`` layer, and does
    its own preprocessing inside (:class:`xaicxr.plugins.layers.GrayToColour`), so training,
    explaining and detecting preprocess identically; one flat functional graph, so every base
    layer is reachable by name.

    ``input_size`` is S; ``freeze_until`` names the last frozen layer (None: all trainable);
    ``default_layer`` is the explanation target layer used when none is configured.
    """

    input_size: int = 224
    freeze_until: str | None = None
    default_layer: str = ""

    def build(self, classes: list[str]) -> Any:
        raise NotImplementedError


def classification_head(features: Any, n_classes: int, dense: list[int], dropout: float) -> Any:
    """The head every backbone puts on its pooled ``features``: ``dense`` ReLU layers (``fc1``
    ...; He-initialised), each followed by ``dropout`` when it is above 0, then ``logits`` and
    the softmax ``probs`` (:data:`LOGITS`, :data:`PROBS`: what explainers and targets read)."""
    import keras

    x = features
    for i, units in enumerate(dense, start=1):
        x = keras.layers.Dense(units, activation="relu", kernel_initializer="he_normal", name=f"fc{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    x = keras.layers.Dense(n_classes, name=LOGITS)(x)
    return keras.layers.Activation("softmax", name=PROBS)(x)


def freeze_through(model: Any, layer: str | None, plugin: str, hint: str) -> None:
    """Make ``model``'s layers up to and including ``layer`` untrainable (None: freeze nothing);
    a name that is not a layer is an error of ``plugin``'s ``freeze_until``, ending in ``hint``."""
    if layer is None:
        return
    names = [lay.name for lay in model.layers]
    if layer not in names:
        raise XaicxrError(f"{plugin}: freeze_until {layer!r} is not a layer; {hint}")
    for lay in model.layers[: names.index(layer) + 1]:
        lay.trainable = False


class KerasApplication(Backbone):
    """A ``keras.applications`` family as a backbone. ``weights``: ``"imagenet"`` (the Keras
    cache only, never a download), ``"none"`` (from scratch) or the path of a weights file of
    the application without its top (what ``save_weights`` of the base writes, or Keras' own
    ``*_notop.h5``). ``freeze_until = "auto"`` freezes through the family's last stage but one
    with pretrained weights and nothing from scratch; ``"none"`` trains everything; or a layer
    name. ``dense``: hidden layers of the head; ``dropout`` after each of them.

    ``bn_momentum``: the momentum of every BatchNormalization layer's moving statistics, or
    ``0`` to keep the family's (0.99; 0.999 in MobileNetV3; ConvNeXt has no BatchNorm, so setting
    it there is an error). Trained from
    scratch on a small set, 0.99 leaves a quarter of the moving statistics' initial values in
    place after 130 steps (0.99 ** 130), 0.999 nearly all of them, so the model can evaluate
    near chance while it trains well; 0.9 (what ``vgg19`` uses) settles in tens of steps."""

    application: ClassVar[str] = ""
    """The ``keras.applications`` function."""
    weights_filename: ClassVar[str] = ""
    """Its ImageNet weights without the top, as Keras caches them."""
    preprocessing: ClassVar[str] = "pixels"
    """The :class:`GrayToColour` mode: what the family's first layer expects."""
    freeze_point: ClassVar[str] = ""
    """The last layer ``freeze_until = "auto"`` freezes with pretrained weights."""
    build_options: ClassVar[dict[str, Any]] = {}
    """Extra keyword arguments of the application function."""

    plugin: ClassVar[str] = ""
    """The plugin name in messages (default: the application's name in lower case)."""

    def __init__(self, weights: str = "imagenet", input_size: int = 224,
                 freeze_until: str = "auto", dense: list[int] = [], dropout: float = 0.0,
                 bn_momentum: float = 0.0) -> None:
        name = self.plugin_name()
        if input_size < 32:
            raise XaicxrError(f"{name}: input_size must be >= 32 (five 2x downsamplings), "
                              f"got {input_size}")
        if not 0.0 <= dropout < 1.0:
            raise XaicxrError(f"{name}: dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= bn_momentum < 1.0:
            raise XaicxrError(f"{name}: bn_momentum must be in [0, 1) (0 keeps the family's), "
                              f"got {bn_momentum}")
        if freeze_until == "auto":
            freeze_until = self.freeze_point if weights != "none" else "none"
        self.weights = weights
        self.input_size = input_size
        self.freeze_until = None if freeze_until == "none" else freeze_until
        self.dense = list(dense)
        self.dropout = dropout
        self.bn_momentum = bn_momentum

    @classmethod
    def plugin_name(cls) -> str:
        return cls.plugin or cls.application.lower()

    def build(self, classes: list[str]) -> Any:
        import keras

        from ..io.layers import GrayToColour
        from ..kerasgraph import default_layer

        name = self.plugin_name()
        path = weights_file(self.weights, self.weights_filename, self.application)
        inputs = keras.Input((self.input_size, self.input_size, 1), name="image")
        x = GrayToColour(self.preprocessing, name="preprocess")(inputs)
        # "imagenet" once the cache holds the file (Keras then reads it from there and applies
        # what belongs to ImageNet weights, such as EfficientNet's extra rescaling)
        weights = None if path is None else "imagenet" if self.weights == "imagenet" else str(path)
        try:
            base = getattr(keras.applications, self.application)(
                include_top=False, weights=weights, input_tensor=x, pooling="avg",
                **self.build_options)
        except (ValueError, OSError) as exc:
            raise WeightsNotFoundError(
                f"{name}: could not load weights from {path}: {weights_problem(exc, path)}. Expected the "
                f"weights of keras.applications.{self.application}(include_top=False), such as "
                f"{self.weights_filename} or a file written by save_weights") from None
        if self.bn_momentum:
            norms = [layer for layer in base.layers
                     if isinstance(layer, keras.layers.BatchNormalization)]
            if not norms:
                raise XaicxrError(f"{name}: bn_momentum is set but the network has no "
                                  "BatchNormalization layer; leave it out")
            for layer in norms:
                layer.momentum = self.bn_momentum
        probs = classification_head(base.output, len(classes), self.dense, self.dropout)
        model = keras.Model(inputs, probs, name=f"{name}_transfer")
        self.default_layer = default_layer(model).path
        freeze_through(model, self.freeze_until, name,
                       f"for example {self.freeze_point!r} (the default with pretrained weights) or \"none\"")
        return model
