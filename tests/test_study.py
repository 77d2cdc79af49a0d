"""``xaicxr study``: a two-variant study that shares one trained model."""

from __future__ import annotations

import csv
import json
import tomllib

import numpy as np
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


def test_the_localisation_benchmark_selects_with_holm_from_the_per_image_scores(tmp_path):
    """benchmarks/localisation.py: each setting's skill over the class prior, paired per image
    from quality.h5, gets a simultaneous interval and a Holm-adjusted p; a setting whose raw p
    passes can fail once adjusted for the number of settings compared."""
    import h5py

    bench = _localisation_benchmark()
    rng = np.random.default_rng(0)
    prior = (rng.random(40) < 0.4).astype(float)
    runs = []
    for k, extra in enumerate((0.5, 0.18, 0.0)):  # clearly better, borderline, no better
        hits = np.where(rng.random(40) < extra, 1.0, prior)
        run = tmp_path / f"run{k}"
        run.mkdir()
        with h5py.File(run / "quality.h5", "w") as h5:
            ids = np.array([f"i{i}" for i in range(40)], dtype=object)
            h5.create_dataset("scores/gradcam/virus/ids", data=ids, dtype=h5py.string_dtype())
            h5["scores/gradcam/virus/pointing"] = hits
            h5["baselines/gradcam/virus/class_prior/pointing"] = prior
        runs.append(run)
    pairs = [bench.paired_pointing(run, "gradcam", "virus") for run in runs]
    assert all(p is not None for p in pairs) and bench.paired_pointing(runs[0], "gradcam", "covid") is None
    rows = [{} for _ in runs]
    bench.holm_selection(rows, pairs, min_effect=0.05)
    assert rows[0]["skill_p_holm"] < 0.01 and rows[2]["skill_p_holm"] > 0.5
    assert all(r["skill_p_holm"] >= r["skill_p"] for r in rows)
    lo, hi = rows[0]["skill_simultaneous"]["ci95"]
    assert lo < rows[0]["skill_simultaneous"]["value"] < hi
    single = [{}]
    bench.holm_selection(single, [pairs[0]], min_effect=0.05)
    assert single[0]["skill_simultaneous"]["ci95"][0] > lo  # one comparison: a narrower interval


def _localisation_benchmark():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "localisation_benchmark", Path(__file__).parents[1] / "benchmarks" / "localisation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_localisation_benchmark_pools_seeds_and_their_variance(tmp_path):
    """Over seeds, a setting is chosen when its skill over the class prior exceeds the minimum
    effect for every trained model (its p the largest per-model p, Holm over settings) and its
    cascade passes for every model: one that points at the lesion for one model only is not
    chosen, though that model's images alone, or all seed-image pairs pooled as one sample, would
    choose it; seeds that scored other images are refused."""
    import h5py

    from xaicxr.analysis.intervals import paired_exceedance_p

    bench = _localisation_benchmark()
    rng = np.random.default_rng(1)
    prior = (rng.random(60) < 0.3).astype(float)
    ids = np.array([f"i{i}" for i in range(60)], dtype=object)

    def seed_run(name, hits, image_ids=ids, passes=True):
        run = tmp_path / name
        run.mkdir()
        with h5py.File(run / "quality.h5", "w") as h5:
            h5.create_dataset("scores/rise/virus/ids", data=image_ids, dtype=h5py.string_dtype())
            h5["scores/rise/virus/pointing"] = hits
            h5["scores/rise/virus/pointing_tolerance"] = np.maximum(hits, prior)
            h5["baselines/rise/virus/class_prior/pointing"] = prior
        metrics = {"sanity": {"rise": {"passes": passes}}, "reliance": {}, "baselines": {}}
        return {"run_dir": run, "explainer": "rise", "variant": name, "split": "val",
                "seed": int(name[-1]), "metrics": metrics}

    steady = [seed_run(f"steady{s}", np.where(rng.random(60) < 0.5, 1.0, prior)) for s in range(3)]
    lucky = [seed_run("lucky0", np.where(rng.random(60) < 0.6, 1.0, prior))] + [
        seed_run(f"lucky{s}", np.where(rng.random(60) < 0.1, 0.0, prior)) for s in (1, 2)]
    shaky = [seed_run("shaky0", np.where(rng.random(60) < 0.5, 1.0, prior), passes=False)] + [
        seed_run(f"shaky{s}", np.where(rng.random(60) < 0.5, 1.0, prior)) for s in (1, 2)]
    pairs = [bench.seeded_scores(g, "virus") for g in (steady, lucky)]
    assert pairs[0][0].shape == pairs[0][1].shape == (3, 60)
    rows = [{}, {}]
    bench.seeded_holm_selection(rows, pairs, min_effect=0.05)
    assert rows[0]["skill_p_holm"] < 0.01 and rows[1]["skill_p_holm"] > 0.05
    own, base = pairs[1]
    per_model = [paired_exceedance_p(a, b, margin=0.05, n_boot=bench.SEEDED_BOOTSTRAP) for a, b in zip(own, base)]
    assert rows[1]["skill_p"] == max(per_model) and per_model[0] < 0.01  # its first model alone would pass
    assert paired_exceedance_p(own.ravel(), base.ravel(), margin=0.05) < 0.05  # so would 180 pooled pairs
    between, pooled = rows[1]["skill_between_seeds"], rows[1]["skill_simultaneous"]
    assert between["n"] == 3 and np.diff(between["ci95"])[0] > np.diff(pooled["ci95"])[0]

    groups = [steady, lucky, shaky]
    for name, g in zip(("steady", "lucky", "shaky"), groups):
        for f in g:
            f["setting"] = name
    report = bench.seeded_report(groups, 0.05)
    virus = report["classes"]["virus"]
    assert [r["cascade_passes_in"] for r in virus["settings"]] == [3, 3, 2]
    assert virus["settings"][2]["beats_prior_holm"] and virus["selected"] == "steady"
    assert virus["settings"][0]["pointing_game_per_seed"] == pytest.approx(list(pairs[0][0].mean(axis=1)))
    assert report["classes"]["bacteria"]["selected"] is None
    assert "| steady |" in bench.seeded_markdown(report).replace("**", "")

    shuffled = seed_run("other9", np.ones(60), image_ids=ids[::-1].copy())
    with pytest.raises(SystemExit, match="not the other seeds'"):
        bench.seeded_scores(steady[:2] + [shuffled], "virus")


def test_seeds_train_each_variant_n_times_and_report_between_seed_intervals(shared_runs, tmp_path):
    """``seeds = 2``: two models (train.seed 0 and 1: the base's own plus 0 and 1; the seed-0
    model is the shared LIGHT run's, copied in as a finished variant), and a table of each
    figure's mean over them with a Student-t interval over the two per-model values."""
    from scipy import stats

    from shared_runs import LIGHT, copy_run, tiny_study

    study = tmp_path / "seeds.toml"
    study.write_text("seeds = 2\n" + tiny_study({"explain": [[{"name": "gradcam", "layer": "block4_conv4"}]]},
                                                aggregate=[{"name": "mean"}], quality={"metrics": ["localisation"]},
                                                probe={"enabled": False}))
    out = tmp_path / "out"
    names = ["explain=gradcam-block4_conv4__seed=0", "explain=gradcam-block4_conv4__seed=1"]
    copy_run(shared_runs.run(LIGHT), out / names[0])
    result = runner.invoke(app, ["study", str(study), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    table = json.loads(result.stdout)
    assert list(dict.fromkeys(v["variant"] for v in table["variants"])) == names
    trained = {v["variant"]: "train" in v["stages_run"] for v in table["variants"]}
    assert trained == {names[0]: False, names[1]: True}, "another seed is another model, not a shared one"
    rows = {(r["variant"], r["class"]): r for r in table["variants"]}
    over = {(e["variant"], e["class"]): e for e in table["seeds"]}
    entry = over[("explain=gradcam-block4_conv4", "covid")]
    assert entry["n_models"] == 2 and entry["seeds"] == [0, 1]
    per_model = [rows[(n, "covid")]["pointing_game"] for n in names]
    assert entry["pointing_game"]["mean"] == pytest.approx(np.mean(per_model))
    half = stats.t.ppf(0.975, 1) * np.std(per_model, ddof=1) / np.sqrt(2)
    assert entry["pointing_game"]["ci95"] == pytest.approx([np.mean(per_model) - half, np.mean(per_model) + half])
    accuracies = [rows[(n, "covid")]["accuracy"] for n in names]
    assert entry["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert [tomllib.loads((out / n / "config.toml").read_text())["train"]["seed"] for n in names] == [0, 1]
    assert "Over the training seeds" in (out / "index.html").read_text()
    assert (out / "seeds.csv").read_text().startswith("variant,store,class,n_models")
    assert "Over the training seeds" in (out / "summary.md").read_text()
    study.write_text("seeds = 0\n[base]\n[matrix]\n\"train.epochs\" = [1]\n")
    bad = runner.invoke(app, ["study", str(study), "--out", str(out)])
    assert bad.exit_code == 2 and "'seeds'" in bad.stderr and "at least 1" in bad.stderr
