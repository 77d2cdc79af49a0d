"""The shortcut probe: it finds a planted non-disease cue, finds nothing where there is none,
and runs from a configuration file or a run directory through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from xaicxr.analysis.probe import bit_depth, pixel_features, probe
from xaicxr.cli import app
from xaicxr.config import dump_config, load_config
from xaicxr.rundir import RunDir
from xaicxr.stages import Run, dataset

runner = CliRunner()


def _noise_image(path: Path, rng: np.random.Generator, size: tuple[int, int], mode: str = "L") -> None:
    """A radiograph-like noise image: the same intensity distribution whatever the class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(rng.normal(120, 30, (size[1], size[0])), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


def _folder_set(root: Path, wider_class: str | None, n: int = 24, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for label in ("a", "b"):
        for i in range(n):
            width = 48 if label == wider_class else 32
            _noise_image(root / label / f"{label}{i:02d}.png", rng, (width, 32))


def _config(tmp_path: Path, data: Path) -> Path:
    config = tmp_path / "probe.toml"
    config.write_text(f'[dataset]\nname = "folder"\npath = "{data}"\n\n[binary]\nb-vs-a = {{ positive = ["b"] }}\n'
                      "\n[probe]\nfolds = 4\n")
    return config


def test_probe_cli_finds_a_planted_width_cue(tmp_path):
    _folder_set(tmp_path / "data", wider_class="b")
    result = runner.invoke(app, ["data", "probe", str(_config(tmp_path, tmp_path / "data")), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_images"] == 48 and report["targets"]["class:b"]["folds"] == 4
    assert set(report["targets"]) == {"class:a", "class:b", "binary:b-vs-a"}
    width = report["targets"]["binary:b-vs-a"]["features"]["width"]
    assert width["value"] == 1.0 and width["ci95"][0] >= 0.8
    flagged = {(f["target"], f["feature"]) for f in report["flagged"]}
    assert {("class:b", "width"), ("class:b", "aspect"), ("binary:b-vs-a", "width")} <= flagged
    assert ("class:b", "mean") not in flagged


def test_probe_finds_nothing_on_a_balanced_set(tmp_path):
    rng = np.random.default_rng(3)
    n = 120
    labels = np.repeat(["normal", "covid"], n // 2)
    features = [{"width": 32, "height": 32, "aspect": 1.0, "format": "PNG", "mode": "L", "bit_depth": 8,
                 **pixel_features(rng.random((32, 32)) * 0.2 + rng.random() * 0.5)} for _ in range(n)]
    patients = [f"p{i // 2}" for i in range(n)]
    result = probe(features, labels, patients, ["normal", "covid"], {"covid-vs-rest": {"positive": ["covid"]}},
                   folds=5, n_boot=200)
    assert result["flagged"] == [] and result["grouped"]
    target = result["targets"]["binary:covid-vs-rest"]
    for estimate in (*target["features"].values(), *target["all"].values()):
        lo, hi = estimate["ci95"]
        assert estimate["value"] < 0.8 and lo < 0.5 + 0.15
    assert abs(target["all"]["logistic"]["value"] - 0.5) < 0.15
    # a task and its complement are fitted once and score alike
    assert result["targets"]["class:normal"]["all"] == result["targets"]["class:covid"]["all"]
    # padding that only the model's input shows (a resize policy's bars) is found there
    for f, label in zip(features, labels):
        f.update({f"input_{k}": v for k, v in pixel_features(rng.random((16, 16))).items()})
        f["input_border"] = 0.25 if label == "covid" else 0.0
    padded = probe(features, labels, patients, ["normal", "covid"], {}, folds=5, n_boot=200)
    assert padded["targets"]["class:covid"]["input"]["logistic"]["value"] == 1.0
    assert ("class:covid", "input (forest)") in {(f["target"], f["feature"]) for f in padded["flagged"]}


def test_probe_from_a_run_directory_reuses_the_dataset_stage_decode(tmp_path):
    _folder_set(tmp_path / "data", wider_class="a", n=16)
    out = tmp_path / "run"
    cfg = load_config(_config(tmp_path, tmp_path / "data"))
    out.mkdir()
    (out / "config.toml").write_text(dump_config(cfg))
    dataset.run(Run(RunDir(out), cfg))  # the dataset stage alone: no model needed
    stored = json.loads((out / "dataset.json").read_text())["image_features"]
    assert len(stored) == 32 and stored["a/a00.png"]["width"] == 48 and stored["a/a00.png"]["mode"] == "L"
    result = runner.invoke(app, ["data", "probe", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert ("class:a", "width") in {(f["target"], f["feature"]) for f in report["flagged"]}
    missing = runner.invoke(app, ["data", "probe", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_pixel_features_see_padding_and_corner_marks():
    image = np.full((64, 64), 0.4, np.float32)
    image += np.random.default_rng(0).random((64, 64)).astype(np.float32) * 0.2
    plain = pixel_features(image)
    assert plain["border"] == 0.0 and plain["corner_bright"] == 0.0
    padded = np.zeros((64, 96), np.float32)
    padded[:, 16:80] = image
    assert pixel_features(padded)["border"] == 1 - 64 / 96
    marked = image.copy()
    marked[2:6, 2:7] = 1.0  # a burnt-in letter in the top-left corner
    assert pixel_features(marked)["corner_bright"] == 20 / 64
    assert (bit_depth("L"), bit_depth("I;16B"), bit_depth("MONOCHROME2/12"), bit_depth("RGB")) == (8, 16, 12, 8)
