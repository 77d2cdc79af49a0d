"""The Keras layers xaicxr puts around a network: :class:`GrayToColour` (what backbones put
first: gray [0, 1] to the three channels a pretrained base expects), and for a model trained
elsewhere (:mod:`xaicxr.usermodel`) :class:`ScaleToModel` before it and :class:`ModelScores`
after it. Registered with Keras, so ``model.keras`` files load without code."""

from __future__ import annotations

from typing import Any

import keras

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
"""The ImageNet channel means VGG was trained with ("caffe" preprocessing, BGR order, 0-255)."""


@keras.saving.register_keras_serializable(package="xaicxr")
class GrayToColour(keras.layers.Layer):
    """Gray [0, 1] (N, H, W, 1) -> three channels as the base network was trained on.

    ``mode="caffe"``: scale to 0-255 and subtract the ImageNet BGR means (VGG16/19, ResNet50);
    ``"torch"``: ImageNet mean/std normalisation (DenseNet); ``"tf"``: scale to [-1, 1];
    ``"pixels"``: 0-255, for networks that normalise inside themselves (EfficientNet,
    MobileNetV3, ConvNeXt in ``keras.applications``).
    """

    MODES = ("caffe", "torch", "tf", "pixels")

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
        if self.mode == "pixels":
            return rgb * 255.0
        return rgb * 2.0 - 1.0

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="xaicxr")
class ScaleToModel(keras.layers.Layer):
    """Gray [0, 1] (N, H, W, 1) -> the input a model trained elsewhere expects: black and white
    at ``value_range``, then ``(x - mean) / std`` per channel, gray repeated to ``channels``."""

    def __init__(self, channels: int = 1, value_range: list[float] = (0.0, 1.0),
                 mean: list[float] | None = None, std: list[float] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.value_range = [float(v) for v in value_range]
        self.mean = [float(v) for v in mean] if mean else None
        self.std = [float(v) for v in std] if std else None

    def call(self, x):
        low, high = self.value_range
        x = x * (high - low) + low
        if self.channels > 1:
            x = keras.ops.concatenate([x] * self.channels, axis=-1)
        if self.mean:
            x = x - keras.ops.convert_to_tensor(self.mean, dtype=x.dtype)
        if self.std:
            x = x / keras.ops.convert_to_tensor(self.std, dtype=x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "channels": self.channels, "value_range": self.value_range,
                "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="xaicxr")
class ModelScores(keras.layers.Layer):
    """(N, K) outputs -> (N, C) scores of the ``picked`` outputs (one per dataset class), made
    scores by ``transform``: ``"none"`` (already logits), ``"log"`` (softmax probabilities: log p),
    ``"logit"`` (sigmoids: log p - log(1 - p)). Probabilities are clipped to [1e-7, 1 - 1e-7]
    first, so a saturated output gives a large finite score, not an infinite one."""

    TRANSFORMS = ("none", "log", "logit")

    def __init__(self, picked: list[int], transform: str = "none", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if transform not in self.TRANSFORMS:
            raise ValueError(f"transform must be one of {self.TRANSFORMS}, got {transform!r}")
        self.picked = [int(i) for i in picked]
        self.transform = transform

    def call(self, y):
        y = keras.ops.take(y, self.picked, axis=-1)
        if self.transform == "none":
            return y
        p = keras.ops.clip(y, 1e-7, 1.0 - 1e-7)
        if self.transform == "log":
            return keras.ops.log(p)
        return keras.ops.log(p) - keras.ops.log1p(-p)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.picked))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "picked": self.picked, "transform": self.transform}


@keras.saving.register_keras_serializable(package="xaicxr")
class SavedModelLayer(keras.layers.TFSMLayer):
    """A TensorFlow SavedModel the user named in ``[model] path``, called as a layer.

    Keras refuses to rebuild a ``TFSMLayer`` from a saved model file in safe mode, because the
    folder it points to could hold any graph. This one is rebuilt only when the folder's
    ``saved_model.pb`` still has the sha256 recorded when the run imported it: the graph that
    is loaded is the one the user chose, and a changed or swapped folder is an error."""

    def __init__(self, filepath: str, graph_sha256: str | None = None, **kwargs: Any) -> None:
        self.graph_sha256 = graph_sha256 or saved_model_digest(filepath)
        super().__init__(filepath, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "graph_sha256": self.graph_sha256}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None, safe_mode: Any = None):
        found = saved_model_digest(config["filepath"])
        if found != config.get("graph_sha256"):
            raise ValueError(f"the SavedModel at {config['filepath']} is not the one this run imported "
                             f"(saved_model.pb sha256 {found[:12]}…, recorded {str(config.get('graph_sha256'))[:12]}…)")
        return cls(**config)


def saved_model_digest(folder: str) -> str:
    """The sha256 of a SavedModel's graph (``saved_model.pb``); "missing" when there is none."""
    import hashlib
    from pathlib import Path

    path = Path(folder) / "saved_model.pb"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
