"""What a configuration means, tried as a new user writes one: a table given is laid over the
demo's, relative paths are read from the config file's folder, the README's example runs."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from conftest import SHARED_DATA
from xaicxr.config import default_text, load_config, resolve
from xaicxr.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEMO = tomllib.loads(default_text())


def test_a_table_with_one_key_keeps_the_rest_of_the_demos_table():
    cfg = resolve({"train": {"seed": 1}})
    assert cfg["train"]["seed"] == 1
    for key in ("epochs", "batch_size", "learning_rate", "lr_schedule", "patience"):
        assert cfg["train"][key] == DEMO["train"][key], key
    cfg = resolve({"backbone": {"width": 0.25}})
    assert cfg["backbone"]["width"] == 0.25 and cfg["backbone"]["batchnorm"] is True
    assert cfg["backbone"]["input_size"] == DEMO["backbone"]["input_size"]


def test_a_table_naming_another_plugin_starts_from_that_plugins_defaults():
    cfg = resolve({"backbone": {"name": "resnet50", "weights": "none"}})
    assert "width" not in cfg["backbone"] and "batchnorm" not in cfg["backbone"]
    with pytest.raises(ConfigError, match="unknown key 'n_per_class'"):
        resolve({"dataset": {"name": "folder", "path": ".", "n_per_class": 3}})


def test_arrays_of_tables_replace_the_demos():
    cfg = resolve({"explain": [{"name": "saliency"}]})
    assert [e["name"] for e in cfg["explain"]] == ["saliency"]


def test_quality_with_chosen_metrics_drops_the_demos_options_of_the_others_but_not_yours():
    cfg = resolve({"quality": {"metrics": ["localisation"]}})
    assert cfg["quality"]["metrics"] == ["localisation"] and "fills" not in cfg["quality"]
    assert cfg["quality"]["max_images"] == 1000
    with pytest.raises(ConfigError, match="unknown key 'fills'"):
        resolve({"quality": {"metrics": ["localisation"], "fills": ["blur"]}})


def test_relative_paths_are_read_from_the_config_files_folder(tmp_path, monkeypatch):
    data = tmp_path / "project" / "data"
    data.mkdir(parents=True)
    config = tmp_path / "project" / "configs" / "run.toml"
    config.parent.mkdir()
    config.write_text('[dataset]\nname = "folder"\npath = "../data"\ntest_path = "../external"\n'
                      '[backbone]\nweights = "imagenet"\nwidth = 1.0\nbatchnorm = false\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("project") / "configs" / "run.toml")
    assert cfg["dataset"]["path"] == str(data)
    assert cfg["dataset"]["test_path"] == str(tmp_path / "project" / "external")
    assert cfg["backbone"]["weights"] == "imagenet"  # a name, not a path


def test_a_study_reads_its_relative_paths_from_the_study_file(tmp_path):
    from xaicxr.study import load_study

    study = tmp_path / "studies" / "s.toml"
    study.parent.mkdir()
    study.write_text('[base.dataset]\nname = "folder"\npath = "../data"\n[matrix]\n"train.seed" = [0, 1]\n')
    _, variants = load_study(study)
    assert {cfg["dataset"]["path"] for _, cfg in variants} == {str(tmp_path / "data")}


@pytest.mark.skipif(not (SHARED_DATA / "cxr3-real").is_dir(), reason="needs ../shared/data/cxr3-real")
def test_the_readmes_example_configuration_runs_as_written(tmp_path):
    from xaicxr.pipeline import run_pipeline

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Configuration"):]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    config = tmp_path / "readme.toml"
    config.write_text(block)
    cfg = load_config(config, relative_to=REPO)  # as if saved in the repository's root
    assert cfg["dataset"]["path"] == os.path.abspath(REPO / "../shared/data/cxr3-real")
    summary = run_pipeline(cfg, tmp_path / "run", until="split")
    assert summary["stages_run"] == ["dataset", "split"]
