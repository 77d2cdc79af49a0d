"""More native CAM explainers: ``hirescam``, ``xgradcam``, ``eigencam``, ``ablationcam``.

Like those of :mod:`.gradcam`, each overrides only what makes it different on
:class:`xaicxr.plugins.CAMExplainer`, which compiles the forward pass, the map, upsampling and
normalisation into one TensorFlow function. Eigen-CAM and Ablation-CAM need no gradient, so
they override the base's forward-and-backward step (``class_maps``) with forward passes only.
"""

from __future__ import annotations

from typing import Any

from xaicxr.kerasgraph import model_above
from xaicxr.plugins import CAMExplainer

EPS = 1e-7
"""XGrad-CAM's guard against an all-zero channel, as in pytorch-grad-cam."""


class HiResCAM(CAMExplainer):
    """HiResCAM (Draelos & Carin 2020): map = ReLU(sum_k g_k * A_k), the gradients multiplied
    with the activations position by position, no spatial pooling of the gradients. On a model
    whose head is global average pooling and a dense layer it equals Grad-CAM."""

    def cam(self, activations: Any, gradients: Any) -> Any:
        import tensorflow as tf

        return tf.nn.relu(tf.reduce_sum(gradients * activations, axis=-1))


class XGradCAM(CAMExplainer):
    """XGrad-CAM (Fu et al. 2020): w_k = sum_xy(A_k g_k) / (sum_xy A_k + eps), the gradients
    averaged with the channel's own activations as weights; map = ReLU(sum_k w_k A_k)."""

    def channel_weights(self, activations: Any, gradients: Any) -> Any:
        import tensorflow as tf

        total = tf.reduce_sum(activations, axis=[1, 2]) + EPS  # no_nan: eps is lost next to a float16 sum
        return tf.math.divide_no_nan(tf.reduce_sum(gradients * activations, axis=[1, 2]), total)


class EigenCAM(CAMExplainer):
    """Eigen-CAM (Muhammad & Yeasin 2020): each image's activations as a (h*w, k) matrix,
    centred over positions, projected on its first right singular vector (pytorch-grad-cam's
    ``get_2d_projection``). An SVD's sign is arbitrary: the map is flipped where needed to
    correlate positively with the channel sum of the activations. No gradient and no class:
    no backward pass, and all-class mode repeats the one map (``every_class_maps``). It reads
    no score, so it explains class indices only (another target is refused, not ignored)."""

    reads_score = False

    def class_maps(self, graph: Any, images: Any, classes: Any, target: Any) -> Any:
        acts, _ = graph(images, training=False)
        return self.cam(acts, None)

    def cam(self, activations: Any, gradients: Any) -> Any:
        import tensorflow as tf

        shape = tf.shape(activations)
        flat = tf.reshape(tf.cast(activations, tf.float32), tf.stack([shape[0], -1, shape[3]]))
        centred = flat - tf.reduce_mean(flat, axis=1, keepdims=True)
        _, _, v = tf.linalg.svd(centred)
        proj = tf.linalg.matvec(centred, v[:, :, 0])
        total = tf.reduce_sum(flat, axis=2)
        agree = tf.reduce_sum(proj * (total - tf.reduce_mean(total, axis=1, keepdims=True)), 1)
        return tf.reshape(proj * tf.where(agree < 0, -1.0, 1.0)[:, None], shape[:3])

    def every_class_maps(self, graph: Any, images: Any, method: str, target: Any) -> Any:
        import tensorflow as tf

        maps = self.class_maps(graph, images, None, target)
        return tf.repeat(maps[:, None], int(graph.outputs[1].shape[-1]), axis=1)


class AblationCAM(CAMExplainer):
    """Ablation-CAM (Ramaswamy & Desai 2020): w_k = (y - y_k) / y, y the target's score (the
    class logit by default) and y_k the score with channel k of the activations set to zero;
    map = ReLU(sum_k w_k A_k) (w = 0 where y = 0). Gradient-free: the layers above the target
    (``kerasgraph.model_above``) run on ``ablation_batch`` ablated activation tensors per call,
    every class at once in all-class mode."""

    def __init__(self, ablation_batch: int = 256) -> None:
        self.ablation_batch = ablation_batch

    def _ablate(self, graph: Any, images: Any) -> tuple[Any, Any, Any]:
        """Activations (N, h, w, k), logits (N, C) and the logits with each channel zeroed (N, k, C)."""
        acts, logits = graph(images, training=False)
        return acts, logits, ablated_scores(model_above(graph), acts, self.ablation_batch)

    def class_maps(self, graph: Any, images: Any, classes: Any, target: Any) -> Any:
        import tensorflow as tf

        acts, logits, ablated = self._ablate(graph, images)
        k = int(acts.shape[-1])
        y = target.score(logits, classes)[:, None]
        y_k = tf.reshape(target.score(tf.reshape(ablated, (-1, tf.shape(ablated)[-1])),
                                      tf.repeat(tf.cast(classes, tf.int32), k)), (-1, k))
        weights = tf.math.divide_no_nan(y - y_k, y)
        return tf.nn.relu(tf.einsum("nhwk,nk->nhw", acts, weights))

    def every_class_maps(self, graph: Any, images: Any, method: str, target: Any) -> Any:
        import tensorflow as tf

        acts, logits, ablated = self._ablate(graph, images)
        y = target.class_scores(logits)[:, None, :]
        y_k = tf.reshape(target.class_scores(tf.reshape(ablated, (-1, tf.shape(ablated)[-1]))), tf.shape(ablated))
        weights = tf.transpose(tf.math.divide_no_nan(y - y_k, y), [0, 2, 1])
        return tf.nn.relu(tf.einsum("nhwk,nck->nchw", acts, weights))


def ablated_scores(above: Any, acts: Any, batch: int) -> Any:
    """(N, h, w, k) activations -> (N, k, C): ``above``'s scores with channel j zeroed, for every
    image and j, the N*k ablated tensors through ``above`` ``batch`` at a time (:func:`in_chunks`)."""
    import tensorflow as tf

    k, n_classes = int(acts.shape[-1]), int(above.outputs[0].shape[-1])

    def chunk(j: Any) -> Any:
        keep = 1.0 - tf.one_hot(j % k, k, dtype=acts.dtype)
        return above(tf.gather(acts, j // k) * keep[:, None, None, :], training=False)

    scores = in_chunks(chunk, tf.shape(acts)[0] * k, batch, n_classes, acts.dtype)
    return tf.reshape(scores, (-1, k, n_classes))


def in_chunks(fn: Any, total: Any, batch: int, width: int, dtype: Any = "float32") -> Any:
    """(total, width): ``fn(j)`` -> (len(j), width) over the indices ``range(total)`` in chunks of
    ``batch``, one chunk at a time to bound memory; the last chunk is padded by repeating index
    total - 1 (every call has one shape) and the padding dropped."""
    import tensorflow as tf

    size = tf.maximum(tf.minimum(batch, total), 1)

    def chunk(i: Any) -> Any:
        return fn(tf.minimum(tf.range(i * size, (i + 1) * size), total - 1))

    out = tf.map_fn(chunk, tf.range((total + size - 1) // size), parallel_iterations=1,
                    fn_output_signature=tf.TensorSpec((None, width), dtype))
    return tf.reshape(out, (-1, width))[:total]
