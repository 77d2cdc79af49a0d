"""The heatmap store: schema, resume after a killed writer, refusal of another model's store."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import xaicxr
from xaicxr import plugins
from xaicxr.errors import ModelMismatchError, StoreError
from xaicxr.io.heatmap_store import Columns, HeatmapStore, partial_path
from xaicxr.rundir import RunDir
from xaicxr.stages.explain import ExplainJob, explain_to_store

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CLASSES = ["normal", "bacteria", "virus", "covid"]
N, SIZE, BATCH = 22, 32, 4


def _images(start: int, stop: int) -> np.ndarray:
    """Deterministic images, generated per row so any batch split gives the same pixels."""
    return np.stack([np.random.default_rng(row).random((SIZE, SIZE, 1), dtype=np.float32)
                     for row in range(start, stop)])


def _columns() -> dict:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=N).astype(np.float32)
    labels = rng.integers(0, len(CLASSES), N)
    return {"ids": [f"img-{i:03d}-é" for i in range(N)], "labels": labels,
            "predictions": probs.argmax(1), "probs": probs, "targets": labels}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import keras

    from xaicxr.io.modelfile import model_sha256, save_model

    keras.utils.set_random_seed(3)
    model = plugins.get("backbone", "vgg19")(weights="none", width=0.125, input_size=SIZE,
                                            dense=[16], dropout=0.0).build(CLASSES)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    save_model(model, path)
    return model, path, model_sha256(path)


def _write(path: Path, model, sha: str, *, layer=None, params=None, all_classes=False,
           images=_images, overwrite=False, dtype="float16", **columns) -> Path:
    """The explain stage's writer with Grad-CAM, any column replaced by a keyword."""
    job = ExplainJob(name="gradcam", explainer=plugins.get("explainer", "gradcam")(), layer=layer,
                     targets="all" if all_classes else "true", split="test", batch_size=BATCH,
                     params=params or {})
    cols = Columns.of(**{**_columns(), **columns}, n_classes=len(CLASSES))
    return explain_to_store(path, job, model, sha, CLASSES, cols, images, overwrite=overwrite,
                            dtype=dtype, progress=False)


def _content(path: Path) -> dict:
    with h5py.File(path, "r") as h5:
        data = {name: h5[name][()] for name in h5}
        data["attrs"] = {k: h5.attrs[k] for k in sorted(h5.attrs)}
        data["chunks"] = {name: h5[name].chunks for name in h5}
    return data


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _interrupt_after(rows: int):
    """An images callback that stops the writer like Ctrl-C once ``rows`` are written."""
    def images(start, stop):
        if start >= rows:
            raise KeyboardInterrupt
        return _images(start, stop)
    return images


def test_schema(tmp_path, saved_model):
    model, _, sha = saved_model
    path = _write(RunDir(tmp_path).heatmaps("gradcam"), model, sha, all_classes=True)
    assert path == tmp_path / "heatmaps" / "gradcam.h5" and not partial_path(path).exists()
    cols = _columns()
    with h5py.File(path, "r") as h5:
        hm = h5["heatmaps"]
        assert hm.shape == (N, SIZE, SIZE) and hm.dtype == np.float16
        assert hm.compression == "gzip" and hm.chunks == (1, SIZE, SIZE)
        values = hm[()]
        assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
        assert [s.decode() for s in h5["ids"][()]] == cols["ids"]
        assert h5["ids"].dtype.metadata["vlen"] is str
        for name in ("labels", "predictions", "targets"):
            assert np.issubdtype(h5[name].dtype, np.integer) and h5[name].shape == (N,)
            np.testing.assert_array_equal(h5[name][()], cols[name])
        assert h5["probs"].shape == (N, len(CLASSES))
        assert h5["degenerate"].dtype == bool and h5["degenerate"].shape == (N,)
        assert h5["heatmaps_all"].shape == (N, len(CLASSES), SIZE, SIZE)
        attrs = dict(h5.attrs)
        assert attrs["explainer"] == "gradcam" and attrs["layer"] == "block5_conv4"
        assert json.loads(attrs["classes"]) == CLASSES
        assert attrs["model_sha256"] == sha and attrs["xaicxr_version"] == xaicxr.__version__
        assert json.loads(attrs["params"]) == {}
        assert "done" not in attrs
        rows = np.arange(N)
        np.testing.assert_array_equal(h5["heatmaps_all"][()][rows, cols["targets"]], values)

    with HeatmapStore(path) as store:
        assert store.classes == CLASSES and store.ids == cols["ids"] and len(store) == N
        assert store.layer == "block5_conv4" and store.has_all_classes
        picked = store.read([5, 1, 5])
        assert picked.dtype == np.float32
        np.testing.assert_array_equal(picked, values[[5, 1, 5]].astype(np.float32))
        seen = np.concatenate([maps for _, maps in store.batches(batch_size=5)])
        np.testing.assert_array_equal(seen, values.astype(np.float32))


def test_maps_match_the_explainer(tmp_path, saved_model):
    model, _, sha = saved_model
    path = _write(tmp_path / "g.h5", model, sha, dtype="float32")
    gradcam = plugins.get("explainer", "gradcam")()
    direct = gradcam.explain(model, _images(0, N), _columns()["targets"])
    with HeatmapStore(path) as store:
        np.testing.assert_allclose(store.read(), direct, atol=1e-6)


_CHILD = textwrap.dedent("""
    import os, sys, time
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, {tests!r})
    import test_heatmap_store as t
    from xaicxr.io.modelfile import load_model

    model = load_model({model!r})

    def slow_images(start, stop):
        print(start, flush=True)  # every row before `start` is written and flushed
        time.sleep(0.2)
        return t._images(start, stop)

    t._write(t.Path({store!r}), model, {sha!r}, images=slow_images)
    print("finished", flush=True)
""")


def test_resume_after_kill_gives_identical_store(tmp_path, saved_model):
    model, model_file, sha = saved_model
    killed = tmp_path / "killed" / "gradcam.h5"
    code = _CHILD.format(tests=str(Path(__file__).parent), model=str(model_file),
                         store=str(killed), sha=sha)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "the writer exited before it could be killed"
            if line.strip().isdigit() and int(line) >= 3 * BATCH:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    partial = partial_path(killed)
    assert not killed.exists() and partial.exists()
    with h5py.File(partial, "r") as h5:
        done = int(h5.attrs["done"])
    assert 3 * BATCH <= done < N

    calls = []

    def counting(start, stop):
        calls.append(start)
        return _images(start, stop)

    _write(killed, model, sha, images=counting)
    assert calls[0] == done, "resumed from the first unfinished batch"
    assert not partial.exists()

    whole = _write(tmp_path / "whole" / "gradcam.h5", model, sha)
    a, b = _content(killed), _content(whole)
    assert a.keys() == b.keys()
    for key in a:
        if key in ("attrs", "chunks"):
            assert a[key] == b[key]
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert _sha(killed) == _sha(whole), "byte-identical to an uninterrupted run"


def test_finished_store_is_reused_and_other_model_refused(tmp_path, saved_model):
    model, _, sha = saved_model
    path = _write(tmp_path / "gradcam.h5", model, sha)
    stamp = path.stat().st_mtime_ns
    calls = []
    _write(path, model, sha, images=lambda a, b: calls.append(a) or _images(a, b))
    assert calls == [] and path.stat().st_mtime_ns == stamp

    with pytest.raises(ModelMismatchError, match="another model.*overwrite"):
        _write(path, model, "0" * 64)
    _write(path, model, "0" * 64, overwrite=True)
    with HeatmapStore(path) as store:
        assert store.model_sha256 == "0" * 64


def test_partial_of_other_model_refused(tmp_path, saved_model):
    model, _, sha = saved_model
    path = tmp_path / "gradcam.h5"

    with pytest.raises(KeyboardInterrupt):
        _write(path, model, sha, images=_interrupt_after(2 * BATCH))
    assert partial_path(path).exists() and not path.exists()
    with pytest.raises(ModelMismatchError):
        _write(path, model, "f" * 64)
    _write(path, model, "f" * 64, overwrite=True)
    assert not partial_path(path).exists()


def test_changed_parameters_restart(tmp_path, saved_model):
    model, _, sha = saved_model
    path = tmp_path / "gradcam.h5"
    _write(path, model, sha)
    calls = []
    _write(path, model, sha, params={"note": "other"},
           images=lambda a, b: calls.append(a) or _images(a, b))
    assert calls[0] == 0
    with HeatmapStore(path) as store:
        assert store.params == {"note": "other"}

    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "p.h5", model, sha, images=_interrupt_after(2 * BATCH))
    calls.clear()
    _write(tmp_path / "p.h5", model, sha, layer="block4_conv4",
           images=lambda a, b: calls.append(a) or _images(a, b))
    assert calls[0] == 0, "a partial store made at another layer is not resumed"
    with HeatmapStore(tmp_path / "p.h5") as store:
        assert store.layer == "block4_conv4"


def test_bad_inputs_and_missing_store(tmp_path, saved_model):
    model, _, sha = saved_model
    with pytest.raises(StoreError, match="labels has 3 rows"):
        _write(tmp_path / "x.h5", model, sha, labels=[0, 1, 2])
    with pytest.raises(StoreError, match="targets must be class indices"):
        _write(tmp_path / "t.h5", model, sha, targets=np.full(N, 4))
    with pytest.raises(StoreError, match="returned"):
        _write(tmp_path / "y.h5", model, sha, images=lambda a, b: _images(a, a + 1))
    with pytest.raises(StoreError, match="no heatmap store"):
        HeatmapStore(tmp_path / "none.h5")


def test_empty_store(tmp_path, saved_model):
    model, _, sha = saved_model
    empty = {"ids": [], "labels": [], "predictions": [], "probs": np.zeros((0, 4)), "targets": []}
    path = _write(tmp_path / "empty.h5", model, sha, all_classes=True, **empty)
    with HeatmapStore(path) as store:
        assert store.shape == (0, SIZE, SIZE) and store.read().shape == (0, SIZE, SIZE)
        assert list(store.batches()) == []


def test_float16_round_trip_rounds_to_nearest(tmp_path):
    """HDF5's own float32 -> float16 conversion does not round like numpy (measured: 84 of
    147,456 random values 1 ulp off; in a demo store some values just below a power of two were
    halved); the writer casts with numpy, so the store holds numpy's nearest float16."""
    from xaicxr.io.heatmap_store import HeatmapWriter

    maps = np.random.default_rng(0).random((8, 64, 64), dtype=np.float32)
    maps[0, 0, :4] = np.array([0x3E7FF789, 0x3DFFFCF5, 0x3EFFFFF0, 0x3F7FFFFF], dtype=np.uint32).view(np.float32)
    columns = Columns.of(list("abcdefgh"), [0, 1] * 4, [0, 1] * 4, np.full((8, 2), 0.5), [0, 1] * 4, n_classes=2)
    identity = {"explainer": "x", "layer": "", "classes": json.dumps(["p", "q"]), "model_sha256": "0" * 64,
                "xaicxr_version": xaicxr.__version__, "params": "{}"}
    with HeatmapWriter(tmp_path / "x.h5", identity, columns, (64, 64)) as writer:
        writer.write(0, maps, np.zeros(8, bool))
        path = writer.finish()
    with HeatmapStore(path) as store:
        np.testing.assert_array_equal(store.read(), maps.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(store.read()[0, 0, :4], [0.25, 0.125, 0.5, 1.0])
