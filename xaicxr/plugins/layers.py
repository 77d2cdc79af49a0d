"""The preprocessing layer backbones put first in their models (:mod:`xaicxr.io.layers`, where a
model file's loader finds it without importing the plugin contract), kept importable here."""

from ..io.layers import CAFFE_MEAN_BGR, GrayToColour

__all__ = ["CAFFE_MEAN_BGR", "GrayToColour"]
