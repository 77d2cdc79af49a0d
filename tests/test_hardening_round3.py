"""Hardening, round 3 (the issue's numbers): failures a hostile user reproduced, each checked
through the CLI with real files."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shared_runs import LIGHT, copy_run
from xaicxr.cli import app
from xaicxr.config import resolve
from xaicxr.errors import ConfigError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
TINY = ('[dataset]\nn_per_class = {n}\nsize = 32\n[backbone]\ninput_size = 32\ndense = [8]\n'
        '[train]\nepochs = 2\nbatch_size = 8\n')


def _error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# --------------------------------------------------------------------------- 4. diverged training


def test_a_diverged_training_stops_with_a_clear_error_and_records_nothing(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(TINY.format(n=4) + "learning_rate = 1e30\n")
    out = tmp_path / "run"
    line = _error_line(runner.invoke(app, ["run", str(config), "--out", str(out)]))
    assert "training diverged" in line and "learning_rate" in line
    assert not (out / "model.keras").exists() and not (out / "train.json").exists()
    assert "train" not in json.loads((out / "stages.json").read_text())


@pytest.mark.parametrize("value", ["inf", "nan", "-1.0", "0.0"])
def test_a_learning_rate_that_cannot_work_is_a_config_error(value):
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve({"train": {"learning_rate": float(value)}})


# --------------------------------------------------------------------------- 7. degenerate data


def test_one_image_per_class_and_a_negative_phantom_seed_are_clear_errors(tmp_path):
    config = tmp_path / "one.toml"
    config.write_text(TINY.format(n=1))
    assert "the test split is empty" in _error_line(runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "a")]))
    config.write_text(TINY.format(n=4).replace("size = 32\n", "size = 32\nseed = -1\n", 1))
    assert "seed must be at least 0" in _error_line(runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "b")]))


# --------------------------------------------------------------------------- 9. plugin options


@pytest.mark.parametrize("raw, message", [
    ({"explain": [{"name": "rise", "masks": -5}]}, "'masks' must be at least 1"),
    ({"explain": [{"name": "rise", "p": 1.5}]}, "'p' (the share of cells kept)"),
    ({"explain": [{"name": "occlusion", "patch": 0}]}, "'patch' must be at least 1"),
    ({"quality": {"fractions": 100000}}, "'fractions' must be from 2"),
    ({"quality": {"fills": ["road", "road"]}}, "names a fill twice"),
    ({"quality": {"tolerance": float("nan")}}, "tolerance"),
    ({"dataset": {"n_per_class": 0}}, "n_per_class must be at least 1"),
])
def test_option_values_that_cannot_work_are_refused_when_the_config_is_read(raw, message):
    with pytest.raises(ConfigError) as err:
        resolve(raw)
    assert message in str(err.value)


# --------------------------------------------------------------------------- 6. disk full


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import xaicxr.pipeline

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "quality.h5"))

    monkeypatch.setattr(xaicxr.pipeline, "run_pipeline", full)
    line = _error_line(runner.invoke(app, ["run", "--out", str(tmp_path / "run")]))
    assert f"no space left on {tmp_path / 'run' / 'quality.h5'}" in line

    def hdf5_full(*args, **kwargs):  # what h5py raises: a RuntimeError that names errno 28 only
        raise RuntimeError("Can't write data (file write failed: time = Fri Dec  4, filename = "
                           f"'{tmp_path / 'x.h5'}', file descriptor = 7, errno = 28, error message = "
                           "'No space left on device')")

    monkeypatch.setattr(xaicxr.pipeline, "run_pipeline", hdf5_full)
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "run"), "--json"])
    assert json.loads(result.stdout)["error"]["type"] == "NoSpaceError" and result.exit_code == 2


# --------------------------------------------------------------------------- 12. SIGTERM, kill -9


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_lock(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(TINY.format(n=40).replace("epochs = 2", "epochs = 50"))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "xaicxr.cli", "run", str(config), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "split.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # training now
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: terminated (SIGTERM); what was written is kept: run the command again to resume"]
    assert not (out / "xaicxr.lock").exists() and not (out / "model.keras").exists()


def _signal_inside(package: str, signum: int, then=None) -> str:
    """Send ``signum`` to this process from a frame that belongs to ``package``, run a few more
    bytecodes there (where Python runs the handler), then ``then`` if given."""
    namespace = {"__name__": f"{package}.fake", "os": os, "signal": signal}
    exec("def call(signum, then):\n    os.kill(os.getpid(), signum)\n    total = 0\n"
         "    for i in range(1000):\n        total += i\n    if then: then()\n    return 'finished'\n",
         namespace)
    return namespace["call"](signum, then)


def test_a_signal_inside_tensorflow_waits_for_the_next_safe_point():
    from xaicxr.interrupts import Terminated, interrupts_at_safe_points, raise_if_interrupted

    with pytest.raises(Terminated):
        with interrupts_at_safe_points():
            assert _signal_inside("keras", signal.SIGTERM) == "finished"  # held, not raised in Keras
            with pytest.raises(Terminated):
                raise_if_interrupted()
            raise_if_interrupted()  # nothing held any more
            _signal_inside("tensorflow", signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as caught:  # a second signal while one is held: at once
        with interrupts_at_safe_points():
            _signal_inside("tensorflow", signal.SIGINT, then=lambda: _signal_inside("keras", signal.SIGINT))
    assert not isinstance(caught.value, Terminated)
    with pytest.raises(Terminated):  # outside the frameworks: where it arrives
        with interrupts_at_safe_points():
            _signal_inside("xaicxr", signal.SIGTERM)
            pytest.fail("not raised where it arrived")
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_temporaries_of_writers_that_died_are_removed_when_the_run_is_next_locked(tmp_path):
    from xaicxr.io.runlock import QUIET_S, RunLock

    run = tmp_path / "run"
    (run / "heatmaps").mkdir(parents=True)
    dead, alive = _dead_pid(), os.getpid()
    stale = run / f".quality.h5.{dead}.0011aaff.tmp"
    recent = run / "heatmaps" / f".gradcam.h5.{dead}.22bb33cc.tmp"
    live = run / f".metrics.json.{alive}.44dd55ee.tmp"
    for path in (stale, recent, live):
        path.write_bytes(b"partial")
    old = time.time() - QUIET_S - 60
    for path in (stale, live):
        os.utime(path, (old, old))
    with RunLock(run / "xaicxr.lock"):
        pass
    assert not stale.exists(), "a dead writer's quiet temporary is removed"
    assert recent.exists(), "a temporary still being written (maybe by another host) is kept"
    assert live.exists(), "a live process's temporary is kept"


# --------------------------------------------------------------------------- 14. image cache


@pytest.mark.xdist_group("light")
def test_a_deleted_image_cache_is_decoded_again_where_a_stage_needs_it(shared_runs, tmp_path):
    run = copy_run(shared_runs.run(LIGHT), tmp_path / "run")
    caches = list((run / "cache").glob("images-*.h5"))
    assert caches
    for cache in caches:
        cache.unlink()
    result = runner.invoke(app, ["explain", str(run), "-e", "gradcam", "--layer", "block4_conv4", "--overwrite",
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    assert all(cache.is_file() for cache in caches)


# --------------------------------------------------------------------------- 8. parser errors


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--json"], "Missing argument 'run_dir'"),
    (["run", "--bogus", "--json"], "No such option: --bogus"),
    (["data", "phantom", "out", "--n-per-class", "many", "--json"], "Invalid value for '--n-per-class'"),
    (["data", "phantom", "out", "--n-per-class", "-3", "--json"], "Invalid value for '--n-per-class'"),
    (["no-such-command", "--json"], "No such command 'no-such-command'"),
])
def test_what_the_argument_parser_refuses_keeps_the_one_line_and_json_contract(args, message):
    result = runner.invoke(app, args)
    line = _error_line(result)
    assert message in line and "--help" in line
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "UsageError" and message in error["message"]


# --------------------------------------------------------------------------- 1. a replaced model


@pytest.mark.xdist_group("light")
def test_a_replaced_model_is_used_by_everything_after_it_or_retrained_when_it_cannot_be(shared_runs, tmp_path):
    import h5py
    import keras

    from xaicxr.io.modelfile import model_sha256, save_model

    original = shared_runs.run(LIGHT)
    config = shared_runs.config(original)
    run = copy_run(original, tmp_path / "run")
    model = keras.saving.load_model(run / "model.keras")
    model.set_weights([w + 0.01 for w in model.get_weights()])  # another model of the same run
    save_model(model, run / "model.keras")
    result = runner.invoke(app, ["run", str(config), "--out", str(run), "--until", "explain", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["stages_run"] == ["evaluate", "explain"]  # and on, in a full run
    with h5py.File(run / "heatmaps" / "gradcam.h5") as h5:
        assert h5.attrs["model_sha256"] == model_sha256(run / "model.keras")

    three = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3)])
    save_model(three, run / "model.keras")
    result = runner.invoke(app, ["run", str(config), "--out", str(run), "--until", "train", "--json"])
    assert result.exit_code == 0, result.stderr
    assert "3 scores, but this run has 4 classes" in result.stderr
    assert "train" in json.loads(result.stdout)["stages_run"]


# --------------------------------------------------------------------------- 2. dataset changes


def test_adding_replacing_or_deleting_images_is_picked_up(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(data / cls / f"{i}.png")
    config = tmp_path / "c.toml"
    config.write_text('[dataset]\nname = "folder"\npath = "data"\n[split]\ntest = 0.34\nval = 0.0\n')
    out = tmp_path / "run"

    def run():
        result = runner.invoke(app, ["run", str(config), "--out", str(out), "--until", "split", "--json"])
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    assert run()["stages_run"] == ["dataset", "split"]
    assert run()["stages_run"] == []
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(data / "a" / "new.png")
    again = run()
    assert again["stages_run"] == ["dataset", "split"] and again["dataset"]["images"] == 13
    (data / "b" / "0.png").unlink()
    assert run()["dataset"]["images"] == 12
    (data / "c").mkdir()  # an empty class folder: refused, with the advice to remove it ...
    refused = runner.invoke(app, ["run", str(config), "--out", str(out), "--until", "split"])
    assert refused.exit_code == 2 and "class 'c' has no training image" in refused.stderr
    (data / "c").rmdir()  # ... which, taken, is seen
    assert run()["stages_run"] == ["dataset", "split"]
    assert run()["stages_run"] == []


# --------------------------------------------------------------------------- 3. a run from elsewhere


def test_a_run_directory_reads_its_own_files_from_any_folder_and_when_copied(tmp_path, monkeypatch):
    import shutil

    from xaicxr.rundir import RunDir

    config = tmp_path / "c.toml"
    config.write_text(TINY.format(n=4))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["run", "c.toml", "--out", "runs/b1", "--until", "split"])
    assert result.exit_code == 0, result.stderr
    monkeypatch.chdir(tmp_path / "runs")
    _, records, _ = RunDir("b1").records()
    assert records and all(r.path.is_file() and r.lesion_mask.is_file() for r in records)
    copy = shutil.copytree(tmp_path / "runs" / "b1", tmp_path / "copy")
    shutil.rmtree(tmp_path / "runs" / "b1" / "data")  # the original's images are gone: the copy has its own
    _, copied, _ = RunDir(copy).records()
    assert all(r.path.is_file() and copy in r.path.parents for r in copied)
    again = runner.invoke(app, ["run", str(config), "--out", str(copy), "--until", "split", "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["stages_run"] == [], again.stderr


# --------------------------------------------------------------------------- 5. a shard twice


@pytest.mark.xdist_group("light")
def test_the_same_shard_twice_is_refused_while_the_first_runs(shared_runs, tmp_path):
    from xaicxr.io.runlock import RunLock
    from xaicxr.rundir import RunDir, Shard

    run = copy_run(shared_runs.run(LIGHT), tmp_path / "run")
    part = Shard.parse("0/2")
    lock = RunDir(run).heatmap_shard("gradcam", part).with_suffix(".h5.lock")
    with RunLock(lock):  # what the first `explain --shard 1/2` holds while it works
        result = runner.invoke(app, ["explain", str(run), "-e", "gradcam", "--layer", "block4_conv4",
                                     "--shard", "0/2"])
        assert "is in use by process" in _error_line(result)
        other = runner.invoke(app, ["explain", str(run), "-e", "gradcam", "--layer", "block4_conv4",
                                    "--shard", "1/2", "--json"])
        assert other.exit_code == 0, other.stderr  # another shard runs side by side
    again = runner.invoke(app, ["explain", str(run), "-e", "gradcam", "--layer", "block4_conv4", "--shard", "0/2"])
    assert again.exit_code == 0, again.stderr


# --------------------------------------------------------------------------- 15. a non-UTF-8 --out


def test_a_run_folder_whose_name_is_not_utf8_keeps_every_image(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(TINY.format(n=4))
    out = tmp_path / os.fsdecode(b"run-\xff")
    result = runner.invoke(app, ["run", str(config), "--out", out, "--until", "split", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["dataset"] == {**json.loads(result.stdout)["dataset"], "images": 16, "skipped": 0}
    from xaicxr.rundir import RunDir

    _, records, _ = RunDir(out).records()
    assert len(records) == 16 and all(r.path.is_file() for r in records)
