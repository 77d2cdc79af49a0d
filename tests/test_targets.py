"""Explained targets through the public API, on a tiny conv model: a binary task's score equals
the class probability where they must (covid-vs-rest = p(covid)); class indices still mean the
class logit, bit for bit, as the explicit ``logit`` target and the pre-target code path; a
callable of the logits is a target; targets that cannot work are refused clearly."""

from __future__ import annotations

import numpy as np
import pytest

from xaicxr import plugins
from xaicxr.errors import ExplainerInputError
from xaicxr.plugins import BinaryScore, CAMExplainer, ClassLogit, ClassProbability

SIZE = 24
CLASSES = ["normal", "bacteria", "virus", "covid"]
COVID = CLASSES.index("covid")
FAST = {"occlusion": {"patch": 6, "stride": 4}, "rise": {"masks": 64, "cells": 4},
        "integrated-gradients": {"steps": 8}, "smoothgrad": {"samples": 4}}


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Dense(len(CLASSES), name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(x))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((4, SIZE, SIZE, 1), dtype=np.float32)


def _explainer(name: str):
    return plugins.get("explainer", name)(**FAST.get(name, {}))


def _layer(explainer) -> str | None:
    return "conv2" if explainer.uses_layer else None


@pytest.mark.parametrize("name", ["gradcam", "ablationcam", "occlusion", "rise", "integrated-gradients",
                                  "gradcam-tfkv", "scorecam"])
def test_covid_vs_rest_is_the_covid_probability(name, model, images):
    e = _explainer(name)
    covid = np.full(len(images), COVID)
    binary = e.explain(model, images, BinaryScore([COVID], "covid-vs-rest"), layer=_layer(e))
    probability = e.explain(model, images, ClassProbability(covid), layer=_layer(e))
    assert binary.shape == (len(images), SIZE, SIZE)
    np.testing.assert_allclose(binary, probability, atol=1e-5)
    assert np.ptp(binary) > 0


def test_abnormal_vs_normal_sums_the_positive_classes(model, images):
    """1 - p(normal) = p(bacteria) + p(virus) + p(covid), here given as a callable. (Gradients
    only: occlusion divides the tiny probability drops of an untrained model, where the two
    float32 roundings of one number differ visibly.)"""
    import tensorflow as tf

    e = _explainer("gradcam")
    abnormal = e.explain(model, images, BinaryScore([1, 2, 3], "abnormal-vs-normal"), layer=_layer(e))
    as_callable = e.explain(model, images, lambda logits: 1.0 - tf.nn.softmax(logits)[:, 0], layer=_layer(e))
    np.testing.assert_allclose(abnormal, as_callable, atol=1e-5)
    assert not np.allclose(abnormal, e.explain(model, images, ClassProbability(np.zeros(4, int)), layer=_layer(e)))


class _PreTargetGradCAM(CAMExplainer):
    """Grad-CAM as the base class picked its score before targets existed (a gather on the logit)."""

    def channel_weights(self, activations, gradients):
        import tensorflow as tf

        return tf.reduce_mean(gradients, axis=[1, 2])

    def class_maps(self, graph, images, classes, target):
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)
            acts, logits = graph(images, training=False)
            score = tf.gather(logits, tf.cast(classes, tf.int32), axis=1, batch_dims=1)
        grads = tape.gradient(score, acts, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return self.cam(acts, grads)


@pytest.mark.parametrize("name", sorted({"gradcam", "layercam", "ablationcam", "gradcam-tfkv", "saliency",
                                         "occlusion", "integrated-gradients"}))
def test_class_indices_are_the_logit_target_bit_for_bit(name, model, images):
    e = _explainer(name)
    targets = np.array([0, 1, 2, 3])
    plain = e.explain(model, images, targets, layer=_layer(e))
    np.testing.assert_array_equal(plain, e.explain(model, images, ClassLogit(targets), layer=_layer(e)))
    if name == "gradcam":
        np.testing.assert_array_equal(plain, _PreTargetGradCAM().explain(model, images, targets, layer="conv2"))
    every = e.explain(model, images, "all", layer=_layer(e))
    np.testing.assert_array_equal(every, e.explain(model, images, ClassLogit("all"), layer=_layer(e)))


def test_probability_in_all_class_mode_matches_one_class_at_a_time(model, images):
    e = _explainer("gradcam")
    every = e.explain(model, images, ClassProbability("all"), layer="conv2")
    one = e.explain(model, images, ClassProbability(np.full(4, 2)), layer="conv2")
    np.testing.assert_allclose(every[:, 2], one, atol=1e-5)


def test_targets_that_cannot_work_are_refused(model, images):
    gradcam = _explainer("gradcam")
    with pytest.raises(ExplainerInputError, match="one score per image"):
        gradcam.explain(model, images, BinaryScore([COVID]).bind("all"), layer="conv2")
    with pytest.raises(ExplainerInputError, match="not all in"):
        gradcam.explain(model, images, BinaryScore([7]), layer="conv2")
    with pytest.raises(ExplainerInputError, match="not bound"):
        gradcam.explain(model, images, ClassProbability(), layer="conv2")
    with pytest.raises(ExplainerInputError, match="probabilities do not give back"):
        _explainer("scorecam-tfkv").explain(model, images, ClassLogit([0, 1, 2, 3]), layer="conv2")

    class OwnGather(plugins.Explainer):
        def raw_maps(self, model, images, classes, layer, target):
            return np.ones(images.shape[:3], np.float32)

    with pytest.raises(ExplainerInputError, match="explains class indices only"):
        OwnGather().explain(model, images, ClassProbability([0, 1, 2, 3]))
    assert OwnGather().explain(model, images, [0, 1, 2, 3]).shape == (4, SIZE, SIZE)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("explain, binary, message", [
    ('target = "binary:covid-vs-all"', "", "no binary task 'covid-vs-all'; known tasks: covid-vs-rest, abnormal-vs-normal"),
    ('target = "binary:x"', '[binary]\nsick = { positive = ["covid", "virus"] }', "known tasks: sick"),
    ('target = "softmax"', "", "expected \"logit\", \"probability\" or \"binary:<task>\""),
    ('target = "binary:covid-vs-rest"\ntargets = "all"', "", "has one score per image"),
])
def test_an_unknown_or_impossible_target_is_a_one_line_config_error(tmp_path, explain, binary, message):
    from typer.testing import CliRunner

    from xaicxr.cli import app

    config = tmp_path / "bad.toml"
    config.write_text(f'{binary}\n[[explain]]\nname = "gradcam"\n{explain}\n')
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert "[[explain]]" in result.stderr and str(config) in result.stderr


def test_targets_name_their_stores(tmp_path):
    from xaicxr.config import load_config, store_name

    config = tmp_path / "ok.toml"
    config.write_text('[binary]\nsick = { positive = ["covid", "virus"] }\n'
                      '[[explain]]\nname = "gradcam"\n[[explain]]\nname = "gradcam"\ntarget = "binary:sick"\n'
                      '[[explain]]\nname = "rise"\ntarget = "probability"\n')
    cfg = load_config(config)
    assert [store_name(e) for e in cfg["explain"]] == ["gradcam", "gradcam.binary-sick", "rise.probability"]
    assert "target" not in cfg["explain"][0], "no target: the store and its identity are as before"


def test_default_binary_task_names_are_those_metrics_defines():
    from xaicxr.analysis.metrics import default_binary_tasks
    from xaicxr.config import DEFAULT_BINARY_TASKS

    assert tuple(default_binary_tasks(CLASSES)) == DEFAULT_BINARY_TASKS
