"""Explanation-quality figures on constructed maps with known answers: intervals, localisation
(with tolerance and ties), uninformed baselines and skill, reliability, template figures,
reliance; and the lung segmenter."""

from __future__ import annotations

import numpy as np
import pytest

from xaicxr import plugins
from xaicxr.analysis import baselines as base
from xaicxr.analysis.intervals import (bias_corrected, bootstrap_mean, bootstrap_ratio, paired_difference,
                                      paired_exceedance_p, proportion, wilson)
from xaicxr.analysis.localisation import (Targets, class_figures, default_tolerance, energy_share, near,
                                          otsu_iou, pointing_hits)
from xaicxr.analysis.lungs import dice, segment_lungs
from xaicxr.analysis.reliability import consistency, spearman_brown, split_half
from xaicxr.analysis.reliance import reliance_figures
from xaicxr.analysis.stats import holm, pearson
from xaicxr.analysis.template_quality import distinctiveness, template_figures

SHAPE = (32, 32)


def _blob(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.float32)


def _lesion_set(n=4):
    lesion = np.zeros((n, *SHAPE), bool)
    lesion[:, 8:16, 8:16] = True          # 64 of 1024 pixels: area share 1/16
    lung = np.zeros((n, *SHAPE), bool)
    lung[:, 4:28, 4:20] = True            # 384 pixels; the lesion is 1/6 of the lungs
    return lesion, lung


# --------------------------------------------------------------------------- intervals


def test_wilson_interval_known_values():
    est = wilson(8, 10)
    assert est["value"] == 0.8 and est["n"] == 10
    np.testing.assert_allclose(est["ci95"], [0.4901, 0.9433], atol=1e-4)  # Wilson (1927) at z = 1.96
    assert wilson(0, 20)["ci95"][0] == 0.0 and wilson(20, 20)["ci95"][1] == 1.0
    assert wilson(0, 0) == {"value": None, "ci95": [None, None], "n": 0}
    assert proportion(np.array([1.0, 0.0, np.nan, 1.0]))["n"] == 3


def test_bootstrap_intervals_cover_and_pair():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 400)
    est = bootstrap_mean(x, seed=1)
    half = 1.96 / np.sqrt(400)
    assert est["ci95"][0] == pytest.approx(x.mean() - half, abs=0.03)
    assert est["ci95"][1] == pytest.approx(x.mean() + half, abs=0.03)
    assert bootstrap_mean(x, seed=1) == est, "seeded"
    y = x + 0.05 + rng.normal(0, 0.01, 400)
    diff = paired_difference(y, x, seed=1)
    assert diff["ci95"][0] > 0.04 and diff["ci95"][1] < 0.06, "paired: the shared noise cancels"
    ratio = bootstrap_ratio(np.full(10, 2.0), np.full(10, 4.0))
    assert ratio["value"] == 0.5 and ratio["ci95"] == [0.5, 0.5]


# --------------------------------------------------------------------------- localisation


def test_holm_adjusts_step_down_and_keeps_the_order():
    # Holm 1979 by hand: sorted 0.01, 0.02, 0.03, 0.5 times 4, 3, 2, 1 -> 0.04, 0.06, 0.06 (running max), 0.5
    np.testing.assert_allclose(holm([0.03, 0.5, 0.01, 0.02]), [0.06, 0.5, 0.04, 0.06])
    assert holm([0.9, 0.3]).tolist() == [0.9, 0.6]
    assert holm([0.4] * 5).max() == 1.0


def test_paired_exceedance_p_sees_a_margin_and_never_reaches_zero():
    rng = np.random.default_rng(0)
    base = rng.random(60)
    better = base + 0.2 + rng.normal(0, 0.05, 60)
    assert paired_exceedance_p(better, base, seed=1) == pytest.approx(1 / (2000 + 1))
    assert paired_exceedance_p(better, base, margin=0.3, seed=1) > 0.99  # above 0, not above 0.3
    assert paired_exceedance_p(base, base) == 1.0


def test_pointing_energy_lift_and_iou_known_answers():
    lesion, lung = _lesion_set()
    maps = np.zeros((4, *SHAPE), np.float32)
    maps[0][8:16, 8:16] = 1.0          # all mass in the lesion, peak inside
    maps[1][20:28, 20:28] = 1.0        # all mass outside
    maps[2][8:16, 8:16] = 0.5          # half the mass inside, peak outside
    maps[2][0:8, 24:32] = 0.75
    maps[3][:] = 1.0                   # flat: the peak is everywhere
    np.testing.assert_allclose(pointing_hits(maps, lesion), [1.0, 0.0, 0.0, 1 / 16])
    np.testing.assert_allclose(energy_share(maps, lesion), [1.0, 0.0, 0.4, 1 / 16])
    np.testing.assert_allclose(otsu_iou(maps[:2], lesion[:2]), [1.0, 0.0])
    targets = Targets(lesion, lung, tolerance=0)
    figures = class_figures(targets.scores(maps), targets)
    assert figures["pointing_game"]["value"] == pytest.approx((1 + 1 / 16) / 4)
    assert figures["energy_lift"]["value"] == pytest.approx(np.mean([1, 0, 0.4, 1 / 16]) * 16)
    assert figures["energy_lift_lungs"]["value"] == pytest.approx(np.mean([1, 0, 0.4, 1 / 16]) * 6)
    for key in ("pointing_game", "lesion_energy", "energy_lift", "miou", "lung_energy"):
        lo, hi = figures[key]["ci95"]
        assert figures[key]["n"] == 4 and lo <= figures[key]["value"] <= hi, key
    assert figures["pointing_game"]["ci95"][0] < figures["pointing_game"]["ci95"][1], "four different answers"


def test_flat_map_inside_the_lungs_scores_chance_there_not_zero():
    lesion, lung = _lesion_set()
    targets = Targets(lesion, lung, tolerance=0)
    scores = targets.scores(lung.astype(np.float32))
    np.testing.assert_allclose(scores["pointing"], 64 / 384)
    figures = class_figures(scores, targets)
    assert figures["energy_lift_lungs"]["value"] == pytest.approx(1.0), "flat in the lungs: lung lift 1"
    assert figures["energy_lift"]["value"] == pytest.approx(1024 / 384), "but image lift > 1"


def test_pointing_tolerance_counts_near_misses():
    lesion, lung = _lesion_set(1)
    corner = np.zeros((1, *SHAPE), np.float32)
    corner[0, 8, 20] = 1.0                    # 5 px right of the lesion's right edge (column 15)
    assert pointing_hits(corner, lesion)[0] == 0
    assert pointing_hits(corner, near(lesion, 4.9))[0] == 0
    assert pointing_hits(corner, near(lesion, 5.0))[0] == 1
    assert default_tolerance(224) == 15 and default_tolerance(96) == pytest.approx(15 * 96 / 224)
    assert np.isnan(pointing_hits(corner, np.zeros((1, *SHAPE), bool))[0]), "no lesion: nothing to point at"


# --------------------------------------------------------------------------- baselines and skill


def test_baselines_come_from_the_masks_only_and_skill_is_paired():
    rng = np.random.default_rng(3)
    n = 40
    lesion = np.zeros((n, *SHAPE), bool)
    for i in range(n):                                 # lesions in one of two places
        r = 8 if i % 2 else 20
        lesion[i, r:r + 6, 8:14] = True
    lung = np.zeros((n, *SHAPE), bool)
    lung[:, 4:28, 4:20] = True
    prior = base.class_priors([(lesion, np.zeros(n, int)), (None, np.zeros(3, int))], 1)[0]
    np.testing.assert_allclose(prior.max(), 0.5)
    targets = Targets(lesion, lung, tolerance=0)
    scores = base.baseline_scores(targets, prior, SHAPE, seed=0)
    assert set(scores) == set(base.NAMES)
    figures = {b: class_figures(s, targets) for b, s in scores.items()}
    assert figures["class_prior"]["pointing_game"]["value"] == pytest.approx(0.5)
    assert figures["uniform"]["pointing_game"]["value"] == pytest.approx(36 / 1024)
    assert figures["lungs"]["pointing_game"]["value"] == pytest.approx(36 / 384)
    perfect = lesion.astype(np.float32) + rng.random((n, *SHAPE)).astype(np.float32) * 0.01
    mine = targets.scores(perfect)
    mine_figures = class_figures(mine, targets)
    skill = base.skill(mine_figures, mine, figures, scores, targets)
    assert skill["pointing_game"]["baseline"] == "class_prior"
    assert skill["pointing_game"]["value"] == pytest.approx(0.5)
    assert skill["pointing_game"]["ci95"][0] > 0.3
    assert skill["energy_lift"]["value"] > 0 and skill["energy_lift"]["ci95"][0] > 0
    prior_maps = np.broadcast_to(prior, (n, *SHAPE))
    no_skill = base.skill(class_figures(targets.scores(prior_maps), targets), targets.scores(prior_maps),
                          figures, scores, targets)
    assert no_skill["pointing_game"]["value"] == pytest.approx(0.0)
    assert base.baseline_maps("lungs", None, None, SHAPE, n) is None


# --------------------------------------------------------------------------- reliability


def test_consistency_and_split_half_known_answers():
    same = np.repeat(_blob(SHAPE, (8, 8), 4)[None], 10, axis=0)
    assert consistency(same)["value"] == pytest.approx(1.0)
    assert split_half(same)["value"] == pytest.approx(1.0)
    noise = np.random.default_rng(0).random((200, *SHAPE)).astype(np.float32)
    corr = np.corrcoef(noise.reshape(200, -1))
    c = consistency(noise)
    assert c["value"] == pytest.approx((corr.sum() - 200) / (200 * 199), abs=1e-9)
    assert c["ci95"][0] <= c["value"] <= c["ci95"][1]
    s = split_half(noise, partitions=10)
    assert abs(s["value"]) < 0.3
    assert s["ci95"][0] <= s["value"] <= s["ci95"][1]
    assert s["partition_spread"][0] <= s["value"] <= s["partition_spread"][1]
    assert spearman_brown(0.5) == pytest.approx(2 / 3)


def test_split_half_is_spearman_brown_corrected():
    """Maps = a shared signal + noise, so the half-means correlate at r_half and the full class
    mean is reliable at 2 r_half / (1 + r_half)."""
    rng = np.random.default_rng(1)
    signal = rng.normal(size=SHAPE)
    maps = signal + rng.normal(size=(60, *SHAPE)) * 4
    halves = [pearson(maps[p[:30]].mean(0), maps[p[30:]].mean(0))
              for p in (rng.permutation(60) for _ in range(50))]
    r_half = float(np.mean(halves))
    assert split_half(maps, partitions=50)["value"] == pytest.approx(spearman_brown(r_half), abs=0.05)


# --------------------------------------------------------------------------- templates and reliance


def test_template_figures_of_a_template_at_the_lesion_and_one_in_the_corner():
    lesion, lung = _lesion_set(6)
    targets = Targets(lesion, lung, tolerance=0)
    good = template_figures(lesion[0].astype(np.float32), targets, n=6)
    assert good["n"] == 6 and good["peak_in_lungs"]
    assert good["lesion_frequency_r"]["value"] == pytest.approx(1.0)
    assert good["as_fixed_map"]["pointing_game"]["value"] == pytest.approx(1.0)
    corner = np.zeros(SHAPE, np.float32)
    corner[-1, -1] = 1.0
    bad = template_figures(corner, targets, n=6)
    assert not bad["peak_in_lungs"] and bad["as_fixed_map"]["pointing_game"]["value"] == 0.0
    d = distinctiveness({"x": _blob(SHAPE, (4, 4), 3), "y": _blob(SHAPE, (20, 20), 3)})
    assert d["x"]["x"] == pytest.approx(1.0) and d["x"]["y"] < 0


def test_reliance_known_answers():
    labels = np.repeat([0, 1], 20)
    eye = np.eye(2)
    original = eye[labels] * 0.9 + 0.05
    removed = np.where(labels[:, None] == 1, eye[0] * 0.9 + 0.05, original)   # class 1 collapses
    figures = reliance_figures(labels, original, removed, original, ["normal", "sick"],
                               has_lesion=labels == 1)
    assert figures["sick"]["relies_on_lesion"] and figures["sick"]["accuracy_lesion_removed"]["value"] == 0
    assert figures["sick"]["probability_drop"]["value"] == pytest.approx(0.9)
    assert not figures["normal"]["relies_on_lesion"] and not figures["normal"]["has_lesion"]
    assert figures["sick"]["accuracy_lesion_in_mask_only"]["value"] == 1.0


# --------------------------------------------------------------------------- lungs


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

    from xaicxr.analysis.randomisation import cascade, randomisation_seed

    backbone = plugins.get("backbone", "vgg19")(weights="none", width=0.125, input_size=32, dense=[8])
    keras.utils.set_random_seed(0)
    model = backbone.build(["a", "b", "c"])
    initial = model.get_layer("logits").get_weights()[0]
    steps = cascade(model, randomisation_seed(0, 0))
    _, working = next(steps)
    np.testing.assert_array_equal(working.get_layer("logits").get_weights()[0], initial)
    step, working = next(steps)
    assert step == 0 and not np.allclose(working.get_layer("logits").get_weights()[0], initial)
    np.testing.assert_array_equal(working.get_layer("block5_conv4").get_weights()[0],
                                  model.get_layer("block5_conv4").get_weights()[0])
    seeds = {randomisation_seed(s, d) for s in range(3) for d in range(3)}
    assert len(seeds) == 9 and not seeds & {0, 1, 2}


def test_the_frequency_r_interval_holds_its_estimate_when_resampling_biases_it_down():
    """Resampled frequency maps are noisier than the sample's, so their r with a smooth template
    sits below the plug-in value: the corrected estimate is above it, inside its BC interval."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:24, :24]
    template = np.exp(-((yy - 12.0) ** 2 + (xx - 12.0) ** 2) / 40.0).astype(np.float32)
    masks = (rng.random((25, 24, 24)) < template[None] * 0.6).astype(np.float64)
    lung = np.ones((25, 24, 24), bool)
    r = template_figures(template, Targets(masks.astype(bool), lung, tolerance=0), n=25)["lesion_frequency_r"]
    lo, hi = r["ci95"]
    assert r["plugin"] < r["value"] <= 1.0 and lo <= r["value"] <= hi
    symmetric = bias_corrected(0.5, np.linspace(0.3, 0.7, 401), 10)  # unbiased: the plain interval
    assert symmetric["value"] == pytest.approx(0.5)
    assert symmetric["ci95"] == pytest.approx([0.31, 0.69], abs=0.002)
