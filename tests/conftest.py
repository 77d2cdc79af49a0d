from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # one thread per xdist worker: with as many workers as cores, TensorFlow's own thread pools
    # (one thread per core each) only oversubscribe the machine
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CXR3 = SHARED_DATA / "cxr3-real"


@pytest.fixture
def fresh_plugins():
    """Rediscover plugins before and after the test, so fixtures installed by it don't leak."""
    from xaicxr import plugins

    plugins.reset()
    yield plugins
    plugins.reset()


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch, fresh_plugins):
    """Install a real distribution (a ``.dist-info`` with entry points) on ``sys.path``.

    ``make(dist, modules={name: source}, entry_points={ep_name: module})``.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(dist: str, modules: dict[str, str], entry_points: dict[str, str], version: str = "1.0") -> Path:
        for name, source in modules.items():
            (site / f"{name}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[xaicxr]\n{eps}\n")
        for name in modules:
            sys.modules.pop(name, None)
        fresh_plugins.reset()
        return info

    yield make
    fresh_plugins.reset()


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory):
    """Pipeline runs built once per session and shared across tests and xdist workers
    (:mod:`shared_runs`); read them, or work on a ``copy_run`` of one."""
    from shared_runs import SharedRuns, session_root

    return SharedRuns(session_root(tmp_path_factory))


@pytest.fixture(scope="session")
def dask_address():
    """The scheduler address of one local Dask cluster (2 worker processes) shared by the tests
    that run stages on a cluster: each start costs every worker a TensorFlow import. Starting a
    local cluster from ``[run] workers`` is tested on its own (test_quality_executor.py)."""
    pytest.importorskip("distributed")
    from xaicxr.executors.dask_cluster import DaskExecutor

    with DaskExecutor(workers=2) as cluster:
        yield cluster.client.scheduler.address
