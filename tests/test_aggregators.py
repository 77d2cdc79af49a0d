"""Aggregators against numpy, merge == whole, state persistence, and template building."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from scipy.stats import trim_mean

from xaicxr import plugins
from xaicxr.plugins.aggregator import Aggregator
from xaicxr.analysis.aggregation import build_templates, finalize_templates, merge_states
from xaicxr.errors import ConfigError
from xaicxr.io.template_store import load_states, read_template_file, save_states
from xaicxr.rundir import RunDir, Shard
from xaicxr.stages.templates import write_templates

SHAPE = (12, 10)
BOUND = 1 / 1024 + 1e-9


def make(name: str, **options) -> Aggregator:
    return plugins.get("aggregator", name)(**options)


def run(agg: Aggregator, data: np.ndarray, batch: int = 7):
    state = agg.init(data.shape[1:])
    for start in range(0, len(data), batch):
        state = agg.update(state, data[start:start + batch])
    return state


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.beta(2, 5, size=(203, *SHAPE)).astype(np.float32)


def test_plugins_are_registered(fresh_plugins):
    for name in ("mean", "std", "median", "trimmed-mean", "pca"):
        assert issubclass(fresh_plugins.get("aggregator", name), Aggregator)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_mean_and_std_exact(data, dtype):
    x = data.astype(dtype)
    reference = x.astype(np.float64)
    np.testing.assert_allclose(make("mean").finalize(run(make("mean"), x)), reference.mean(0), rtol=0, atol=1e-10)
    for ddof in (0, 1):
        std = make("std", ddof=ddof)
        np.testing.assert_allclose(std.finalize(run(std, x)), reference.std(0, ddof=ddof), rtol=0, atol=1e-10)


def test_std_is_stable_with_a_large_offset():
    rng = np.random.default_rng(1)
    x = 1e6 + rng.random((500, 3, 4))
    std = make("std")
    np.testing.assert_allclose(std.finalize(run(std, x, batch=33)), x.std(0), rtol=1e-7)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_median_and_trimmed_mean_within_bound(data, dtype):
    x = data.astype(dtype)
    reference = x.astype(np.float64)
    for n in (len(x), len(x) - 1):  # odd and even counts
        median = make("median")
        assert np.abs(median.finalize(run(median, x[:n])) - np.median(reference[:n], 0)).max() <= BOUND
        for proportion in (0.0, 0.1, 0.25):
            trimmed = make("trimmed-mean", proportion=proportion)
            expected = trim_mean(reference[:n], proportion, axis=0)
            assert np.abs(trimmed.finalize(run(trimmed, x[:n])) - expected).max() <= BOUND


def test_histogram_bound_on_quantised_data_and_clipping():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(64, *SHAPE)) / 255.0
    median = make("median")
    assert np.abs(median.finalize(run(median, x)) - np.median(x, 0)).max() <= BOUND
    outside = np.full((5, *SHAPE), 2.0)
    outside[:2] = -1.0
    state = median.update(median.init(SHAPE), outside)
    np.testing.assert_allclose(median.finalize(state), 1 - 1 / 1024)


def test_histogram_rejects_nan():
    for dtype in (np.float16, np.float32):
        x = np.zeros((3, *SHAPE), dtype)
        x[1, 2, 3] = np.nan
        for name in ("median", "mean", "std", "pca"):
            agg = make(name)
            with pytest.raises(ValueError, match="NaN"):
                agg.update(agg.init(SHAPE), x)


@pytest.mark.parametrize("name", ["mean", "std", "median", "trimmed-mean"])
def test_merge_of_halves_equals_whole(data, name):
    agg = make(name)
    whole = run(agg, data, batch=64)
    merged = agg.merge(run(agg, data[:90]), run(agg, data[90:]))
    if name in ("median", "trimmed-mean"):
        assert states_equal(whole, merged)
    else:
        for key in whole:
            np.testing.assert_allclose(merged[key], whole[key], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(agg.finalize(merged), agg.finalize(whole), rtol=1e-12, atol=1e-12)


def test_merge_does_not_modify_second_state(data):
    for name in ("mean", "std", "median", "pca"):
        agg = make(name)
        b = run(agg, data[100:])
        before = {k: np.copy(v) for k, v in b.items()}
        agg.merge(run(agg, data[:100]), b)
        assert states_equal(b, before)


def test_state_size_does_not_depend_on_n(data):
    def size(state):
        return sum(np.asarray(v).nbytes for v in state.values())

    for name in ("mean", "std", "median", "trimmed-mean", "pca"):
        agg = make(name, k=2, oversample=3) if name == "pca" else make(name)
        assert size(run(agg, data[:20])) == size(run(agg, data))


def test_histogram_counters_widen_past_uint16():
    median = make("median")
    state = median.init((2, 2))
    state["n"] = 65_530
    state["counts"][..., 100] = 65_530
    state = median.update(state, np.full((10, 2, 2), 0.9))
    assert state["counts"].dtype == np.uint32 and state["counts"][0, 0, 460] == 10
    np.testing.assert_allclose(median.finalize(state), 100.5 / 512)


@pytest.mark.parametrize("name", ["mean", "std", "median", "trimmed-mean", "pca"])
def test_state_roundtrip_through_hdf5(tmp_path, data, name):
    agg = make(name)
    state = run(agg, data[:50])
    with h5py.File(tmp_path / "s.h5", "w") as f:
        agg.save_state(state, f.create_group("state"))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        loaded = agg.load_state(f["state"])
    assert loaded.keys() == state.keys()
    for key in state:
        assert np.array_equal(loaded[key], state[key])
        assert np.asarray(loaded[key]).dtype == np.asarray(state[key]).dtype
    np.testing.assert_array_equal(agg.finalize(loaded), agg.finalize(state))


def test_load_state_refuses_other_options(tmp_path, data):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        make("std", ddof=1).save_state(run(make("std", ddof=1), data[:5]), f.create_group("s"))
    with h5py.File(tmp_path / "s.h5", "r") as f, pytest.raises(ValueError, match="ddof"):
        make("std").load_state(f["s"])


def test_bad_options_and_shapes():
    with pytest.raises(ValueError):
        make("median", bins=64)
    with pytest.raises(ValueError):
        make("trimmed-mean", proportion=0.5)
    mean = make("mean")
    with pytest.raises(ValueError, match="shape"):
        mean.update(mean.init(SHAPE), np.zeros((2, 3, 3)))


def _planted(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    size = SHAPE[0] * SHAPE[1]
    u = rng.normal(size=size)
    u /= np.linalg.norm(u)
    w = rng.normal(size=size)
    w -= (w @ u) * u
    w /= np.linalg.norm(w)
    mean = rng.random(size)
    data = mean + rng.normal(0, 2, (n, 1)) * u + rng.normal(0, 0.7, (n, 1)) * w + rng.normal(0, 0.01, (n, size))
    return data.reshape(n, *SHAPE), u, w


def test_pca_recovers_planted_components():
    data, u, w = _planted(400)
    pca = make("pca", k=3)
    state = run(pca, data, batch=50)
    components = pca.finalize(state)
    assert components.shape == (3, *SHAPE)
    assert abs(components[0].ravel() @ u) > 0.99
    assert abs(components[1].ravel() @ w) > 0.99
    ratio = pca.explained_variance_ratio(state)
    assert ratio[0] > ratio[1] > ratio[2] and 0.95 < ratio[:2].sum() <= 1
    first = components[0].ravel()
    assert first[np.abs(first).argmax()] > 0  # sign convention


def test_pca_merge_of_halves_matches_whole():
    data, _, _ = _planted(300, seed=4)
    pca = make("pca", k=2)
    whole = run(pca, data, batch=40)
    merged = pca.merge(run(pca, data[:130]), run(pca, data[130:]))
    for a, b in zip(pca.finalize(whole), pca.finalize(merged)):
        assert abs(a.ravel() @ b.ravel()) > 0.99
    np.testing.assert_allclose(pca.explained_variance(merged), pca.explained_variance(whole), rtol=1e-3)
    np.testing.assert_allclose(merged["mean"], whole["mean"], atol=1e-12)


def test_pca_equals_full_svd_when_rank_fits():
    rng = np.random.default_rng(5)
    x = rng.random((12, *SHAPE))  # 12 heatmaps: centred rank 11 <= k + oversample
    pca = make("pca", k=4, oversample=10)
    state = run(pca, x, batch=5)
    flat = x.reshape(len(x), -1)
    _, s, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    components = pca.finalize(state).reshape(4, -1)
    for got, want in zip(components, vt[:4]):
        assert abs(got @ want) > 1 - 1e-9
    np.testing.assert_allclose(pca.explained_variance(state), s[:4] ** 2 / (len(x) - 1), rtol=1e-9)
    total = ((flat - flat.mean(0)) ** 2).sum()
    np.testing.assert_allclose(pca.explained_variance_ratio(state), s[:4] ** 2 / total, rtol=1e-9)


def test_pca_with_fewer_heatmaps_than_components():
    pca = make("pca", k=4)
    state = run(pca, np.random.default_rng(6).random((3, *SHAPE)))
    components = pca.finalize(state)
    assert np.count_nonzero(np.abs(components).reshape(4, -1).sum(1)) == 2  # 3 maps: centred rank 2
    assert pca.finalize(pca.init(SHAPE)).shape == (4, *SHAPE)


# --- template building ---------------------------------------------------------------

CLASSES = ["normal", "bacteria", "virus", "covid"]


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(7)
    n = 150
    labels = rng.integers(0, 3, n)  # no covid: an empty class
    predictions = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 4, n))
    heatmaps = np.clip(rng.random((n, *SHAPE)) * 0.5 + labels[:, None, None] * 0.2, 0, 1).astype(np.float16)
    path = tmp_path / "heatmaps" / "gradcam.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f.create_dataset("heatmaps", data=heatmaps, chunks=(4, *SHAPE))
        f.create_dataset("labels", data=labels)
        f.create_dataset("predictions", data=predictions)
        f.create_dataset("ids", data=[f"img{i}" for i in range(n)], dtype=h5py.string_dtype())
        f.attrs["classes"] = json.dumps(CLASSES)
    return path, heatmaps.astype(np.float64), labels, predictions


def _aggregators():
    return {"mean": make("mean"), "median": make("median")}


@pytest.mark.parametrize("by", ["true", "predicted"])
@pytest.mark.parametrize("correct_only", [False, True])
def test_build_templates_by_class(store, by, correct_only):
    path, x, labels, predictions = store
    rows = np.arange(0, len(x), 2)
    states = build_templates(path, _aggregators(), by=by, correct_only=correct_only, rows=rows, chunk=16)
    templates = finalize_templates(states, _aggregators())
    group = labels if by == "true" else predictions
    keep = np.zeros(len(x), bool)
    keep[rows] = True
    if correct_only:
        keep &= labels == predictions
    for k, cls in enumerate(CLASSES):
        mine = x[keep & (group == k)]
        assert states["mean"][cls]["n"] == states["median"][cls]["n"] == len(mine)
        if len(mine):
            np.testing.assert_allclose(templates["mean"][cls], mine.mean(0), atol=1e-10)
            assert np.abs(templates["median"][cls] - np.median(mine, 0)).max() <= BOUND
        else:
            assert not templates["mean"][cls].any() and not templates["median"][cls].any()


def test_shards_merge_to_the_unsharded_states(store, tmp_path):
    path, *_ = store
    whole = build_templates(path, _aggregators(), chunk=8)
    files = []
    for k in range(3):
        part = build_templates(path, _aggregators(), chunk=8, span=Shard(k, 3).bounds(150))
        files.append(tmp_path / f"shard{k}.h5")
        save_states(files[-1], part, _aggregators(), by="true", correct_only=False, shard=[k, 3])
    loaded = [load_states(f, _aggregators()) for f in reversed(files)]
    assert loaded[0][1]["shard"] == [2, 3]
    merged = merge_states([states for states, _ in loaded], _aggregators())
    for name in whole:
        for cls in CLASSES:
            assert states_equal(merged[name][cls], whole[name][cls])


def test_shard_ranges_cover_all_rows():
    assert [Shard(k, 3).bounds(10) for k in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert Shard.parse("2/3") == Shard(2, 3)
    for bad in ("3/3", "1/0", "a/b", "1"):
        with pytest.raises(ConfigError, match="K/N"):
            Shard.parse(bad)


def test_template_file_schema(store, tmp_path):
    path, x, labels, _ = store
    aggs = {"median": make("median"), "pca": make("pca", k=2)}
    states = build_templates(path, aggs, by="true", correct_only=False)
    rundir = RunDir(tmp_path / "run")
    finished = write_templates(rundir, "gradcam", states, aggs, by="true", correct_only=False)
    written = {name: rundir.template("gradcam", name) for name in aggs}
    assert written["median"] == tmp_path / "run" / "templates" / "gradcam-median.h5"
    median = read_template_file(written["median"])
    assert all(np.array_equal(median[cls][0], finished["median"][cls]) for cls in CLASSES)
    assert list(median) == CLASSES
    for k, cls in enumerate(CLASSES):
        template, attrs = median[cls]
        assert template.shape == SHAPE and template.dtype == np.float32
        assert attrs["n"] == np.sum(labels == k)
        assert attrs["aggregator"] == "median" and attrs["by"] == "true" and attrs["correct_only"] == False  # noqa: E712
    assert not median["covid"][0].any() and median["covid"][1]["n"] == 0
    pca = read_template_file(written["pca"])
    template, attrs = pca["normal"]
    assert template.shape == (2, *SHAPE)
    assert attrs["explained_variance_ratio"].shape == (2,)
    assert sorted((tmp_path / "run" / "templates").iterdir()) == sorted(written.values())  # no temp files


def test_histogram_counts_exactly():
    x = np.random.default_rng(8).random((9, 48, 40)).astype(np.float16)  # 15 tiles of 128 pixels
    state = run(make("median"), x, batch=4)
    bins = np.minimum(np.floor(x.astype(np.float64) * 512), 511).astype(int).reshape(9, -1)
    expected = np.zeros((48 * 40, 512), np.int64)
    np.add.at(expected, (np.arange(48 * 40)[None], bins), 1)
    assert np.array_equal(state["counts"].reshape(-1, 512), expected)


def test_float16_fast_sum_is_exact():
    from xaicxr_builtins.aggregators.moments import float64_sum

    values = np.arange(0x3C01, dtype=np.uint16).view(np.float16)  # every float16 in [0, 1]
    x = np.random.default_rng(9).permutation(values)[:15360].reshape(40, 24, 16)
    np.testing.assert_array_equal(float64_sum(x), x.astype(np.float64).sum(0))
    x[3, 4, 5] = -0.25
    np.testing.assert_array_equal(float64_sum(x), x.astype(np.float64).sum(0))


def test_build_templates_raises_on_nan(store):
    path, *_ = store
    with h5py.File(path, "r+") as f:
        f["heatmaps"][70, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_templates(path, _aggregators(), chunk=8)
