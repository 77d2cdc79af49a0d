"""``chexnet``: the CheXNet backbone (Rajpurkar et al. 2017), ``keras.applications.DenseNet121``.

Built on our own input tensor (``input_tensor=``), so the DenseNet layers join one flat
functional graph and every layer is reachable by its Keras name. The last convolutional
activation, after the final BatchNorm ``bn``, is ``relu`` (N, S/32, S/32, 1024): the default
explanation target, as in CheXNet's class activation maps.
"""

from __future__ import annotations

from pathlib import Path

from xaicxr.errors import WeightsNotFoundError, XaicxrError
from xaicxr.plugins import LOGITS, PROBS, Backbone, weights_file

WEIGHTS_FILE = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"


class DenseNet121Backbone(Backbone):
    """``freeze_until = "auto"`` freezes through ``pool4_pool`` (the last transition, so dense
    block 5 and the head retrain) with pretrained weights, and nothing from scratch; ``"none"``
    trains everything (CheXNet fine-tuned the whole network)."""

    default_layer = "relu"

    def __init__(self, weights: str = "imagenet", input_size: int = 224,
                 freeze_until: str = "auto", dense: list[int] = [], dropout: float = 0.0) -> None:
        if input_size < 32:
            raise XaicxrError(f"chexnet: input_size must be >= 32 (five 2x downsamplings), "
                              f"got {input_size}")
        if not 0.0 <= dropout < 1.0:
            raise XaicxrError(f"chexnet: dropout must be in [0, 1), got {dropout}")
        pretrained = weights != "none"
        if freeze_until == "auto":
            freeze_until = "pool4_pool" if pretrained else "none"
        self.weights = weights
        self.input_size = input_size
        self.freeze_until = None if freeze_until == "none" else freeze_until
        self.dense = list(dense)
        self.dropout = dropout

    def build(self, classes: list[str]):
        import keras

        from xaicxr.plugins.layers import GrayToColour

        weights = weights_file(self.weights, WEIGHTS_FILE, "DenseNet121")
        inputs = keras.Input((self.input_size, self.input_size, 1), name="image")
        x = GrayToColour("torch", name="preprocess")(inputs)
        try:
            base = keras.applications.DenseNet121(
                include_top=False, weights=None if weights is None else str(weights), input_tensor=x)
        except (ValueError, OSError) as exc:
            raise WeightsNotFoundError(
                f"chexnet: could not load weights from {weights}: {exc}. Expected the Keras "
                f"layout of {WEIGHTS_FILE}") from None
        x = keras.layers.GlobalAveragePooling2D(name="pool")(base.output)
        for i, units in enumerate(self.dense, start=1):
            x = keras.layers.Dense(units, activation="relu", kernel_initializer="he_normal",
                                   name=f"fc{i}")(x)
            if self.dropout > 0:
                x = keras.layers.Dropout(self.dropout, name=f"dropout{i}")(x)
        x = keras.layers.Dense(len(classes), name=LOGITS)(x)
        outputs = keras.layers.Activation("softmax", name=PROBS)(x)
        model = keras.Model(inputs, outputs, name="densenet121_transfer")
        self._freeze(model)
        return model

    def _freeze(self, model) -> None:
        if self.freeze_until is None:
            return
        names = [layer.name for layer in model.layers]
        if self.freeze_until not in names:
            pools = [n for n in names if n.endswith("_pool") or n in ("pool1", "relu")]
            raise XaicxrError(f"chexnet: freeze_until {self.freeze_until!r} is not a layer; "
                              f"for example: {', '.join(pools)}")
        for layer in model.layers[: names.index(self.freeze_until) + 1]:
            layer.trainable = False
