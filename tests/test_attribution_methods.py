"""The input-space explainers ``integrated-gradients``, ``occlusion``, ``rise`` on tiny models:
IG completeness; occlusion against the analytic drop of a model whose logit is a weighted pixel
sum; RISE deterministic by seed and following the weights of that model; batching invisible
in the maps; no NaN where every gradient is zero or the model is constant; the public API,
all-class mode included."""

from __future__ import annotations

import numpy as np
import pytest

from xaicxr import plugins
from xaicxr.plugins.explainer import finish_maps

SIZE = 16
METHODS = ["integrated-gradients", "occlusion", "rise"]
FAST = {"integrated-gradients": {}, "occlusion": {"patch": 4, "stride": 3},
        "rise": {"masks": 200, "cells": 4}}


def _explainer(name: str, **options):
    return plugins.get("explainer", name)(**{**FAST[name], **options})


def _head(x, classes: int = 3):
    import keras

    x = keras.layers.Dense(classes, name="logits")(x)
    return keras.layers.Activation("softmax", name="probs")(x)


def _conv_model(seed: int = 0, dead: bool = False):
    """Conv (ReLU) -> conv (tanh) -> pool -> logits -> probs; ``dead``: the first conv's bias
    is -1e3, so every activation and every gradient is zero."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh", name="conv2")(x)
    model = keras.Model(inputs, _head(keras.layers.GlobalAveragePooling2D()(x)))
    if dead:
        kernel, bias = model.get_layer("conv1").get_weights()
        model.get_layer("conv1").set_weights([kernel, np.full_like(bias, -1e3)])
    return model


def _weights() -> np.ndarray:
    """A smooth, signed (H, W) weight map: a bump minus a constant."""
    r, c = np.mgrid[:SIZE, :SIZE]
    return (np.exp(-((r - 5.0) ** 2 + (c - 10.0) ** 2) / (2 * 3.0 ** 2)) - 0.2).astype(np.float32)


def _pixel_sum_model(weights: np.ndarray, scale: float = 1.0):
    """logit_0 = scale * sum_p weights_p x_p, logit_1 = 0 (flatten -> dense with fixed kernel)."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    model = keras.Model(inputs, _head(keras.layers.Flatten()(inputs), classes=2))
    kernel = np.stack([scale * weights.reshape(-1), np.zeros(SIZE * SIZE, np.float32)], axis=1)
    model.get_layer("logits").set_weights([kernel, np.zeros(2, np.float32)])
    return model


def _constant_model():
    import keras

    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    model = keras.Model(inputs, _head(keras.layers.Flatten()(inputs)))
    model.get_layer("logits").set_weights([np.zeros((SIZE * SIZE, 3), np.float32),
                                           np.array([0.5, -1.0, 2.0], np.float32)])
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((3, SIZE, SIZE, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def conv_model():
    return _conv_model()


def _logits(model, x) -> np.ndarray:
    import keras

    return np.asarray(keras.Model(model.inputs[0], model.get_layer("logits").output)(x), np.float64)


# --------------------------------------------------------------------------- IG


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_ig_completeness(baseline, conv_model, images):
    ig = _explainer("integrated-gradients", baseline=baseline, blur_sigma=56.0)  # 4 px at 16 px
    assert ig.steps == 32
    targets = np.array([0, 1, 2])
    attributions = ig.attributions(conv_model, images, targets)
    assert attributions.shape == images.shape and attributions.dtype == np.float32
    rows = np.arange(len(images))
    expected = (_logits(conv_model, images)[rows, targets]
                - _logits(conv_model, ig.baselines(images))[rows, targets])
    assert np.abs(expected).min() > 1e-3  # a difference worth checking
    total = attributions.astype(np.float64).sum(axis=(1, 2, 3))
    np.testing.assert_array_less(np.abs(total - expected), 0.01 * np.abs(expected))


def test_ig_blur_baseline_and_exact_on_a_linear_model(images):
    weights = _weights()
    model = _pixel_sum_model(weights)
    ig = _explainer("integrated-gradients", steps=3, baseline="black")
    a = ig.attributions(model, images, np.zeros(3, int))
    np.testing.assert_allclose(a[..., 0], weights * images[..., 0], rtol=1e-4, atol=1e-6)
    raw = ig.raw_maps(model, images, np.zeros(3, int), None, ig.default_target())
    np.testing.assert_allclose(raw, np.abs(a.sum(-1)))
    blurred = _explainer("integrated-gradients", baseline="blur", blur_sigma=28.0).baselines(images)
    assert blurred.shape == images.shape and not np.allclose(blurred, images)
    assert blurred.std(axis=(1, 2)).max() < images.std(axis=(1, 2)).min()


def test_ig_batching_is_invisible(conv_model, images):
    targets = np.array([2, 0, 1])
    reference = _explainer("integrated-gradients", steps=8, batch=64).attributions(
        conv_model, images, targets)  # 8 images in one call, one chunk
    for batch in (1, 5, 8):
        other = _explainer("integrated-gradients", steps=8, batch=batch)
        np.testing.assert_allclose(other.attributions(conv_model, images, targets), reference,
                                   rtol=1e-5, atol=1e-6)


def test_ig_zero_gradients_give_flagged_zeros(images):
    model = _conv_model(dead=True)
    ig = _explainer("integrated-gradients")
    assert not ig.attributions(model, images, np.zeros(3, int)).any()
    maps, flags = ig.explain_with_info(model, images, np.zeros(3, int))
    assert flags.all() and np.isfinite(maps).all() and not maps.any()


# --------------------------------------------------------------------------- occlusion


def _occlusion_reference(images, weights, patch, stride, fill):
    """Mean drop of the pixel-sum logit over the squares covering each pixel (float64)."""
    h = images.shape[1]
    starts = list(range(0, h - patch + 1, stride))
    starts += [h - patch] if starts[-1] != h - patch else []
    out = np.zeros(images.shape[:3])
    count = np.zeros(images.shape[1:3])
    for x, o in zip(images[..., 0].astype(np.float64), out):
        value = x.mean() if fill == "mean" else 0.0
        for top in starts:
            for left in starts:
                square = (slice(top, top + patch), slice(left, left + patch))
                o[square] += (weights[square] * (x[square] - value)).sum()
    for top in starts:
        for left in starts:
            count[top:top + patch, left:left + patch] += 1
    return out / count


@pytest.mark.parametrize("fill", ["black", "mean"])
def test_occlusion_is_the_analytic_drop(fill, images):
    weights = _weights()
    model = _pixel_sum_model(weights)
    occlusion = _explainer("occlusion", fill=fill, patch=5, stride=4)  # + a square flush right
    expected = _occlusion_reference(images, weights, 5, 4, fill)
    raw = occlusion.raw_maps(model, images, np.zeros(3, int), None, occlusion.default_target())
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5)
    maps, flags = occlusion.explain_with_info(model, images, np.zeros(3, int))
    reference, reference_flags = (x.numpy() for x in finish_maps(expected, (SIZE, SIZE)))
    np.testing.assert_allclose(maps, reference, atol=1e-5)
    assert not flags.any() and not reference_flags.any()


def test_occlusion_grid_covers_every_pixel_and_batching_is_invisible(images):
    model = _conv_model(seed=3)
    occlusion = _explainer("occlusion", patch=5, stride=4)  # starts 0, 4, 8, 11
    assert occlusion.passes((SIZE, SIZE)) == 16 and occlusion.starts(SIZE) == (5, [0, 4, 8, 11])
    reference = occlusion.every_class(model, images)
    for batch in (1, 7, 100):  # 100: six images per call
        other = _explainer("occlusion", patch=5, stride=4, batch=batch).every_class(model, images)
        np.testing.assert_allclose(other, reference, rtol=1e-4, atol=1e-6)
    big = _explainer("occlusion", patch=64, stride=8).every_class(model, images)  # whole image
    assert np.ptp(big, axis=(2, 3)).max() < 1e-5


# --------------------------------------------------------------------------- RISE


def test_rise_is_deterministic_by_seed(conv_model, images):
    targets = np.array([0, 1, 2])
    first = _explainer("rise", seed=1).explain(conv_model, images, targets)
    again = _explainer("rise", seed=1).explain(conv_model, images, targets)
    other = _explainer("rise", seed=2).explain(conv_model, images, targets)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-2


def test_rise_masks_follow_the_paper():
    rise = _explainer("rise", masks=300, cells=4, p=0.3)
    masks = rise.make_masks(np.arange(300), (SIZE, SIZE)).numpy()
    assert masks.shape == (300, SIZE, SIZE)
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    assert abs(masks.mean() - 0.3) < 0.03
    assert len({m.tobytes() for m in masks}) >= 295  # random grids and shifts: few alike
    np.testing.assert_array_equal(masks[5:9], rise.make_masks(np.arange(5, 9), (SIZE, SIZE)))


def test_rise_follows_the_weights_of_a_pixel_sum_model():
    weights = _weights()
    model = _pixel_sum_model(weights, scale=0.2)  # p_0 = sigmoid(0.2 w.x): monotone in w.x
    ones = np.ones((1, SIZE, SIZE, 1), np.float32)
    rise = plugins.get("explainer", "rise")(masks=2000)  # 7 x 7 cells
    raw = rise.raw_maps(model, ones, np.zeros(1, int), None, rise.default_target())[0]
    assert np.corrcoef(raw.ravel(), weights.ravel())[0, 1] > 0.9
    # class 1's probability is 1 - p_0: its map is the mirror image
    other = rise.raw_maps(model, ones, np.ones(1, int), None, rise.default_target())[0]
    assert np.corrcoef(other.ravel(), weights.ravel())[0, 1] < -0.9


def test_rise_batching_is_invisible(conv_model, images):
    reference = _explainer("rise", masks=50, batch=64).every_class(conv_model, images)
    for batch in (7, 50, 200):
        other = _explainer("rise", masks=50, batch=batch).every_class(conv_model, images)
        np.testing.assert_allclose(other, reference, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- all methods


@pytest.mark.parametrize("name", ["occlusion", "rise"])
def test_constant_model_gives_no_nan(name, images):
    explainer = _explainer(name)
    maps, flags = explainer.explain_with_info(_constant_model(), images, np.zeros(3, int))
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    if name == "occlusion":  # no drop anywhere: degenerate
        assert flags.all() and not maps.any()


@pytest.mark.parametrize("name", METHODS)
def test_public_api_and_all_classes(name, conv_model, images):
    cls = plugins.get("explainer", name)
    names = {row["name"] for row in plugins.available() if row.get("kind") == "explainer"}
    assert name in names and not cls.uses_layer
    explainer = _explainer(name)
    assert type(explainer)(**explainer.options()).options() == explainer.options()
    assert explainer.resolve_layer(conv_model) == ""
    targets = _logits(conv_model, images).argmax(1)  # occluding other classes may only raise them
    maps, degenerate = explainer.explain_with_info(conv_model, images, targets)
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    assert degenerate.shape == (3,) and not degenerate.any()
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    gray = explainer.explain(conv_model, images[..., 0], targets)
    np.testing.assert_allclose(gray, maps, atol=1e-6)
    every, every_degenerate = explainer.explain_with_info(conv_model, images, "all")
    assert every.shape == (3, 3, SIZE, SIZE) and every_degenerate.shape == (3, 3)
    np.testing.assert_array_equal(explainer.explain(conv_model, images, "all"), every)
    np.testing.assert_allclose(every[np.arange(3), targets], maps, atol=1e-5)
    for c in range(3):
        one_class = explainer.explain(conv_model, images, np.full(3, c))
        np.testing.assert_allclose(every[:, c], one_class, atol=1e-5)
    assert explainer.explain(conv_model, images[:0], np.zeros(0, int)).shape == (0, SIZE, SIZE)
    assert explainer.explain_all(conv_model, images[:0]).shape == (0, 3, SIZE, SIZE)
