"""Files made to hurt (issue 14, hardening): a ``model.keras`` that is a zip bomb is refused from
its central directory, before anything is decompressed; a heatmap store with a NaN or infinite
map is refused when written and found corrupt when checked, so the pipeline rebuilds it."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import xaicxr
from shared_runs import LIGHT, copy_run
from xaicxr.errors import ModelFileError, StoreError
from xaicxr.io import verify
from xaicxr.io.heatmap_store import Columns, HeatmapStore, HeatmapWriter

MiB = 1 << 20


# --------------------------------------------------------------------------- zip bombs


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A real (tiny) model saved by xaicxr, and its members."""
    import keras

    from xaicxr.io.modelfile import save_model

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = tmp_path_factory.mktemp("model") / "model.keras"
    save_model(model, path)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    return path, members


def _archive(path: Path, members: dict[str, bytes], big: str, size: int, fill: bytes = b"\0",
             prefix: bytes = b"") -> Path:
    """A zip holding ``members`` but with ``big`` replaced by ``prefix`` and ``size`` bytes of
    ``fill``, deflated as it is streamed (1 MiB at a time: nothing large is held or written)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            if name != big:
                z.writestr(name, data)
        with z.open(big, "w", force_zip64=True) as f:
            f.write(prefix)
            block = fill * MiB
            for _ in range(size // MiB):
                f.write(block)
    return path


def _refused(path: Path) -> str:
    from xaicxr.io.modelfile import load_model

    start = time.perf_counter()
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert time.perf_counter() - start < 5, "refused from the central directory, nothing inflated"
    return str(info.value)


def test_weights_that_expand_a_thousandfold_are_refused_unread(tiny_model, tmp_path):
    """Zeros: without the guard, Keras reads all of them into memory, then h5py fails on them."""
    _, members = tiny_model
    bomb = _archive(tmp_path / "model.keras", members, "model.weights.h5", 160 * MiB)
    assert bomb.stat().st_size < MiB
    message = _refused(bomb)
    assert "model.weights.h5" in message and "zip bomb" in message and "train again" in message
    assert "model.weights.h5" in verify.problem(bomb)


@pytest.mark.parametrize("member", ["config.json", "metadata.json"])
def test_a_description_of_a_hundred_megabytes_is_refused(tiny_model, tmp_path, member):
    """Valid JSON padded with spaces: Keras would parse all of it (and load the model)."""
    _, members = tiny_model
    bomb = _archive(tmp_path / "model.keras", members, member, 100 * MiB, b" ", prefix=members[member])
    message = _refused(bomb)
    assert f"its {member} declares 100.0 MiB" in message and "restore the file" in message


def test_an_archive_larger_than_any_model_is_refused(tiny_model, monkeypatch):
    from xaicxr.io import modelfile

    path, _ = tiny_model
    monkeypatch.setattr(modelfile, "MAX_TOTAL_BYTES", 1024)
    assert "more than the 0.0 MiB a model may hold" in _refused(path)


def test_a_model_xaicxr_saved_still_loads(tiny_model):
    from xaicxr.io.modelfile import load_model

    path, _ = tiny_model
    assert verify.problem(path) is None
    assert load_model(path).output_shape == (None, 2)


# --------------------------------------------------------------------------- non-finite heatmaps


def _writer(path: Path, all_classes: bool = False) -> HeatmapWriter:
    columns = Columns.of(list("abcd"), [0, 1] * 2, [0, 1] * 2, np.full((4, 2), 0.5), [0, 1] * 2, n_classes=2)
    identity = {"explainer": "x", "layer": "", "classes": json.dumps(["p", "q"]), "model_sha256": "0" * 64,
                "xaicxr_version": xaicxr.__version__, "params": "{}"}
    return HeatmapWriter(path, identity, columns, (8, 8), all_classes=all_classes)


def _maps(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def _store(path: Path, all_classes: bool = False) -> Path:
    with _writer(path, all_classes) as writer:
        writer.write(0, _maps((4, 8, 8)), np.zeros(4, bool), _maps((4, 2, 8, 8)), np.zeros((4, 2), bool))
        return writer.finish()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e6])
def test_the_writer_refuses_maps_that_are_not_finite(tmp_path, bad):
    """1e6 is finite in float32 but infinite once stored as float16."""
    maps = _maps((4, 8, 8))
    maps[2, 3, 4] = bad
    with _writer(tmp_path / "x.h5") as writer, pytest.raises(StoreError, match="row 2 .* NaN or infinite"):
        writer.write(0, maps, np.zeros(4, bool))


def test_the_writer_refuses_per_class_maps_that_are_not_finite(tmp_path):
    maps_all = _maps((4, 2, 8, 8))
    maps_all[1, 1, 0, 0] = np.nan
    with _writer(tmp_path / "x.h5", all_classes=True) as writer, \
            pytest.raises(StoreError, match="heatmaps_all row 1"):
        writer.write(0, _maps((4, 8, 8)), np.zeros(4, bool), maps_all, np.zeros((4, 2), bool))


@pytest.mark.parametrize("dataset", ["heatmaps", "heatmaps_all"])
def test_a_nan_put_into_a_store_makes_it_corrupt(tmp_path, dataset):
    path = _store(tmp_path / "heatmaps" / "x.h5", all_classes=True)
    assert verify.problem(path) is None
    with h5py.File(path, "r+") as h5:
        h5[dataset][3, ..., 5] = np.nan
    assert verify.problem(path) == f"{dataset} row 3 holds NaN or infinite values"


def test_verify_reads_a_store_in_blocks(tmp_path, monkeypatch):
    """A block smaller than a row: one row at a time, and the last row is still checked."""
    path = _store(tmp_path / "heatmaps" / "x.h5")
    monkeypatch.setattr(verify, "READ_BLOCK_BYTES", 1)
    assert verify.problem(path) is None
    with h5py.File(path, "r+") as h5:
        h5["heatmaps"][3, 7, 7] = np.inf
    assert verify.problem(path) == "heatmaps row 3 holds NaN or infinite values"


def test_reading_a_nan_map_is_a_store_error(tmp_path):
    path = _store(tmp_path / "x.h5")
    with h5py.File(path, "r+") as h5:
        h5["heatmaps"][2, 0, 0] = np.nan
    with HeatmapStore(path) as store:
        assert store.read([0, 1, 3]).shape == (3, 8, 8)
        with pytest.raises(StoreError, match="heatmap row 2, so it is corrupt"):
            store.read([3, 2])
        with pytest.raises(StoreError, match="heatmap row 2, so it is corrupt"):
            list(store.batches(2))


@pytest.mark.xdist_group("light")
def test_a_nan_in_a_runs_heatmap_store_is_found_and_rebuilt(shared_runs, tmp_path):
    from xaicxr.cli import app

    original = shared_runs.run(LIGHT)
    config = shared_runs.config(original)
    run = copy_run(original, tmp_path / "run")
    store = run / "heatmaps" / "gradcam.h5"
    reference = store.read_bytes()
    with h5py.File(store, "r+") as h5:
        h5["heatmaps"][1, 0, 0] = np.nan
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(run), "--until", "explain", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["stages_run"] == ["explain"]  # and every stage after it, on a full run
    assert "heatmaps/gradcam.h5 is corrupt (heatmaps row 1 holds NaN" in " ".join(result.stderr.split())
    assert store.read_bytes() == reference
