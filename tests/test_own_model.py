"""A model trained elsewhere (``[model] path``): Sequential, functional, nested, SavedModel and
multi-label models written to real files, imported by the pipeline, explained and refused where
they cannot be explained as declared."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from xaicxr.cli import app

pytestmark = pytest.mark.xdist_group("own-model")  # one worker builds the models and the run they share
runner = CliRunner()
PHANTOM = ["normal", "bacteria", "virus", "covid"]
SIZE = 32


def _conv_layers():
    import keras

    L = keras.layers
    return [L.Conv2D(8, 3, activation="relu", name="c1"), L.MaxPooling2D(name="p1"),
            L.Conv2D(16, 3, activation="relu", name="c2"), L.MaxPooling2D(name="p2"),
            L.Conv2D(16, 3, activation="relu", name="c3"), L.GlobalAveragePooling2D(name="gap")]


def _phantom_arrays(n_per_class: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images with a bright square per class at a class-specific place: a tiny model learns them."""
    rng = np.random.default_rng(0)
    x = rng.random((4 * n_per_class, SIZE, SIZE, 1)).astype("float32") * 0.3
    y = np.repeat(np.arange(4), n_per_class)
    for k, (r, c) in enumerate([(2, 2), (2, 20), (20, 2), (20, 20)]):
        x[y == k, r:r + 10, c:c + 10] += 0.7
    return x, y


def _fit(model, epochs: int = 25):
    x, y = _phantom_arrays()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=20, verbose=0)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Each kind of model as a user saves it, trained a little on 32 px squares."""
    import keras

    keras.utils.set_random_seed(0)
    L = keras.layers
    root = tmp_path_factory.mktemp("own-models")
    out: dict[str, Path] = {}
    sequential = keras.Sequential([keras.Input((SIZE, SIZE, 1)), *_conv_layers(),
                                   L.Dense(4, activation="softmax", name="out")], name="seq")
    out["sequential"] = root / "sequential.keras"
    _fit(sequential).save(out["sequential"])

    image = keras.Input((SIZE, SIZE, 3))
    x = image
    for layer in _conv_layers():
        x = layer(x)
    functional = keras.Model(image, L.Activation("softmax", name="softmax")(L.Dense(4, name="scores")(x)), name="func")
    out["functional"] = root / "functional.keras"
    functional.save(out["functional"])

    base = keras.Sequential([keras.Input((SIZE, SIZE, 1)), *_conv_layers()], name="base")
    inp = keras.Input((SIZE, SIZE, 1))
    nested = keras.Model(inp, L.Dense(4, name="head")(base(inp)), name="nested")  # logits out
    out["nested"] = root / "nested.keras"
    nested.save(out["nested"])

    inp = keras.Input((SIZE, SIZE, 1))
    feats = keras.Sequential(_conv_layers(), name="feats")(inp)
    multilabel = keras.Model(inp, L.Dense(6, activation="sigmoid", name="findings")(feats), name="multilabel")
    out["multilabel"] = root / "multilabel.keras"
    multilabel.save(out["multilabel"])

    out["savedmodel"] = root / "saved"
    keras.saving.load_model(out["sequential"]).export(str(out["savedmodel"]), format="tf_saved_model",
                                                      verbose=False)

    flat = keras.Sequential([keras.Input((SIZE, SIZE, 1)), *_conv_layers(),
                             L.Dense(4, kernel_initializer="zeros", name="flat")], name="flat")
    out["constant"] = root / "constant.keras"  # logits that do not depend on the image
    flat.save(out["constant"])
    return out


def _config(tmp_path: Path, model: Path, **model_keys) -> Path:
    table = {"path": str(model), "classes": PHANTOM, **model_keys}
    cfg = {"dataset": {"n_per_class": 8, "size": SIZE, "seed": 1}, "model": table,
           "explain": [{"name": "gradcam"}], "aggregate": [{"name": "mean"}],
           "quality": {"metrics": ["localisation"]}, "probe": {"enabled": False}}
    path = tmp_path / "own.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def _run(config: Path, out: Path, *args: str):
    return runner.invoke(app, ["run", str(config), "--out", str(out), "--json", *args])


# --------------------------------------------------------------------------- explaining


@pytest.mark.parametrize("name", ["gradcam", "layercam", "hirescam", "gradcam-tfkv"])
def test_a_loaded_sequential_model_gets_real_maps_not_degenerate_zeros(models, name):
    """Loaded from a file, a Sequential model's layers were called twice: their ``.output`` is
    not on the path to the model's output, and the maps came back all zero (or crashed)."""
    import keras

    from xaicxr.plugins import get

    model = keras.saving.load_model(models["sequential"])
    x, y = _phantom_arrays(2)
    maps, degenerate = get("explainer", name)().explain_with_info(model, x, y, layer="c3")
    assert not degenerate.any() and maps.shape == (8, SIZE, SIZE) and maps.max() == 1.0


@pytest.mark.parametrize("kind", ["sequential", "functional", "nested", "multilabel"])
def test_each_kind_of_model_is_wrapped_with_its_scores_and_explained(models, kind):
    from xaicxr.plugins import get
    from xaicxr.usermodel import import_model

    names = PHANTOM + ["edema", "mass"] if kind == "multilabel" else PHANTOM
    spec = {"path": str(models[kind]), "classes": names, "outputs": "auto", "value_range": [0.0, 1.0]}
    wanted = ["covid", "normal", "virus"]  # a dataset with fewer classes, in another order
    imported = import_model(spec, wanted)
    import keras

    user = keras.saving.load_model(models[kind])
    x, _ = _phantom_arrays(1)
    fed = np.repeat(x, 3, axis=-1) if kind == "functional" else x
    out = keras.ops.convert_to_numpy(user(fed))
    picked = [names.index(c) for c in wanted]
    probs = imported.model.predict(x, verbose=0)
    expected = {"sequential": "softmax", "functional": "softmax", "nested": "logits", "multilabel": "sigmoid"}[kind]
    assert imported.outputs == expected
    if expected == "softmax":  # the softmax renormalised over the dataset's classes
        want = out[:, picked] / out[:, picked].sum(axis=1, keepdims=True)
    elif expected == "sigmoid":  # a choice among the findings by their log-odds
        odds = out[:, picked] / (1 - out[:, picked])
        want = odds / odds.sum(axis=1, keepdims=True)
    else:
        z = np.exp(out[:, picked] - out[:, picked].max(axis=1, keepdims=True))
        want = z / z.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-5)
    assert "logits" in imported.scores or "log-odds" in imported.scores  # never a softmax's log
    maps = get("explainer", "gradcam")().explain(imported.model, x, np.array([0, 1, 2, 0]), layer="c3")
    assert maps.shape == (4, SIZE, SIZE) and maps.max() > 0


def test_a_saved_model_is_explained_by_forward_passes_and_gradient_methods_are_refused_by_name(models, tmp_path):
    config = _config(tmp_path, models["savedmodel"], outputs="softmax")
    cfg = tomllib.loads(config.read_text())
    cfg["explain"] = [{"name": "rise", "masks": 64}]
    config.write_text(tomli_w.dumps(cfg))
    result = _run(config, tmp_path / "run", "--until", "explain")
    assert result.exit_code == 0, result.stderr
    with h5py.File(tmp_path / "run" / "heatmaps" / "rise.h5") as h5:
        assert h5["heatmaps"].shape[1:] == (SIZE, SIZE) and not h5["degenerate"][()].all()
    again = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--json"])  # model.keras loads back
    assert again.exit_code == 0, again.stderr
    cfg["explain"] = [{"name": "gradcam"}]
    config.write_text(tomli_w.dumps(cfg))
    refused = _run(config, tmp_path / "run2", "--until", "train")
    assert refused.exit_code == 2
    assert "[[explain]] 'gradcam'" in refused.stderr and "no layer with a 4-D output" in refused.stderr


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def own_run(models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own-run")
    model = root / "model" / "my.keras"
    model.parent.mkdir()
    shutil.copy(models["sequential"], model)
    cfg = {"dataset": {"n_per_class": 8, "size": SIZE, "seed": 1},
           "model": {"path": "model/my.keras", "classes": PHANTOM},  # relative: from the config's folder
           "explain": [{"name": "gradcam"}, {"name": "layercam", "layer": "c2"}],
           "aggregate": [{"name": "mean"}],
           "quality": {"randomisation_images": 4, "faithfulness_images": 2, "fractions": 3,
                       "fills": ["blur"]}}
    (root / "own.toml").write_text(tomli_w.dumps(cfg))
    elsewhere = tmp_path_factory.mktemp("cwd")
    import os

    before = os.getcwd()
    os.chdir(elsewhere)
    try:
        result = _run(Path("..") / root.name / "own.toml", root / "run")
    finally:
        os.chdir(before)
    assert result.exit_code == 0, result.stderr
    (root / "summary.json").write_text(result.stdout)
    return root / "run"


def test_every_stage_after_training_runs_on_the_users_model(own_run):
    summary = json.loads((own_run.parent / "summary.json").read_text())
    assert summary["stages_run"] == ["dataset", "split", "train", "evaluate", "explain", "templates", "quality",
                                     "probe", "report"]
    model = own_run.parent / "model" / "my.keras"
    from xaicxr.io.modelfile import model_sha256

    digest = model_sha256(model)
    assert summary["train"] == {"imported": str(model), "model_sha256": digest, "outputs": "softmax", "epochs_run": 0}
    info = json.loads((own_run / "train.json").read_text())
    assert info["imported"]["type"] == "Sequential" and info["imported"]["scores"] == "the model's logits"
    config = tomllib.loads((own_run / "config.toml").read_text())
    assert "backbone" not in config and config["train"] == {"seed": 0} and config["model"]["sha256"] == digest
    import keras

    from xaicxr.io.imagecache import open_image_cache
    from xaicxr.io.predictions import read_predictions
    from xaicxr.rundir import RunDir

    predictions = read_predictions(own_run / "predictions.h5")
    cache = open_image_cache(RunDir(own_run).image_cache(SIZE))
    images = cache.read(np.arange(len(cache.ids)))["images"][..., None].astype("float32")
    own = keras.saving.load_model(model).predict(images, verbose=0)
    np.testing.assert_allclose(predictions["probs"], own, atol=1e-5)  # the run's figures are of this model
    metrics = json.loads((own_run / "metrics.json").read_text())
    assert metrics["per_image"]["gradcam"] and metrics["sanity"]
    with h5py.File(own_run / "heatmaps" / "gradcam.h5") as h5:
        assert h5.attrs["layer"] == "seq/c3" and h5["degenerate"][()].mean() < 0.5
    page = (own_run / "report" / "index.html").read_text()
    assert str(model) in page and digest in page and "trained elsewhere" in page and "backbone" not in page.split("<h2")[0]


def test_detect_and_compare_work_on_an_imported_run(own_run, tmp_path):
    image = next((own_run / "data" / "phantom" / "images" / "covid").glob("*.png"))
    detected = runner.invoke(app, ["detect", str(own_run), str(image), "--out", str(tmp_path / "det"), "--json"])
    assert detected.exit_code == 0, detected.stderr
    row = json.loads(detected.stdout)["results"][0]
    assert set(row["probabilities"]) == set(PHANTOM) and row["layer"] == "seq/c3"
    other = shutil.copytree(own_run, tmp_path / "copy")
    compared = runner.invoke(app, ["compare", str(own_run), str(other), "--out", str(tmp_path / "cmp"), "--json"])
    assert compared.exit_code == 0, compared.stderr


def test_a_changed_model_file_is_imported_again_with_everything_after_it(own_run, tmp_path):
    import keras

    root = shutil.copytree(own_run.parent, tmp_path / "own")
    run = root / "run"
    from xaicxr.pipeline import stage_hashes  # noqa: F401  (the stages' hashes cover the file's digest)

    model = keras.saving.load_model(root / "model" / "my.keras")
    weights = model.get_weights()
    weights[-1] = weights[-1] + 1.0
    model.set_weights(weights)
    model.save(root / "model" / "my.keras")
    config = tomllib.loads((root / "own.toml").read_text())
    config["model"]["path"] = str(root / "model" / "my.keras")
    (root / "own.toml").write_text(tomli_w.dumps(config))
    result = runner.invoke(app, ["run", str(root / "own.toml"), "--out", str(run), "--until", "evaluate"])
    assert result.exit_code == 0, result.stderr
    assert "the model file changed" in result.stderr and "imported again" in result.stderr


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("change, message", [
    ({"classes": ["normal", "bacteria", "virus"]}, "lists 3 outputs"),
    ({"classes": ["normal", "bacteria", "virus", "tumour"]}, "dataset's class 'covid' is not one of the model's outputs"),
    ({"outputs": "logits"}, "applies softmax"),
    ({"input_size": 48}, "takes 32x32 images"),
    ({"channels": 3}, "channels = 3"),
    ({"value_range": [1.0, 0.0]}, "black < white"),
])
def test_what_cannot_be_explained_as_declared_is_refused_before_anything_runs(models, tmp_path, change, message):
    result = _run(_config(tmp_path, models["sequential"], **change), tmp_path / "run")
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr, result.stderr


def test_wrong_input_rank_missing_layer_and_missing_file_are_clear(models, tmp_path):
    import keras

    vector = keras.Sequential([keras.Input((16,)), keras.layers.Dense(4, activation="softmax")])
    vector.save(tmp_path / "vector.keras")
    result = _run(_config(tmp_path, tmp_path / "vector.keras"), tmp_path / "r1")
    assert result.exit_code == 2 and "rank 2, not an image batch" in result.stderr
    config = _config(tmp_path, models["sequential"])
    cfg = tomllib.loads(config.read_text())
    cfg["explain"] = [{"name": "gradcam", "layer": "block5_conv4"}]
    config.write_text(tomli_w.dumps(cfg))
    result = _run(config, tmp_path / "r2")
    assert result.exit_code == 2 and "'block5_conv4' is not in model" in result.stderr and "seq/c3" in result.stderr
    result = _run(_config(tmp_path, tmp_path / "nowhere.keras"), tmp_path / "r3")
    assert result.exit_code == 2 and "nowhere.keras does not exist" in result.stderr
    config.write_text(config.read_text() + '\n[backbone]\nname = "vgg19"\n')
    result = _run(config, tmp_path / "r4")
    assert result.exit_code == 2 and "nothing to build" in result.stderr


def test_mostly_degenerate_maps_are_loud_and_not_scored(models, tmp_path):
    """Logits that do not depend on the image: every Grad-CAM map is empty. The run says so, the
    report shows the share, and the quality figures are not computed from the zeros."""
    result = runner.invoke(app, ["run", str(_config(tmp_path, models["constant"], outputs="logits")),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.stderr
    assert "maps (100%) are degenerate" in result.stderr and "will not be scored" in result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "degenerate" in metrics["quality_skipped"]["gradcam"]["reason"]
    assert "gradcam" not in metrics.get("per_image", {})
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    n = len(json.loads((tmp_path / "run" / "split.json").read_text())["test"])
    assert f"Degenerate maps:</b> {n} of {n} (100%)" in page


def test_the_own_model_example_holds_out_whole_patients_and_builds_its_model():
    """examples/own_model.py trains for minutes (its figures: README); here its split and model."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "own_model.py"
    spec = importlib.util.spec_from_file_location("own_model_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    manifest = [{"file": f"{c}/{p}-{i}.png", "label": c, "patient": f"{c}{p}"}
                for c in example.CLASSES for p in range(10) for i in range(2)]
    side = example.held_out_split(manifest, 0.3, seed=0)
    for cls in example.CLASSES:
        test = {m["patient"] for m in manifest if m["label"] == cls and side[m["file"]] == "test"}
        train = {m["patient"] for m in manifest if m["label"] == cls and side[m["file"]] == "train"}
        assert len(test) == 3 and not test & train
    model = example.build_model()
    assert tuple(model.inputs[0].shape) == (None, example.SIZE, example.SIZE, 1)
    assert tuple(model.outputs[0].shape) == (None, len(example.CLASSES))
