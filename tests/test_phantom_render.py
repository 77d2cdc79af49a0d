"""The phantom renderer: determinism, masks (and that they hold the lesion), where each class's
lesion lies and that it varies, and that the default difficulty is not solvable by a linear
model on coarse pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from xaicxr_builtins.datasets import phantom_render as pr

SIZE = 64
LESION_CLASSES = ("bacteria", "virus", "covid")


def lungs_by_side(lung: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two lung fields (image-left, image-right) as separate masks."""
    labels, n = ndimage.label(lung)
    sizes = ndimage.sum(lung, labels, range(1, n + 1))
    biggest = np.argsort(sizes)[-2:] + 1
    fields = sorted((labels == k for k in biggest), key=lambda m: np.nonzero(m)[1].mean())
    return fields[0], fields[1]


def lesion_position(ph: pr.Phantom) -> list[tuple[float, float, float]]:
    """For each lung: (lesion share of the lung, relative height 0=top..1=bottom, laterality
    0=medial..1=lateral) of the lesion's centre of mass within that lung's bounding box."""
    out = []
    for side, field in zip((-1, 1), lungs_by_side(ph.lung)):
        rows, cols = np.nonzero(field)
        lesion = ph.lesion & field
        if not lesion.any():
            out.append((0.0, np.nan, np.nan))
            continue
        lr, lc = np.nonzero(lesion)
        height = (lr.mean() - rows.min()) / np.ptp(rows)
        across = (lc.mean() - cols.min()) / np.ptp(cols)
        out.append((lesion.sum() / field.sum(), height, across if side == 1 else 1.0 - across))
    return out


def test_same_arguments_give_identical_bytes() -> None:
    for label in pr.CLASSES:
        a = pr.render_phantom(3, label, 7, size=SIZE)
        b = pr.render_phantom(3, label, 7, size=SIZE)
        assert a.image.tobytes() == b.image.tobytes()
        assert a.lesion.tobytes() == b.lesion.tobytes()
        assert a.lung.tobytes() == b.lung.tobytes()
        assert a.params == b.params


def test_order_does_not_matter() -> None:
    first = [pr.render_phantom(0, "covid", i, size=SIZE).image for i in range(3)]
    backwards = [pr.render_phantom(0, "covid", i, size=SIZE).image for i in reversed(range(3))]
    assert all(np.array_equal(a, b) for a, b in zip(first, reversed(backwards)))


@pytest.mark.parametrize("change", [{"index": 1}, {"seed": 1}, {"label": "virus"}, {"difficulty": "easy"}])
def test_any_argument_changes_the_image(change: dict) -> None:
    args = {"seed": 0, "label": "normal", "index": 0, "size": SIZE, "difficulty": "standard"}
    base = pr.render_phantom(**args).image
    assert not np.array_equal(base, pr.render_phantom(**{**args, **change}).image)


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("difficulty", pr.DIFFICULTIES)
def test_shapes_types_and_ranges(size: int, difficulty: str) -> None:
    for label in pr.CLASSES:
        ph = pr.render_phantom(0, label, 0, size=size, difficulty=difficulty)
        assert ph.image.shape == ph.lesion.shape == ph.lung.shape == (size, size)
        assert ph.image.dtype == np.float32
        assert ph.lesion.dtype == ph.lung.dtype == np.bool_
        assert 0.0 <= ph.image.min() and ph.image.max() <= 1.0
        assert ph.image.std() > 0.1
        json.dumps(ph.params)


def test_unknown_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        pr.render_phantom(0, "tuberculosis", 0)
    with pytest.raises(ValueError):
        pr.render_phantom(0, "normal", 0, difficulty="hard")


def test_lungs_are_two_fields_covering_a_fair_part_of_the_image() -> None:
    for i in range(10):
        ph = pr.render_phantom(0, "normal", i, size=SIZE)
        left, right = lungs_by_side(ph.lung)
        assert 0.05 < left.mean() < 0.25 and 0.05 < right.mean() < 0.25
        assert left.sum() + right.sum() == ph.lung.sum()
        assert ph.image[ph.lung].mean() < ph.image[~ph.lung & (ph.image > 0.2)].mean()


def test_lesion_masks_empty_for_normal_and_inside_the_lungs_otherwise() -> None:
    for i in range(10):
        assert not pr.render_phantom(0, "normal", i, size=SIZE).lesion.any()
        for label in LESION_CLASSES:
            ph = pr.render_phantom(0, label, i, size=SIZE)
            assert ph.lesion.sum() >= 10
            assert not (ph.lesion & ~ph.lung).any()


@pytest.mark.parametrize("label", LESION_CLASSES)
def test_lesion_mask_holds_nine_tenths_of_the_lesion_density(label: str) -> None:
    """The mask is a ground truth for localisation: it holds >= 90 % of what the lesion adds to
    the attenuation (all of which lies inside the lungs), and the manifest's share says how much."""
    for difficulty in pr.DIFFICULTIES:
        for seed in range(3):
            for i in range(4):
                ph = pr.render_phantom(seed, label, i, size=48, difficulty=difficulty)
                density = ph.lesion_density
                assert density.min() >= 0 and not density[~ph.lung].any()
                share = density[ph.lesion].sum() / density.sum()
                assert share >= pr.MASK_SHARE
                assert ph.params["lesion_share"] == pytest.approx(share, abs=1e-4)


def test_lesion_mask_follows_the_lesion() -> None:
    """The mask hugs the lesion (its streaks and patches) rather than a region drawn around it:
    it is hardly larger than the fewest pixels that could hold 90 % of the lesion density."""
    for label in LESION_CLASSES:
        for i in range(8):
            ph = pr.render_phantom(1, label, i, size=SIZE)
            densest_first = np.cumsum(np.sort(ph.lesion_density.ravel())[::-1], dtype=np.float64)
            fewest = np.searchsorted(densest_first, pr.MASK_SHARE * densest_first[-1]) + 1
            assert ph.lesion.sum() <= 1.35 * fewest, (label, i)


def test_lesion_density_is_exactly_zero_below_its_cutoff() -> None:
    for label in LESION_CLASSES:
        density = pr.render_phantom(0, label, 0, size=SIZE).lesion_density
        present = density[density > 0]
        assert present.min() >= 0.01 * density.max() * (1 - 1e-6)
        assert (density == 0).mean() > 0.5
    assert not pr.render_phantom(0, "normal", 0, size=SIZE).lesion_density.any()
    assert pr.render_phantom(0, "normal", 0, size=SIZE).params["lesion_share"] is None


def test_lesions_are_denser_than_the_lung_they_replace() -> None:
    """The pattern brightens the image where the mask is (all else drawn the same)."""
    for label in LESION_CLASSES:
        gains = [pr.render_phantom(0, label, i, size=SIZE) for i in range(10)]
        inside = np.mean([p.image[p.lesion].mean() for p in gains])
        normals = [pr.render_phantom(0, "normal", i, size=SIZE) for i in range(10)]
        assert inside > np.mean([p.image[p.lung].mean() for p in normals]) + 0.02, label


def test_bacteria_is_unilateral_and_picks_either_side() -> None:
    sides = []
    for i in range(20):
        ph = pr.render_phantom(0, "bacteria", i, size=SIZE)
        shares = [share for share, _, _ in lesion_position(ph)]
        assert min(shares) == 0.0 and max(shares) > 0.05
        sides.append(int(np.argmax(shares)))
        assert ph.params["lesion"]["image_side"] == ("left", "right")[sides[-1]]
    assert 0 < sum(sides) < len(sides)


@pytest.mark.parametrize("label", ["virus", "covid"])
def test_virus_and_covid_are_mostly_bilateral(label: str) -> None:
    """Usually both lungs, sometimes one (either side); the parameters name the lungs involved."""
    bilateral, sides = 0, set()
    for i in range(40):
        ph = pr.render_phantom(0, label, i, size=SIZE)
        involved = [side for side, field in zip(("left", "right"), lungs_by_side(ph.lung))
                    if ph.lesion_density[field].any()]
        assert involved == sorted(lung["image_side"] for lung in ph.params["lesion"]["lungs"])
        bilateral += len(involved) == 2
        if len(involved) == 1:
            sides.add(involved[0])
    assert 0.45 <= bilateral / 40 <= 0.85
    assert sides == {"left", "right"}


def medial_reach(ph: pr.Phantom) -> list[float]:
    """For each lung the lesion mask touches: the laterality (0=medial..1=lateral, across the
    lung's bounding box) of its most medial pixel."""
    out = []
    for side, field in zip((-1, 1), lungs_by_side(ph.lung)):
        if (ph.lesion & field).any():
            cols = np.nonzero(field)[1]
            across = (np.nonzero(ph.lesion & field)[1] - cols.min()) / np.ptp(cols)
            out.append(float((across if side == 1 else 1.0 - across).min()))
    return out


def test_covid_is_peripheral_and_lower_predominant_virus_is_perihilar() -> None:
    """Per involved lung: (share, height 0=top..1=bottom, laterality 0=medial..1=lateral).

    Virus streaks fan out from the hilum into one sector, so the lesion starts at the hilum (its
    mask reaches the medial third of the lung, covid's seldom does) while its centre lies further
    out than the centre of a disc about the hilum would (median laterality about 0.55, against
    0.33 for the former disc-shaped pattern): still medial of covid's (about 0.72), which hugs
    the lateral wall."""
    def positions(label: str) -> np.ndarray:
        found = [p for i in range(40) for p in lesion_position(pr.render_phantom(0, label, i, size=SIZE))]
        return np.array([p for p in found if p[0] > 0])

    covid, virus = positions("covid"), positions("virus")
    assert (covid[:, 2] > 0.5).mean() >= 0.9
    assert (covid[:, 1] > 0.55).mean() > max((covid[:, 1] < 0.35).mean(), 0.4)
    assert np.median(virus[:, 2]) < 0.6
    assert np.median(virus[:, 2]) < np.median(covid[:, 2]) - 0.1
    assert 0.3 < np.median(virus[:, 1]) < 0.7
    virus_reach = [r for i in range(40) for r in medial_reach(pr.render_phantom(0, "virus", i, size=SIZE))]
    covid_reach = [r for i in range(40) for r in medial_reach(pr.render_phantom(0, "covid", i, size=SIZE))]
    assert np.mean(np.array(virus_reach) < 1 / 3) >= 0.6
    assert np.mean(np.array(covid_reach) < 1 / 3) <= 0.2


def class_prior_pointing(label: str, n: int = 60, size: int = 48) -> float:
    """The best any fixed map can do on these images at tolerance 0: the share of lesion masks
    that hold the pixel the class's masks most often hold: the in-sample pointing game of the
    class prior (the mean mask), which the prior does not beat on held-out images on average."""
    masks = np.stack([pr.render_phantom(5, label, i, size=size).lesion for i in range(n)])
    return float(masks.mean(axis=0).max())


@pytest.mark.parametrize("label", LESION_CLASSES)
def test_lesion_placement_varies_so_the_class_prior_misses_most_lesions(label: str) -> None:
    assert class_prior_pointing(label) <= 0.6


def test_difficulty_orders_lesion_contrast() -> None:
    contrast = {d: np.mean([pr.render_phantom(0, label, i, size=32, difficulty=d).params["lesion"]["contrast"]
                            for label in LESION_CLASSES for i in range(10)]) for d in pr.DIFFICULTIES}
    assert contrast["easy"] > contrast["standard"] > contrast["subtle"]


# ------------------------------------------------------------ no shortcut for a linear model

@pytest.fixture(scope="module")
def standard_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """150 per class at 64 px: images, labels, lung masks."""
    phantoms = [(pr.render_phantom(11, label, i, size=SIZE), k)
                for k, label in enumerate(pr.CLASSES) for i in range(150)]
    return (np.stack([p.image for p, _ in phantoms]), np.array([k for _, k in phantoms]),
            np.stack([p.lung for p, _ in phantoms]))


def linear_baseline_accuracy(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Best test accuracy of multinomial logistic regression (full-batch gradient descent with
    L2, the penalty chosen on a validation split) on standardised 16x16 area-averaged pixels."""
    n = len(x)
    feats = x.reshape(n, 16, x.shape[1] // 16, 16, x.shape[2] // 16).mean(axis=(2, 4)).reshape(n, -1)
    order = np.random.default_rng(seed).permutation(n)
    train, val, test = np.split(order, [int(0.6 * n), int(0.8 * n)])
    mean, std = feats[train].mean(0), feats[train].std(0) + 1e-6
    z = np.hstack([(feats - mean) / std, np.ones((n, 1))])
    onehot = np.eye(int(y.max()) + 1)[y]

    def fit(rows: np.ndarray, l2: float) -> np.ndarray:
        w = np.zeros((z.shape[1], onehot.shape[1]))
        for _ in range(400):
            logits = z[rows] @ w
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            grad = z[rows].T @ (p - onehot[rows]) / len(rows) + l2 * np.vstack([w[:-1], np.zeros((1, w.shape[1]))])
            w -= 0.5 * grad
        return w

    def acc(w: np.ndarray, rows: np.ndarray) -> float:
        return float(((z[rows] @ w).argmax(1) == y[rows]).mean())

    best = max((1e-3, 1e-2, 1e-1), key=lambda l2: acc(fit(train, l2), val))
    return acc(fit(np.concatenate([train, val]), best), test)


def test_standard_phantoms_defeat_a_linear_model_on_coarse_pixels(standard_set) -> None:
    images, labels, _ = standard_set
    assert linear_baseline_accuracy(images, labels, seed=0) <= 0.85


def test_nuisance_brightness_does_not_depend_on_class(standard_set) -> None:
    """Outside the lungs (where no lesion is drawn) the classes look alike on average."""
    images, labels, lungs = standard_set
    outside = np.array([img[~lung].mean() for img, lung in zip(images, lungs)])
    normal = outside[labels == 0]
    for k in range(1, len(pr.CLASSES)):
        other = outside[labels == k]
        se = np.sqrt(normal.var() / len(normal) + other.var() / len(other))
        assert abs(other.mean() - normal.mean()) < 3.5 * se
