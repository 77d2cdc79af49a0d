"""Explainers backed by tf-keras-vis (0.8.x): the reference implementations.

``gradcam-tfkv``, ``gradcam++-tfkv``, ``layercam-tfkv``, ``scorecam-tfkv`` (and Faster
Score-CAM with ``max_n``; the reference of the native ``scorecam``), ``saliency``, ``smoothgrad``.

Every wrapper asks tf-keras-vis for its *raw* map at layer resolution (``expand_cam=False``,
``normalize_cam=False``) and hands it to :class:`xaicxr.plugins.Explainer`, so upsampling,
normalisation and degenerate handling are the same as for the native explainers.

Adaptations to tf-keras-vis 0.8.7 on Keras 3 / TF 2.21 (it works, with these):

* It is given a model whose output is the ``logits`` layer (no ``ReplaceToLinear``, no clone),
  and the layer to explain by name with ``seek_penultimate_conv_layer=False``. For a layer inside
  a nested sub-model it gets our flattened graph, where the target is the identity layer
  ``xaicxr_target`` (its own lookup would take the nested graph's tensor and fail).
* Grad-CAM++ multiplies by ``exp(score)``, which overflows to NaN for logits above ~88; the score
  passed is ``logit - stop_gradient(logit)`` (value 0, same gradient), so the factor is 1. It
  cancels in the normalised map anyway.
* Score-CAM calls ``model.predict``, which prints a Keras progress bar on stdout; the model gets
  a ``predict`` that runs a compiled function silently instead. Images are processed one at a
  time: tf-keras-vis takes the union of the top-``max_n`` channels over the batch, which would
  make a map depend on its batch mates, and tiles channels x batch inputs in memory.
* SmoothGrad draws its noise from NumPy's global generator; it is seeded from ``seed`` and the
  global state restored afterwards, so maps are reproducible.
* The score function handed to tf-keras-vis is the target's score of the logits. Score-CAM hands it softmax
  probabilities, not logits: there it is the target's ``score_of_probabilities``, and its
  default target is the class probability (what tf-keras-vis always weighed by).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import numpy as np

from xaicxr.kerasgraph import explainable_model, model_cache, score_layer
from xaicxr.plugins import Explainer
from xaicxr.plugins.explainer import compile_once
from xaicxr.plugins.targets import ClassProbability, Target


def _score(target: Target, classes: np.ndarray, centred: bool = False) -> Any:
    """tf-keras-vis's score function: the target's score of the logits tf-keras-vis passes."""
    import tensorflow as tf

    classes = tf.constant(classes, tf.int32)

    def score(output: Any) -> Any:
        value = target.score(output, classes)
        return value - tf.stop_gradient(value) if centred else value

    return score


def logits_model(model: Any) -> Any:
    """``model`` cut at its ``logits`` layer (cached), with a silent compiled ``predict``.
    Built on the list ``model.inputs``: tf-keras-vis always calls models with a list."""
    import keras

    cache = model_cache(model)
    if "tfkv_logits" not in cache:
        ref = score_layer(model)
        if ref is None:
            cut = keras.Model(model.inputs, model.outputs[0], name="xaicxr_logits")
        elif not ref.nested:
            cut = keras.Model(model.inputs, ref.layer.output, name="xaicxr_logits")
        else:
            cut = explainable_model(model, None).logits_model()
        cache["tfkv_logits"] = _with_silent_predict(cut)
    return cache["tfkv_logits"]


def _with_silent_predict(model: Any) -> Any:
    import tensorflow as tf

    forward = compile_once(lambda x: model([x], training=False),
                           tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32))

    def predict(x: Any, batch_size: int = 32, **_: Any) -> np.ndarray:
        x = x[0] if isinstance(x, list) else x
        return np.concatenate([forward(tf.constant(x[i:i + batch_size], tf.float32)).numpy()
                               for i in range(0, len(x), batch_size)])

    model.predict = predict
    return model


class _TfkvCAM(Explainer):
    """A tf-keras-vis CAM class called on the layer's raw map."""

    visualizer: ClassVar[str] = ""
    centred_score: ClassVar[bool] = False
    reads_score = True

    def raw_maps(self, model: Any, images: np.ndarray, classes: np.ndarray, layer: str | None,
                 target: Target) -> Any:
        return self._call(self.explainable(model, layer), images, classes, target)

    def _call(self, exp: Any, images: np.ndarray, classes: np.ndarray, target: Target) -> Any:
        cls = _import(self.visualizer)
        cache = model_cache(exp.model)
        if "tfkv_logits" not in cache:
            cache["tfkv_logits"] = _with_silent_predict(exp.logits_model())
        vis = cls(cache["tfkv_logits"], clone=False)
        return vis(self._score_function(classes, target), images, penultimate_layer=exp.target_name,
                   seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False,
                   **self._call_options(exp))

    def _score_function(self, classes: np.ndarray, target: Target) -> Any:
        return _score(target, classes, self.centred_score)

    def _call_options(self, exp: Any) -> dict[str, Any]:
        return {}


class GradcamTfkv(_TfkvCAM):
    """Grad-CAM by ``tf_keras_vis.gradcam.Gradcam``: the reference for ``gradcam``."""

    visualizer = "tf_keras_vis.gradcam.Gradcam"


class GradcamPlusPlusTfkv(_TfkvCAM):
    """Grad-CAM++ by ``tf_keras_vis.gradcam_plus_plus.GradcamPlusPlus``."""

    visualizer = "tf_keras_vis.gradcam_plus_plus.GradcamPlusPlus"
    centred_score = True


class LayercamTfkv(_TfkvCAM):
    """LayerCAM by ``tf_keras_vis.layercam.Layercam``."""

    visualizer = "tf_keras_vis.layercam.Layercam"


class ScorecamTfkv(_TfkvCAM):
    """Score-CAM (Wang et al. 2020) by ``tf_keras_vis.scorecam.Scorecam``: gradient-free, each
    channel weighted by the score of the image masked with that (upsampled, min-max scaled)
    channel (the softmax probability of the class unless another probability-based target is
    given): the reference of the native ``scorecam``. One forward pass per channel and image (512 for VGG19's
    ``block5_conv4``); ``max_n`` keeps only the ``max_n`` channels of highest spatial variance
    (Faster Score-CAM), ``batch_size`` is the batch of masked images per forward pass."""

    visualizer = "tf_keras_vis.scorecam.Scorecam"
    default_target = ClassProbability

    def __init__(self, batch_size: int = 32, max_n: int | None = None) -> None:
        self.batch_size = batch_size
        self.max_n = max_n

    def _call(self, exp: Any, images: np.ndarray, classes: np.ndarray, target: Target) -> Any:
        import tensorflow as tf

        return tf.concat([super(ScorecamTfkv, self)._call(exp, images[i:i + 1], classes[i:i + 1], target)
                          for i in range(len(images))], axis=0)

    def _score_function(self, classes: np.ndarray, target: Target) -> Any:
        import tensorflow as tf

        classes = tf.constant(classes, tf.int32)
        return lambda probs: target.score_of_probabilities(probs, classes)

    def _call_options(self, exp: Any) -> dict[str, Any]:
        channels = int(exp.model.outputs[0].shape[-1])
        max_n = None if self.max_n is None else max(1, min(self.max_n, channels))
        return {"batch_size": self.batch_size, "max_N": max_n}


class Saliency(Explainer):
    """Vanilla gradient saliency (Simonyan et al. 2014) by ``tf_keras_vis.saliency.Saliency``:
    |d logit / d pixel|, max over input channels; min-max normalised. No target layer."""

    uses_layer = False
    signed = True
    reads_score = True

    def raw_maps(self, model: Any, images: np.ndarray, classes: np.ndarray, layer: str | None,
                 target: Target) -> Any:
        vis = _import("tf_keras_vis.saliency.Saliency")(logits_model(model), clone=False)
        with self._noise():
            return vis(_score(target, classes), images, keepdims=False, normalize_map=False,
                       **self._smoothing())

    def _smoothing(self) -> dict[str, Any]:
        return {}

    @contextmanager
    def _noise(self) -> Iterator[None]:
        yield


class SmoothGrad(Saliency):
    """SmoothGrad (Smilkov et al. 2017): saliency averaged over ``samples`` copies of the image
    with Gaussian noise of ``noise`` times its value range; reproducible through ``seed``."""

    def __init__(self, samples: int = 20, noise: float = 0.2, seed: int = 0) -> None:
        self.samples = samples
        self.noise = noise
        self.seed = seed

    def _smoothing(self) -> dict[str, Any]:
        return {"smooth_samples": self.samples, "smooth_noise": self.noise}

    @contextmanager
    def _noise(self) -> Iterator[None]:
        state = np.random.get_state()
        np.random.seed(self.seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def _import(dotted: str) -> type:
    import importlib
    import warnings

    module, _, name = dotted.rpartition(".")
    with warnings.catch_warnings():  # tf-keras-vis imports scipy.ndimage.interpolation
        warnings.simplefilter("ignore", DeprecationWarning)
        return getattr(importlib.import_module(module), name)
