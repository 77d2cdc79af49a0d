"""Hostile but realistic use of every command (issue 14 part B): variant names that escape
``--out``, file names that are not UTF-8, corrupted outputs, two processes on one run directory,
an interrupted explain, failed runs, bad training values, broken model files, ``detect`` edge
cases, and the error path of every command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shared_runs import LIGHT, copy_run, tiny_config, with_tables
from xaicxr.cli import app

runner = CliRunner()
pytestmark = pytest.mark.xdist_group("light")  # the LIGHT run's readers on one worker: it is built once


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _one_line_error(result, code: int = 2) -> str:
    """The error of a failed command: exit ``code``, one line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def finished(shared_runs):
    """The session's LIGHT run (explain in batches of 4), copied by the tests that change it."""
    run = shared_runs.run(LIGHT)
    return shared_runs.config(run), run


def _copy(run: Path, tmp_path: Path) -> Path:
    return copy_run(run, tmp_path / "run")


# --------------------------------------------------------------------------- 1. study names


@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", "a/b", "javascript:alert(1)", "..", ".hidden",
                                  "a\\b", ""])
def test_study_variant_names_must_be_plain(tmp_path, name):
    study = tmp_path / "study.toml"
    study.write_text(f'[[variants]]\nname = {json.dumps(name)}\nset = {{ "train.epochs" = 1 }}\n')
    result = _invoke("study", study, "--out", tmp_path / "out", "--json")
    assert "is not a plain name" in _one_line_error(result)
    assert json.loads(result.stdout)["error"]["type"] == "ConfigError"
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()


# --------------------------------------------------------------------------- 2. non-UTF-8 names


def _folder_dataset(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_a_file_name_that_is_not_utf8_is_skipped_and_reported_escaped(tmp_path):
    data = _folder_dataset(tmp_path / "data")
    bad = os.path.join(os.fsencode(data / "a"), b"scan\xff.png")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(open(bad, "wb"), format="PNG")
    result = _invoke("data", "inspect", data, "--json")
    assert result.exit_code == 0, result.stderr
    inventory = json.loads(result.stdout_bytes.decode("utf-8"))
    assert inventory["counts"] == {"a": 4, "b": 4}
    [skipped] = inventory["skipped"]
    assert skipped["path"].endswith("a/scan\\xff.png") and "not valid UTF-8" in skipped["reason"]
    config = tmp_path / "run.toml"
    config.write_text(f'[dataset]\nname = "folder"\npath = "{data}"\n[split]\ntest = 0.25\nval = 0.25\n')
    result = _invoke("run", config, "--out", tmp_path / "run", "--until", "split", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "run" / "skipped.json").read_bytes())[0]["path"] == skipped["path"]


# --------------------------------------------------------------------------- 3. corrupted outputs


def test_a_truncated_heatmap_store_is_found_and_rebuilt(finished, tmp_path):
    config, original = finished
    run = _copy(original, tmp_path)
    store = run / "heatmaps" / "gradcam.h5"
    reference = (original / "heatmaps" / "gradcam.h5").read_bytes()
    store.write_bytes(reference[: len(reference) // 2])
    result = _invoke("template", run, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["stages_run"] == ["explain", "templates"]
    assert "heatmaps/gradcam.h5 is corrupt" in result.stderr and store.read_bytes() == reference
    store.write_bytes(reference[: len(reference) // 2])
    result = _invoke("run", config, "--out", run, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["stages_run"] == ["explain", "templates", "quality", "probe", "report"]
    assert "heatmaps/gradcam.h5 is corrupt" in result.stderr
    assert store.read_bytes() == reference
    again = json.loads(_invoke("run", config, "--out", run, "--json").stdout)
    assert again["stages_run"] == []


def test_text_in_a_template_file_is_one_clear_error_then_rebuilt(finished, tmp_path):
    config, original = finished
    run = _copy(original, tmp_path)
    template = run / "templates" / "gradcam-mean.h5"
    template.write_text("not a template")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(image)
    assert "not a readable template file" in _one_line_error(_invoke("detect", run, image))
    result = _invoke("run", config, "--out", run, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["stages_run"] == ["templates", "quality", "probe", "report"]
    assert _invoke("detect", run, image).exit_code == 0


# --------------------------------------------------------------------------- 4. the run lock


def _lock(run: Path, pid: int) -> None:
    (run / "xaicxr.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                                 "started": "2026-01-01 00:00:00", "command": "xaicxr run"}))


def test_a_second_process_is_refused_while_the_first_holds_the_run_directory(finished, tmp_path):
    config, original = finished
    run = _copy(original, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(run, holder.pid)
        for args in (("run", config, "--out", run), ("report", run), ("explain", run, "-e", "gradcam")):
            line = _one_line_error(_invoke(*args))
            assert f"in use by process {holder.pid} on {socket.gethostname()}" in line
            assert str(run / "xaicxr.lock") in line
    finally:
        holder.kill()
        holder.wait()
    result = _invoke("run", config, "--out", run, "--json")
    assert result.exit_code == 0, result.stderr
    assert "taking over the stale lock" in result.stderr and f"process {holder.pid}" in result.stderr
    assert not (run / "xaicxr.lock").exists()


# --------------------------------------------------------------------------- 5. resuming explain


def test_run_resumes_an_interrupted_explain_from_its_partial_store(finished, tmp_path, monkeypatch):
    from xaicxr_builtins.explainers import gradcam

    config, original = finished
    run = _copy(original, tmp_path)
    (run / "heatmaps" / "gradcam.h5").unlink()
    calls = []
    real = gradcam.GradCAM.explain_with_info

    def interrupted(self, *args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(gradcam.GradCAM, "explain_with_info", interrupted)
    assert "interrupted" in _one_line_error(_invoke("run", config, "--out", run), code=130)
    with h5py.File(run / "heatmaps" / "gradcam.h5.partial", "r") as partial:
        assert partial.attrs["done"] == 4
    calls.clear()
    monkeypatch.setattr(gradcam.GradCAM, "explain_with_info", lambda self, *a, **k: (calls.append(len(a[1])), real(self, *a, **k))[1])
    result = _invoke("run", config, "--out", run, "--json")
    assert result.exit_code == 0, result.stderr
    assert "resuming at 4/" in result.stderr
    assert sum(calls) == len(h5py.File(run / "heatmaps" / "gradcam.h5", "r")["ids"]) - 4
    assert (run / "heatmaps" / "gradcam.h5").read_bytes() == (original / "heatmaps" / "gradcam.h5").read_bytes()


# --------------------------------------------------------------------------- 6. failed runs


@pytest.mark.parametrize("change", [
    {"explain": [{"name": "gradcam", "layer": "no_such_layer"}]},
    {"binary": {"sick": {"positive": ["flu"]}}},
], ids=["layer", "binary"])
def test_a_failed_run_leaves_config_toml_and_fails_before_training(finished, tmp_path, change):
    config, original = finished
    run = _copy(original, tmp_path)
    before = (run / "config.toml").read_bytes()
    bad = tmp_path / "bad.toml"
    bad.write_text(with_tables(LIGHT, train={"epochs": 3}, **change))
    line = _one_line_error(_invoke("run", bad, "--out", run))
    assert ("no_such_layer" in line) if "explain" in change else ("'flu' is not one of" in line)
    assert (run / "config.toml").read_bytes() == before
    assert (run / "model.keras").read_bytes() == (original / "model.keras").read_bytes()


# --------------------------------------------------------------------------- 7. training values


@pytest.mark.parametrize("key, value", [("epochs", 0), ("epochs", -3), ("batch_size", 0),
                                        ("learning_rate", -0.001), ("learning_rate", 0.0)])
def test_training_values_that_cannot_work_are_config_errors(tmp_path, key, value):
    config = tmp_path / "bad.toml"
    config.write_text(tiny_config(train={key: value}))
    line = _one_line_error(_invoke("run", config, "--out", tmp_path / "run"))
    assert f"'{key}' in [train]" in line and str(value) in line
    assert not (tmp_path / "run" / "dataset.json").exists()


def test_a_one_class_dataset_is_a_data_error(tmp_path):
    data = _folder_dataset(tmp_path / "data")
    shutil.rmtree(data / "b")
    config = tmp_path / "run.toml"
    config.write_text(f'[dataset]\nname = "folder"\npath = "{data}"\n')
    assert "a classifier needs at least two" in _one_line_error(_invoke("run", config, "--out", tmp_path / "run"))


def test_a_class_without_test_images_is_a_loud_warning(tmp_path):
    data = _folder_dataset(tmp_path / "data", per_class=8)
    for extra in range(1, 8):
        (data / "b" / f"{extra}.png").unlink()
    config = tmp_path / "run.toml"
    config.write_text(f'[dataset]\nname = "folder"\npath = "{data}"\n[split]\ntest = 0.25\nval = 0.25\n')
    result = _invoke("run", config, "--out", tmp_path / "run", "--until", "split")
    assert result.exit_code == 0, result.stderr
    assert "warning: class 'b' has no test image" in " ".join(result.stderr.split())
    assert json.loads((tmp_path / "run" / "split.json").read_text())["warnings"][0].startswith("class 'b'")


# --------------------------------------------------------------------------- 8. model files


def test_a_broken_model_file_says_what_is_wrong_with_it(finished, tmp_path):
    import keras

    _, original = finished
    run = _copy(original, tmp_path)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(image)
    for content, expected in ((b"", "it is empty (0 bytes)"), (b"<html>oops</html>", "not a zip archive")):
        (run / "model.keras").write_bytes(content)
        line = _one_line_error(_invoke("detect", run, image))
        assert "is not a Keras model file" in line and expected in line and "File not found" not in line
    assert "no usable trained model" in _one_line_error(_invoke("evaluate", run))

    def doubled(x):  # a named function that the loading process cannot import
        return x * 2

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Lambda(doubled)(inputs)).save(run / "model.keras")
    line = _one_line_error(_invoke("explain", run, "-e", "gradcam"))
    assert "cannot be rebuilt" in line and "Lambda" in line


# --------------------------------------------------------------------------- 9. detect, retraining, modes


def test_detect_keeps_every_overlay_and_fails_when_no_input_could_be_read(finished, tmp_path):
    _, run = finished
    for folder in ("d1", "d2"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / folder / "x.png")
    out = tmp_path / "overlays"
    old = os.umask(0o022)
    try:
        result = _invoke("detect", run, tmp_path / "d1" / "x.png", tmp_path / "d2" / "x.png", "--out", out, "--json")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    overlays = [Path(r["overlay"]) for r in json.loads(result.stdout)["results"]]
    assert [p.name for p in overlays] == ["x-gradcam.png", "x-2-gradcam.png"]
    assert all(p.is_file() and stat.S_IMODE(p.stat().st_mode) == 0o644 for p in overlays)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    result = _invoke("detect", run, tmp_path / "broken.png", tmp_path / "missing.png", "--json")
    assert "none of the 2 images could be read" in _one_line_error(result)
    assert json.loads(result.stdout)["error"]["type"] == "DataError"


def test_stage_commands_refuse_to_retrain_without_the_flag(finished, tmp_path):
    _, original = finished
    run = _copy(original, tmp_path)
    (run / "model.keras").unlink()
    for command in ("evaluate", "template", "quality", "report"):
        line = _one_line_error(_invoke(command, run))
        assert "no usable trained model (model.keras is missing)" in line and "--retrain" in line
    assert not (run / "model.keras").exists()


def test_outputs_follow_the_umask(finished):
    _, run = finished
    modes = {stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*") if p.is_file()}
    assert modes == {0o666 & ~_umask()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------- 10. every command's errors


def _bad_invocations(tmp: Path) -> list[tuple[str, ...]]:
    missing, not_a_run = tmp / "missing", tmp / "empty"
    not_a_run.mkdir(exist_ok=True)
    garbage = tmp / "garbage.toml"
    garbage.write_text("[train\nepochs = 1")
    return [
        ("data", "phantom", tmp / "ph", "--difficulty", "extreme"),
        ("data", "inspect", missing),
        ("data", "inspect", tmp, "-o", "colour=[1"),
        ("run", missing, "--out", tmp / "r"),
        ("run", garbage, "--out", tmp / "r"),
        ("run", "--out", tmp / "r", "--until", "everything"),
        ("train", not_a_run),
        ("evaluate", not_a_run),
        ("explain", not_a_run, "-e", "gradcam"),
        ("merge-heatmaps", not_a_run, "-e", "gradcam"),
        ("template", not_a_run, "--shard", "3/2"),
        ("template", not_a_run),
        ("quality", not_a_run),
        ("report", not_a_run),
        ("detect", not_a_run, missing),
        ("study", missing, "--out", tmp / "s"),
        ("study", garbage, "--out", tmp / "s"),
    ]


def test_every_command_fails_in_one_line_with_exit_2_and_a_json_error(tmp_path):
    for args in _bad_invocations(tmp_path):
        plain = _invoke(*args)
        line = _one_line_error(plain)
        assert len(line) > len("error: ") + 10, args
        as_json = _invoke(*args, "--json")
        _one_line_error(as_json)
        error = json.loads(as_json.stdout)["error"]
        assert set(error) == {"type", "message"} and error["message"] in " ".join(line.split()), args
        assert error["type"] != "InternalError", (args, error)


def test_an_unexpected_error_is_one_line_too_and_verbose_shows_its_traceback(monkeypatch):
    from xaicxr import plugins

    def broken():
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(plugins, "available", broken)
    line = _one_line_error(_invoke("plugins"))
    assert "internal error (RuntimeError: something nobody foresaw)" in line and "--verbose" in line
    verbose = _invoke("plugins", "--verbose")
    assert verbose.exit_code == 2 and "Traceback" in verbose.stderr


# --------------------------------------------------------------------------- 11. TensorFlow's noise


def test_tensorflow_logs_stay_off_the_terminal_without_verbose(tmp_path):
    """A real process (TensorFlow's C++ lines go to file descriptor 2, not to sys.stderr)."""
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(repo), str(repo / "plugins"), env.get("PYTHONPATH", "")])
    quiet = subprocess.run([sys.executable, "-m", "xaicxr.cli", "run", str(tmp_path / "missing.toml"),
                            "--out", str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [f"error: config file {tmp_path / 'missing.toml'} does not exist"]
