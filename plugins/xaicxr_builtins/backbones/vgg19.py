"""``vgg19``: the paper's transfer model (Keras 3), plus width-reduced and BatchNorm variants.

Layer names follow ``keras.applications.VGG19`` (``block5_conv4`` ...) in every variant; in the
BatchNorm variant ``blockB_convC`` is the activation after conv + BN, so a target layer means
the same thing with or without BN. The model is one flat functional graph: every base layer is
reachable by name, which is what Grad-CAM needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from xaicxr.errors import WeightsNotFoundError, XaicxrError
from xaicxr.plugins import Backbone, weights_file
from xaicxr.plugins.backbone import classification_head, freeze_through, weights_problem

WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


class VGG19Backbone(Backbone):
    """``freeze_until = "auto"`` freezes through ``block4_pool`` with pretrained weights (the
    paper's "freeze the first layers, retrain the last") and nothing when training from
    scratch; ``"none"`` trains everything."""

    default_layer = "block5_conv4"

    def __init__(self, weights: str = "imagenet", width: float = 1.0, batchnorm: bool = False,
                 input_size: int = 224, freeze_until: str = "auto",
                 pooling: Literal["avg", "max", "flatten"] = "avg", dense: list[int] = [256],
                 dropout: float = 0.5) -> None:
        if not 0 < width <= 1.0:
            raise XaicxrError(f"vgg19: width must be in (0, 1], got {width}")
        if input_size < 32:
            raise XaicxrError(f"vgg19: input_size must be >= 32 (five 2x2 poolings), got {input_size}")
        pretrained = weights != "none"
        if pretrained and (width != 1.0 or batchnorm):
            raise XaicxrError("vgg19: pretrained weights exist only for width = 1.0 without batchnorm; "
                              "use weights = \"none\" for reduced widths or the BatchNorm variant")
        if freeze_until == "auto":
            freeze_until = "block4_pool" if pretrained else "none"
        self.weights = weights
        self.width = width
        self.batchnorm = batchnorm
        self.input_size = input_size
        self.freeze_until = None if freeze_until == "none" else freeze_until
        self.pooling = pooling
        self.dense = list(dense)
        self.dropout = dropout

    def build(self, classes: list[str]):
        import keras

        from xaicxr.io.layers import GrayToColour

        inputs = keras.Input((self.input_size, self.input_size, 1), name="image")
        x = GrayToColour("caffe", name="preprocess")(inputs)
        weights = weights_file(self.weights, WEIGHTS_FILE, "VGG19")
        if weights is not None:
            x = _pretrained_base(x, weights)
        else:
            x = _scratch_base(x, self.width, self.batchnorm)
        if self.pooling == "flatten":
            x = keras.layers.Flatten(name="flatten")(x)
        elif self.pooling == "max":
            x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
        else:
            x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        model = keras.Model(inputs, classification_head(x, len(classes), self.dense, self.dropout),
                            name="vgg19_transfer")
        blocks = [layer.name for layer in model.layers if layer.name.startswith("block")]
        freeze_through(model, self.freeze_until, "vgg19", f"choose one of: {', '.join(blocks)}")
        return model


def _pretrained_base(x, weights: Path):
    """``keras.applications.VGG19`` built on our tensor, so its layers join our flat graph."""
    import keras

    try:
        base = keras.applications.VGG19(include_top=False, weights=str(weights), input_tensor=x)
    except (ValueError, OSError) as exc:
        raise WeightsNotFoundError(
            f"vgg19: could not load weights from {weights}: {weights_problem(exc, weights)}. Expected the Keras layout of "
            f"{WEIGHTS_FILE} (HDF5, one group per layer block1_conv1 ... block5_conv4)") from None
    return base.output


def _scratch_base(x, width: float, batchnorm: bool):
    """VGG19 with ``width`` times the channels, He-initialised (Glorot stalls training from
    scratch), optionally with BatchNorm after each convolution (VGG19-BN)."""
    import keras

    for b, (filters, convs) in enumerate(BLOCKS, start=1):
        channels = max(4, int(round(filters * width)))
        for c in range(1, convs + 1):
            name = f"block{b}_conv{c}"
            if batchnorm:
                x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False,
                                        kernel_initializer="he_normal", name=f"{name}_linear")(x)
                x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
                x = keras.layers.Activation("relu", name=name)(x)
            else:
                x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                        kernel_initializer="he_normal", name=name)(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
    return x
