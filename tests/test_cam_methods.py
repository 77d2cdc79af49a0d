"""The CAM methods on the shared base beyond Grad-CAM: ``hirescam``, ``xgradcam``, ``eigencam``,
``ablationcam``, ``scorecam``. Each against a NumPy reference of its formula on a tiny model (activations and
gradients from a ``tf.GradientTape`` here, the formula in float64, the base's upsampling and
normalisation through ``finish_maps``); no NaN where every gradient is zero; Eigen-CAM's sign
fixed; Ablation-CAM's batching invisible in its maps."""

from __future__ import annotations

import numpy as np
import pytest

from xaicxr import plugins
from xaicxr.errors import LayerNotFoundError
from xaicxr.plugins.explainer import finish_maps

SIZE = 16
CLASSES = 3
LAYER = "target"
METHODS = ["hirescam", "xgradcam", "eigencam", "ablationcam", "scorecam"]
GRADIENT_FREE = ("eigencam", "scorecam")


def _layers():
    """conv1 -> target (the explained layer) -> mix (1x1 conv, ReLU: the layers above the target
    are not linear) -> pool -> logits."""
    import keras

    return [keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(6, 3, padding="same", activation="relu", name=LAYER),
            keras.layers.Conv2D(5, 1, activation="relu", name="mix"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(CLASSES, name="logits")]


def _tiny(seed: int = 0, dead: str | None = None):
    """The tiny model; ``dead`` names a ReLU layer given a bias of -1e3 (all outputs zero):
    ``"mix"`` makes every gradient at the target zero, ``"target"`` every activation."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = _layers()
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = inputs
    for layer in layers:
        x = layer(x)
    model = keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(x))
    if dead:
        kernel, bias = model.get_layer(dead).get_weights()
        model.get_layer(dead).set_weights([kernel, np.full_like(bias, -1e3)])
    return model


def _above(model, acts: np.ndarray) -> np.ndarray:
    """The logits from target activations, layer by layer (independent of kerasgraph)."""
    x = acts.astype(np.float32)
    for name in ("mix", "pool", "logits"):
        x = model.get_layer(name)(x)
    return np.asarray(x, np.float64)


def _acts_grads(model, images: np.ndarray, targets: np.ndarray):
    """Target activations, gradients of the target logits and the logits, in float64."""
    import keras
    import tensorflow as tf

    graph = keras.Model(model.inputs, [model.get_layer(LAYER).output,
                                       model.get_layer("logits").output])
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        acts, logits = graph(x, training=False)
        score = tf.gather(logits, targets, axis=1, batch_dims=1)
    grads = tape.gradient(score, acts)
    return (np.asarray(acts, np.float64), np.asarray(grads, np.float64),
            np.asarray(logits, np.float64))


def _eigen(acts: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's get_2d_projection, then the sign that agrees with the channel sum."""
    out = []
    for a in acts:
        flat = a.reshape(-1, a.shape[-1])
        centred = flat - flat.mean(axis=0)
        proj = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
        total = flat.sum(axis=1)
        out.append((proj if proj @ (total - total.mean()) >= 0 else -proj).reshape(a.shape[:2]))
    return np.array(out)


def reference(name: str, model, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Raw (N, h, w) maps of ``name`` at the target layer, before ReLU/upsampling/normalising."""
    acts, grads, logits = _acts_grads(model, images, targets)
    if name == "hirescam":
        return (grads * acts).sum(-1)
    if name == "xgradcam":
        weights = (grads * acts).sum((1, 2)) / (acts.sum((1, 2)) + 1e-7)
        return np.einsum("nhwk,nk->nhw", acts, weights)
    if name == "eigencam":
        return _eigen(acts)
    if name == "scorecam":
        return _score_cam(model, images, acts, targets)
    assert name == "ablationcam"
    y = logits[np.arange(len(targets)), targets]
    weights = np.zeros((len(acts), acts.shape[-1]))
    for k in range(acts.shape[-1]):  # one model call per channel
        ablated = acts.copy()
        ablated[..., k] = 0.0
        y_k = _above(model, ablated)[np.arange(len(targets)), targets]
        weights[:, k] = np.where(y != 0, (y - y_k) / np.where(y != 0, y, 1.0), 0.0)
    return np.einsum("nhwk,nk->nhw", acts, weights)


def _score_cam(model, images: np.ndarray, acts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Score-CAM as tf-keras-vis computes it: channels zoomed to the input (order 1), min-max
    scaled with 1e-7, the masked images' softmax probabilities as weights, one image at a time."""
    from scipy.ndimage import zoom

    factor = (1, SIZE / acts.shape[1], SIZE / acts.shape[2], 1)
    up = zoom(acts, factor, order=1, mode="nearest")
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    masks = (up - lo) / (hi - lo + 1e-7)
    weights = np.zeros(acts.shape[::3])
    for n, target in enumerate(targets):
        masked = images[n][None] * np.moveaxis(masks[n], -1, 0)[..., None]
        logits = _logits(model, masked.astype(np.float32)).astype(np.float64)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        weights[n] = (probs / probs.sum(1, keepdims=True))[:, target]
    return np.einsum("nhwk,nk->nhw", acts, weights)


def _logits(model, images: np.ndarray) -> np.ndarray:
    import keras

    return np.asarray(keras.Model(model.inputs[0], model.get_layer("logits").output)(images))


def _explainer(name: str, **options):
    return plugins.get("explainer", name)(**options)


@pytest.fixture(scope="module")
def model():
    return _tiny(seed=1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((4, SIZE, SIZE, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def targets():
    """Classes whose maps keep most of their range after the ReLU on this model (class 1's
    HiResCAM is almost all negative: a normalised comparison of it would be ill-conditioned)."""
    return np.array([0, 2, 2, 0])


def test_registered_with_their_options():
    from xaicxr.plugins.options import check_options, option_spec
    from xaicxr.plugins.explainer import CAMExplainer

    rows = {row["name"]: row for row in plugins.available() if row.get("kind") == "explainer"}
    for name in METHODS:
        assert rows[name]["module"] == "xaicxr_builtins.explainers", name
        assert issubclass(plugins.get("explainer", name), CAMExplainer)
    ablation = plugins.get("explainer", "ablationcam")
    assert option_spec(ablation) == {"ablation_batch": (int, 256)}
    assert check_options(ablation, {"ablation_batch": 32}, "here") == {"ablation_batch": 32}
    assert ablation(ablation_batch=32).options() == {"ablation_batch": 32}
    assert all(option_spec(plugins.get("explainer", n)) == {} for n in METHODS[:3])


@pytest.mark.parametrize("name", METHODS)
def test_agrees_with_numpy_reference(name, model, images, targets):
    ref = reference(name, model, images, targets)
    explainer = _explainer(name, **({"ablation_batch": 5} if name == "ablationcam" else {}))
    raw = np.asarray(explainer.raw_maps(model, images, targets, LAYER, explainer.default_target()))
    if name != "eigencam":  # Eigen-CAM's raw map is the signed projection; the others ReLU'd
        ref = np.maximum(ref, 0.0)
    scale = np.abs(ref).max(axis=(1, 2), keepdims=True)
    assert (ref.max(axis=(1, 2)) > 0.1 * scale[:, 0, 0]).all()  # well-conditioned, see targets
    np.testing.assert_allclose(raw / scale, ref / scale, atol=1e-4)

    maps, flags = explainer.explain_with_info(model, images, targets, layer=LAYER)
    expected, expected_flags = (x.numpy() for x in finish_maps(ref.astype(np.float32),
                                                                 (SIZE, SIZE)))
    assert maps.shape == (len(images), SIZE, SIZE) and maps.dtype == np.float32
    assert not flags.any() and not expected_flags.any()
    np.testing.assert_allclose(maps, expected, atol=1e-4)


def test_methods_differ_from_gradcam(model, images, targets):
    """Above the target the model is not linear, so none of them collapses to Grad-CAM."""
    gradcam = _explainer("gradcam").explain(model, images, targets, layer=LAYER)
    for name in METHODS:
        maps = _explainer(name).explain(model, images, targets, layer=LAYER)
        assert np.abs(maps - gradcam).max() > 0.05, name


@pytest.mark.parametrize("name", METHODS)
def test_all_classes_equal_per_class_calls(name, model, images):
    explainer = _explainer(name)
    every, flags = explainer.explain_all_with_info(model, images, layer=LAYER)
    assert every.shape == (len(images), CLASSES, SIZE, SIZE) and flags.shape == every.shape[:2]
    for c in range(CLASSES):
        np.testing.assert_allclose(every[:, c], explainer.explain(model, images, np.full(4, c),
                                                                  layer=LAYER), atol=1e-5)


@pytest.mark.parametrize("dead", ["mix", "target"])
@pytest.mark.parametrize("name", METHODS)
def test_no_nan_when_gradients_or_activations_are_all_zero(name, dead, images, targets):
    model = _tiny(seed=1, dead=dead)
    acts, grads, logits = _acts_grads(model, images, targets)
    assert not (grads if dead == "mix" else acts).any()
    assert not logits.any()  # y = 0 too: Ablation-CAM's (y - y_k) / y is 0 / 0
    explainer = _explainer(name)
    maps, flags = explainer.explain_with_info(model, images, targets, layer=LAYER)
    every = explainer.explain_all(model, images, layer=LAYER)
    assert np.isfinite(maps).all() and np.isfinite(every).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    if name in GRADIENT_FREE and dead == "mix":  # needs no gradient: still a map
        assert not flags.any() and maps.max() == pytest.approx(1.0)
    else:
        assert flags.all() and not maps.any() and not every.any()


def test_eigencam_sign_points_at_the_strongest_activation():
    """A blob active in every channel must come out bright, not as the background, whichever
    sign the SVD returns (the same activations, also with the channels reordered)."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    acts = rng.random((2, 8, 8, 5)) * 0.1
    acts[:, 2:4, 5:7, :] += 3.0
    eigen = _explainer("eigencam")
    for a in (acts, acts[..., ::-1]):
        raw = eigen.cam(tf.constant(a, tf.float32), None).numpy()
        assert raw.shape == (2, 8, 8)
        for m in raw:
            assert np.unravel_index(np.argmax(m), m.shape) in {(2, 5), (2, 6), (3, 5), (3, 6)}
            assert m[2:4, 5:7].min() > 0 > m[0, 0]


def test_eigencam_is_deterministic_and_class_independent(model, images, targets):
    eigen = _explainer("eigencam")
    acts, _, _ = _acts_grads(model, images, targets)
    raw = np.asarray(eigen.raw_maps(model, images, targets, LAYER, eigen.default_target()))
    total = acts.sum(-1)
    agreement = ((raw - raw.mean((1, 2), keepdims=True))
                 * (total - total.mean((1, 2), keepdims=True))).sum((1, 2))
    assert (agreement > 0).all()
    maps = eigen.explain(model, images, targets, layer=LAYER)
    np.testing.assert_array_equal(eigen.explain(model, images, targets, layer=LAYER), maps)
    np.testing.assert_allclose(eigen.explain(model, images[::-1], targets, layer=LAYER),
                               maps[::-1], atol=1e-5)
    np.testing.assert_array_equal(eigen.explain(model, images, (targets + 1) % CLASSES,
                                                layer=LAYER), maps)
    every = eigen.explain(model, images, "all", layer=LAYER)
    assert every.shape == (len(images), CLASSES, SIZE, SIZE)
    for c in range(CLASSES):
        np.testing.assert_array_equal(every[:, c], maps)


def test_ablation_batch_does_not_change_the_maps(model, images, targets):
    """1, a size that splits images and pads the last call, exactly one image, more than all."""
    maps = [_explainer("ablationcam", ablation_batch=b).explain(model, images, targets, layer=LAYER)
            for b in (1, 5, 6, 1000)]
    for other in maps[1:]:
        np.testing.assert_allclose(other, maps[0], atol=1e-5)


def test_ablation_in_a_nested_model_equals_flat(images, targets):
    import keras

    flat = _tiny(seed=2)
    layers = [flat.get_layer(n) for n in ("conv1", LAYER, "mix", "pool", "logits")]
    body = keras.Sequential([keras.Input((SIZE, SIZE, 1))] + layers[:2], name="body")
    inputs = keras.Input((SIZE, SIZE, 1))
    x = body(inputs)
    for layer in layers[2:]:
        x = layer(x)
    nested = keras.Model(inputs, x)
    ablation = _explainer("ablationcam", ablation_batch=7)
    assert ablation.resolve_layer(nested, LAYER) == f"body/{LAYER}"
    np.testing.assert_allclose(ablation.explain(nested, images, targets, layer=LAYER),
                               ablation.explain(flat, images, targets, layer=LAYER), atol=1e-5)


def test_ablation_refuses_a_layer_that_a_connection_bypasses(images, targets):
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 1))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    t = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name=LAYER)(a)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, t]))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, name="logits")(x))
    with pytest.raises(LayerNotFoundError, match="bypasses"):
        _explainer("ablationcam").explain(model, images, targets, layer=LAYER)
    assert _explainer("ablationcam").explain(model, images, targets, layer="conv1").shape == (
        len(images), SIZE, SIZE)


def test_a_constant_positive_map_is_degenerate_not_a_flat_map_of_ones():
    """A constant map carries no location (issue 23.4): it came back as all ones, unflagged,
    and earned a flat map's chance share of the pointing game."""
    raw = np.stack([np.full((4, 4), 3.0), np.arange(16, dtype=float).reshape(4, 4)]).astype(np.float32)
    maps, flags = (x.numpy() for x in finish_maps(raw, (16, 16)))
    assert flags.tolist() == [True, False]
    assert not maps[0].any() and maps[1].max() == 1.0
    signed_maps, signed_flags = (x.numpy() for x in finish_maps(-raw, (16, 16), signed=True))
    assert signed_flags.tolist() == [True, False]
