"""``scorecam``: Score-CAM (Wang et al. 2020) native and compiled, the same maps as
tf-keras-vis's ``Scorecam`` (``scorecam-tfkv``, the reference) at a fraction of its cost.

What tf-keras-vis 0.8 does, step by step, and what is done here in one compiled function:

* each channel A_k of the layer is upsampled to the input size with ``scipy.ndimage.zoom``
  (order 1: bilinear with the corners aligned, not the half-pixel ``tf.image.resize``; here two
  interpolation matrices) and min-max scaled per image and channel, (A - min) / (max - min +
  1e-7), min and max of the upsampled channel (its grid need not pass through the maximum);
* the image times each scaled channel goes through the model; the weight w_k is the softmax
  probability of the explained class (not the logit, and no baseline subtracted): here the
  explainer's target, :class:`~xaicxr.plugins.targets.ClassProbability` by default (a binary
  task's score works the same way);
* map = ReLU(sum_k w_k A_k) on the raw (unscaled) activations.

``max_n`` (Faster Score-CAM) keeps the ``max_n`` channels of largest spatial standard deviation,
per image (tf-keras-vis takes their union over the batch, which makes a map depend on its batch
mates; the wrapper explains one image at a time for the same reason). The masked inputs of a
batch go through the model ``channel_batch`` at a time. Every class comes from the same passes,
so all-class mode costs what one class does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaicxr.plugins import CAMExplainer
from xaicxr.plugins.targets import ClassProbability

from .cams import in_chunks

EPSILON = 1e-7
"""tf-keras-vis's guard in the min-max scaling of a channel (Keras' ``epsilon()``)."""


def corner_aligned_resize(source: int, target: int) -> np.ndarray:
    """(target, source) matrix of linear interpolation with the end points aligned, as
    ``scipy.ndimage.zoom(order=1)``: output i samples the input at i (source - 1) / (target - 1)."""
    matrix = np.zeros((target, source), np.float32)
    where = np.arange(target) * ((source - 1) / (target - 1) if target > 1 else 0.0)
    low = np.minimum(np.floor(where).astype(int), source - 1)
    high = np.minimum(low + 1, source - 1)
    frac = (where - low).astype(np.float32)
    np.add.at(matrix, (np.arange(target), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(target), high), frac)
    return matrix


class ScoreCAM(CAMExplainer):
    """Score-CAM (Wang et al. 2020): w_k = the target's score of the image masked with channel k
    (upsampled, min-max scaled), by default the softmax probability of the explained class as in
    the paper; map = ReLU(sum_k w_k A_k).
    One forward pass per channel and image (512 for VGG19's ``block5_conv4``); ``max_n`` keeps
    the ``max_n`` channels of highest spatial variance (Faster Score-CAM); ``channel_batch``
    masked images per forward pass. Gradient-free. See the module docstring."""

    default_target = ClassProbability

    def __init__(self, channel_batch: int = 32, max_n: int | None = None) -> None:
        self.channel_batch = channel_batch
        self.max_n = max_n

    def masked_scores(self, graph: Any, images: Any) -> tuple[Any, Any]:
        """Selected activations (N, h, w, m) and the logits of the N * m masked images
        (N * m, C), image-major."""
        import tensorflow as tf

        acts, _ = graph(images, training=False)
        acts = tf.cast(acts, tf.float32)
        k = int(acts.shape[-1])
        m = k if self.max_n is None else max(1, min(self.max_n, k))
        if m < k:
            picks = tf.math.top_k(tf.math.reduce_std(acts, axis=[1, 2]), m).indices
            acts = tf.gather(acts, picks, axis=3, batch_dims=1)
        (h, w), size = acts.shape[1:3], images.shape[1:3]
        rows, cols = corner_aligned_resize(h, size[0]), corner_aligned_resize(w, size[1])
        channels = tf.reshape(tf.transpose(acts, [0, 3, 1, 2]), (-1, h, w))  # image-major

        def logits(j: Any) -> Any:
            up = tf.einsum("Hh,jhw,Ww->jHW", rows, tf.gather(channels, j), cols)
            lo = tf.reduce_min(up, axis=[1, 2], keepdims=True)
            masks = (up - lo) / (tf.reduce_max(up, axis=[1, 2], keepdims=True) - lo + EPSILON)
            masked = tf.gather(images, j // m) * masks[..., None]
            return tf.cast(graph(masked, training=False)[1], tf.float32)

        n_classes = int(graph.outputs[1].shape[-1])
        return acts, in_chunks(logits, tf.shape(images)[0] * m, self.channel_batch, n_classes)

    def class_maps(self, graph: Any, images: Any, classes: Any, target: Any) -> Any:
        import tensorflow as tf

        acts, logits = self.masked_scores(graph, images)
        weights = tf.reshape(target.score(logits, tf.repeat(classes, int(acts.shape[-1]))),
                             (-1, int(acts.shape[-1])))
        return tf.nn.relu(tf.einsum("nhwk,nk->nhw", acts, weights))

    def every_class_maps(self, graph: Any, images: Any, method: str, target: Any) -> Any:
        import tensorflow as tf

        acts, logits = self.masked_scores(graph, images)
        table = tf.reshape(target.class_scores(logits), (-1, int(acts.shape[-1]), int(logits.shape[-1])))
        return tf.nn.relu(tf.einsum("nhwk,nkc->nchw", acts, table))
