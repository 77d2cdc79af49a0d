"""Counterfactual phantoms: the same radiograph without its lesion ("removed") or with the lesion
only inside its mask ("mask_only"), from the renderer and through the dataset plugin."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from xaicxr.errors import DataError
from xaicxr.io.imaging import read_image

from xaicxr_builtins.datasets import phantom_render as pr

SIZE = 48
LESION_CLASSES = ("bacteria", "virus", "covid")


def twins(label: str, index: int, seed: int = 0, size: int = SIZE,
          difficulty: str = "standard") -> dict[str, pr.Phantom]:
    return {mode: pr.render_phantom(seed, label, index, size=size, difficulty=difficulty, lesion=mode)
            for mode in pr.LESION_MODES}


def test_lesion_mode_is_checked_and_full_is_the_default() -> None:
    with pytest.raises(ValueError):
        pr.render_phantom(0, "covid", 0, size=SIZE, lesion="blurred")
    default = pr.render_phantom(0, "covid", 0, size=SIZE)
    full = pr.render_phantom(0, "covid", 0, size=SIZE, lesion="full")
    assert default.image.tobytes() == full.image.tobytes()


@pytest.mark.parametrize("label", LESION_CLASSES)
def test_twins_share_everything_but_the_lesion(label: str) -> None:
    """Same anatomy, film, masks and parameters: every random number is drawn in every mode."""
    for index in range(4):
        t = twins(label, index)
        for mode in ("removed", "mask_only"):
            assert np.array_equal(t[mode].lesion, t["full"].lesion)
            assert np.array_equal(t[mode].lung, t["full"].lung)
            assert np.array_equal(t[mode].lesion_density, t["full"].lesion_density)
            assert {**t[mode].params, "lesion_mode": "full"} == t["full"].params


@pytest.mark.parametrize("label", LESION_CLASSES)
@pytest.mark.parametrize("difficulty", pr.DIFFICULTIES)
def test_removed_twin_differs_only_where_the_lesion_is(label: str, difficulty: str) -> None:
    for seed, index in ((0, 0), (1, 3), (2, 5)):
        t = twins(label, index, seed=seed, difficulty=difficulty)
        full, removed = t["full"].image, t["removed"].image
        support = pr.lesion_support(t["full"])
        assert support.any() and not support.all()
        assert np.array_equal(full[~support], removed[~support])
        assert (full[support] != removed[support]).mean() > 0.5
        assert full[t["full"].lesion].mean() > removed[t["full"].lesion].mean()


@pytest.mark.parametrize("label", LESION_CLASSES)
def test_mask_only_is_the_image_inside_the_mask_and_the_twin_far_outside(label: str) -> None:
    """Inside the mask, away from the lesion left out (blur mixes it in near the mask's edge),
    "mask_only" is the full image; away from the lesion kept, it is the lesion-free twin."""
    for index in range(4):
        t = twins(label, index)
        full = t["full"]
        kept = pr.lesion_support(dataclasses.replace(full, lesion_density=full.lesion_density * full.lesion))
        left_out = pr.lesion_support(dataclasses.replace(full, lesion_density=full.lesion_density * ~full.lesion))
        core = full.lesion & ~left_out
        assert core.sum() > 0.2 * full.lesion.sum()
        assert np.array_equal(t["mask_only"].image[core], full.image[core])
        assert np.array_equal(t["mask_only"].image[~kept], t["removed"].image[~kept])
        assert not np.array_equal(t["mask_only"].image, t["removed"].image)


def test_normal_twins_are_the_image() -> None:
    for index in range(3):
        t = twins("normal", index)
        assert not pr.lesion_support(t["full"]).any()
        for mode in ("removed", "mask_only"):
            assert t[mode].image.tobytes() == t["full"].image.tobytes()


# ------------------------------------------------------------ through the dataset plugin

try:
    from xaicxr_builtins.datasets import phantom
except ImportError:
    phantom = None
needs_plugin = pytest.mark.skipif(phantom is None, reason="the built-in plugin package is not installed")

N_PER_CLASS, DISK_SIZE = 2, 32


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list]:
    """A tiny set generated where ``scan`` puts it in a run directory (``workdir / "phantom"``)."""
    workdir = tmp_path_factory.mktemp("data")
    dataset = phantom.PhantomDataset(n_per_class=N_PER_CLASS, size=DISK_SIZE)
    return workdir, dataset, dataset.scan(workdir).records


@needs_plugin
def test_the_dataset_offers_both_changes() -> None:
    assert phantom.PhantomDataset.counterfactuals == ("lesion_removed", "lesion_in_mask_only")


@needs_plugin
def test_manifest_reports_how_much_of_the_lesion_each_mask_holds(phantom_set) -> None:
    workdir, _, _ = phantom_set
    manifest = phantom._read_manifest(workdir / "phantom")
    assert manifest["format"] == phantom.FORMAT_VERSION
    for item in manifest["items"]:
        if item["label"] == "normal":
            assert item["lesion_share"] is None and item["lesion_fraction"] == 0
        else:
            assert item["lesion_share"] >= pr.MASK_SHARE and item["lesion_fraction"] > 0


@needs_plugin
@pytest.mark.parametrize("change", ["lesion_removed", "lesion_in_mask_only"])
def test_a_normal_image_comes_back_exactly_as_its_png_decodes(phantom_set, change: str) -> None:
    workdir, dataset, records = phantom_set
    for record in [r for r in records if r.label == "normal"]:
        image = dataset.counterfactual(record, change, workdir)
        decoded, _ = read_image(record.path)
        assert image.dtype == np.float32 and image.shape == (DISK_SIZE, DISK_SIZE)
        assert np.array_equal(image, decoded)


@needs_plugin
def test_a_lesion_image_comes_back_as_its_twin(phantom_set) -> None:
    workdir, dataset, records = phantom_set
    for record in [r for r in records if r.label != "normal"]:
        index = int(record.id.rsplit("-", 1)[1])
        full = pr.render_phantom(0, record.label, index, size=DISK_SIZE)
        decoded, _ = read_image(record.path)
        for change, mode in (("lesion_removed", "removed"), ("lesion_in_mask_only", "mask_only")):
            twin = pr.render_phantom(0, record.label, index, size=DISK_SIZE, lesion=mode).image
            expected = np.clip(np.rint(twin * 255.0), 0, 255).astype(np.uint8).astype(np.float32) / 255.0
            image = dataset.counterfactual(record, change, workdir)
            assert np.array_equal(image, expected)
        removed = dataset.counterfactual(record, "lesion_removed", workdir)
        support = pr.lesion_support(full)
        assert np.array_equal(removed[~support], decoded[~support])
        assert not np.array_equal(removed, decoded)


@needs_plugin
def test_the_set_can_be_named_by_path_instead_of_workdir(phantom_set) -> None:
    workdir, _, records = phantom_set
    by_path = phantom.PhantomDataset(path=str(workdir / "phantom"))
    record = next(r for r in records if r.label == "covid")
    assert np.array_equal(by_path.counterfactual(record, "lesion_removed"),
                          phantom.PhantomDataset().counterfactual(record, "lesion_removed", workdir))


@needs_plugin
def test_unknown_changes_and_foreign_records_are_refused(phantom_set, tmp_path: Path) -> None:
    workdir, dataset, records = phantom_set
    record = records[0]
    with pytest.raises(DataError):
        dataset.counterfactual(record, "lesion_blurred", workdir)
    with pytest.raises(DataError):
        dataset.counterfactual(dataclasses.replace(record, id="covid/covid-09999"), "lesion_removed", workdir)
    with pytest.raises(DataError):
        dataset.counterfactual(dataclasses.replace(record, path=tmp_path / "elsewhere.png"), "lesion_removed", workdir)
    np.testing.assert_array_equal(dataset.counterfactual(record, "lesion_removed", tmp_path),
                                  dataset.counterfactual(record, "lesion_removed", workdir),
                                  err_msg="the record's own set answers (a study variant shares another run's phantoms)")


@needs_plugin
def test_a_set_from_an_older_renderer_is_refused(tmp_path: Path) -> None:
    """Its images were made by other code, so a re-rendered twin would not be their twin."""
    root = tmp_path / "phantom"
    phantom.generate_phantom_set(root, 1, DISK_SIZE, 0)
    record = phantom.PhantomDataset(path=str(root)).scan().records[1]
    manifest = phantom._read_manifest(root)
    phantom.atomic.write_json(root / phantom.MANIFEST, {**manifest, "format": phantom.FORMAT_VERSION - 1})
    with pytest.raises(DataError):
        phantom.PhantomDataset(path=str(root)).counterfactual(record, "lesion_removed")
