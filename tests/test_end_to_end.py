"""The whole pipeline on a tiny phantom configuration: contract files, report, resume, detect."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
import tomli_w
from PIL import Image
from typer.testing import CliRunner

from badinput import write_dicom
from conftest import SHARED_DATA
from shared_runs import FULL, copy_run
from xaicxr.cli import app

runner = CliRunner()
pytestmark = pytest.mark.xdist_group("full")  # one worker builds the FULL run the others would wait for



class _Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


@pytest.fixture
def finished_run(shared_runs):
    """The session's finished FULL run (read it; tests that change it work on a copy)."""
    out = shared_runs.run(FULL)
    return out.parent, shared_runs.config(out), out, shared_runs.summary(out)


def test_run_writes_every_contract_file(finished_run):
    _, _, out, summary = finished_run
    assert summary["stages_run"] == ["dataset", "split", "train", "evaluate", "explain", "templates", "quality",
                                     "probe", "report"]
    metrics = json.loads((out / "metrics.json").read_text())
    lo, hi = metrics["accuracy_ci95"]
    assert 0.0 <= lo <= metrics["accuracy"] <= hi <= 1.0 and hi - lo > 0.05  # Wilson, n_test small
    assert "95 % Wilson" in (out / "report" / "index.html").read_text()
    probe = metrics["probe"]
    assert probe == json.loads((out / "probe.json").read_text())
    assert {"class:covid", "binary:covid-vs-rest"} <= set(probe["targets"]) and probe["grouped"]
    assert {"width", "mode", "border", "input_border", "input_corner_std"} <= set(probe["features"])
    classes = {"normal", "bacteria", "virus", "covid"}
    lesion_classes = classes - {"normal"}

    def is_estimate(e):
        return {"value", "ci95", "n"} <= set(e) and len(e["ci95"]) == 2

    per_image = metrics["per_image"]["layercam"]
    assert set(per_image) == classes
    for cls in lesion_classes:
        q = per_image[cls]
        for key in ("pointing_game", "pointing_game_tolerance", "lesion_energy", "energy_lift",
                    "energy_lift_lungs", "miou", "lung_energy", "consistency"):
            assert is_estimate(q[key]), key
        assert q["split_half"]["partition_spread"] and q["skill"]["pointing_game"]["baseline"] in (
            "uniform", "lungs", "lungs_blurred", "class_prior", "random")
    assert "pointing_game" not in per_image["normal"]
    from xaicxr.io.heatmap_store import HeatmapStore

    with HeatmapStore(out / "heatmaps" / "layercam.h5") as store:
        for k, cls in enumerate(metrics["classes"]):
            own = store.labels == k
            assert per_image[cls]["n_other_target"] == 0 and per_image[cls]["n"] == own.sum()
            assert per_image[cls]["n_degenerate"] == store.degenerate[own].sum(), "the store's flags, counted"
    assert per_image["virus"]["split_half"]["interval"].startswith("grouped jackknife")
    assert set(metrics["baselines"]["virus"]) == {"uniform", "lungs", "lungs_blurred", "class_prior", "random"}
    mean_t, median_t = metrics["templates"]["gradcam-mean"], metrics["templates"]["gradcam-median"]
    assert mean_t != median_t, "each aggregator's template gets its own numbers"
    assert is_estimate(mean_t["virus"]["as_fixed_map"]["pointing_game"])
    assert is_estimate(mean_t["virus"]["faithfulness"]["difference"])
    for fill in ("road", "blur"):
        assert is_estimate(metrics["faithfulness"]["gradcam"]["covid"][fill]["deletion_auc"])
        assert is_estimate(metrics["faithfulness"]["gradcam"]["covid"][fill]["insertion_auc_skill"])
    cascade = metrics["randomisation"]["gradcam"]
    assert [s["name"] for s in cascade["cascade"]][:2] == ["logits", "fc1"] and len(cascade["cascade"]) == 18
    assert is_estimate(cascade["reference"]["spearman"]) and is_estimate(cascade["random_logit"]["ssim"])
    assert cascade["draws"] == 2 and is_estimate(cascade["pass_rule"]["difference"])
    assert is_estimate(cascade["random_logit"]["difference_from_reference"])
    assert set(metrics["sanity"]) == {"gradcam", "layercam"}
    assert isinstance(metrics["sanity"]["gradcam"]["passes"], bool)
    assert isinstance(metrics["sanity"]["gradcam"]["random_logit_passes"], bool)
    reliance = metrics["reliance"]
    assert set(reliance) == classes and not reliance["normal"]["has_lesion"]
    assert is_estimate(reliance["covid"]["probability_drop"])
    assert reliance["covid"]["split"] == "test", "the twins of the explained split, no other"
    region = metrics["region_reliance"]
    assert region["normal"]["relies_on_region"] is None and not region["normal"]["has_region"]
    assert region["covid"]["has_region"] and region["covid"]["random_regions"] == 2
    assert is_estimate(region["covid"]["fills"]["road"]["difference"])
    assert {"iou_50", "iobb_hit_25"} <= set(metrics["per_image"]["gradcam"]["covid"])
    with h5py.File(out / "quality.h5") as h5:
        assert "scores/gradcam/virus/pointing" in h5 and "curves/gradcam/virus/road/deletion" in h5
    checker = SHARED_DATA.parent / "tools" / "check_run.py"
    if checker.exists():
        check = subprocess.run([sys.executable, str(checker), str(out)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout


def test_report_parses_and_every_picture_exists(finished_run):
    _, _, out, _ = finished_run
    parser = _Sources()
    parser.feed((out / "report" / "index.html").read_text())
    assert len(parser.sources) >= 6
    for src in parser.sources:
        assert (out / "report" / src).is_file(), src


def test_rerun_skips_and_a_changed_table_reruns_from_its_stage(finished_run, tmp_path):
    _, config, original, _ = finished_run
    out = copy_run(original, tmp_path / "run")
    again = runner.invoke(app, ["run", str(config), "--out", str(out), "--json"])
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["stages_run"] == []
    changed = tmp_path / "changed.toml"
    cfg = tomllib.loads(FULL)
    cfg["quality"] = {"metrics": ["localisation"]}
    changed.write_text(tomli_w.dumps(cfg))
    third = runner.invoke(app, ["run", str(changed), "--out", str(out), "--json"])
    assert third.exit_code == 0, third.stderr
    assert json.loads(third.stdout)["stages_run"] == ["quality", "probe", "report"]


def test_detect_on_png_rgba_16bit_and_dicom(finished_run, tmp_path):
    _, _, out, _ = finished_run
    source = sorted((out / "data" / "phantom" / "images" / "covid").glob("*.png"))[0]
    gray = np.asarray(Image.open(source))
    paths = [source]
    rgba = tmp_path / "wide.png"
    Image.fromarray(np.stack([gray] * 3 + [np.full_like(gray, 200)], axis=-1)).resize((90, 48)).save(rgba)
    sixteen = tmp_path / "deep.png"
    Image.fromarray(gray.astype(np.uint16) * 257).save(sixteen)
    dicom = write_dicom(tmp_path / "chest.dcm", (gray.astype(np.uint16) * 16), photometric="MONOCHROME1")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    paths += [rgba, sixteen, dicom, broken]
    result = runner.invoke(app, ["detect", str(out), *map(str, paths), "--explainer", "layercam",
                                 "--out", str(tmp_path / "overlays"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["resize"] == "pad"
    results = json.loads(result.stdout)["results"]
    assert "error" in results[-1] and "not an image" in results[-1]["error"]
    for r in results[:-1]:
        assert set(r["probabilities"]) == {"normal", "bacteria", "virus", "covid"}
        assert r["best_template"] in r["template_match"]
        assert Path(r["overlay"]).is_file()
        assert set(r["binary"]) == {"covid-vs-rest", "abnormal-vs-normal"}
    assert results[3]["format"] == "DICOM" and results[1]["mode"] == "RGBA" and results[2]["mode"].startswith("I")


def test_detect_resizes_as_the_model_was_trained_not_as_the_config_says_now(finished_run, tmp_path):
    import shutil

    _, _, out, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("cache", "data", "report"))
    config = (copy / "config.toml").read_text()
    (copy / "config.toml").write_text(config.replace('resize = "pad"', 'resize = "crop"'))
    image = tmp_path / "wide.png"
    Image.fromarray((np.random.default_rng(0).random((40, 80)) * 255).astype(np.uint8)).save(image)
    result = runner.invoke(app, ["detect", str(copy), str(image), "--json"])
    assert result.exit_code == 0, result.stderr
    assert 'resize = "crop"' in (copy / "config.toml").read_text()
    assert json.loads(result.stdout)["resize"] == "pad"


def test_sharded_explain_merges_into_the_unsharded_store(finished_run, tmp_path):
    from xaicxr.io.heatmap_store import HeatmapStore, merge_stores
    from xaicxr.rundir import RunDir

    out = copy_run(finished_run[2], tmp_path / "run")
    for k in (0, 1):
        result = runner.invoke(app, ["explain", str(out), "--explainer", "gradcam", "--layer", "block4_conv4",
                                     "--shard", f"{k}/2", "--json"])
        assert result.exit_code == 0, result.stderr
    parts = RunDir(out).heatmap_shards("gradcam")
    assert [p.name for p in parts] == ["gradcam.shard-0-of-2.h5", "gradcam.shard-1-of-2.h5"]
    merged = merge_stores(parts, tmp_path / "merged.h5")
    with HeatmapStore(out / "heatmaps" / "gradcam.h5") as whole, HeatmapStore(merged) as joined:
        assert joined.ids == whole.ids
        for column in ("labels", "predictions", "targets", "probs", "degenerate"):
            np.testing.assert_array_equal(getattr(joined, column), getattr(whole, column))
        np.testing.assert_allclose(joined.read(), whole.read(), atol=2e-3)
    with h5py.File(merged) as a, h5py.File(out / "heatmaps" / "gradcam.h5") as b:
        assert dict(a.attrs) == dict(b.attrs)
        assert a["heatmaps"].chunks == b["heatmaps"].chunks and a["heatmaps"].compression == b["heatmaps"].compression
    bad = runner.invoke(app, ["explain", str(out), "--explainer", "gradcam", "--shard", "2/2"])
    assert bad.exit_code == 2 and "K/N" in bad.stderr


def test_sharded_templates_merge_to_the_unsharded_ones(finished_run, tmp_path):
    from xaicxr.io.template_store import read_template_file

    out = copy_run(finished_run[2], tmp_path / "run")
    before = {agg: read_template_file(out / "templates" / f"gradcam-{agg}.h5") for agg in ("mean", "median")}
    for k in range(3):
        result = runner.invoke(app, ["template", str(out), "--shard", f"{k}/3", "--json"])
        assert result.exit_code == 0, result.stderr
    merged = runner.invoke(app, ["template", str(out), "--merge-shards", "--json"])
    assert merged.exit_code == 0, merged.stderr
    for agg, templates in before.items():
        after = read_template_file(out / "templates" / f"gradcam-{agg}.h5")
        for cls, (template, attrs) in templates.items():
            np.testing.assert_array_equal(after[cls][0], template)
            assert after[cls][1]["n"] == attrs["n"]


def test_quality_scores_only_maps_of_the_images_own_class(finished_run, tmp_path):
    """With targets = "predicted", a misclassified image's map explains another class: it is
    left out of the localisation figures and counted, not scored against the wrong lesion."""
    copy = copy_run(finished_run[2], tmp_path / "run")
    config = tomllib.loads((copy / "config.toml").read_text())
    config["quality"] = {"metrics": ["localisation"]}  # the figures this reads; the others re-run the model
    (copy / "config.toml").write_text(tomli_w.dumps(config))
    explained = runner.invoke(app, ["explain", str(copy), "--explainer", "gradcam", "--layer", "block4_conv4",
                                    "--targets", "predicted", "--overwrite", "--json"])
    assert explained.exit_code == 0, explained.stderr
    quality = runner.invoke(app, ["quality", str(copy), "--json"])
    assert quality.exit_code == 0, quality.stderr
    metrics = json.loads((copy / "metrics.json").read_text())
    with h5py.File(copy / "heatmaps" / "gradcam.h5") as h5:
        labels, targets = h5["labels"][()], h5["targets"][()]
    for k, cls in enumerate(metrics["classes"]):
        figures = metrics["per_image"]["gradcam"][cls]
        assert figures["n_other_target"] == int(((labels == k) & (targets != k)).sum())
        assert figures["n"] == int(((labels == k) & (targets == k)).sum())


def test_binary_target_has_side_templates_detect_overlays_and_a_stated_quality_skip(finished_run, tmp_path):
    """``target = "binary:covid-vs-rest"``: its own store (one map per image, the task's score),
    templates of the classes and of the task's two sides, detect's overlay under the task, and
    no quality figures but the reason."""
    from xaicxr.io.heatmap_store import HeatmapStore
    from xaicxr.io.template_store import read_template_file

    _, _, out, summary = finished_run
    store = "gradcam.binary-covid-vs-rest"
    assert summary["explain"][store] == f"heatmaps/{store}.h5"
    metrics = json.loads((out / "metrics.json").read_text())
    task = metrics["binary"]["covid-vs-rest"]
    with HeatmapStore(out / "heatmaps" / f"{store}.h5") as binary, HeatmapStore(out / "heatmaps" / "gradcam.h5") as logit:
        assert (binary.target, binary.target_positive, binary.target_threshold) == (
            "binary:covid-vs-rest", ["covid"], task["threshold"])
        assert logit.target == "logit" and not logit.is_binary
        assert binary.ids == logit.ids and not np.allclose(binary.read(), logit.read())
        covid = binary.labels == metrics["classes"].index("covid")
    templates = read_template_file(out / "templates" / f"{store}-mean.h5")
    assert set(metrics["classes"]) | {"covid-vs-rest:positive", "covid-vs-rest:negative"} == set(templates)
    positive, negative = templates["covid-vs-rest:positive"][1], templates["covid-vs-rest:negative"][1]
    assert (positive["n"], negative["n"]) == (covid.sum(), (~covid).sum())
    assert json.loads(positive["classes"]) == ["covid"] and "covid" not in json.loads(negative["classes"])
    assert store not in metrics["per_image"] and "binary task" in metrics["quality_skipped"][store]["reason"]
    report = (out / "report" / "index.html").read_text()
    assert f"templates-{store}-mean.png" in report and "binary:covid-vs-rest" in report
    image = sorted((out / "data" / "phantom" / "images" / "covid").glob("*.png"))[0]
    result = runner.invoke(app, ["detect", str(out), str(image), "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)["results"][0]
    assert found["explainer"] == "gradcam" and Path(found["overlay"]).name == f"{image.stem}-gradcam.png"
    explained = found["binary"]["covid-vs-rest"]["explained"][store]
    assert set(explained["template_match"]) == {"covid-vs-rest:positive", "covid-vs-rest:negative"}
    assert Path(explained["overlay"]).is_file() and "explained" not in found["binary"]["abnormal-vs-normal"]
    chosen = runner.invoke(app, ["detect", str(out), str(image), "--explainer", store,
                                 "--out", str(tmp_path / "chosen"), "--json"])
    assert chosen.exit_code == 0, chosen.stderr
    main = json.loads(chosen.stdout)["results"][0]  # the chosen store's own target is explained
    side = main["binary"]["covid-vs-rest"]["explained"][store]["template_match"]["covid-vs-rest:positive"]
    assert main["template_match"]["covid-vs-rest:positive"]["pearson"] == pytest.approx(side["pearson"], abs=1e-5)
