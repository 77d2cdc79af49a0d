"""Expert localisation on real films: boxes and masks in the folder dataset, carried through every
resize policy into the image cache; localisation figures of boxes (IoU, IoBB); region reliance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xaicxr.analysis.localisation import Targets, class_figures, iobb, iou_at
from xaicxr.analysis.region_reliance import paired_two_level, random_regions, region_reliance
from xaicxr.cli import app
from xaicxr.io.imagecache import build_image_cache
from xaicxr.io.loader import decode
from xaicxr.plugins import get
from xaicxr.stages.dataset import take_inventory

from shared_runs import tiny_config

HEIGHT, WIDTH = 48, 64
BOX = (20.0, 10.0, 12.0, 16.0)


def _films(root: Path, n: int = 4) -> Path:
    """Two classes of non-square 8-bit films: ``finding/f<i>.png`` with a bright box (the
    "lesion") and its box annotation, ``normal/n<i>.png`` without; a lung mask for every film and
    a metadata CSV of patients."""
    rng = np.random.default_rng(0)
    (root / "masks" / "lung").mkdir(parents=True)
    boxes, meta = ["file,finding,x,y,w,h"], ["file,patient,view"]
    lung = np.zeros((HEIGHT, WIDTH), np.uint8)
    lung[6:42, 8:30] = 255
    lung[6:42, 34:58] = 255
    for label, stem in (("finding", "f"), ("normal", "n")):
        (root / label).mkdir()
        for i in range(n):
            pixels = (rng.random((HEIGHT, WIDTH)) * 80 + 40).astype(np.uint8)
            if label == "finding":
                x, y, w, h = (int(v) for v in BOX)
                pixels[y:y + h, x:x + w] = 230
                boxes.append(f"{label}/{stem}{i}.png,Mass,{x},{y},{w},{h}")
            Image.fromarray(pixels, "L").save(root / label / f"{stem}{i}.png")
            Image.fromarray(lung, "L").save(root / "masks" / "lung" / f"{stem}{i}.png")
            meta.append(f"{label}/{stem}{i}.png,P{i // 2}-{label},PA")
    (root / "boxes.csv").write_text("\n".join(boxes) + "\n")
    (root / "findings.csv").write_text("\n".join(meta) + "\n")
    return root


def _folder(**options):
    return get("dataset", "folder")(**options)


def test_boxes_masks_and_patients_are_read_and_mask_folders_are_not_classes(tmp_path):
    root = _films(tmp_path / "films")
    with (root / "boxes.csv").open("a") as f:
        f.write("finding/missing.png,Mass,1,1,2,2\nfinding/f0.png,Mass,abc,1,2,2\nfinding/f1.png,Mass,1,1,0,5\n")
    scan = _folder(path=str(root), boxes="boxes.csv", lung_masks="masks/lung",
                   patients="findings.csv:patient").scan()
    assert scan.classes == ["finding", "normal"]  # masks/ is not a class
    by_id = {r.id: r for r in scan.records}
    assert by_id["finding/f0.png"].boxes == (BOX,)
    assert by_id["normal/n0.png"].boxes is None
    assert by_id["finding/f2.png"].patient == "P1-finding"
    assert all(r.lung_mask is not None and r.lung_mask.name == Path(r.id).name for r in scan.records)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in scan.skipped}
    assert "boxes of 1 file(s) not in the dataset" in reasons["boxes.csv"]
    assert reasons["boxes.csv:7"] == "box row with a value that is not a number"
    assert "width/height <= 0" in reasons["boxes.csv:8"]
    assert "findings.csv" not in reasons  # annotation files are not stray files


@pytest.mark.parametrize("resize", ["pad", "crop", "stretch"])
def test_a_box_becomes_the_same_lesion_mask_as_a_mask_file_of_it_under_every_resize_policy(tmp_path, resize):
    root = _films(tmp_path / "films")
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    x, y, w, h = (int(v) for v in BOX)
    mask[y:y + h, x:x + w] = 255
    (root / "masks" / "lesion").mkdir()
    Image.fromarray(mask, "L").save(root / "masks" / "lesion" / "f0.png")
    from_boxes = {r.id: r for r in _folder(path=str(root), boxes="boxes.csv").scan().records}["finding/f0.png"]
    from_masks = {r.id: r for r in _folder(path=str(root), lesion_masks="masks/lesion").scan().records}["finding/f0.png"]
    a, b = decode(from_boxes, 32, resize=resize), decode(from_masks, 32, resize=resize)
    assert a.lesion.shape == (32, 32) and a.lesion.any()
    np.testing.assert_array_equal(a.lesion, b.lesion)
    np.testing.assert_array_equal(a.image, b.image)


def test_boxes_drawn_on_larger_originals_are_scaled_and_a_box_off_the_image_skips_the_file(tmp_path):
    root = _films(tmp_path / "films")
    big = root / "boxes-1024.csv"
    big.write_text("file,finding,x,y,w,h\n" + "".join(
        f"finding/f{i}.png,Mass,{BOX[0] * 4},{BOX[1] * 4},{BOX[2] * 4},{BOX[3] * 4}\n" for i in range(4)))
    scaled = {r.id: r for r in _folder(path=str(root), boxes=str(big), box_scale=0.25).scan().records}
    assert scaled["finding/f0.png"].boxes == (BOX,)
    unscaled = _folder(path=str(root), boxes=str(big)).scan()
    inventory = take_inventory(unscaled)
    reasons = [s.reason for s in inventory.skipped if "finding/f" in s.path]
    assert len(reasons) == 4 and all("no pixel inside the 64 x 48 image" in r and "box_scale" in r for r in reasons)
    assert len(inventory.records) == 4  # the normal films stay


def test_bad_annotation_options_are_refused_with_the_option_named(tmp_path):
    root = _films(tmp_path / "films")
    with pytest.raises(ValueError, match="not both"):
        _folder(path=str(root), boxes="boxes.csv", lesion_masks="masks/lung")
    with pytest.raises(ValueError, match="box_scale"):
        _folder(path=str(root), box_scale=0.0)
    with pytest.raises(ValueError, match="FILE.csv:COLUMN"):
        _folder(path=str(root), patients="findings.csv")
    from xaicxr.errors import DataError
    with pytest.raises(DataError, match="no column 'subject'"):
        _folder(path=str(root), patients="findings.csv:subject").scan()
    with pytest.raises(DataError, match="boxes file .* does not exist"):
        _folder(path=str(root), boxes="nope.csv").scan()
    (root / "bad.csv").write_text("file,x,y\nfinding/f0.png,1,2\n")
    with pytest.raises(DataError, match="lacks the column"):
        _folder(path=str(root), boxes="bad.csv").scan()


def test_the_image_cache_is_remade_when_the_boxes_change(tmp_path):
    root = _films(tmp_path / "films")
    records = _folder(path=str(root), boxes="boxes.csv").scan().records
    split = {"train": [r.id for r in records], "val": [], "test": []}
    cache, _ = build_image_cache(tmp_path / "cache.h5", split, records, ["finding", "normal"], 32)
    first = cache.read(cache.rows("all"))
    assert first["has_lesion"].sum() == 4 and first["lesion"][first["has_lesion"]].any(axis=(1, 2)).all()
    (root / "boxes.csv").write_text("file,finding,x,y,w,h\nfinding/f0.png,Mass,0,0,8,8\n")
    moved = _folder(path=str(root), boxes="boxes.csv").scan().records
    cache, _ = build_image_cache(tmp_path / "cache.h5", split, moved, ["finding", "normal"], 32)
    second = cache.read(cache.rows("all"))
    assert second["has_lesion"].sum() == 1
    assert not np.array_equal(first["lesion"][0], second["lesion"][0])


def test_iou_at_a_threshold_and_the_iobb_of_a_map_against_a_box():
    truth = np.zeros((1, 20, 20), bool)
    truth[0, 5:15, 5:15] = True
    inside = np.zeros((1, 20, 20), np.float32)
    inside[0, 8:12, 8:12] = 1.0            # a small peak inside the box: IoBB 1, IoU 16/100
    spread = np.zeros((1, 20, 20), np.float32)
    spread[0, 0:20, 5:15] = 1.0            # twice the box's height: IoBB 0.5, IoU 0.5
    assert iobb(inside, truth)[0] == 1.0 and iou_at(inside, truth, 0.5)[0] == pytest.approx(0.16)
    assert iobb(spread, truth)[0] == 0.5 and iou_at(spread, truth, 0.5)[0] == pytest.approx(0.5)
    assert iobb(np.zeros((1, 20, 20)), truth)[0] == 0.0
    offset = spread + 0.6                  # a CAM's ReLU keeps an offset: min-max first, as CheXlocalize does
    assert iou_at(offset, truth, 0.5)[0] == pytest.approx(0.5) and iobb(offset, truth)[0] == 0.5
    targets = Targets(np.repeat(truth, 2, 0), None, 0.0)
    figures = class_figures(targets.scores(np.concatenate([inside, spread])), targets)
    assert figures["iobb_hit_50"]["value"] == 1.0 and figures["iobb_hit_50"]["n"] == 2
    assert figures["iou_50"]["value"] == pytest.approx(0.33)


def test_random_regions_keep_shape_and_area_match_the_lung_share_and_lie_off_the_region():
    lung = np.zeros((40, 40), bool)
    lung[15:38, 10:35] = True
    in_lung = np.zeros((40, 40), bool)
    in_lung[20:25, 15:22] = True
    outside = np.zeros((40, 40), bool)
    outside[2:7, 2:9] = True             # a "heart box" beside the lungs: compared with what else lies outside
    for region, share in ((in_lung, 1.0), (outside, 0.0)):
        placed = random_regions(region, lung, 6, np.random.default_rng(0))
        assert len(placed) == 6
        for shifted in placed:
            assert shifted.sum() == region.sum() and (shifted & region).sum() <= 0.25 * region.sum()
            assert abs((shifted & lung).sum() / region.sum() - share) <= 0.2
    assert len(random_regions(in_lung, np.zeros_like(lung), 6, np.random.default_rng(0))) == 0


def test_the_two_level_interval_carries_placement_variance():
    region = np.full(30, 0.5)
    steady = np.full((30, 8), 0.1)
    noisy = np.random.default_rng(1).normal(0.1, 0.3, (30, 8))
    a, b = paired_two_level(region, steady), paired_two_level(region, noisy)
    assert a["value"] == pytest.approx(0.4) and a["ci95"][1] - a["ci95"][0] < 1e-9
    assert b["ci95"][1] - b["ci95"][0] > 0.05


class _Spot:
    """A stand-in classifier: the class-1 probability is the brightness of a fixed spot."""

    def __init__(self, y: slice, x: slice) -> None:
        self.y, self.x = y, x

    def __call__(self, images: np.ndarray) -> np.ndarray:
        p = np.clip(images[:, self.y, self.x].mean(axis=(1, 2)), 0, 1)
        return np.stack([1 - p, p], axis=1)


def test_region_reliance_tells_a_model_reading_the_region_from_one_reading_elsewhere():
    n, size = 12, 32
    rng = np.random.default_rng(0)
    images = (rng.random((n, size, size)) * 0.2).astype(np.float32)
    images[:, 10:16, 10:16] = 0.95
    region = np.zeros((n, size, size), bool)
    region[:, 10:16, 10:16] = True
    lung = np.zeros((n, size, size), bool)
    lung[:, 4:28, 4:28] = True
    fills = {"blur": get("fill", "blur")(sigma=30.0)}  # 4.3 px at 32 px
    on_region = region_reliance(_Spot(slice(10, 16), slice(10, 16)), images, region, lung, 1, fills,
                                regions=6, margin=0.02)
    elsewhere = region_reliance(_Spot(slice(0, 3), slice(0, 3)), images, region, lung, 1, fills,
                                regions=6, margin=0.02)
    assert on_region["relies_on_region"] is True and on_region["n"] == n
    few = region_reliance(_Spot(slice(10, 16), slice(10, 16)), images[:4], region[:4], lung[:4], 1, fills,
                          regions=6, margin=0.02)
    assert few["relies_on_region"] is None and "fewer than 10" in few["note"]  # 4 images decide nothing
    assert on_region["fills"]["blur"]["difference"]["ci95"][0] > 0.3
    assert elsewhere["relies_on_region"] is False
    assert abs(elsewhere["fills"]["blur"]["difference"]["value"]) < 0.02


def test_a_run_on_annotated_real_style_films_measures_region_reliance_and_box_localisation(tmp_path):
    root = _films(tmp_path / "films", n=8)
    config = tmp_path / "films.toml"
    config.write_text(tiny_config(
        dataset={"name": "folder", "path": str(root), "boxes": "boxes.csv", "lung_masks": "masks/lung",
                 "patients": "findings.csv:patient", "n_per_class": None, "size": None, "seed": None,
                 "difficulty": None},
        split={"test": 0.5, "val": 0.25},
        quality={"metrics": ["region-reliance", "localisation"], "region_images": 4, "random_regions": 3,
                 "region_min_images": 2,
                 "region_fills": ["blur"]},
        probe={"enabled": False}))
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    finding = metrics["region_reliance"]["finding"]
    assert finding["has_region"] and finding["n"] >= 2 and "difference" in finding["fills"]["blur"]
    assert isinstance(finding["relies_on_region"], bool)
    assert metrics["region_reliance"]["normal"]["relies_on_region"] is None
    local = metrics["per_image"]["gradcam"]["finding"]
    assert {"iou_50", "iobb_hit_25", "pointing_game"} <= set(local)
    assert metrics["per_image"]["gradcam"]["finding"]["lung_source"] == "mask"
    prior = metrics["baselines"]["finding"]["class_prior"]
    assert prior["pointing_game"]["value"] > 0.5  # every box sits in the same place: the prior is hard to beat
    dataset = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert dataset["summary"]["masks"] == {"lesion": 8, "lung": 16, "boxes": 8}
    report = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "Does the model rely on the annotated region?" in report
    assert "Without a lesion annotation only the lung energy is measured: normal 0." in report  # no row of dashes


def test_odd_annotation_files_are_clear_errors_not_tracebacks_or_guesses(tmp_path):
    from xaicxr.errors import DataError

    root = _films(tmp_path / "films")
    (root / "boxes.csv").write_text("file,finding,x,y,w,h\nfinding/f0.png,Mass,1,1,2,2,extra\n")
    with pytest.raises(DataError, match="line 2 has more fields than its header"):
        _folder(path=str(root), boxes="boxes.csv").scan()
    (root / "boxes.csv").write_text("file,finding,x,y,w,h\n./finding/f0.png,Mass,1,1,2,2\n")
    assert {r.id: r for r in _folder(path=str(root), boxes="boxes.csv").scan().records}["finding/f0.png"].boxes
    (root / "normal" / "f0.png").write_bytes((root / "finding" / "f0.png").read_bytes())
    (root / "boxes.csv").write_text("file,finding,x,y,w,h\nf0.png,Mass,1,1,2,2\n")  # which f0.png?
    with pytest.raises(DataError, match="names 'f0.png' without its folder, and 2 images"):
        _folder(path=str(root), boxes="boxes.csv").scan()


def test_a_mask_of_another_shape_is_refused_and_an_unannotated_external_set_is_read(tmp_path):
    root = _films(tmp_path / "films")
    Image.fromarray(np.zeros((HEIGHT, HEIGHT), np.uint8), "L").save(root / "masks" / "lung" / "f0.png")
    record = {r.id: r for r in _folder(path=str(root), lung_masks="masks/lung").scan().records}["finding/f0.png"]
    assert "not the image's 64 x 48" in decode(record, 32).error
    other = tmp_path / "other"
    for label in ("finding", "normal"):
        (other / label).mkdir(parents=True)
        Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8), "L").save(other / label / "x.png")
    external = _folder(path=str(root), boxes="boxes.csv", lung_masks="masks/lung",
                       patients="findings.csv:patient").external(str(other)).scan()
    assert len(external.records) == 2 and all(r.boxes is None and r.lung_mask is None for r in external.records)
