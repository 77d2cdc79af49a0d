"""The metric contract: every built-in metric usable from Python on arrays; options checked when
the configuration is read; a third party's metric registered through an entry point, chosen in
``[quality] metrics`` and found in metrics.json, the report and a study's table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from shared_runs import LIGHT, seed_first_variant, tiny_config
from xaicxr import plugins
from xaicxr.cli import app
from xaicxr.config import resolve
from xaicxr.errors import ConfigError, MetricInputError

runner = CliRunner()

BUILT_IN = {"reliance", "region-reliance", "localisation", "localisation-evidence", "reliability", "template",
            "template-faithfulness", "faithfulness", "randomisation", "distinctiveness"}

BORDER_METRIC = '''
import numpy as np
from xaicxr import hookimpl
from xaicxr.analysis.intervals import bootstrap_mean
from xaicxr.plugins import MapMetric


class CornerEnergy(MapMetric):
    key = "corner_energy"
    title = "Energy in the corners"
    baselines = ("uniform",)

    def __init__(self, corner: int = 4) -> None:
        if corner < 1:
            raise ValueError(f"'corner' must be at least 1, got {corner}")
        self.corner = corner

    def scores(self, maps):
        c = self.corner
        mass = maps.reshape(len(maps), -1).sum(axis=1)
        corners = sum(maps[:, r, s].sum(axis=(1, 2)) for r in (slice(0, c), slice(-c, None))
                      for s in (slice(0, c), slice(-c, None)))
        return {"corner": np.divide(corners, mass, out=np.full(len(maps), np.nan), where=mass > 0)}

    def figures(self, scores, baselines=None, seed=0):
        out = {"corner_energy": bootstrap_mean(scores["corner"], seed=seed)}
        for name, s in (baselines or {}).items():
            out[f"{name}_corner_energy"] = bootstrap_mean(s["corner"], seed=seed)
        return out


@hookimpl
def xaicxr_metric():
    return {"corner-energy": CornerEnergy}
'''

TINY = tiny_config(
    explain=[{"name": "gradcam", "layer": "block4_conv4"},
             {"name": "gradcam", "layer": "block4_conv4", "target": "probability"}],
    quality={"metrics": ["localisation", "corner-energy", "randomisation"], "randomisation_images": 4,
             "randomisation_draws": 1, "corner-energy": {"corner": 3}})


def _blobs(n: int = 12, size: int = 32, seed: int = 0):
    """Maps peaked on a square lesion (or, for the second half, on the far corner)."""
    rng = np.random.default_rng(seed)
    lesion = np.zeros((n, size, size), bool)
    lesion[:, 8:16, 8:16] = True
    lung = np.zeros((n, size, size), bool)
    lung[:, 4:28, 4:28] = True
    maps = rng.random((n, size, size)).astype(np.float32) * 0.2
    maps[: n // 2, 11, 11] = 1.0
    maps[n // 2:, 26, 26] = 1.0
    return maps, lesion, lung


def test_every_built_in_metric_is_a_registered_plugin(fresh_plugins):
    listed = {r["name"]: r for r in plugins.available() if r.get("kind") == "metric"}
    assert BUILT_IN <= set(listed)
    assert {listed[name]["distribution"] for name in BUILT_IN} == {"xaicxr"}
    for name in BUILT_IN:
        cls = plugins.get("metric", name)
        assert issubclass(cls, plugins.Metric) and cls.key and cls.scope in {"maps", "template", "templates",
                                                                               "explainer", "run"}


def test_localisation_from_python_on_arrays_with_a_baseline():
    maps, lesion, lung = _blobs()
    metric = plugins.get("metric", "localisation")(tolerance=0.0)
    figures = metric.evaluate(maps, lesion=lesion, lung=lung, baselines={"uniform": np.ones((32, 32))})
    assert figures["pointing_game"]["value"] == pytest.approx(0.5)
    assert figures["pointing_game"]["n"] == 12 and len(figures["pointing_game"]["ci95"]) == 2
    skill = figures["skill"]["pointing_game"]
    uniform_share = lesion[0].sum() / lesion[0].size  # a flat map's peak is every pixel: chance
    assert skill["baseline"] == "uniform" and skill["value"] == pytest.approx(0.5 - uniform_share)
    degenerate = metric.evaluate(maps, lesion=lesion, lung=lung, degenerate=np.ones(12, bool))
    assert degenerate["pointing_game"]["value"] == 0.0, "a degenerate map is a miss, whatever its pixels"


def test_a_missing_input_names_the_metric_and_the_input():
    maps, lesion, _ = _blobs()
    with pytest.raises(MetricInputError, match="Localisation needs 'lung'"):
        plugins.get("metric", "localisation")().evaluate(maps, lesion=lesion)


def test_reliability_and_templates_from_python():
    maps, lesion, lung = _blobs()
    reliability = plugins.get("metric", "reliability")(partitions=5).evaluate(maps, seed=1)
    assert -1 <= reliability["consistency"]["value"] <= 1 and reliability["split_half"]["n"] == 12
    template = maps[:6].mean(axis=0)
    figures = plugins.get("metric", "template")().evaluate(template, n=6, lung=lung, lesion=lesion)
    assert figures["n"] == 6 and figures["peak_in_lungs"] is True
    assert figures["lesion_frequency_r"]["value"] is not None
    matrix = plugins.get("metric", "distinctiveness")().evaluate({"a": template, "b": maps[6:].mean(axis=0)})
    assert matrix["a"]["a"] == pytest.approx(1.0) and matrix["a"]["b"] < 1.0


@pytest.mark.parametrize("quality, message", [
    ({"metrics": ["localisation", "nope"]}, "unknown metric 'nope'"),
    ({"fractions": 1}, "'fractions' must be from 2"),
    ({"fills": ["road", "road"]}, "names a fill twice"),
    ({"fills": ["paint"]}, "'paint', which is not a fill plugin"),
    ({"tolerance": float("nan")}, "'tolerance' must be a finite number"),
    ({"randomisation_images": 0}, "'randomisation_images' must be at least 1"),
    ({"colour": "red"}, "unknown key 'colour' in \\[quality\\]"),
    ({"tolerance": "wide"}, "wrong type for 'tolerance'"),
    ({"metrics": ["localisation"], "fills": ["road"]}, "unknown key 'fills'"),
    ({"metrics": ["localisation"], "reliability": {"partitions": 3}}, "not one of the chosen metrics"),
    ({"reliability": {"partitions": 0}}, "'partitions' must be at least 1"),
    ({"reliability": {"parts": 3}}, "unknown key 'parts' in \\[quality.reliability\\]"),
])
def test_metric_options_are_checked_when_the_config_is_read(quality, message):
    with pytest.raises(ConfigError, match=message):
        resolve({"quality": quality}, "q.toml")


def test_a_top_level_option_goes_to_every_metric_that_takes_it_and_a_table_to_one():
    from xaicxr.config import make_metric

    quality = resolve({"quality": {"tolerance": 0, "template": {"tolerance": 9}}}, "q.toml")["quality"]
    assert quality["tolerance"] == 0.0 and isinstance(quality["tolerance"], float)
    assert make_metric("localisation", quality).tolerance == 0.0
    assert make_metric("template", quality).tolerance == 9
    defaults = resolve({}, "q.toml")["quality"]
    assert defaults["metrics"][0] == "reliance" and set(defaults["metrics"]) == BUILT_IN
    assert defaults["fills"] == ["road", "blur"] and defaults["partitions"] == 20


def test_switches_leave_metrics_out():
    from xaicxr.config import chosen_metrics

    quality = resolve({"quality": {"faithfulness": False, "reliance": False}}, "q.toml")["quality"]
    assert chosen_metrics(quality) == ["localisation", "localisation-evidence", "reliability", "template", "randomisation",
                                       "distinctiveness"]


@pytest.mark.xdist_group("light")  # starts from the LIGHT run's model
def test_a_third_party_metric_runs_in_the_pipeline_report_and_study(fake_distribution, tmp_path, shared_runs):
    fake_distribution("xaicxr-corner", {"corner_metric": BORDER_METRIC}, {"corner": "corner_metric"})
    listed = [r for r in plugins.available() if r.get("name") == "corner-energy"]
    assert listed and listed[0]["distribution"] == "xaicxr-corner" and listed[0]["options"] == {"corner": "4"}
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    study = tmp_path / "study.toml"
    study.write_text(f'base = "{config.name}"\n[matrix]\n"quality.seed" = [0]\n')
    seed_first_variant(study, shared_runs.run(LIGHT), tmp_path / "study")
    result = runner.invoke(app, ["study", str(study), "--out", str(tmp_path / "study"), "--json"])
    assert result.exit_code == 0, result.stderr
    (variant,) = {r["variant"] for r in json.loads(result.stdout)["variants"]}
    out = tmp_path / "study" / variant
    metrics = json.loads((out / "metrics.json").read_text())
    corner = metrics["corner_energy"]
    assert set(corner) == {"gradcam", "gradcam.probability"}, "stores of a configured target are scored too"
    for store in corner.values():
        for figures in store.values():
            assert 0.0 <= figures["corner_energy"]["value"] <= 1.0
            assert figures["uniform_corner_energy"]["value"] == pytest.approx(4 * 9 / 32 ** 2)
    assert set(metrics["sanity"]) == {"gradcam", "gradcam.probability"}
    assert metrics["faithfulness"] == {} and metrics["templates"] == {} and metrics["reliance"] == {}, \
        "a metric not chosen leaves no figures (not even an earlier run's)"
    report = (out / "report" / "index.html").read_text()
    assert report.count("Energy in the corners") == 2, "the default section, once per store"
    resolved = (out / "config.toml").read_text()
    assert "[quality.corner-energy]" in resolved and "corner = 3" in resolved

    rows = json.loads(result.stdout)["variants"]
    by_store = {(r["store"], r["class"]): r for r in rows}
    assert ("gradcam.probability", "bacteria") in by_store, "a store with a target has its own rows"
    targeted = by_store[("gradcam.probability", "bacteria")]
    plain = by_store[("gradcam", "bacteria")]
    assert targeted["corner_energy"] == metrics["corner_energy"]["gradcam.probability"]["bacteria"]["corner_energy"]["value"]
    assert targeted["pointing_game"] == metrics["per_image"]["gradcam.probability"]["bacteria"]["pointing_game"]["value"]
    assert plain["pointing_game"] == metrics["per_image"]["gradcam"]["bacteria"]["pointing_game"]["value"]
    assert targeted["randomisation_passes"] == metrics["sanity"]["gradcam.probability"]["passes"]


def test_a_class_that_is_not_a_metric_is_reported_against_its_plugin(fake_distribution):
    fake_distribution("xaicxr-loose", {"loose_plugin": (
        "from xaicxr import hookimpl\n"
        "class Loose:\n    pass\n"
        "@hookimpl\ndef xaicxr_metric():\n    return {'loose': Loose}\n"
        "@hookimpl\ndef xaicxr_explainers():\n    return {'loose-cam': Loose}\n")}, {"loose": "loose_plugin"})
    failures = [f for f in plugins.available() if f.get("module") == "loose_plugin" and "error" in f]
    errors = " | ".join(f["error"] for f in failures)
    assert "does not subclass xaicxr.plugins.Metric" in errors
    assert "does not subclass xaicxr.plugins.Explainer" in errors
    assert "loose" not in plugins.registry().names("metric")
    assert plugins.get("metric", "localisation").__name__ == "Localisation"


def test_the_extras_packages_border_metric_on_arrays():
    """examples/xaicxr-extras' worked metric (its entry point is exercised by test_extras_package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "xaicxr-extras" / "xaicxr_extras" / "border.py"
    spec = importlib.util.spec_from_file_location("_extras_border", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    metric = module.BorderEnergy(frame=28.0)  # 4 px at 32 px
    maps = np.zeros((6, 32, 32), np.float32)
    maps[:3, 0:2, :] = 1.0        # on the top edge
    maps[3:, 14:18, 14:18] = 1.0  # in the middle
    lung = np.zeros((6, 32, 32), bool)
    lung[:, 6:26, 6:26] = True
    figures = metric.evaluate(maps, lung=lung, baselines={"uniform": np.ones((32, 32), np.float32)})
    assert figures["border_share"]["value"] == pytest.approx(0.5)
    flat_share = 1 - (24 * 24) / (32 * 32)
    assert figures["excess_over_flat"]["value"] == pytest.approx(0.5 - flat_share)
    with pytest.raises(ValueError, match="'frame' must be a positive"):
        module.BorderEnergy(frame=0)
