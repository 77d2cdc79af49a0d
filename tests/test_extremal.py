"""Extremal perturbations (Fong et al. 2019, deletion game) on a constructed model with a known
answer: it reads only the mean of one square, so the region whose removal destroys its score is
that square."""

from __future__ import annotations

import numpy as np
import pytest

from test_faithfulness import SIZE, square_images, square_mask, square_model
from xaicxr import plugins
from xaicxr.plugins.targets import ClassProbability


@pytest.fixture(scope="module")
def square():
    import keras

    keras.utils.set_random_seed(0)
    return square_model()


@pytest.mark.parametrize("fill", ["blur", "fade"])
def test_the_mask_of_the_squares_area_lies_on_the_square(square, fill):
    images = square_images(4)[..., None]
    explainer = plugins.get("explainer", "extremal")(areas=[1 / 16, 0.2], blur_sigma=6.0 * 224 / SIZE, fill=fill)
    masks = explainer.masks(square, images, ClassProbability(np.ones(4, int)))
    assert masks.shape == (4, 2, SIZE, SIZE) and 0.0 <= masks.min() and masks.max() <= 1.0
    on_square = square_mask()
    for mask in masks[:, 0]:
        top = mask >= np.quantile(mask, 1 - 1 / 16)
        assert on_square[top].mean() >= 0.9, "the top 1/16 of the mask is the square"
        assert abs(mask.mean() - 1 / 16) < 0.04, "held to its area"
    assert np.all(masks[:, 1].mean(axis=(1, 2)) > masks[:, 0].mean(axis=(1, 2))), "a larger area, a larger mask"
    maps = explainer.explain(square, images, np.ones(4, int))
    assert maps.shape == (4, SIZE, SIZE) and maps.min() == 0.0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    peaks = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
    assert all(on_square[p] for p in peaks)
    removed = np.where(masks[:, 0:1].transpose(0, 2, 3, 1) > 0.5, 0.2, images)
    before, after = (np.asarray(square(x, training=False))[:, 1] for x in (images, removed))
    assert np.all(after < before - 0.5), "removing the found region destroys the score"


@pytest.mark.parametrize("options, message", [({"areas": [0.0]}, "'areas'"), ({"areas": [1.0]}, "'areas'"),
                                              ({"steps": 0}, "'steps'"), ({"learning_rate": -1.0}, "learning_rate"),
                                              ({"blur_sigma": 0.0}, "blur_sigma"), ({"fill": "road"}, "'fill'")])
def test_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        plugins.get("explainer", "extremal")(**options)
