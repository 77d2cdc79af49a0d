"""The Keras layer backbones put first in their models: gray [0, 1] to the three channels a
pretrained base expects. Registered with Keras, so ``model.keras`` files load without code."""

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
