"""Native CAM explainers: ``gradcam``, ``gradcam++``, ``layercam``.

Each is a few lines on top of :class:`xaicxr.plugins.CAMExplainer`, which compiles the
forward pass, gradient, map, upsampling and normalisation into one TensorFlow function.
"""

from __future__ import annotations

from typing import Any

from xaicxr.plugins import CAMExplainer


class GradCAM(CAMExplainer):
    """Grad-CAM (Selvaraju et al. 2017): channel weights are the spatial mean of the gradients."""

    def channel_weights(self, activations: Any, gradients: Any) -> Any:
        import tensorflow as tf

        return tf.reduce_mean(gradients, axis=[1, 2])


class GradCAMPlusPlus(CAMExplainer):
    """Grad-CAM++ (Chattopadhyay et al. 2018), as in the authors' code and tf-keras-vis:
    alpha = g^2 / (2 g^2 + sum(A) g^3), normalised over space, weights = sum(alpha ReLU(g)).

    The exponential of the score in the paper's derivation is a positive factor per image; it
    cancels in the alphas and, for the weights, in the per-image normalisation, so it is left
    out (tf-keras-vis keeps it and overflows to NaN once logits pass ~88).
    """

    def channel_weights(self, activations: Any, gradients: Any) -> Any:
        import tensorflow as tf

        g2 = tf.square(gradients)
        g3 = g2 * gradients
        total = tf.reduce_sum(activations, axis=[1, 2], keepdims=True)
        alphas = tf.math.divide_no_nan(g2, 2.0 * g2 + total * g3)
        alphas = tf.math.divide_no_nan(alphas, tf.reduce_sum(alphas, axis=[1, 2], keepdims=True))
        return tf.reduce_sum(alphas * tf.nn.relu(gradients), axis=[1, 2])


class LayerCAM(CAMExplainer):
    """LayerCAM (Jiang et al. 2021): every position weighted by its own positive gradient,
    which keeps fine localisation at shallower layers."""

    def cam(self, activations: Any, gradients: Any) -> Any:
        import tensorflow as tf

        return tf.nn.relu(tf.reduce_sum(tf.nn.relu(gradients) * activations, axis=-1))
