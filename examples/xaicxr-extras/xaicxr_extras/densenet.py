"""``chexnet``: the CheXNet backbone (Rajpurkar et al. 2017), ``keras.applications.DenseNet121``
on xaicxr's :class:`~xaicxr.plugins.KerasApplication`: the input, preprocessing, weights lookup,
head and freezing are the base's; a family only says which network it is. Its last
convolutional activation, after the final BatchNorm, is ``relu`` (N, S/32, S/32, 1024): the
default explanation target, as in CheXNet's class activation maps."""

from xaicxr.plugins import KerasApplication


class DenseNet121Backbone(KerasApplication):
    """``freeze_until = "auto"`` freezes through ``pool4_pool`` (the last transition, so dense
    block 5 and the head retrain) with pretrained weights, and nothing from scratch."""

    plugin = "chexnet"
    application = "DenseNet121"
    weights_filename = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    preprocessing = "torch"
    freeze_point = "pool4_pool"
    default_layer = "relu"
