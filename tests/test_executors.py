"""Explain and templates on a Dask cluster give the local executor's files; SLURM arrays pick
the shard; a missing engine is a clear error."""

from __future__ import annotations

import json
import shutil
import sys
import tomllib

import h5py
import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from shared_runs import LIGHT, copy_run, h5_contents, tiny_config
from xaicxr.cli import app
from xaicxr.errors import ConfigError
from xaicxr.rundir import RunDir, Shard

runner = CliRunner()
pytestmark = pytest.mark.xdist_group("light")  # the LIGHT run's readers on one worker: it is built once



@pytest.fixture
def local_run(shared_runs, tmp_path):
    """The session's LIGHT run, computed by the local executor."""
    return tmp_path, shared_runs.run(LIGHT)


def test_dask_cluster_writes_the_local_heatmaps_and_templates(local_run, dask_address):
    root, local = local_run
    cluster = root / "dask"
    shutil.copytree(local, cluster, ignore=shutil.ignore_patterns("heatmaps", "templates"))
    cfg = tomllib.loads((cluster / "config.toml").read_text())
    cfg["run"] = {"executor": "dask", "address": dask_address, "partition_rows": 5}
    (cluster / "dask.toml").write_text(tomli_w.dumps(cfg))
    result = runner.invoke(app, ["run", str(cluster / "dask.toml"), "--out", str(cluster), "--until", "templates",
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["stages_run"] == ["explain", "templates"], "the executor does not change any stage's hash"
    with h5py.File(local / "heatmaps" / "gradcam.h5") as h5:
        assert len(h5["ids"]) > 5 * 2, "more rows than one template partition and one explain batch"
    assert h5_contents(cluster / "heatmaps" / "gradcam.h5") == h5_contents(local / "heatmaps" / "gradcam.h5")
    for aggregator in ("mean", "median"):
        name = f"gradcam-{aggregator}.h5"
        assert h5_contents(cluster / "templates" / name) == h5_contents(local / "templates" / name)
    with h5py.File(cluster / "templates" / "gradcam-std.h5") as a, h5py.File(local / "templates" / "gradcam-std.h5") as b:
        assert set(a) == set(b)
        for cls in a:
            np.testing.assert_allclose(a[cls][()], b[cls][()], rtol=1e-6, atol=1e-7)
            assert a[cls].attrs["n"] == b[cls].attrs["n"]


def test_slurm_array_picks_the_shard(local_run):
    root, shared = local_run
    local = copy_run(shared, root / "local")
    env = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "2"}
    result = runner.invoke(app, ["explain", str(local), "--explainer", "gradcam", "--json"], env=env)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["shard"] == "1/2"
    assert "SLURM" in result.stderr and "1/2" in result.stderr
    assert RunDir(local).heatmap_shard("gradcam", Shard(1, 2)).exists()
    given = runner.invoke(app, ["explain", str(local), "--explainer", "gradcam", "--shard", "3/3"], env=env)
    assert given.exit_code == 2 and "3/3" in given.stderr and "SLURM" not in given.stderr, "--shard wins"


@pytest.mark.parametrize("env, shard", [
    ({}, None),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(2, 4)),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "3",
      "SLURM_ARRAY_TASK_STEP": "2"}, Shard(2, 3)),
])
def test_shard_from_slurm_variables(env, shard):
    assert Shard.from_slurm(env) == shard


@pytest.mark.parametrize("env", [
    {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "4"},
    {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"},
])
def test_slurm_variables_that_name_no_shard_are_refused(env):
    with pytest.raises(ConfigError, match="SLURM"):
        Shard.from_slurm(env)


def test_missing_engine_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    config = tmp_path / "dask.toml"
    config.write_text(tiny_config(run={"executor": "dask"}))
    result = runner.invoke(app, ["run", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "pip install 'xaicxr[dask]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "dataset.json").exists(), "refused before any stage ran"


@pytest.mark.parametrize("address", ["http://127.0.0.1:1/x", "127.0.0.1", "tcp://host", "ftp://h:1"])
def test_an_address_that_is_not_a_scheduler_address_is_a_config_error(address):
    from xaicxr.config import resolve
    from xaicxr.errors import ConfigError

    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        resolve({"run": {"executor": "dask", "address": address}})
    assert resolve({"run": {"executor": "dask", "address": "tcp://127.0.0.1:8786"}})["run"]["address"]
