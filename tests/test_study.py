"""``xaicxr study``: a two-variant study that shares one trained model."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from shared_runs import STUDY
from xaicxr.cli import app

runner = CliRunner()
pytestmark = pytest.mark.xdist_group("study")  # they share the STUDY (test_compare.py too): one worker builds it



def test_two_variant_study_reuses_the_model_and_writes_tables(shared_runs):
    out = shared_runs.study(STUDY)
    table = shared_runs.summary(out)
    names = list(dict.fromkeys(v["variant"] for v in table["variants"]))
    assert names == ["explain=gradcam-block4_conv4", "explain=gradcam-block3_conv4"]
    first, second = (next(v for v in table["variants"] if v["variant"] == n) for n in names)
    assert "train" in first["stages_run"] and "train" not in second["stages_run"]
    assert second["stages_run"] == ["explain", "templates", "quality", "probe", "report"]
    assert first["accuracy"] == second["accuracy"]
    assert (first["explainer"], first["layer"]) == ("gradcam", "block4_conv4")
    assert (second["explainer"], second["layer"]) == ("gradcam", "block3_conv4")
    lesion_rows = [v for v in table["variants"] if v["class"] != "normal"]
    assert {"pointing_game", "pointing_game_lo", "pointing_game_hi", "pointing_skill", "pointing_baseline",
            "energy_lift", "lung_energy", "split_half", "deletion_auc:blur", "relies_on_lesion",
            "randomisation_passes"} <= set(lesion_rows[0])
    assert {v["class"] for v in table["variants"]} == {"normal", "bacteria", "virus", "covid"}
    assert first["test_set"] == "internal split" and first["n_test"] > 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert list(dict.fromkeys(r["variant"] for r in rows)) == names and len(rows) == 8
    assert (out / "summary.md").read_text().startswith("| variant")
    page = (out / "index.html").read_text()
    assert all(f'href="{n}/report/index.html"' in page for n in names)
    assert all((out / n / "report" / "index.html").is_file() for n in names)


def test_study_errors_are_clear(tmp_path):
    study = tmp_path / "bad.toml"
    study.write_text("[matrix]\n\"train.epochs\" = ['many']\n")
    result = runner.invoke(app, ["study", str(study), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "wrong type for 'epochs'" in result.stderr
    study.write_text("[base]\n")
    result = runner.invoke(app, ["study", str(study), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "defines no variants" in result.stderr


def test_study_help_shows_the_table_names():
    """Rich reads [matrix] as markup unless escaped; the help must show what a study holds."""
    result = runner.invoke(app, ["study", "--help"])
    assert result.exit_code == 0
    assert "[matrix]" in result.stdout and "[[variants]]" in result.stdout


def test_a_matrix_key_with_one_value_sets_every_variant_and_stays_out_of_the_names(tmp_path):
    from xaicxr.study import load_study

    base = tmp_path / "base.toml"
    base.write_text("[train]\nepochs = 3\n")
    study = tmp_path / "s.toml"
    study.write_text('base = "base.toml"\n[matrix]\n"train.epochs" = 7\n"train.seed" = [0, 1]\n')
    _, variants = load_study(study)
    assert [name for name, _ in variants] == ["seed=0", "seed=1"]
    assert [cfg["train"]["epochs"] for _, cfg in variants] == [7, 7]
