"""The example third-party package ``examples/xaicxr-extras``: installed for real with pip into a
temporary directory, discovered through its entry points by the CLI in a subprocess, and run
end to end (its DenseNet121 backbone with the built-in explainers, Eigen-CAM among them: it
lived in this package before it was built in; its own tests are in test_cam_methods.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXTRAS = Path(__file__).resolve().parents[1] / "examples" / "xaicxr-extras"

TINY = """
[dataset]
name = "phantom"
n_per_class = 8
size = 32
[backbone]
name = "chexnet"
weights = "none"
input_size = 64
freeze_until = "relu"
[train]
epochs = 1
batch_size = 16
[[explain]]
name = "eigencam"
[[explain]]
name = "gradcam"
[[aggregate]]
name = "mean"
[quality]
metrics = ["localisation"]
[probe]
enabled = false
"""
# input_size 64, not 32: DenseNet121 downsamples 32x, so at 32 px the target layer ``relu`` is
# 1x1 and every map is constant (degenerate). freeze_until = "relu" trains only the head on
# cached features: a full DenseNet121 train step takes about a minute to trace on 2 cores.
# The quality metrics that pass images through the model (faithfulness, the randomisation
# cascade: about 120 steps on DenseNet121, reliance, region reliance) are covered with VGG19 and
# nested models elsewhere and left out here for time (nothing here reads their figures); so is
# the shortcut probe (it reads the images' file and pixel statistics, never the backbone:
# test_probe.py).


def _load(name: str):
    """A module of the package by path, without installing it into this process."""
    spec = importlib.util.spec_from_file_location(f"_extras_{name}", EXTRAS / "xaicxr_extras" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """pip-install the package (a copy, so the build leaves nothing in examples/) into a target dir."""
    root = tmp_path_factory.mktemp("extras")
    source = root / "src"
    shutil.copytree(EXTRAS, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--disable-pip-version-check", "-q", "--target", str(target),
                           str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(target.glob("xaicxr_extras-0.1.0.dist-info"))
    return target


def _cli(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "xaicxr.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_installed_package_is_discovered_through_entry_points(site, tmp_path):
    done = _cli(site, "plugins", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    ours = {(p["kind"], p["name"]): p for p in listing["plugins"] if p.get("distribution") == "xaicxr-extras"}
    assert set(ours) == {("backbone", "chexnet"), ("metric", "border-energy")}
    eigencam = [p for p in listing["plugins"] if (p["kind"], p["name"]) == ("explainer", "eigencam")]
    assert [p["module"] for p in eigencam] == ["xaicxr_builtins.explainers"], "built in, once"
    assert all(p["version"] == "0.1.0" and p["module"] == "xaicxr_extras" for p in ours.values())
    assert not [f for f in listing["failed"] if f["distribution"] == "xaicxr-extras"]


@pytest.mark.slow
def test_a_run_with_densenet121_explained_by_eigencam_and_gradcam(site, tmp_path, monkeypatch, fresh_plugins):
    """The third party's backbone through a whole run, found by its entry point once the installed
    package is on the path (here in this process, for the time of a TensorFlow import; a fresh
    process finds it too: the test above). A study of variants sharing a model is tested with
    VGG19 in test_study.py."""
    from typer.testing import CliRunner

    from xaicxr.cli import app

    monkeypatch.syspath_prepend(str(site))
    fresh_plugins.reset()
    config = tmp_path / "run.toml"
    config.write_text(TINY)
    out = tmp_path / "run"
    done = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--json"])
    assert done.exit_code == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["stages_run"] == ["dataset", "split", "train", "evaluate", "explain", "templates", "quality",
                                     "probe", "report"]
    assert json.loads((out / "train.json").read_text())["backbone"]["name"] == "chexnet"
    for name in ("eigencam", "gradcam"):
        for path in (f"heatmaps/{name}.h5", f"templates/{name}-mean.h5"):
            assert (out / path).is_file(), path
    assert (out / "report" / "index.html").is_file()
    import h5py

    with h5py.File(out / "heatmaps" / "eigencam.h5") as f:
        maps = f["heatmaps"][:]
        assert f.attrs["layer"] == "relu" and f.attrs["explainer"] == "eigencam"
    assert maps.shape[1:] == (64, 64) and 0.0 <= maps.min() and maps.max() <= 1.0 and maps.max() > 0


def test_densenet121_missing_imagenet_weights_names_file_cache_and_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    from xaicxr.errors import WeightsNotFoundError

    densenet = _load("densenet")
    with pytest.raises(WeightsNotFoundError) as err:
        densenet.DenseNet121Backbone(weights="imagenet").build(["a", "b"])
    message = str(err.value)
    assert "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras" / "models") in message and "weights = " in message
