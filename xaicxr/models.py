"""What every model in xaicxr shares: the input convention, the preprocessing layer, the
backbone base class, and safe saving and loading of ``model.keras``.

Convention (see also :class:`xaicxr.backbone.Backbone`): a model takes grayscale images (N, S, S, 1) float32 in [0, 1] and ends in a
``logits`` layer (pre-softmax scores, what Grad-CAM differentiates) followed by a softmax
layer ``probs``. Turning gray into the three channels a pretrained base expects is a layer
inside the model, so training, explaining and detecting preprocess identically.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from .errors import XaicxrError

LOGITS = "logits"
PROBS = "probs"

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""The ImageNet channel means VGG was trained with ("caffe" preprocessing, BGR order, 0-255)."""


@keras.saving.register_keras_serializable(package="xaicxr")
class GrayToColour(keras.layers.Layer):
    """Gray [0, 1] (N, H, W, 1) -> three channels as the base network was trained on.

    ``mode="caffe"``: scale to 0-255 and subtract the ImageNet BGR means (VGG16/19, ResNet50);
    ``"torch"``: ImageNet mean/std normalisation (DenseNet); ``"tf"``: scale to [-1, 1].
    """

    MODES = ("caffe", "torch", "tf")

    def __init__(self, mode: str = "caffe", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode

    def call(self, x):
        rgb = keras.ops.concatenate([x, x, x], axis=-1)
        if self.mode == "caffe":
            return rgb * 255.0 - keras.ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor((0.485, 0.456, 0.406), dtype=x.dtype)
            std = keras.ops.convert_to_tensor((0.229, 0.224, 0.225), dtype=x.dtype)
            return (rgb - mean) / std
        return rgb * 2.0 - 1.0

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


class UnsafeModelError(XaicxrError):
    pass


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save atomically: a crash leaves the previous file or none, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial.keras")
    model.save(tmp)
    os.replace(tmp, path)


def load_model(path: str | Path, *, unsafe: bool = False) -> keras.Model:
    """Load ``model.keras`` with Keras ``safe_mode``: arbitrary code (Lambda layers) is refused
    unless ``unsafe=True`` is passed deliberately (``--unsafe-load`` on the command line)."""
    path = Path(path)
    if not path.is_file():
        raise XaicxrError(f"no model at {path}; run the train stage first (xaicxr train)")
    try:
        return keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "unsafe" in str(exc).lower():
            raise UnsafeModelError(
                f"{path} contains code that Keras will only run with safe_mode off "
                f"(e.g. a Lambda layer). Load it only if you trust its source: pass --unsafe-load. "
                f"Keras said: {exc}") from None
        raise


def model_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_digest(layers: list[keras.layers.Layer]) -> str:
    """A hash of the weights of ``layers``: identifies a frozen feature extractor exactly."""
    h = hashlib.sha256()
    for layer in layers:
        for w in layer.weights:
            h.update(w.path.encode())
            h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return h.hexdigest()


def layers_through(model: keras.Model, name: str | None) -> list[keras.layers.Layer]:
    """The layers of ``model`` up to and including ``name``, in graph order."""
    if name is None:
        return []
    names = [layer.name for layer in model.layers]
    if name not in names:
        raise XaicxrError(f"freeze point {name!r} is not a layer of the model; layers: {', '.join(names)}")
    return model.layers[: names.index(name) + 1]
