"""Template quality figures on constructed heatmaps with known answers, and the lung segmenter."""

from __future__ import annotations

import numpy as np
import pytest

from xaicxr import plugins
from xaicxr.analysis.lungs import dice, segment_lungs
from xaicxr.analysis.quality import ClassQuality, distinctiveness, energy_share, otsu_iou, points_inside
from xaicxr.analysis.stats import pearson


def _blob(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.float32)


def test_pointing_energy_lift_and_iou_known_answers():
    shape = (32, 32)
    lesion = np.zeros((4, *shape), bool)
    lesion[:, 8:16, 8:16] = True  # 64 of 1024 pixels: area share 1/16
    maps = np.zeros((4, *shape), np.float32)
    maps[0][8:16, 8:16] = 1.0          # all mass in the lesion, peak inside
    maps[1][20:28, 20:28] = 1.0        # all mass outside
    maps[2][8:16, 8:16] = 0.5          # half the mass inside, peak outside
    maps[2][0:8, 24:32] = 0.75
    maps[3][:] = 1.0                   # uniform: energy share = area share
    assert points_inside(maps, lesion).tolist() == [True, False, False, False]  # a flat map points nowhere
    share = energy_share(maps, lesion)
    np.testing.assert_allclose(share, [1.0, 0.0, 0.4, 1 / 16])
    iou = otsu_iou(maps[:2], lesion[:2])
    np.testing.assert_allclose(iou, [1.0, 0.0])
    q = ClassQuality(shape, n_splits=4)
    q.update(maps, lesion=lesion, lung=np.ones_like(lesion))
    r = q.result()
    assert r["n"] == 4 and r["n_lesion"] == 4
    assert r["pointing_game"] == pytest.approx(0.25)
    assert r["lesion_energy"] == pytest.approx(np.mean([1, 0, 0.4, 1 / 16]))
    assert r["energy_lift"] == pytest.approx(np.mean([1, 0, 0.4, 1 / 16]) * 16)
    assert r["lung_energy"] == pytest.approx(1.0)


def test_consistency_and_split_half_known_answers():
    shape = (16, 16)
    base = _blob(shape, (8, 8), 4)
    same = np.repeat(base[None], 10, axis=0)
    q = ClassQuality(shape, n_splits=10)
    q.update(same[:3])
    q.update(same[3:])
    r = q.result()
    assert r["consistency"] == pytest.approx(1.0)
    assert r["split_half"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noise = rng.random((400, *shape)).astype(np.float32)
    q = ClassQuality(shape, n_splits=10)
    for chunk in np.array_split(noise, 7):
        q.update(chunk)
    r = q.result()
    flat = noise.reshape(400, -1)
    corr = np.corrcoef(flat)
    expected = (corr.sum() - 400) / (400 * 399)
    assert r["consistency"] == pytest.approx(expected, abs=1e-9)
    assert abs(r["split_half"]) < 0.3  # independent noise: halves do not agree
    assert r["split_half_ci95"][0] <= r["split_half"] <= r["split_half_ci95"][1]


def test_distinctiveness_and_pearson():
    a = _blob((16, 16), (4, 4), 3)
    b = _blob((16, 16), (12, 12), 3)
    d = distinctiveness({"x": a, "y": b, "z": a * 2 + 1})
    assert d["x"]["x"] == pytest.approx(1.0) and d["x"]["z"] == pytest.approx(1.0)
    assert d["x"]["y"] < 0
    assert np.isnan(pearson(np.ones(4), np.arange(4)))


def test_lung_segmentation_on_phantoms_finds_the_lungs():
    from importlib import import_module

    render = import_module(plugins.get("dataset", "phantom").__module__.rsplit(".", 1)[0] + ".phantom_render").render_phantom
    scores = [dice(segment_lungs(p.image), p.lung)
              for p in (render(0, c, i, size=96) for c in ("normal", "covid") for i in range(4))]
    assert np.mean(scores) > 0.5, scores
    assert not segment_lungs(np.zeros((64, 64))).any()


def test_randomisation_never_replays_the_training_initialisation():
    """Re-initialising with the training seed would re-draw the weights training started from,
    and a briefly trained head would then look as if its maps survived randomisation."""
    import keras

    from xaicxr.analysis.sanity import randomisation_seed, randomised_copy

    backbone = plugins.get("backbone", "vgg19")(weights="none", width=0.125, input_size=32, dense=[8])
    keras.utils.set_random_seed(0)
    model = backbone.build(["a", "b", "c"])
    initial = model.get_layer("logits").get_weights()[0]
    clone, randomised = randomised_copy(model, "block5_conv4", randomisation_seed(0, 0))
    assert "logits" in randomised and "block5_conv4" not in randomised
    assert not np.allclose(clone.get_layer("logits").get_weights()[0], initial)
    np.testing.assert_array_equal(clone.get_layer("block5_conv4").get_weights()[0],
                                  model.get_layer("block5_conv4").get_weights()[0])
    seeds = {randomisation_seed(s, d) for s in range(3) for d in range(3)}
    assert len(seeds) == 9 and not seeds & {0, 1, 2}
