"""``xaicxr compare``: templates of several runs, and ``xaicxr study``'s comparison of its variants."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from shared_runs import LIGHT, STUDY, copy_run
from xaicxr.cli import app

runner = CliRunner()
pytestmark = pytest.mark.xdist_group("light")  # they share the LIGHT run: one worker builds it


CLASSES = ["normal", "bacteria", "virus", "covid"]


@pytest.fixture
def tiny_run(shared_runs):
    """The shared trained run with heatmaps of every image and mean, median and std templates."""
    return shared_runs.run(LIGHT)


def _compare(*args):
    result = runner.invoke(app, ["compare", *map(str, args), "--partitions", "4", "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _rewrite_templates(run, name, change):
    with h5py.File(run / "templates" / f"{name}.h5", "r+") as f:
        for cls in list(f):
            data, attrs = f[cls][()], dict(f[cls].attrs)
            del f[cls]
            new = change(cls, data)
            if new is not None:
                f.create_dataset(cls, data=new).attrs.update(attrs)


def test_identical_runs_agree_fully_and_the_cli_writes_json_and_figures(tiny_run, tmp_path):
    twin = copy_run(tiny_run, tmp_path / "twin")
    out = tmp_path / "cmp"
    result = _compare(tiny_run, twin, "--out", out)
    assert [r["name"] for r in result["runs"]] == ["run", "twin"]
    assert set(result["templates"]) == {"gradcam-mean", "gradcam-median", "gradcam-std"}
    mean = result["templates"]["gradcam-mean"]
    assert (mean["explainer"], mean["aggregator"], mean["shape"], mean["resampled_from"]) == \
        ("gradcam", "mean", [32, 32], {})
    assert list(mean["classes"]) == CLASSES
    for entry in result["templates"].values():
        for cls, c in entry["classes"].items():
            (pair,) = c["pairs"]
            assert pair["ssim"] == pytest.approx(1.0)
            if entry["aggregator"] == "mean":
                assert pair["pearson"] == pytest.approx(1.0)
            assert (out / c["figure"]).is_file()
            assert all(band["partitions"] == 4 for band in c["self"].values())
    assert json.loads((out / "compare.json").read_text())["templates"].keys() == result["templates"].keys()


def test_a_shuffled_template_is_less_similar_and_every_band_is_a_correlation(tiny_run, tmp_path):
    run, shuffled = copy_run(tiny_run, tmp_path / "run"), copy_run(tiny_run, tmp_path / "shuffled")
    for copy in (run, shuffled):
        (copy / "templates" / "gradcam-median.h5").unlink()
    rng = np.random.default_rng(0)
    _rewrite_templates(shuffled, "gradcam-mean", lambda cls, t: rng.permutation(t.ravel()).reshape(t.shape))
    result = _compare(run, shuffled, "--out", tmp_path / "cmp")
    for cls, c in result["templates"]["gradcam-mean"]["classes"].items():
        (pair,) = c["pairs"]
        assert pair["pearson"] < 0.5 and pair["ssim"] < 0.5, cls
        for band in c["self"].values():
            assert band["partitions"] == 4 and band["half_n"] == [6, 6]
            for figure in ("pearson", "pearson_full_size", "ssim"):
                lo, hi = band[figure]["partition_spread"]
                assert -1 <= lo <= band[figure]["mean"] <= hi <= 1
            assert band["pearson_full_size"]["mean"] >= band["pearson"]["mean"]
        assert pair["pearson_within_self_spread"] is False


def test_other_sizes_are_resampled_and_unshared_classes_or_templates_are_listed(tiny_run, tmp_path):
    other = copy_run(tiny_run, tmp_path / "other")
    _rewrite_templates(other, "gradcam-mean",
                       lambda cls, t: None if cls == "covid" else np.kron(t, np.ones((2, 2), t.dtype)))
    (other / "templates" / "gradcam-median.h5").unlink()
    result = _compare(tiny_run, other, "--out", tmp_path / "cmp")
    mean = result["templates"]["gradcam-mean"]
    assert mean["shape"] == [32, 32] and mean["resampled_from"] == {"other": [64, 64]}
    assert list(mean["classes"]) == ["normal", "bacteria", "virus"]
    assert mean["not_compared"] == {"covid": ["run"]}
    assert all(c["pairs"][0]["pearson"] > 0.95 for c in mean["classes"].values())
    assert result["not_compared"] == {"gradcam-median": ["run"]}


def test_compare_errors_are_one_line(tiny_run, tmp_path):
    result = runner.invoke(app, ["compare", str(tiny_run)])
    assert result.exit_code == 2 and "at least two run directories" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["compare", str(tiny_run), str(empty)])
    assert result.exit_code == 2 and "has no templates" in result.stderr
    assert "Traceback" not in result.stderr




@pytest.mark.xdist_group("study")  # the STUDY's group (test_study.py), not the LIGHT run's: the two build side by side
def test_a_study_compares_the_templates_of_its_variants(shared_runs):
    out = shared_runs.study(STUDY)
    table = shared_runs.summary(out)
    names = ["explain=gradcam-block4_conv4", "explain=gradcam-block3_conv4"]
    rows = table["compare"]["rows"]
    assert [(r["template"], r["class"], r["a"], r["b"]) for r in rows] == \
        [("gradcam-mean", cls, *names) for cls in CLASSES]
    assert all(-1 <= r["pearson"] <= 1 and r["self_pearson_a"] is not None for r in rows)
    saved = json.loads((out / "compare" / "compare.json").read_text())
    assert [r["name"] for r in saved["runs"]] == names
    page = (out / "index.html").read_text()
    assert "Templates across variants" in page
    assert all(f'href="compare/{r["figure"]}"' in page and (out / "compare" / r["figure"]).is_file() for r in rows)
    assert "Templates across variants" in (out / "summary.md").read_text()


def test_the_same_run_twice_is_refused_in_one_line(tiny_run, tmp_path):
    """``compare RUN RUN`` (or ``a b a``) used to be an internal error, or a silent drop."""
    other = copy_run(tiny_run, tmp_path / "other")
    for args in ([tiny_run, tiny_run], [tiny_run, other, tiny_run], [tiny_run, tmp_path / "other" / ".." / "other", other]):
        result = runner.invoke(app, ["compare", *map(str, args), "--out", str(tmp_path / "cmp"), "--json"])
        assert result.exit_code == 2 and "more than once" in result.stderr, result.stderr
        assert json.loads(result.stdout)["error"]["type"] == "ConfigError"
