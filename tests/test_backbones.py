"""The ``keras.applications`` backbones: registered with their options, built at a tiny input
size, one training step, Grad-CAM at their default layer; weights from a file written here;
missing weights named clearly."""

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


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_builds_trains_a_step_and_explains_at_its_default_layer(name):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    cls = plugins.get("backbone", name)
    # frozen through the pretrained default freeze point: checks it is a layer, and the
    # training step's backward pass (its trace is what costs here) stays short
    backbone = cls(weights="none", input_size=SIZE, dense=[8], dropout=0.1,
                   freeze_until=cls.freeze_point)
    model = backbone.build(CLASSES)
    names = [layer.name for layer in model.layers]
    assert names[-2:] == ["logits", "probs"] and "preprocess" in names
    frozen = names.index(cls.freeze_point)
    assert not any(layer.trainable for layer in model.layers[:frozen + 1])
    assert all(layer.trainable for layer in model.layers[frozen + 1:])
    assert model.get_layer(backbone.default_layer).output.shape[1:3] == (2, 2)

    images = np.random.default_rng(0).random((4, SIZE, SIZE, 1), dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    before = [w.copy() for w in model.get_layer("logits").get_weights()]
    with tf.GradientTape() as tape:  # eager: a compiled train step costs its trace, tens of seconds
        loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(labels, model(images, training=True)))
    variables = model.trainable_variables
    keras.optimizers.Adam(1e-3).apply_gradients(zip(tape.gradient(loss, variables), variables))
    assert np.isfinite(float(loss))
    assert any(np.abs(a - b).max() > 0 for a, b in zip(before, model.get_layer("logits").get_weights()))

    gradcam = plugins.get("explainer", "gradcam")()
    assert gradcam.resolve_layer(model) == backbone.default_layer
    maps = gradcam.explain(model, images, labels, layer=backbone.default_layer)
    assert maps.shape == (4, SIZE, SIZE) and np.isfinite(maps).all()
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


def test_bn_momentum_sets_every_batchnorm_and_survives_saving(tmp_path):
    import keras

    def momenta(model):
        return {layer.momentum for layer in model.layers
                if isinstance(layer, keras.layers.BatchNormalization)}

    cls = plugins.get("backbone", "mobilenetv3small")
    assert momenta(cls(weights="none", input_size=32).build(CLASSES)) == {0.999}  # the family's
    model = cls(weights="none", input_size=32, bn_momentum=0.9).build(CLASSES)
    assert momenta(model) == {0.9}
    model.save(tmp_path / "model.keras")
    assert momenta(keras.saving.load_model(tmp_path / "model.keras", compile=False)) == {0.9}
    with pytest.raises(XaicxrError, match="bn_momentum must be in"):
        cls(weights="none", bn_momentum=1.0)
    with pytest.raises(XaicxrError, match="no BatchNormalization layer"):
        plugins.get("backbone", "convnexttiny")(weights="none", input_size=32,
                                                bn_momentum=0.9).build(CLASSES)


def test_bn_momentum_is_what_one_training_step_uses():
    """From zero, one step moves a moving mean by (1 - momentum) x the batch mean: the first
    BatchNorm sees the same batch in both models (same seed, same input), so 0.1 / 0.001."""
    import keras

    images = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    moved = {}
    for momentum in (0.0, 0.9):
        keras.utils.set_random_seed(0)
        model = plugins.get("backbone", "mobilenetv3small")(
            weights="none", input_size=32, bn_momentum=momentum).build(CLASSES)
        first = next(layer for layer in model.layers
                     if isinstance(layer, keras.layers.BatchNormalization))
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        model.train_on_batch(images, np.array([0, 1, 0, 1]))
        moved[momentum] = keras.ops.convert_to_numpy(first.moving_mean)
    assert np.abs(moved[0.9]).max() > 0
    np.testing.assert_allclose(moved[0.9], 100 * moved[0.0], rtol=1e-3, atol=1e-7)
