"""``localisation-evidence``: the localisation figures against the pixels a lesion-removed twin
changes, beside those against the lesion mask."""

from __future__ import annotations

import json
import tomllib
from collections import Counter

import h5py
import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from shared_runs import LIGHT, copy_run
from xaicxr.analysis.evidence import EVIDENCE_THRESHOLD, evidence_mask, outside_share
from xaicxr.cli import app
from xaicxr.errors import MetricInputError
from xaicxr.plugins import get

runner = CliRunner()


def _halo_image(n: int = 6, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images whose lesion is a bright core (the mask, rows/columns 10-13) with a fainter halo
    two pixels wide around it that the mask leaves out; the twins are the images without it."""
    twins = np.full((n, size, size), 0.3, np.float32)
    lesion = np.zeros((n, size, size), bool)
    lesion[:, 10:14, 10:14] = True
    added = np.zeros_like(twins)
    added[:, 8:16, 8:16] = 0.05  # the halo: changed, outside the mask
    added[lesion] = 0.4          # the core: the mask
    lung = np.zeros_like(lesion)
    lung[:, 4:28, 4:28] = True
    return twins + added, twins, lesion, lung


def test_a_map_on_the_halo_hits_the_evidence_and_misses_the_mask():
    images, twins, lesion, lung = _halo_image()
    maps = np.zeros(images.shape, np.float32)
    maps[:, 8, 8] = 1.0  # the halo's corner: outside the mask, changed by the lesion
    on_mask = get("metric", "localisation")(tolerance=0.0).evaluate(maps, lesion=lesion, lung=lung)
    on_evidence = get("metric", "localisation-evidence")(tolerance=0.0).evaluate(
        maps, images=images, twins={"lesion_removed": twins}, lung=lung, lesion=lesion)
    assert on_mask["pointing_game"]["value"] == 0.0
    assert on_evidence["pointing_game"]["value"] == 1.0 and on_evidence["pointing_game"]["n"] == len(maps)
    assert on_mask["lesion_energy"]["value"] == 0.0 and on_evidence["evidence_energy"]["value"] == 1.0
    # 64 changed pixels, 16 of them in the mask: three quarters of the evidence lies outside it
    assert on_evidence["evidence_outside_lesion"]["value"] == pytest.approx(0.75)
    assert on_evidence["evidence_area"]["value"] == pytest.approx(64 / 32 ** 2)
    assert on_evidence["n_evidence"] == len(maps) and "lung_energy" not in on_evidence


def test_the_evidence_mask_ignores_rounding_and_a_class_without_a_lesion_has_none():
    images, twins, lesion, lung = _halo_image()
    rounded = twins.astype(np.float16).astype(np.float32) + np.float32(1 / 255)  # one 8-bit level off
    assert not evidence_mask(twins, rounded).any(), "one grey level is below the threshold"
    assert 1 / 255 < EVIDENCE_THRESHOLD < 0.05
    assert evidence_mask(images, twins, 0.1).sum() == lesion.sum(), "a high threshold keeps only the core"
    assert outside_share(evidence_mask(twins, twins), lesion)["value"] is None
    metric = get("metric", "localisation-evidence")()
    figures = metric.evaluate(np.random.default_rng(0).random(twins.shape, dtype=np.float32), images=twins,
                              twins={"lesion_removed": twins}, lung=lung, lesion=lesion)
    assert figures["n_evidence"] == 0 and "pointing_game" not in figures
    with pytest.raises(MetricInputError, match="lesion_removed"):
        metric.evaluate(twins, images=twins, twins={"lesion_in_mask_only": twins}, lung=lung)
    with pytest.raises(ValueError, match="evidence_threshold"):
        get("metric", "localisation-evidence")(evidence_threshold=1.5)


def test_skill_is_measured_against_the_baselines_on_the_evidence():
    images, twins, lesion, lung = _halo_image()
    maps = np.zeros(images.shape, np.float32)
    maps[:, 8, 8] = 1.0
    figures = get("metric", "localisation-evidence")(tolerance=0.0).evaluate(
        maps, images=images, twins={"lesion_removed": twins}, lung=lung,
        baselines={"uniform": np.ones(images.shape[1:], np.float32)})
    skill = figures["skill"]
    assert skill["pointing_game"]["baseline"] == "uniform"
    assert skill["pointing_game"]["value"] == pytest.approx(1 - 64 / 32 ** 2)
    assert "evidence_energy" in skill and "lesion_energy" not in skill


@pytest.mark.xdist_group("light")  # starts from the LIGHT run's model
def test_the_quality_stage_scores_the_evidence_and_renders_each_twin_once(shared_runs, tmp_path, monkeypatch):
    from xaicxr_builtins.datasets.phantom import PhantomDataset

    run = copy_run(shared_runs.run(LIGHT), tmp_path / "run")  # built (if first) before the renders are counted
    rendered: Counter = Counter()
    counterfactual = PhantomDataset.counterfactual

    def counted(self, record, change, workdir=None):
        rendered[(record.id, change)] += 1
        return counterfactual(self, record, change, workdir)

    monkeypatch.setattr(PhantomDataset, "counterfactual", counted)
    config = tomllib.loads(shared_runs.config(shared_runs.run(LIGHT)).read_text())
    config["explain"] = [{**config["explain"][0], "split": "test"}]  # leaves training images for the prior
    config["quality"] = {"metrics": ["reliance", "localisation", "localisation-evidence"]}
    (run / "evidence.toml").write_text(tomli_w.dumps(config))
    result = runner.invoke(app, ["run", str(run / "evidence.toml"), "--out", str(run), "--until", "quality", "--json"])
    assert result.exit_code == 0, result.stderr

    metrics = json.loads((run / "metrics.json").read_text())
    assert not metrics["not_measured"]
    evidence, mask = metrics["per_image_evidence"]["gradcam"], metrics["per_image"]["gradcam"]
    for cls in ("bacteria", "virus", "covid"):
        q = evidence[cls]
        assert q["n_evidence"] == mask[cls]["n"] > 0 and q["pointing_game"]["n"] == q["n_evidence"]
        assert 0 < q["evidence_outside_lesion"]["value"] < 1, "the halo the mask leaves out"
        assert q["evidence_area"]["value"] > mask[cls]["lesion_area"]["value"]
        assert q["skill"]["pointing_game"]["baseline"] in ("uniform", "lungs", "lungs_blurred", "class_prior", "random")
        assert "per_image_evidence" in metrics["baselines"][cls]["class_prior"], "a prior of the training evidence"
    assert evidence["normal"]["n_evidence"] == 0 and "pointing_game" not in evidence["normal"]
    assert metrics["reliance"]["bacteria"]["n"] > 0

    test_ids = set(json.loads((run / "split.json").read_text())["test"])
    removed = {i for (i, change) in rendered if change == "lesion_removed"}
    assert test_ids <= removed and len(removed) > len(test_ids), "the test twins, and the training ones for the prior"
    assert max(rendered.values()) == 1, "no twin rendered twice (reliance reuses the localisation's)"
    with h5py.File(run / "quality.h5") as h5:
        scores = h5["scores/gradcam/bacteria"]
        assert len(scores["evidence_pointing"]) == len(scores["pointing"])
        assert "evidence_pointing" in h5["baselines/gradcam/bacteria/uniform"]


def test_real_films_are_not_measured_for_want_of_twins():
    """A dataset that makes no twins gives no ``twins``: the stage lists the metric under
    ``not_measured`` with the reason, as it does the reliance test."""
    from types import SimpleNamespace

    from xaicxr.stages.quality import Figures, Inputs, TwinSource

    source = TwinSource(SimpleNamespace())
    source._dataset, source._records = SimpleNamespace(counterfactuals=()), {"a": None, "b": None}
    assert source.of(["a", "b"], ("lesion_removed",)) is None
    metric = get("metric", "localisation-evidence")()
    figures = Figures([("localisation-evidence", metric)])
    inputs = Inputs({"maps": np.zeros((2, 8, 8)), "images": np.zeros((2, 8, 8)), "lung": np.ones((2, 8, 8), bool)},
                    twins=lambda: source.of(["a", "b"], metric.changes))
    assert figures.evaluate("localisation-evidence", metric, metric.scores, inputs) is None
    assert "makes no counterfactual twins" in figures.out["not_measured"]["localisation-evidence"]
