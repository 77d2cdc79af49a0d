"""Faithfulness without masks, on constructed models with known answers: a model that reads only
the mean of a fixed square, so a map of that square is the faithful one; ROAD's imputation
against a direct sparse solve; shared curve points; lung regions; no retracing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from scipy.sparse.linalg import spsolve

from xaicxr import plugins
from xaicxr.analysis import faithfulness as fa
from xaicxr.plugins.fill import compiled_apply

SIZE = 32
SQUARE = (slice(8, 16), slice(8, 16))     # 64 of 1024 pixels


def square_mask(size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[SQUARE] = True
    return mask


def square_model(size: int = SIZE, gain: float = 8.0, centre: float = 0.55):
    """p(class 1) = sigmoid(gain * (mean intensity inside the square - centre)); nothing else
    of the image matters."""
    import keras

    inputs = keras.Input((size, size, 1), name="image")
    flat = keras.layers.Flatten(name="flatten")(inputs)
    mean = keras.layers.Dense(1, use_bias=False, name="square_mean")(flat)
    logits = keras.layers.Dense(2, name="logits")(mean)
    model = keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(logits))
    mask = square_mask(size).astype(np.float32)
    model.get_layer("square_mean").set_weights([(mask / mask.sum()).reshape(-1, 1)])
    model.get_layer("logits").set_weights([np.array([[0.0, gain]], np.float32),
                                           np.array([0.0, -gain * centre], np.float32)])
    return model


def square_images(n: int = 4, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """A dark textured background (0.2 +- 0.05) with a bright square (0.9)."""
    rng = np.random.default_rng(seed)
    images = (0.2 + 0.05 * rng.standard_normal((n, size, size))).clip(0, 1).astype(np.float32)
    images[:, SQUARE[0], SQUARE[1]] = 0.9
    return images


def model_probs(model, images: np.ndarray, target: int = 1) -> np.ndarray:
    return np.asarray(model(images[..., None], training=False))[:, target]


def road(**options):
    return plugins.get("fill", "road")(**options)


def direct_road(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear system as its reference code states it (a removed pixel is the weighted mean
    of the neighbours that exist: at the border the weights are renormalised), each row
    multiplied by its weights' sum, solved with ``spsolve``."""
    height, width = image.shape
    unknown = np.flatnonzero(removed.ravel())
    index = np.full(image.size, -1)
    index[unknown] = np.arange(len(unknown))
    ys, xs = np.divmod(unknown, width)
    rows, cols, vals = [np.arange(len(unknown))], [np.arange(len(unknown))], [np.zeros(len(unknown))]
    rhs = np.zeros(len(unknown))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            weight = 1 / 12 if dy and dx else 1 / 6
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
            vals[0] = vals[0] + np.where(inside, weight, 0.0)
            flat = np.where(inside, ny * width + nx, 0)
            neighbour = np.where(inside, index[flat], -1)
            free = inside & (neighbour >= 0)
            rows.append(np.flatnonzero(free))
            cols.append(neighbour[free])
            vals.append(np.full(free.sum(), -weight))
            fixed = inside & (neighbour < 0)
            rhs[fixed] += weight * image.ravel()[flat[fixed]]
    matrix = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(len(unknown), len(unknown)))
    out = image.astype(np.float64).copy()
    out.ravel()[unknown] = spsolve(matrix, rhs)
    return out


def smooth_masks(n: int, shape: tuple[int, int], fraction: float, seed: int) -> np.ndarray:
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((n, *shape)),
                                    (0, 3, 3))
    flat = field.reshape(n, -1)
    return (flat >= np.quantile(flat, 1 - fraction, axis=1, keepdims=True)).reshape(n, *shape)


# --------------------------------------------------------------------------- ranking


def test_relevance_order_most_relevant_first_and_seeded_ties():
    maps = np.zeros((2, 4, 4))
    maps[0, 1, 2] = 1.0
    maps[0, 3, 0] = 0.5
    order = fa.relevance_order(maps, seed=0)
    assert order.shape == (2, 16)
    assert list(order[0, :2]) == [1 * 4 + 2, 3 * 4 + 0]
    assert sorted(order[1]) == list(range(16))
    np.testing.assert_array_equal(order, fa.relevance_order(maps, seed=0))
    assert not np.array_equal(order[1], fa.relevance_order(maps, seed=1)[1])
    assert not np.array_equal(order[1], np.arange(16))  # a flat map is not a raster scan


def test_curve_perturbations_share_end_points():
    ranges, deletion, insertion = fa.curve_perturbations(fa.FRACTIONS, 1024)
    assert len(ranges) == 2 * len(fa.FRACTIONS) - 2
    assert deletion[0] == insertion[-1] and tuple(ranges[deletion[0]]) == (0, 0)
    assert deletion[-1] == insertion[0] and tuple(ranges[deletion[-1]]) == (0, 1024)


# --------------------------------------------------------------------------- fills


@pytest.mark.parametrize("shape", [(20, 20), (32, 32), (24, 40)])
def test_road_matches_direct_sparse_solve(shape):
    rng = np.random.default_rng(1)
    images = rng.random((4, *shape)).astype(np.float32)
    removed = np.concatenate([smooth_masks(2, shape, 0.5, seed=2), rng.random((1, *shape)) < 0.7,
                              smooth_masks(1, shape, 0.9, seed=3)])
    filled = road(noise=0.0).fill(images, removed)
    np.testing.assert_array_equal(filled[~removed], images[~removed])
    for image, mask, ours in zip(images, removed, filled):
        assert np.abs(ours - direct_road(image, mask).clip(0, 1)).max() <= 1e-3


def test_road_at_the_border_averages_the_neighbours_that_exist():
    """Rong et al.'s rule (issue 23.1): beyond the edge is nothing, not zeros. A flat image with
    its border band removed is refilled at its own value; counting outside pixels as zeros
    darkened the band (0.6 became about 0.45 at the edge)."""
    images = np.full((1, 24, 24), 0.6, np.float32)
    removed = np.zeros(images.shape, bool)
    removed[:, :3] = removed[:, :, -3:] = True
    filled = road(noise=0.0).fill(images, removed)
    np.testing.assert_allclose(filled, 0.6, atol=1e-3)


def test_road_single_hole_takes_its_neighbours_value():
    images = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    images[:, 5:8, 9:12] = 0.37
    removed = np.zeros(images.shape, bool)
    removed[:, 6, 10] = True
    filled = road(noise=0.0).fill(images, removed)
    np.testing.assert_allclose(filled[:, 6, 10], 0.37, atol=1e-5)
    np.testing.assert_array_equal(filled[~removed], images[~removed])


def test_road_everything_removed_is_noise_around_zero():
    images = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    filled = road(noise=0.01).fill(images, np.ones(images.shape, bool), seed=3)
    noise = np.stack([np.random.default_rng([3, i, 0]).standard_normal((16, 16), np.float32)
                      for i in range(3)]) * np.float32(0.01)
    np.testing.assert_allclose(filled, noise.clip(0, 1), atol=1e-7)
    np.testing.assert_array_equal(filled, road(noise=0.01).fill(images, np.ones(images.shape, bool),
                                                                seed=3))


def test_blur_fill_changes_only_removed_pixels():
    rng = np.random.default_rng(0)
    images = rng.random((2, 24, 24)).astype(np.float32)
    removed = rng.random(images.shape) < 0.3
    filled = plugins.get("fill", "blur")(sigma=2.0 * 224 / 24).fill(images, removed)
    np.testing.assert_array_equal(filled[~removed], images[~removed])
    assert np.abs(filled[removed] - images[removed]).mean() > 0.1


# --------------------------------------------------------------------------- curves


@pytest.fixture(scope="module")
def square():
    import keras

    keras.utils.set_random_seed(0)
    return square_model()


@pytest.mark.parametrize("fill,options", [("road", {}), ("blur", {"sigma": 6.0 * 224 / SIZE})])
def test_square_map_is_the_faithful_one(square, fill, options):
    fill = plugins.get("fill", fill)(**options)
    images = square_images(4)
    n = len(images)
    rng = np.random.default_rng(5)
    on_square = np.broadcast_to(square_mask(), images.shape).astype(np.float32)
    off_square = np.where(on_square > 0, 0.0, 0.1 + rng.random(images.shape)).astype(np.float32)
    flat = np.zeros(images.shape, np.float32)
    targets = np.ones(n, int)
    curves = {name: fa.perturbation_curves(square, images, maps, targets, fill=fill, seed=0)
              for name, maps in (("on", on_square), ("off", off_square), ("flat", flat))}
    on, off, flat_curves = curves["on"], curves["off"], curves["flat"]
    assert on["deletion"].shape == (n, 11) and on["insertion_auc"].shape == (n,)
    assert on["passes_per_image"] == 20
    assert np.all(on["deletion_auc"] < 0.25) and np.all(off["deletion_auc"] > 0.85)
    assert np.all(on["insertion_auc"] > 0.85) and np.all(off["insertion_auc"] < 0.25)
    # a random order removes the square bit by bit, and ROAD refills scattered holes from their
    # neighbours: the flat map stays close to the faithful one on insertion, far on deletion
    assert np.all(on["deletion_auc"] < flat_curves["deletion_auc"] - 0.3)
    assert np.all(on["insertion_auc"] > flat_curves["insertion_auc"] + 0.03)
    again = fa.perturbation_curves(square, images, flat, targets, fill=fill, seed=0)
    np.testing.assert_array_equal(again["deletion"], flat_curves["deletion"])


def test_curves_share_end_points_with_the_model(square):
    images = square_images(5, seed=1)
    maps = np.random.default_rng(2).random(images.shape).astype(np.float32)
    targets = np.array([1, 0, 1, 1, 0])
    curves = fa.perturbation_curves(square, images, maps, targets, batch_size=7)
    np.testing.assert_array_equal(curves["deletion"][:, 0], curves["insertion"][:, -1])
    np.testing.assert_array_equal(curves["deletion"][:, -1], curves["insertion"][:, 0])
    expected = np.asarray(square(images[..., None], training=False))[np.arange(5), targets]
    np.testing.assert_allclose(curves["deletion"][:, 0], expected, atol=1e-6)
    np.testing.assert_allclose(curves["deletion_auc"],
                               np.trapezoid(curves["deletion"], fa.FRACTIONS, axis=1))


def test_road_noise_does_not_depend_on_batching(square):
    """Equal up to the solver tolerance: a batch iterates until its slowest row converges."""
    images = square_images(3, seed=2)
    maps = np.random.default_rng(3).random(images.shape).astype(np.float32)
    small = fa.perturbation_curves(square, images[..., None], maps, 1, batch_size=5, seed=4)
    large = fa.perturbation_curves(square, images, maps, 1, batch_size=64, seed=4)
    np.testing.assert_allclose(small["deletion"], large["deletion"], atol=1e-4)
    np.testing.assert_allclose(small["insertion"], large["insertion"], atol=1e-4)


def test_no_retracing_across_batch_sizes():
    import keras

    from xaicxr import plugins

    keras.utils.set_random_seed(0)
    model = plugins.get("backbone", "vgg19")(weights="none", width=0.125, input_size=32,
                                             dense=[16], dropout=0.0).build(["a", "b", "c", "d"])
    rng = np.random.default_rng(0)
    for n, batch in ((3, 16), (5, 64), (2, 7)):
        images = rng.random((n, 32, 32)).astype(np.float32)
        maps = rng.random((n, 32, 32)).astype(np.float32)
        for fill in ("road", "blur"):
            curves = fa.perturbation_curves(model, images, maps, np.zeros(n, int), fill=fill,
                                            batch_size=batch, fractions=np.linspace(0, 1, 5))
            assert np.all(np.isfinite(curves["deletion"]))
        road().fill(images, maps > 0.5)
    for fill in ("road", "blur"):
        assert fa.scoring_function(model, fill, (32, 32)).experimental_get_tracing_count() == 1
    assert compiled_apply(road(), (32, 32)).experimental_get_tracing_count() == 1


# --------------------------------------------------------------------------- regions


def test_random_lung_regions_inside_the_lungs_with_the_area():
    lungs = np.zeros((4, 48, 48), bool)
    lungs[:, 8:40, 4:20] = True
    lungs[:, 8:40, 28:44] = True
    lungs[2] = False
    lungs[2, 10:14, 10:14] = True         # 16 pixels, smaller than the area
    lungs[3] = False                      # no lungs at all
    regions = fa.random_lung_regions(lungs, 60, seed=1, sigma=3.0)
    assert not np.any(regions & ~lungs)
    assert list(regions.reshape(4, -1).sum(axis=1)) == [60, 60, 16, 0]
    np.testing.assert_array_equal(regions, fa.random_lung_regions(lungs, 60, seed=1, sigma=3.0))
    assert not np.array_equal(regions[0], fa.random_lung_regions(lungs, 60, seed=2, sigma=3.0)[0])
    areas = fa.random_lung_regions(lungs[:2], np.array([10, 200]), seed=0, sigma=3.0)
    assert list(areas.reshape(2, -1).sum(axis=1)) == [10, 200]


def test_template_on_the_square_beats_random_lung_regions(square):
    images = square_images(4, seed=3)
    lungs = np.zeros(images.shape, bool)
    lungs[:, 4:28, 20:30] = True          # beside the square, never on it
    lungs[:, 20:30, 2:18] = True
    template = np.zeros((SIZE, SIZE), np.float32)
    template[SQUARE] = 1.0
    result = fa.template_faithfulness(square, images, np.ones(4, int), template, lungs,
                                      q=64 / SIZE ** 2, draws=3)
    assert result["area"] == 64 and result["q"] == 64 / SIZE ** 2
    assert np.all(result["template_drop"] > 0.8)
    assert np.all(np.abs(result["random_drop"]) < 0.01)
    np.testing.assert_array_equal(result["random_area"], 64)
    drop = fa.region_drop(square, images, np.ones(4, int), square_mask())
    np.testing.assert_allclose(drop, result["template_drop"], atol=1e-6)


def test_lerf_is_insertion_read_backwards_and_the_gap_is_reported(square):
    """ROAD's least-relevant-first removal of r of the pixels is the insertion point at 1 - r:
    deleting in the reversed order gives the insertion curve backwards (a blur fill: no noise)."""
    from xaicxr_builtins.metrics.faithfulness import Faithfulness

    images = square_images(4, seed=3)
    maps = np.random.default_rng(4).random(images.shape).astype(np.float32)
    targets = np.ones(len(images), int)
    blur = plugins.get("fill", "blur")(sigma=6.0 * 224 / SIZE)
    forward = fa.perturbation_curves(square, images, maps, targets, fill=blur)
    reversed_order = fa.perturbation_curves(square, images, -maps, targets, fill=blur)
    np.testing.assert_allclose(reversed_order["deletion"], forward["insertion"][:, ::-1], atol=1e-6)

    metric = Faithfulness(fills=["blur"], fractions=11, faithfulness_baselines=["uniform"])
    on_square = np.broadcast_to(square_mask(), images.shape).astype(np.float32)
    scores = metric.scores(on_square, images, square, targets)
    uniform = metric.scores(np.zeros_like(on_square), images, square, targets)
    figures = metric.figures(scores, {"uniform": uniform})["blur"]
    gap = scores["blur/insertion_auc"] - scores["blur/deletion_auc"]
    assert figures["morf_lerf_gap"]["value"] == pytest.approx(gap.mean())
    assert figures["morf_lerf_gap_skill"]["baseline"] == "uniform" and figures["morf_lerf_gap_skill"]["ci95"][0] > 0


def test_a_flat_map_is_scored_as_the_mean_of_several_random_orders(square):
    """Rows whose map is flat average their curves over ``random_orders`` seeded orders; rows
    with a map keep their one order."""
    from xaicxr_builtins.metrics.faithfulness import Faithfulness

    images = square_images(4, seed=5)
    targets = np.ones(len(images), int)
    maps = np.random.default_rng(6).random(images.shape).astype(np.float32)
    maps[[1, 3]] = 0.0
    three = Faithfulness(fills=["blur"], fractions=6, random_orders=3).scores(maps, images, square, targets, seed=7)
    one = Faithfulness(fills=["blur"], fractions=6, random_orders=1).scores(maps, images, square, targets, seed=7)
    np.testing.assert_array_equal(three["blur/deletion_auc"][[0, 2]], one["blur/deletion_auc"][[0, 2]])
    more = [fa.perturbation_curves(square, images[[1, 3]], maps[[1, 3]], targets[[1, 3]], fill="blur",
                                   fractions=np.linspace(0, 1, 6), seed=7 + k)["deletion_auc"] for k in (1, 2)]
    by_order = [one["blur/deletion_auc"][[1, 3]], *more]
    np.testing.assert_allclose(three["blur/deletion_auc"][[1, 3]], np.mean(by_order, axis=0), atol=1e-6)
    assert not np.allclose(by_order[0], by_order[1]), "the orders differ"
