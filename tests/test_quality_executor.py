"""The quality stage's model passes on the run's executor: the same quality.h5 and figures on a
Dask cluster as locally; tasks run on the workers, in span order; a study starts one cluster."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tomllib
import warnings

import h5py
import pytest
import tomli_w
from typer.testing import CliRunner

from shared_runs import LIGHT, copy_run, h5_contents, seed_first_variant, tiny_study
from xaicxr.cli import app
from xaicxr.executors import LocalExecutor, make_executor, shared_executors
from xaicxr.executors.model_passes import ModelExecutor

runner = CliRunner()

QUALITY = {"metrics": ["reliance", "region-reliance", "localisation", "template-faithfulness", "faithfulness",
                       "randomisation"], "template_draws": 1,
           "fills": ["blur"], "fractions": 4, "faithfulness_images": 3, "randomisation_images": 4,
           "randomisation_draws": 2,
           "region_fills": ["blur"], "region_images": 3, "random_regions": 2}
"""Every metric whose passes go through the executor, on the session's LIGHT run (its quality
stage run again with these figures). One fill: ROAD and blur reach the workers the same way (a
fill's ``apply`` traced into the compiled scorer), and ROAD's XLA compile in every worker would
double the test's time."""

SMALL_SPANS = {"xaicxr.analysis.faithfulness.BATCH": 8, "xaicxr.analysis.randomisation.BATCH": 2,
               "xaicxr.executors.model_passes.PREDICT_BATCH": 5}
"""Spans small enough that every metric cuts its passes into several tasks."""


def _quality(run_dir, config: dict, name: str) -> dict:
    """The quality stage of ``run_dir`` run again with ``config``; its summary."""
    (run_dir / "quality.h5").unlink(missing_ok=True)
    (run_dir / f"{name}.toml").write_text(tomli_w.dumps(config))
    result = runner.invoke(app, ["run", str(run_dir / f"{name}.toml"), "--out", str(run_dir), "--until", "quality",
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.xdist_group("light")  # the LIGHT run's readers on one worker: it is built once
def test_quality_on_a_dask_cluster_writes_the_local_files(shared_runs, tmp_path, monkeypatch, dask_address):
    for name, value in SMALL_SPANS.items():
        monkeypatch.setattr(name, value)
    explained = shared_runs.run(LIGHT)
    config = {**tomllib.loads(shared_runs.config(explained).read_text()), "quality": QUALITY}
    local, cluster = copy_run(explained, tmp_path / "local"), copy_run(explained, tmp_path / "cluster")
    assert _quality(local, config, "local")["stages_run"] == ["quality"]
    summary = _quality(cluster, {**config, "run": {"executor": "dask", "address": dask_address}}, "dask")
    assert summary["stages_run"] == ["quality"]

    assert h5_contents(cluster / "quality.h5") == h5_contents(local / "quality.h5")
    figures = [json.loads((run / "metrics.json").read_text()) for run in (local, cluster)]
    for metrics in figures:
        metrics.pop("timings_s")
    assert figures[0] == figures[1]
    measured = figures[0]
    assert not measured["not_measured"]
    assert {"reliance", "region_reliance", "faithfulness", "randomisation"} <= set(measured)
    assert measured["templates"]["gradcam-mean"]["covid"]["faithfulness"]["template_drop"]["n"] > 0
    assert measured["randomisation"]["gradcam"]["n"] > SMALL_SPANS["xaicxr.analysis.randomisation.BATCH"]
    with h5py.File(local / "quality.h5") as h5:
        rows = len(h5["curves/gradcam"][next(iter(h5["curves/gradcam"]))]["blur/deletion"])
        assert rows * 4 > SMALL_SPANS["xaicxr.analysis.faithfulness.BATCH"], "several tasks per curve set"


def _tasks():
    """A task that says where it ran and which process loaded its model, and that loader;
    made here, so that they travel to the workers by value (cloudpickle), not as an import of
    this test module."""
    def on_worker(model, span):
        import os

        return span, os.getpid(), model["loaded_by"]

    def load():
        import os

        return {"loaded_by": os.getpid()}

    return on_worker, load


def test_model_passes_run_on_the_workers_in_span_order(tmp_path, monkeypatch):
    """On a local cluster started from ``workers``: its scratch space is its own, and removed."""
    pytest.importorskip("distributed")
    from xaicxr.executors.dask_cluster import DaskExecutor

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # where the workers' scratch space may go
    on_worker, load = _tasks()
    with socket.socket() as dask_port, warnings.catch_warnings():
        with contextlib.suppress(OSError):
            dask_port.bind(("", 8787))  # as another cluster's scheduler would: Dask's default port is taken
        warnings.simplefilter("error")
        cluster = DaskExecutor(workers=2)
    with cluster:
        passes = ModelExecutor(lambda: cluster, model=lambda: pytest.fail("the driver's model is not used"),
                               load=load, load_key=("test", str(tmp_path)))
        results = passes.map_spans(on_worker, 23, 2)
        assert len(list(scratch.iterdir())) == 1, "the cluster's scratch space"
    assert list(scratch.iterdir()) == [], "removed when the cluster closes"
    assert [span for span, _, _ in results] == [(i, min(i + 2, 23)) for i in range(0, 23, 2)]
    assert os.getpid() not in {pid for _, pid, _ in results}, "every task ran on a worker"
    assert all(pid == loaded_by for _, pid, loaded_by in results), "each worker loads its own model"


def test_local_model_passes_use_the_model_here():
    on_worker, _ = _tasks()
    here = os.getpid()
    passes = ModelExecutor(LocalExecutor, model=lambda: {"loaded_by": here})
    assert passes.map_spans(on_worker, 5, 2) == [((0, 2), here, here), ((2, 4), here, here), ((4, 5), here, here)]


class CountingCluster(LocalExecutor):
    """Stands in for a Dask cluster: counts how many are started and closed."""

    local = False
    started: list["CountingCluster"] = []
    closed: list["CountingCluster"] = []

    def __init__(self, **options) -> None:
        CountingCluster.started.append(self)

    def close(self) -> None:
        CountingCluster.closed.append(self)


@pytest.fixture
def counting_cluster(monkeypatch):
    monkeypatch.setattr("xaicxr.executors.dask_cluster.DaskExecutor", CountingCluster)
    monkeypatch.setattr(CountingCluster, "started", [])
    monkeypatch.setattr(CountingCluster, "closed", [])
    return CountingCluster


def test_runs_inside_shared_executors_share_one_per_run_table(counting_cluster):
    pytest.importorskip("distributed")
    dask = {"executor": "dask", "workers": 2}
    with shared_executors():
        first, second = make_executor(dask), make_executor(dask)
        other = make_executor({**dask, "workers": 3})
        first.close(), second.close()
        assert counting_cluster.closed == []
        assert first.inner is second.inner and other.inner is not first.inner
    assert counting_cluster.started == counting_cluster.closed and len(counting_cluster.started) == 2
    make_executor(dask).close()
    assert len(counting_cluster.started) == len(counting_cluster.closed) == 3, "outside the block: one per run"


@pytest.mark.xdist_group("light")
def test_a_study_starts_one_cluster_for_all_its_variants(shared_runs, tmp_path, counting_cluster):
    pytest.importorskip("distributed")
    study = tmp_path / "study.toml"
    study.write_text(tiny_study({"explain": [[{"name": "gradcam", "layer": "block4_conv4", "split": "val"}],
                                             [{"name": "gradcam", "layer": "block3_conv4", "split": "val"}]]},
                                aggregate=[{"name": "mean"}], quality={"metrics": ["localisation"]},
                                probe={"enabled": False}, run={"executor": "dask", "workers": 2}))
    out = tmp_path / "out"
    seed_first_variant(study, shared_runs.run(LIGHT), out)
    result = runner.invoke(app, ["study", str(study), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    variants = json.loads(result.stdout)["variants"]
    assert len({row["variant"] for row in variants}) == 2
    assert all("explain" in row["stages_run"] for row in variants), "each variant used the executor"
    assert len(counting_cluster.started) == 1, "one cluster for the study, not one per variant"
    assert counting_cluster.closed == counting_cluster.started


def test_filled_passes_fill_each_row_as_the_fill_plugin_does_whatever_the_spans():
    """Region reliance fills and scores on the executor: a row's fill (ROAD noise from (seed,
    row, 0), blur from the whole set's prepared values) does not depend on how rows are cut."""
    import numpy as np

    from xaicxr.plugins import get
    from xaicxr_builtins.metrics.region_reliance import filled_on

    rng = np.random.default_rng(0)
    images = rng.random((7, 16, 16)).astype(np.float32)
    removed = rng.random(images.shape) < 0.3
    model = lambda x, training=False: np.asarray(x).reshape(len(x), -1)[:, :3]  # noqa: E731  first pixels as "scores"
    passes = ModelExecutor(LocalExecutor, model=lambda: model)
    for fill in (get("fill", "road")(noise=0.05), get("fill", "blur")(sigma=20.0)):
        whole = fill.fill(images, removed, seed=4).reshape(7, -1)[:, :3]
        filled = filled_on(passes, batch_size=3)
        np.testing.assert_allclose(filled(images, removed, fill, 4), whole, atol=2e-4)
        np.testing.assert_array_equal(filled(images, removed, fill, 4), filled(images, removed, fill, 4))
