"""The backbone plugin contract: ``Backbone.build(classes)`` returns the Keras model, and the
lookup of pretrained weights every backbone shares (Keras cache or a path; never a download).

Kept free of TensorFlow imports, so listing plugins and inspecting data stay fast; plugins
import Keras when they build (and :mod:`xaicxr.plugins.layers` for the preprocessing layer)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import WeightsNotFoundError
from ..kerasgraph import LOGITS, PROBS

__all__ = ["Backbone", "LOGITS", "PROBS", "keras_cache_dir", "cached_keras_weights", "weights_file"]


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
