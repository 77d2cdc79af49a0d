"""Cascading model-parameter randomisation (Adebayo et al. 2018), its reference level and the
random-logit test (Sixt et al. 2020), on tiny VGG19 models at 32 px."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xaicxr import plugins
from xaicxr.analysis.randomisation import (
    RankedMaps,
    Step,
    cascade,
    cascade_steps,
    explained_layer_step,
    other_classes,
    randomisation_seed,
    randomisation_test,
    reference_rows,
    spearman_rows,
)

CLASSES = ["a", "b", "c", "d"]
CONVS = [f"block{b}_conv{c}" for b, n in ((5, 4), (4, 4), (3, 4), (2, 2), (1, 2))
         for c in range(n, 0, -1)]


def _model(batchnorm: bool = False, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    backbone = plugins.get("backbone", "vgg19")(weights="none", width=0.125, input_size=32,
                                                dense=[16], dropout=0.0, batchnorm=batchnorm)
    return backbone.build(CLASSES)


def quadrant_images(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Faint noise with a bright square somewhere inside one quadrant; the quadrant is the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = 0.2 * rng.random((n, size, size, 1), dtype=np.float32)
    half, side = size // 2, size // 4
    for i, k in enumerate(labels):
        y = (k // 2) * half + rng.integers(0, half - side + 1)
        x = (k % 2) * half + rng.integers(0, half - side + 1)
        images[i, y:y + side, x:x + side] = 1.0
    return images, labels


def _weights(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def plain():
    return _model()


@pytest.fixture(scope="module")
def trained():
    """Trained for 3 epochs on 192 quadrant images (seeded; 100 % on held-out images)."""
    import keras

    model = _model(batchnorm=True)
    images, labels = quadrant_images(192, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  jit_compile=False)
    model.fit(images, labels, batch_size=32, epochs=3, verbose=0)
    return model


class Recording(plugins.Explainer):
    """An explainer that passes every call on and remembers the models and targets it got."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def resolve_layer(self, model, layer=None):
        return self.inner.resolve_layer(model, layer)

    def explain_with_info(self, model, images, targets, layer=None):
        self.calls.append((model, np.asarray(targets).copy()))
        return self.inner.explain_with_info(model, images, targets, layer=layer)

    def raw_maps(self, model, images, classes, layer, target):
        raise AssertionError("every call is passed on to the inner explainer")


def test_vgg19_steps_top_down_with_batchnorm_grouped(plain):
    steps = cascade_steps(plain)
    assert [s.name for s in steps] == ["logits", "fc1", *CONVS]
    assert all(s.layers == (s.name,) for s in steps)
    bn_steps = cascade_steps(_model(batchnorm=True))
    assert len(bn_steps) == 18
    assert bn_steps[:2] == [Step("logits", ("logits",)), Step("fc1", ("fc1",))]
    assert bn_steps[2:] == [Step(f"{c}_linear", (f"{c}_linear", f"{c}_bn")) for c in CONVS]
    assert explained_layer_step(plain, steps, "block5_conv4") == 1
    assert explained_layer_step(plain, steps, "block4_conv4") == 5
    assert explained_layer_step(plain, steps, "") == 17


def test_cascade_changes_exactly_each_steps_layers_and_never_the_model(plain):
    original = _weights(plain)
    steps = cascade_steps(plain)
    before = None
    for i, working in cascade(plain, randomisation_seed(0, 0), steps):
        now = _weights(working)
        if i < 0:
            assert all(_same(now[name], original[name]) for name in original)
        else:
            changed = {name for name in now if not _same(now[name], before[name])}
            assert changed == set(steps[i].layers), (i, changed)
            for name in steps[i].layers:  # every array of the step is re-drawn (bias zeros aside)
                assert any(w.any() for w in now[name])
        before = now
    assert all(_same(_weights(plain)[name], original[name]) for name in original)
    *_, (_, again) = cascade(plain, randomisation_seed(0, 0), steps)
    assert all(_same(_weights(again)[n], now[n]) for n in now), "the same seed draws the same weights"


def test_one_trace_for_the_whole_cascade_and_json_ready_output(plain, monkeypatch):
    """The working copy is cloned once and its weights assigned in place, so the explainer
    compiles (and traces) one function however many steps and draws run; a clone per step would trace
    once per step. The random logit is a different class for every image."""
    from xaicxr.plugins import CAMExplainer

    compiled = []
    original_compile = CAMExplainer._compile

    def counting(self, graph, mode, image_shape, target):
        fn = original_compile(self, graph, mode, image_shape, target)
        compiled.append(fn)
        return fn

    monkeypatch.setattr(CAMExplainer, "_compile", counting)
    images, labels = quadrant_images(12, seed=3)
    weights = _weights(plain)
    traces = []
    for max_steps in (1, 6):
        compiled.clear()
        explainer = Recording(plugins.get("explainer", "gradcam")())
        result = randomisation_test(plain, explainer, images, labels, labels, CLASSES,
                                    layer="block5_conv4", train_seed=0, max_steps=max_steps, draws=2)
        traces.append(sum(fn.experimental_get_tracing_count() for fn in compiled))
        assert len({id(model) for model, _ in explainer.calls}) == 1
        assert explainer.calls[0][0] is not plain
        assert len(result["steps"]) == max(max_steps, 2)  # the explained-layer step is reached
        other = explainer.calls[1][1]
        assert (other != labels).all() and (other >= 0).all() and (other < 4).all()
    assert traces == [1, 1]
    assert all(_same(_weights(plain)[name], weights[name]) for name in weights)
    text = json.dumps(result, allow_nan=False)
    back = json.loads(text)
    assert back["explained_layer_step"] == 1 and back["steps_total"] == 18 and back["n"] == 12
    assert [s["name"] for s in back["steps"]] == ["logits", "fc1", *CONVS[:4]]
    assert back["steps"][1]["randomised"] == ["fc1"]
    for key in ("spearman", "spearman_abs", "ssim"):
        assert set(back["reference"][key]) == {"value", "ci95", "n"}
        assert set(back["random_logit"][key]) == {"value", "ci95", "n"}
    assert isinstance(back["passes"], bool) and set(back["template_r"]) <= set(CLASSES)


def test_helpers_known_answers():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 8, 8))
    np.testing.assert_allclose(spearman_rows(maps, maps), 1.0)
    np.testing.assert_allclose(spearman_rows(maps, 2 * maps + 1), 1.0)
    np.testing.assert_allclose(spearman_rows(maps, -maps), -1.0)
    flat = maps.copy()
    flat[2] = 0.0
    assert np.isnan(spearman_rows(maps, flat)[2]) and np.isfinite(spearman_rows(maps, flat)[[0, 1, 3, 4]]).all()
    targets = np.arange(400) % 4
    others = other_classes(targets, 4, seed=0)
    assert (others != targets).all()
    assert {(t, o) for t, o in zip(targets, others)} == {(t, o) for t in range(4) for o in range(4) if o != t}
    labels = np.array([0, 0, 0, 1, 1, 2, 0, 0])
    targets = np.array([0, 0, 0, 1, 1, 2, 0, 3])
    maps = rng.random((8, 8, 8))
    rows, pairs = reference_rows(RankedMaps.of(maps), labels, targets)
    assert pairs == 4 * 3 // 2 + 1  # the four (0, 0) images pair up six ways, the two (1, 1) once
    assert np.isnan(rows["spearman"][[5, 7]]).all() and np.isfinite(rows["spearman"][[0, 1, 2, 3, 4, 6]]).all()
    by_hand = np.mean([spearman_rows(maps[[0]], maps[[j]])[0] for j in (1, 2, 6)])
    assert rows["spearman"][0] == pytest.approx(by_hand)
    assert rows["spearman"][3] == pytest.approx(spearman_rows(maps[[3]], maps[[4]])[0])


def test_untrained_model_trained_vs_randomised_equals_randomised_vs_randomised():
    """Known answer for a model that learned nothing: its "trained" weights are one more draw of
    the initializers, so trained-vs-randomised maps must be as alike as the maps of two
    independent re-draws (exchangeability). A cascade that replayed the starting weights would
    give Spearman 1 here.

    Tolerance 0.25: the mean Spearman of one pair of draws varies with the draw (SD about 0.15
    for Grad-CAM at block4_conv4, over 6 untrained models x 6 pairs of draws, 32 images); each
    side here averages 3 pairs from one model, so their difference has an SD of about 0.12.

    Not the reference level: the trained maps of two different images share the (random) head,
    which sets Grad-CAM's channel weights, and stay far more alike (0.30 to 0.74 over those 6
    models) than one image's maps under two heads (-0.13 to 0.17). Grad-CAM depends on the
    weights, learned or not, so the pass rule passes an untrained model, as Adebayo et al.'s
    test should: it tests the explainer, not whether the model learned anything."""
    from xaicxr.analysis.randomisation import explain_batches

    model = _model(batchnorm=True)
    images, labels = quadrant_images(32, seed=2)
    explainer = plugins.get("explainer", "gradcam")()
    layer = "block4_conv4"
    steps = cascade_steps(model)
    cut = explained_layer_step(model, steps, layer)
    trained, drawn = None, []
    for draw in range(3):
        for i, working in cascade(model, randomisation_seed(0, draw), steps[:cut + 1]):
            if i < 0 and trained is None:
                trained = explain_batches(explainer, working, images, labels, layer)
            elif i == cut:
                drawn.append(explain_batches(explainer, working, images, labels, layer))
    similarity = lambda a, b: float(np.nanmean(spearman_rows(a, b)))  # noqa: E731
    trained_vs_random = np.mean([similarity(trained, m) for m in drawn])
    random_vs_random = np.mean([similarity(drawn[a], drawn[b]) for a, b in ((0, 1), (0, 2), (1, 2))])
    reference = float(np.nanmean(reference_rows(RankedMaps.of(trained), labels, labels)[0]["spearman"]))
    assert trained_vs_random < 0.5
    assert abs(trained_vs_random - random_vs_random) < 0.25, (trained_vs_random, random_vs_random)
    assert reference > trained_vs_random + 0.2, (reference, trained_vs_random)


def test_trained_gradcam_loses_its_maps_once_the_head_is_randomised(trained):
    """On a task the model learned (100 % on held-out images), Grad-CAM's maps after randomising
    everything above block5_conv4 are nothing like the trained maps (measured: Spearman -0.12,
    interval [-0.31, 0.06]) while the maps of two images of one class share 0.75 [0.57, 0.89]:
    the test passes, and again with the same seeds, figure for figure."""
    images, labels = quadrant_images(32, seed=2)
    assert (trained.predict(images, verbose=0).argmax(axis=1) == labels).mean() == 1.0
    explainer = plugins.get("explainer", "gradcam")()
    run = lambda: randomisation_test(trained, explainer, images, labels, labels, CLASSES,  # noqa: E731
                                     layer=None, train_seed=0, max_steps=2)
    result = run()
    cut = result["explained_layer_step"]
    assert result["layer"] == "block5_conv4" and cut == 1
    at_cut = result["steps"][cut]["spearman"]
    assert at_cut["ci95"][1] < 0.5, at_cut
    assert result["reference"]["spearman"]["ci95"][0] > 0.5, result["reference"]
    assert result["passes"]
    assert run() == result


def test_the_figures_average_the_draws_and_the_interval_carries_their_variance():
    """Two re-initialisations: each step's figure is the mean of the two single-draw runs'
    (every image scored in every draw), the draws differ, and what does not depend on the draw
    (the reference, the random-logit test) is that of one draw. The interval's resampling of the
    draws: test_crossed_bootstrap_carries_variance_shared_by_every_image."""
    model = _model(batchnorm=True)
    images, labels = quadrant_images(12, seed=4)
    explainer = plugins.get("explainer", "layercam")()  # no degenerate map here, so no image drops out of a draw
    run = lambda **kw: randomisation_test(model, explainer, images, labels, labels, CLASSES,  # noqa: E731
                                          layer="block5_conv4", train_seed=0, max_steps=2, **kw)
    single = [run(draw=d, draws=1) for d in range(2)]
    both = run(draws=2)
    assert all(step["degenerate"] == 0 for step in both["steps"])
    assert both["draws"] == 2 and [s["draws"] for s in single] == [1, 1]
    for step in range(2):
        expected = np.mean([s["steps"][step]["spearman"]["value"] for s in single])
        assert both["steps"][step]["spearman"]["value"] == pytest.approx(expected)
    assert single[0]["steps"][1]["spearman"] != single[1]["steps"][1]["spearman"], "the draws differ"
    assert both["reference"] == single[0]["reference"] and both["random_logit"] == single[0]["random_logit"]
    lo, hi = both["steps"][1]["spearman"]["ci95"]
    assert lo <= both["steps"][1]["spearman"]["value"] <= hi


def test_crossed_bootstrap_carries_variance_shared_by_every_image():
    from xaicxr.analysis.intervals import bootstrap_mean, crossed_bootstrap_mean

    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.3, size=3)  # a draw moves every image alike
    values = rng.normal(0, 0.02, size=(40, 1)) + shared[None, :]
    crossed = crossed_bootstrap_mean(values, seed=0)
    images_only = bootstrap_mean(values.mean(axis=1), seed=0)
    assert crossed["value"] == pytest.approx(images_only["value"])
    width = lambda e: e["ci95"][1] - e["ci95"][0]  # noqa: E731
    assert width(crossed) > 5 * width(images_only)
    assert crossed_bootstrap_mean(np.full((5, 3), np.nan))["n"] == 0
    one_draw = rng.random((30, 1))
    assert crossed_bootstrap_mean(one_draw)["value"] == pytest.approx(one_draw.mean())


def test_pass_rules_are_paired_per_image_with_a_fixed_margin():
    """An effect below the margin does not pass however many images there are (interval overlap
    would pass it at this n); a clear one does; the random-logit rule mirrors it."""
    from xaicxr.analysis.randomisation import cascade_rule, random_logit_rule

    rng = np.random.default_rng(1)
    reference = 0.5 + rng.normal(0, 0.1, size=2000)
    small = reference[:, None] - 0.02 + rng.normal(0, 0.05, size=(2000, 3))
    large = reference[:, None] - 0.3 + rng.normal(0, 0.05, size=(2000, 3))
    assert not cascade_rule(reference, small, 0.05)["passes"]
    assert cascade_rule(reference, small, 0.0)["passes"]
    assert cascade_rule(reference, large, 0.05)["passes"]
    assert cascade_rule(reference, large, 0.05)["difference"]["value"] == pytest.approx(0.3, abs=0.01)
    same_map = np.ones(2000)
    assert not random_logit_rule(same_map, reference, 0.05)["passes"]  # the class changes nothing
    assert random_logit_rule(reference + rng.normal(0, 0.05, 2000), reference, 0.05)["passes"]
