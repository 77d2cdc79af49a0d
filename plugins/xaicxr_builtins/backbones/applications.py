"""Backbones over ``keras.applications``: ``resnet50``, ``densenet121`` (CheXNet's), ``efficientnetb0``,
``mobilenetv3small``, ``convnexttiny``: each a few class attributes on
:class:`xaicxr.plugins.KerasApplication`.

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

from xaicxr.plugins import KerasApplication


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
