"""The ``keras.applications`` backbones: registered with their options, built at a tiny input
size (once per family for the module), one training step, Grad-CAM at their default layer;
weights from a file written here; missing weights named clearly."""

from __future__ import annotations

import numpy as np
import pytest

from xaicxr import plugins
from xaicxr.errors import WeightsNotFoundError, XaicxrError

FAMILIES = ["resnet50", "densenet121", "efficientnetb0", "mobilenetv3small", "convnexttiny"]
CLASSES = ["normal", "covid"]
SIZE = 64  # the last layer is 2x2: at 32 px it would be 1x1 and every map constant


def test_registered_with_their_options():
    from xaicxr.plugins.options import option_spec

    rows = {row["name"]: row for row in plugins.available() if row.get("kind") == "backbone"}
    for name in FAMILIES:
        assert rows[name]["module"] == "xaicxr_builtins.backbones", name
        assert option_spec(plugins.get("backbone", name)) == {
            "weights": (str, "imagenet"), "input_size": (int, 224),
            "freeze_until": (str, "auto"), "dense": (list[int], []), "dropout": (float, 0.0),
            "bn_momentum": (float, 0.0)}
        assert plugins.get("backbone", name)(weights="none").freeze_until is None
        assert plugins.get("backbone", name)(weights="x.h5").freeze_until


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """Each family built once for the module, at SIZE, frozen through its pretrained default
    freeze point (checks it is a layer; the training step's backward pass stays short)."""
    import keras

    keras.utils.set_random_seed(0)
    cls = plugins.get("backbone", request.param)
    backbone = cls(weights="none", input_size=SIZE, dense=[8], dropout=0.1,
                   freeze_until=cls.freeze_point)
    return cls, backbone, backbone.build(CLASSES)


IMAGES = np.random.default_rng(0).random((2, SIZE, SIZE, 1), dtype=np.float32)
LABELS = np.array([0, 1])


@pytest.mark.slow
def test_builds_with_its_head_freeze_point_and_default_layer(family):
    cls, backbone, model = family
    names = [layer.name for layer in model.layers]
    assert names[-2:] == ["logits", "probs"] and "preprocess" in names
    frozen = names.index(cls.freeze_point)
    assert not any(layer.trainable for layer in model.layers[:frozen + 1])
    assert all(layer.trainable for layer in model.layers[frozen + 1:])
    assert model.get_layer(backbone.default_layer).output.shape[1:3] == (2, 2)


@pytest.mark.slow
def test_trains_a_step(family):
    import keras

    _, _, model = family
    before = [w.copy() for w in model.get_layer("logits").get_weights()]
    # eagerly: the step is the same, without tracing a graph for it (what cost here)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  run_eagerly=True)
    loss = model.train_on_batch(IMAGES, LABELS)
    assert np.isfinite(loss)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, model.get_layer("logits").get_weights()))


@pytest.mark.slow
def test_explains_at_its_default_layer(family):
    _, backbone, model = family
    gradcam = plugins.get("explainer", "gradcam")()
    assert gradcam.resolve_layer(model) == backbone.default_layer
    maps = gradcam.explain(model, IMAGES, LABELS, layer=backbone.default_layer)
    assert maps.shape == (2, SIZE, SIZE) and np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.slow
def test_weights_from_a_file_written_by_save_weights(tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNetV3Small(include_top=False, weights=None, pooling="avg",
                                               input_shape=(32, 32, 3), include_preprocessing=True)
    path = tmp_path / "mobilenet.weights.h5"
    base.save_weights(path)
    keras.utils.set_random_seed(2)
    backbone = plugins.get("backbone", "mobilenetv3small")(weights=str(path), input_size=32,
                                                           freeze_until="none")
    model = backbone.build(CLASSES)
    np.testing.assert_array_equal(model.get_layer("conv_1").get_weights()[0],
                                  base.get_layer("conv_1").get_weights()[0])


def test_missing_weights_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(WeightsNotFoundError, match="does not exist") as err:
        plugins.get("backbone", "resnet50")(weights=str(tmp_path / "nope.h5")).build(CLASSES)
    assert str(tmp_path / "nope.h5") in str(err.value)
    with pytest.raises(WeightsNotFoundError) as err:
        plugins.get("backbone", "efficientnetb0")().build(CLASSES)
    message = str(err.value)
    assert "efficientnetb0_notop.h5" in message and str(tmp_path / "keras" / "models") in message
    assert "weights = \"none\"" in message


def test_a_file_of_another_network_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.weights.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(WeightsNotFoundError, match="mobilenetv3small: could not load weights"):
        plugins.get("backbone", "mobilenetv3small")(weights=str(path), input_size=32).build(CLASSES)


def test_a_whole_model_given_as_weights_says_so_without_dumping_tensors(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(8, 3, name="block1_conv1"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.save(tmp_path / "my.keras")
    with pytest.raises(WeightsNotFoundError) as err:
        plugins.get("backbone", "vgg19")(weights=str(tmp_path / "my.keras"), input_size=32).build(CLASSES)
    message = str(err.value)
    assert "[model] path" in message and "value=[" not in message and len(message) < 1200, message


@pytest.fixture(scope="module")
def mobilenets():
    """MobileNetV3Small from scratch at 32 px, seed 0, by ``bn_momentum`` (0: the family's)."""
    import keras

    models = {}
    for momentum in (0.0, 0.9):
        keras.utils.set_random_seed(0)
        models[momentum] = plugins.get("backbone", "mobilenetv3small")(
            weights="none", input_size=32, bn_momentum=momentum).build(CLASSES)
    return models


def _momenta(model):
    import keras

    return {layer.momentum for layer in model.layers
            if isinstance(layer, keras.layers.BatchNormalization)}


def test_bn_momentum_sets_every_batchnorm_and_survives_saving(tmp_path, mobilenets):
    import keras

    assert _momenta(mobilenets[0.0]) == {0.999}  # the family's
    assert _momenta(mobilenets[0.9]) == {0.9}
    mobilenets[0.9].save(tmp_path / "model.keras")
    assert _momenta(keras.saving.load_model(tmp_path / "model.keras", compile=False)) == {0.9}
    with pytest.raises(XaicxrError, match="bn_momentum must be in"):
        plugins.get("backbone", "mobilenetv3small")(weights="none", bn_momentum=1.0)
    with pytest.raises(XaicxrError, match="no BatchNormalization layer"):
        plugins.get("backbone", "convnexttiny")(weights="none", input_size=32,
                                                bn_momentum=0.9).build(CLASSES)


def test_bn_momentum_is_what_one_training_step_uses(mobilenets):
    """From zero, one step moves a moving mean by (1 - momentum) x the batch mean: the first
    BatchNorm sees the same batch in both models (same seed, same input), so 0.1 / 0.001.
    The step runs eagerly: the same update, without tracing a graph for it."""
    import keras

    images = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    moved = {}
    for momentum, model in mobilenets.items():
        first = next(layer for layer in model.layers
                     if isinstance(layer, keras.layers.BatchNormalization))
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
        model.train_on_batch(images, np.array([0, 1, 0, 1]))
        moved[momentum] = keras.ops.convert_to_numpy(first.moving_mean)
    assert np.abs(moved[0.9]).max() > 0
    np.testing.assert_allclose(moved[0.9], 100 * moved[0.0], rtol=1e-3, atol=1e-7)
