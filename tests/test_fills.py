"""The fill contract: built-in fills from Python, their options checked, and a third party's fill
registered through an entry point, chosen in ``[quality] fills`` and used by the deletion and
insertion curves exactly like the built-in ones."""

from __future__ import annotations

import numpy as np
import pytest

from xaicxr import plugins
from xaicxr.analysis import faithfulness as fa
from xaicxr.config import make_metric, resolve
from xaicxr.errors import ConfigError
from xaicxr.plugins import Fill, make_fill

from test_faithfulness import square_images, square_mask, square_model

MEAN_FILL = '''
from xaicxr import hookimpl
from xaicxr.plugins import Fill


class MeanFill(Fill):
    """Removed pixels take the mean of the image, times ``scale``."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def values(self, images, prepared, image_index, tags, seed):
        means = images[image_index].mean(axis=(1, 2), keepdims=True) * self.scale
        return np.broadcast_to(means, (len(image_index), *images.shape[1:])).astype(np.float32)

    def apply(self, images, removed, values):
        import tensorflow as tf

        return tf.where(removed, values, images)


import numpy as np


@hookimpl
def xaicxr_fills():
    return {"mean": MeanFill}
'''


def test_the_built_in_fills_are_registered_plugins_of_their_kind(fresh_plugins):
    assert {"road", "blur"} <= set(plugins.registry().names("fill"))
    for name in ("road", "blur"):
        assert issubclass(plugins.get("fill", name), Fill)
    assert make_fill("blur").options() == {"sigma": 20.0}
    road = plugins.get("fill", "road")(noise=0.0)
    assert make_fill(road) is road


@pytest.mark.parametrize("name, options, message", [
    ("blur", {"sigma": 0.0}, "'sigma' must be a positive"),
    ("blur", {"sigma": float("nan")}, "'sigma' must be a positive"),
    ("road", {"noise": -0.1}, "'noise' must be a non-negative"),
    ("road", {"noise": float("inf")}, "'noise' must be a non-negative"),
])
def test_fill_options_are_checked(name, options, message):
    with pytest.raises(ValueError, match=message):
        plugins.get("fill", name)(**options)


def test_an_unknown_fill_names_the_known_ones():
    with pytest.raises(Exception, match="road"):
        make_fill("paint")


def test_a_fill_changes_only_the_removed_pixels_and_is_seeded():
    images = np.random.default_rng(0).random((3, 24, 24)).astype(np.float32)
    removed = np.random.default_rng(1).random(images.shape) < 0.4
    for name in ("road", "blur"):
        filled = make_fill(name).fill(images, removed, seed=2)
        np.testing.assert_array_equal(filled[~removed], images[~removed])
        assert np.abs(filled[removed] - images[removed]).mean() > 0.05
        np.testing.assert_array_equal(filled, make_fill(name).fill(images, removed, seed=2))
    with pytest.raises(ValueError, match="must both be"):
        make_fill("road").fill(images, removed[:2])


def test_a_third_party_fill_is_chosen_in_the_config_and_used_by_the_curves(fake_distribution):
    import keras

    fake_distribution("xaicxr-meanfill", {"mean_fill": MEAN_FILL}, {"meanfill": "mean_fill"})
    listed = [r for r in plugins.available() if r.get("name") == "mean" and r.get("kind") == "fill"]
    assert listed and listed[0]["distribution"] == "xaicxr-meanfill"

    quality = resolve({"quality": {"fills": ["mean", "road"]}}, "q.toml")["quality"]
    assert make_metric("faithfulness", quality).fills == ["mean", "road"]
    with pytest.raises(ConfigError, match="'paint', which is not a fill plugin; fills: blur, mean, road"):
        resolve({"quality": {"fills": ["paint"]}}, "q.toml")

    images = square_images(3)
    removed = np.broadcast_to(square_mask(), images.shape)
    filled = make_fill("mean").fill(images, removed)
    expected = np.where(removed, images.mean(axis=(1, 2), keepdims=True), images)
    np.testing.assert_allclose(filled, expected, rtol=1e-6)

    keras.utils.set_random_seed(0)
    model = square_model()
    on_square = np.broadcast_to(square_mask(), images.shape).astype(np.float32)
    curves = fa.perturbation_curves(model, images, on_square, np.ones(3, int), fill="mean",
                                    fractions=np.linspace(0, 1, 5))
    # the mean of a dark image replaces the bright square: the first deletion step loses the class
    assert np.all(curves["deletion"][:, 0] > 0.9) and np.all(curves["deletion"][:, 1] < 0.1)
    dimmer = fa.perturbation_curves(model, images, on_square, np.ones(3, int),
                                    fill=plugins.get("fill", "mean")(scale=0.5),
                                    fractions=np.linspace(0, 1, 5))
    assert np.all(dimmer["deletion"][:, 1] <= curves["deletion"][:, 1])
    scores = make_metric("faithfulness", quality).scores(on_square, images, model, np.ones(3, int))
    assert {"mean/deletion_auc", "road/insertion_auc"} <= set(scores)
