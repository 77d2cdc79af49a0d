"""The base class of backbone plugins. Kept free of TensorFlow imports, so listing plugins and
inspecting data stay fast; plugins import Keras when they build."""

from __future__ import annotations

from typing import Any


class Backbone:
    """``build(classes)`` returns an uncompiled Keras model that takes grayscale images
    (N, S, S, 1) in [0, 1], ends in a ``logits`` layer and a softmax ``probs`` layer, and does
    its own preprocessing inside (see :mod:`xaicxr.models`).

    ``input_size`` is S; ``freeze_until`` names the last frozen layer (None: all trainable);
    ``default_layer`` is the explanation target layer used when none is configured.
    """

    input_size: int = 224
    freeze_until: str | None = None
    default_layer: str = ""

    def build(self, classes: list[str]) -> Any:
        raise NotImplementedError
