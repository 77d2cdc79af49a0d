"""The Python API for notebooks: docs/api.md run block by block, the importable explainers, and
``load_images`` / ``load_masks`` against the pipeline's own decoding."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badinput import write_dicom

REPO = Path(__file__).resolve().parents[1]


def test_the_walk_through_in_docs_api_runs_as_written(tmp_path, monkeypatch):
    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 7
    assert "import torch" not in "".join(blocks)  # the PyTorch path runs on numpy stand-ins here
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    maps, labels = namespace["maps"], namespace["labels"]
    assert maps.shape == (120, 48, 48) and maps.dtype == np.float32 and 0 <= maps.min() and maps.max() <= 1
    accuracy = (namespace["model"].predict(namespace["x"], verbose=0).argmax(axis=1) == labels).mean()
    assert accuracy > 0.8, accuracy  # the walk-through explains a model that learnt something
    assert namespace["degenerate"].mean() < 0.25
    assert namespace["every_class"].shape == (4, 4, 48, 48) and namespace["rise"].shape == (4, 48, 48)
    assert namespace["lesion"].shape == namespace["lung"].shape == (120, 48, 48)
    assert namespace["lesion"].dtype == bool and not namespace["lesion"][labels == 0].any()
    figures = namespace["figures"]
    for name in ("pointing_game", "energy_lift"):  # 90 sick phantoms; a degenerate map is a miss, not a lift
        assert set(figures[name]) >= {"value", "ci95", "n"} and 80 < figures[name]["n"] <= 90, name
    assert figures["skill"]["pointing_game"]["baseline"] == "uniform"
    assert set(namespace["templates"]) == {"normal", "bacteria", "virus", "covid"}
    assert set(namespace["as_map"]) >= {"lesion_frequency_r", "as_fixed_map"}
    assert namespace["torch_figures"]["pointing_game"]["n"] == 90
    assert namespace["covid_template"].shape == (48, 48) and len(labels) == 120


def test_explainers_are_the_registered_plugins_with_a_layer_at_construction():
    import keras

    from xaicxr import plugins
    from xaicxr.explainers import PLUGIN_NAMES, DegenerateMapsWarning, GradCAM, explainer

    import xaicxr.explainers as api

    registered = {p["name"] for p in plugins.available() if p.get("kind") == "explainer"}
    assert set(PLUGIN_NAMES.values()) == registered  # every built-in importable, and only those
    for name, plugin in PLUGIN_NAMES.items():
        cls = getattr(api, name)
        assert cls.plugin_class is plugins.get("explainer", plugin), name
        assert issubclass(cls, cls.plugin_class) and cls.__name__ == name and name in api.__all__, name
    assert GradCAM is api.GradCAM is type(explainer("gradcam"))
    assert type(explainer("gradcam")).plugin_class is plugins.get("explainer", "gradcam")

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, name="a"),
                              keras.layers.Conv2D(4, 3, name="b"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, name="logits")])
    x = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    y = np.array([0, 1, 0])
    at_a = GradCAM(layer="a")
    assert at_a.resolve_layer(model) == "a" and GradCAM().resolve_layer(model) == "b"
    assert at_a.options() == {"layer": "a"} and repr(at_a) == "GradCAM(layer='a')"
    np.testing.assert_array_equal(at_a.explain(model, x, y), GradCAM().explain(model, x, y, layer="a"))
    np.testing.assert_array_equal(at_a.explain(model, x, y, layer="b"), GradCAM().explain(model, x, y))
    np.testing.assert_array_equal(at_a.explain_all(model, x), GradCAM().explain_all(model, x, layer="a"))
    assert not np.array_equal(at_a.explain(model, x, y), GradCAM().explain(model, x, y))
    built = explainer("gradcam++", layer="a")
    assert isinstance(built, plugins.get("explainer", "gradcam++")) and built.layer == "a"
    np.testing.assert_array_equal(built.explain(model, x, y),
                                  plugins.get("explainer", "gradcam++")().explain(model, x, y, layer="a"))
    assert explainer("rise", masks=32).options()["masks"] == 32
    with pytest.raises(AttributeError):
        api.NoSuchCAM  # noqa: B018

    flat = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, name="a"),
                             keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(2, kernel_initializer="zeros", name="logits")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GradCAM(layer="a").explain(flat, x, y)
    assert [w.category for w in caught] == [DegenerateMapsWarning]
    assert caught[0].filename == __file__  # points at the caller's line, not the API's wrapper


def test_importing_the_api_loads_no_tensorflow():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins"),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", "import sys, xaicxr.explainers, xaicxr.images; "
                           "from xaicxr.explainers import GradCAM, explainer; explainer('rise'); "
                           "print('tensorflow' in sys.modules, 'keras' in sys.modules)"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False"


def test_load_images_decodes_and_sizes_as_the_pipeline_does(tmp_path):
    from xaicxr.errors import DataError
    from xaicxr.images import load_images, load_masks
    from xaicxr.io.loader import decode
    from xaicxr.io.records import Record

    rng = np.random.default_rng(0)
    png8, png16, dicom = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.dcm"
    Image.fromarray(rng.integers(0, 255, (40, 60), dtype=np.uint8)).save(png8)
    Image.fromarray(rng.integers(0, 65535, (50, 30), dtype=np.uint16)).save(png16)
    write_dicom(dicom, rng.integers(0, 4095, (64, 48), dtype=np.uint16))
    mask = tmp_path / "a-mask.png"
    Image.fromarray((rng.random((40, 60)) > 0.7).astype(np.uint8) * 255).save(mask)
    paths = [png8, png16, dicom]
    for resize, mode in [("pad", None), ("crop", None), ("stretch", "L")]:
        images = load_images(paths, size=32, resize=resize, mode=mode)
        assert images.shape == (3, 32, 32, 1) and images.dtype == np.float32
        assert 0 <= images.min() and images.max() <= 1
        for path, image in zip(paths, images):  # what a run decodes (loader.decode: its image cache, training)
            pipeline = decode(Record(path.stem, "x", path, lesion_mask=mask if path == png8 else None),
                              32, resize=resize, mode=mode)
            np.testing.assert_array_equal(image[..., 0], pipeline.image)
        np.testing.assert_array_equal(load_masks(mask, size=32, resize=resize)[0],
                                      decode(Record("a", "x", png8, lesion_mask=mask), 32, resize=resize).lesion)
    np.testing.assert_array_equal(load_images(str(png8), size=32), load_images([png8], size=32))

    class ThreeChannels:
        inputs = [type("T", (), {"shape": (None, 24, 24, 3)})()]

    assert load_images(paths, ThreeChannels()).shape == (3, 24, 24, 3)
    assert load_masks([mask], ThreeChannels()).shape == (1, 24, 24)
    with pytest.raises(DataError, match="needs a size"):
        load_images(paths)
    with pytest.raises(ValueError, match="resize must be one of"):
        load_images(paths, size=32, resize="squash")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for missing in (bad, tmp_path / "nowhere.dcm"):
        with pytest.raises(DataError, match=re.escape(missing.name)):
            load_images([png8, missing], size=32)
    skipped: list = []
    assert load_images([png8, bad, png16], size=32, skipped=skipped).shape == (2, 32, 32, 1)
    assert [p for p, _ in skipped] == [str(bad)] and skipped[0][1]
    with pytest.raises(DataError, match="broken.png"):
        load_masks([mask, bad], size=32)
    assert load_images([bad], size=32, skipped=[]).shape == (0, 32, 32, 1)


def test_explain_warns_when_maps_come_back_without_signal():
    """``explain`` drops the flags, so it says so; ``explain_with_info`` returns them instead."""
    import keras

    from xaicxr.explainers import DegenerateMapsWarning, GradCAM

    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, name="a"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, kernel_initializer="zeros", name="logits")])
    x = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    with pytest.warns(DegenerateMapsWarning, match="3 of 3 maps are degenerate"):
        maps = GradCAM().explain(model, x, np.array([0, 1, 0]))
    assert not maps.any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, flags = GradCAM().explain_with_info(model, x, np.array([0, 1, 0]))
    assert flags.all()
