"""Explainers: the contract, agreement with tf-keras-vis, layer lookup, degenerate maps."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from xaicxr import plugins
from xaicxr.errors import ExplainerInputError, LayerNotFoundError
from xaicxr.kerasgraph import model_cache, resolve_layer
from xaicxr.plugins.explainer import finish_maps

CLASSES = ["normal", "bacteria", "virus", "covid"]
SIZE = 32
BUILTINS = ["gradcam", "gradcam-tfkv", "gradcam++", "scorecam", "layercam"]
ALL = BUILTINS + ["gradcam++-tfkv", "layercam-tfkv", "scorecam-tfkv", "saliency", "smoothgrad"]
FAST_OPTIONS = {"scorecam": {"max_n": 8, "channel_batch": 16},
                "scorecam-tfkv": {"max_n": 8, "batch_size": 16}, "smoothgrad": {"samples": 3}}


def _vgg(**options):
    import keras

    keras.utils.set_random_seed(options.pop("seed", 0))
    defaults = dict(weights="none", width=0.125, input_size=SIZE, dense=[16], dropout=0.0)
    return plugins.get("backbone", "vgg19")(**{**defaults, **options}).build(CLASSES)


def _explainer(name: str):
    return plugins.get("explainer", name)(**FAST_OPTIONS.get(name, {}))


@pytest.fixture(scope="module")
def model():
    return _vgg()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((5, SIZE, SIZE, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def targets(model, images):
    """Predicted classes: Score-CAM weights are softmax scores, ~0 for unlikely classes."""
    return np.asarray(model(images)).argmax(1)


def test_design_builtins_are_registered():
    from xaicxr.errors import ConfigError
    from xaicxr.plugins.options import check_options

    names = {row["name"] for row in plugins.available() if row.get("kind") == "explainer"}
    assert set(ALL) <= names
    options = {"max_n": 16, "channel_batch": 8}
    assert check_options(plugins.get("explainer", "scorecam"), options, "here") == options
    assert plugins.get("explainer", "scorecam")(**options).options() == options
    with pytest.raises(ConfigError, match="unknown key 'max'.*max_n"):
        check_options(plugins.get("explainer", "scorecam"), {"max": 16}, "here")


@pytest.mark.parametrize("name", ALL)
def test_contract(name, model, images, targets):
    explainer = _explainer(name)
    maps, degenerate = explainer.explain_with_info(model, images, targets)
    assert maps.shape == (len(images), SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert degenerate.shape == (len(images),) and degenerate.dtype == bool
    assert not degenerate.any()
    np.testing.assert_array_equal(explainer.explain(model, images, targets), maps)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)


@pytest.mark.parametrize("native, reference", [("gradcam", "gradcam-tfkv"),
                                               ("gradcam++", "gradcam++-tfkv"),
                                               ("layercam", "layercam-tfkv"),
                                               ("scorecam", "scorecam-tfkv")])
def test_native_agrees_with_tf_keras_vis(native, reference, model, images):
    targets = np.arange(len(images)) % len(CLASSES)
    ours = _explainer(native).explain(model, images, targets)
    theirs = _explainer(reference).explain(model, images, targets)
    assert np.abs(ours - theirs).max() <= 1e-3


def test_native_scorecam_agrees_with_tf_keras_vis_on_every_channel(model, images, targets):
    """block4_conv4 is 4x4 at 32 px: the masks are interpolated (tf-keras-vis zooms with the
    corners aligned and scales after zooming); every channel, a channel batch that leaves a
    short last call."""
    ours = plugins.get("explainer", "scorecam")(channel_batch=24)
    theirs = plugins.get("explainer", "scorecam-tfkv")()
    a, degenerate = ours.explain_with_info(model, images, targets, layer="block4_conv4")
    b = theirs.explain(model, images, targets, layer="block4_conv4")
    assert not degenerate.any() and np.abs(a - b).max() <= 1e-3


def test_agreement_at_a_shallower_layer_with_batchnorm(images):
    model = _vgg(batchnorm=True, seed=1)
    targets = np.zeros(len(images), int)
    ours = _explainer("gradcam").explain(model, images, targets, layer="block4_conv2")
    theirs = _explainer("gradcam-tfkv").explain(model, images, targets, layer="block4_conv2")
    assert np.abs(ours - theirs).max() <= 1e-3


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "layercam"])
def test_all_classes_from_one_pass_equal_per_class_calls(name, model, images):
    explainer = _explainer(name)
    every = explainer.explain_all(model, images)
    assert every.shape == (len(images), len(CLASSES), SIZE, SIZE)
    for c in range(len(CLASSES)):
        np.testing.assert_allclose(every[:, c], explainer.explain(model, images, np.full(5, c)),
                                   atol=1e-5)


def test_all_classes_generic_path_matches_compiled_path(model, images):
    reference = _explainer("gradcam-tfkv")
    every, degenerate = reference.explain_with_info(model, images, "all")
    assert every.shape == (len(images), len(CLASSES), SIZE, SIZE)
    assert degenerate.shape == (len(images), len(CLASSES))
    np.testing.assert_array_equal(reference.explain(model, images, "all"), every)
    assert np.abs(every - _explainer("gradcam").explain_all(model, images)).max() <= 1e-3


def test_all_classes_jacobian_equals_loop(model, images):
    from xaicxr.plugins.explainer import CAMExplainer

    gradcam = plugins.get("explainer", "gradcam")

    class Jacobian(gradcam):
        allclass_method = "jacobian"

    assert issubclass(gradcam, CAMExplainer)
    np.testing.assert_allclose(Jacobian().explain_all(model, images),
                               gradcam().explain_all(model, images), atol=1e-5)


def test_compiled_once_per_model_and_layer(model, images, targets):
    gradcam = _explainer("gradcam")
    for n in (1, 3, 5):
        gradcam.explain(model, images[:n], targets[:n])
    functions = [fn for key, fn in model_cache(model).items()
                 if key[0] == "cam" and key[1] is type(gradcam) and key[4] == "single"
                 and key[3] == "block5_conv4"]
    assert len(functions) == 1
    assert functions[0].experimental_get_tracing_count() == 1


COMPILED = {"gradcam": {}, "gradcam++": {}, "layercam": {}, "hirescam": {}, "xgradcam": {},
            "scorecam": {"max_n": 4}, "integrated-gradients": {"steps": 4}, "rise": {"masks": 8}}


def test_every_compiled_explainer_traces_once_whatever_the_batch_size(images):
    """Batches of 5, 2 and 5 images (and every class for Grad-CAM): each compiled function is
    traced once, and TensorFlow's retracing warning, which counts traces per code object (five
    CAMs on one model made it fire before), stays silent."""
    import logging

    import tensorflow as tf

    model = _vgg(seed=3)  # its own: other tests leave functions in the module model's cache
    targets = np.asarray(model(images)).argmax(1)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    tf.get_logger().addHandler(handler)
    try:
        for name, options in COMPILED.items():
            explainer = plugins.get("explainer", name)(**options)
            for n in (5, 2, 5):
                explainer.explain(model, images[:n], targets[:n])
                if name == "gradcam":
                    explainer.explain_all(model, images[:n])
    finally:
        tf.get_logger().removeHandler(handler)
    functions = {key: fn for key, fn in model_cache(model).items()
                 if hasattr(fn, "experimental_get_tracing_count")}
    assert len(functions) >= len(COMPILED)
    assert {key: fn.experimental_get_tracing_count() for key, fn in functions.items()} == \
        {key: 1 for key in functions}
    assert not [m for m in messages if "retracing" in m]


def test_degenerate_maps_are_zeros_and_flagged(images):
    model = _vgg(seed=2)
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([np.zeros_like(kernel), bias])  # the score no longer depends on the layer
    targets = np.zeros(len(images), int)
    for name in ["gradcam", "gradcam++", "layercam", "gradcam-tfkv", "saliency"]:
        explainer = _explainer(name)
        maps, flags = explainer.explain_with_info(model, images, targets)
        assert flags.all(), name
        assert np.array_equal(maps, np.zeros_like(maps)), name
        assert explainer.explain(model, images, targets).dtype == np.float32
    every, flags = _explainer("gradcam").explain_all_with_info(model, images)
    assert flags.shape == (len(images), len(CLASSES)) and flags.all() and not every.any()


def test_finish_maps_never_returns_nan():
    raw = np.ones((4, 3, 3), np.float32)
    raw[0, 1, 1] = np.nan
    raw[1] = 0.0
    raw[2] = -5.0  # negative evidence only: nothing left after the ReLU
    raw[3, 0, 0] = 7.0
    maps, flags = (x.numpy() for x in finish_maps(raw, (6, 6)))
    assert maps.shape == (4, 6, 6) and np.isfinite(maps).all()
    assert flags.tolist() == [True, True, True, False]
    assert not maps[:3].any() and maps[3].max() == pytest.approx(1.0)
    signed, flags = (x.numpy() for x in finish_maps(raw[2:3] + np.eye(3, dtype=np.float32), (3, 3),
                                                      signed=True))
    assert not flags[0] and signed.min() == 0.0 and signed.max() == 1.0


def test_unknown_layer_lists_candidates(model, images, targets):
    with pytest.raises(LayerNotFoundError) as info:
        _explainer("gradcam").explain(model, images, targets, layer="block9_conv9")
    message = str(info.value)
    assert "block9_conv9" in message and "block5_conv4" in message and "block1_conv1" in message
    assert "logits" not in message.split(":", 1)[1]
    with pytest.raises(LayerNotFoundError, match="not \\(N, h, w, k\\).*block5_conv4"):
        _explainer("gradcam-tfkv").explain(model, images, targets, layer="fc1")


def test_default_layer_is_last_conv(model):
    assert resolve_layer(model, None).path == "block5_conv4"
    assert resolve_layer(_vgg(batchnorm=True), None).path == "block5_conv4"
    assert _explainer("saliency").resolve_layer(model) == ""


def test_bad_targets_and_images(model, images):
    gradcam = _explainer("gradcam")
    with pytest.raises(ExplainerInputError, match="class indices in \\[0, 4\\)"):
        gradcam.explain(model, images, np.full(len(images), 4))
    with pytest.raises(ExplainerInputError, match="one per image"):
        gradcam.explain(model, images, [0, 1])
    with pytest.raises(ExplainerInputError, match="takes"):
        gradcam.explain(model, images[:, :16], np.zeros(len(images), int))
    assert gradcam.explain(model, images[:0], np.zeros(0, int)).shape == (0, SIZE, SIZE)
    gray = gradcam.explain(model, images[..., 0], np.zeros(len(images), int))
    assert gray.shape == (5, SIZE, SIZE)


def test_frozen_layers_still_explained(images):
    frozen = _vgg(freeze_until="block5_pool", seed=4)
    free = _vgg(seed=4)
    assert not frozen.get_layer("block5_conv4").trainable
    targets = np.asarray(free(images)).argmax(1)
    a, flags = _explainer("gradcam").explain_with_info(frozen, images, targets)
    assert not flags.any()
    np.testing.assert_allclose(a, _explainer("gradcam").explain(free, images, targets), atol=1e-6)


def _nested_and_flat():
    """A functional model around a nested ``keras.applications.VGG19``, and the same layers
    (shared weights) called as one flat graph."""
    import keras

    from xaicxr.plugins.layers import GrayToColour

    keras.utils.set_random_seed(5)
    base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    head = [keras.layers.GlobalAveragePooling2D(name="pool"), keras.layers.Dense(4, name="logits"),
            keras.layers.Activation("softmax", name="probs")]
    gray = GrayToColour("caffe", name="preprocess")
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = base(gray(inputs))
    for layer in head:
        x = layer(x)
    nested = keras.Model(inputs, x, name="nested")
    y = gray(inputs)
    for layer in base.layers[1:] + head:
        y = layer(y)
    return nested, keras.Model(inputs, y, name="flat")


@pytest.mark.parametrize("name", ["gradcam", "gradcam-tfkv", "layercam"])
def test_layer_inside_nested_model(name, images):
    nested, flat = _nested_and_flat()
    explainer = _explainer(name)
    targets = np.asarray(flat(images)).argmax(1)
    assert explainer.resolve_layer(nested) == "vgg19/block5_conv4"
    for layer in ("block5_conv4", "vgg19/block4_conv4"):
        a, flags = explainer.explain_with_info(nested, images, targets, layer=layer)
        assert not flags.any()
        b = explainer.explain(flat, images, targets, layer=layer.split("/")[-1])
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_layer_inside_nested_sequential(images):
    import keras

    keras.utils.set_random_seed(6)
    body = keras.Sequential([keras.Input((SIZE, SIZE, 1)),
                             keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
                             keras.layers.Conv2D(4, 3, activation="relu", name="c2")], name="body")
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.GlobalAveragePooling2D()(body(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    maps, flags = _explainer("gradcam").explain_with_info(model, images, np.zeros(5, int),
                                                          layer="c1")
    assert maps.shape == (5, SIZE, SIZE) and not flags.any()


def test_plugin_modules_do_not_import_tensorflow():
    code = ("import sys, xaicxr_builtins.explainers as e; e.xaicxr_explainers(); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
            "[m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')][:3]")
    subprocess.run([sys.executable, "-c", code], check=True)
