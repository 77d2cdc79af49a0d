"""Backbones over ``keras.applications``: ``resnet50``, ``densenet121`` (CheXNet's), ``efficientnetb0``,
``mobilenetv3small``, ``convnexttiny``; one implementation, a family is a few class attributes.

As ``vgg19``: the application is built on our own input tensor (``input_tensor=``), so its layers
join one functional graph (ConvNeXt keeps its stem and downsampling blocks as nested Sequential
models, which :mod:`xaicxr.kerasgraph` looks inside); the gray image is turned into the three
channels the family expects by :class:`xaicxr.plugins.layers.GrayToColour` (``caffe`` for
ResNet50, ``torch`` for DenseNet121; ``pixels``, 0-255, for the families whose Keras model
normalises inside itself with its own layers: EfficientNet, MobileNetV3, ConvNeXt); the
application's global average pooling, then optional ``dense`` layers, ``logits`` and ``probs``.

The default explanation layer is the last 4-D layer of the base, the last convolutional
activation (``conv5_block3_out``, ``relu``, ``top_activation``, MobileNetV3's final hard-swish,
whose name Keras numbers at build time, and ConvNeXt's last block output); it is resolved when
the model is built, and the run records it in ``train.json``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from xaicxr.errors import WeightsNotFoundError, XaicxrError
from xaicxr.plugins import LOGITS, PROBS, Backbone, weights_file


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
        return cls.application.lower()

    def build(self, classes: list[str]) -> Any:
        import keras

        from xaicxr.kerasgraph import default_layer
        from xaicxr.plugins.layers import GrayToColour

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
                f"{name}: could not load weights from {path}: {exc}. Expected the weights of "
                f"keras.applications.{self.application}(include_top=False), such as "
                f"{self.weights_filename} or a file written by save_weights") from None
        if self.bn_momentum:
            norms = [layer for layer in base.layers
                     if isinstance(layer, keras.layers.BatchNormalization)]
            if not norms:
                raise XaicxrError(f"{name}: bn_momentum is set but the network has no "
                                  "BatchNormalization layer; leave it out")
            for layer in norms:
                layer.momentum = self.bn_momentum
        x = base.output
        for i, units in enumerate(self.dense, start=1):
            x = keras.layers.Dense(units, activation="relu", kernel_initializer="he_normal",
                                   name=f"fc{i}")(x)
            if self.dropout > 0:
                x = keras.layers.Dropout(self.dropout, name=f"dropout{i}")(x)
        x = keras.layers.Dense(len(classes), name=LOGITS)(x)
        model = keras.Model(inputs, keras.layers.Activation("softmax", name=PROBS)(x),
                            name=f"{name}_transfer")
        self.default_layer = default_layer(model).path
        self._freeze(model)
        return model

    def _freeze(self, model: Any) -> None:
        if self.freeze_until is None:
            return
        names = [layer.name for layer in model.layers]
        if self.freeze_until not in names:
            raise XaicxrError(f"{self.plugin_name()}: freeze_until {self.freeze_until!r} is not "
                              f"a layer; for example {self.freeze_point!r} (the default with "
                              f"pretrained weights) or \"none\"")
        for layer in model.layers[: names.index(self.freeze_until) + 1]:
            layer.trainable = False


class ResNet50Backbone(KerasApplication):
    """ResNet50 (He et al. 2016); default layer ``conv5_block3_out``; ``auto`` freezes through
    ``conv4_block6_out`` (stage 5 and the head retrain)."""

    application = "ResNet50"
    weights_filename = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    preprocessing = "caffe"
    freeze_point = "conv4_block6_out"
    default_layer = "conv5_block3_out"


class DenseNet121Backbone(KerasApplication):
    """DenseNet121, CheXNet's backbone (Rajpurkar et al. 2017); default layer ``relu`` (after
    the final BatchNorm); ``auto`` freezes through ``pool4_pool`` (dense block 5 retrains)."""

    application = "DenseNet121"
    weights_filename = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    preprocessing = "torch"
    freeze_point = "pool4_pool"
    default_layer = "relu"


class EfficientNetB0Backbone(KerasApplication):
    """EfficientNet-B0 (Tan & Le 2019), its own rescaling and normalisation layers inside;
    default layer ``top_activation``; ``auto`` freezes through ``block5c_add``. A weights path
    is loaded as it is: the extra ImageNet rescaling Keras adds for ``"imagenet"`` is not."""

    application = "EfficientNetB0"
    weights_filename = "efficientnetb0_notop.h5"
    freeze_point = "block5c_add"
    default_layer = "top_activation"


class MobileNetV3SmallBackbone(KerasApplication):
    """MobileNetV3-Small (Howard et al. 2019), its own rescaling inside; default layer the final
    hard-swish activation (numbered by Keras: resolved at build); ``auto`` freezes through
    ``expanded_conv_7_add``."""

    application = "MobileNetV3Small"
    weights_filename = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    freeze_point = "expanded_conv_7_add"
    build_options = {"include_preprocessing": True}


class ConvNeXtTinyBackbone(KerasApplication):
    """ConvNeXt-Tiny (Liu et al. 2022), its own normalisation inside; default layer
    ``convnext_tiny_stage_3_block_2_identity`` (the last block); ``auto`` freezes through the
    end of stage 2."""

    application = "ConvNeXtTiny"
    weights_filename = "convnext_tiny_notop.h5"
    freeze_point = "convnext_tiny_stage_2_block_8_identity"
    default_layer = "convnext_tiny_stage_3_block_2_identity"
    build_options = {"include_preprocessing": True}


FAMILIES = (ResNet50Backbone, DenseNet121Backbone, EfficientNetB0Backbone,
            MobileNetV3SmallBackbone, ConvNeXtTinyBackbone)
