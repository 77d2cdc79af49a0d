"""Plugin discovery through real entry points, failures, unknown and duplicate names."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from xaicxr import plugins
from xaicxr.cli import app
from xaicxr.errors import PluginConflictError, UnknownPluginError

TOY = '''
from xaicxr import hookimpl
from xaicxr.plugins import Dataset

class Toy(Dataset):
    def __init__(self, path: str | None = None, flavour: str = "plain"):
        self.path = path

@hookimpl
def xaicxr_datasets():
    return {"toy": Toy}
'''

runner = CliRunner()


def test_builtins_come_through_the_entry_point_group(fresh_plugins):
    rows = {(r["kind"], r["name"]): r for r in plugins.available() if "kind" in r}
    for name in ("phantom", "folder", "cxr4"):
        row = rows[("dataset", name)]
        assert row["distribution"] == "xaicxr"
        assert row["module"] == "xaicxr_builtins.datasets"
    assert plugins.get("dataset", "folder").__name__ == "FolderDataset"


def test_third_party_distribution_is_discovered(fake_distribution):
    fake_distribution("xaicxr-toy", {"toy_plugin": TOY}, {"toy": "toy_plugin"}, version="2.5")
    row = next(r for r in plugins.available() if r.get("name") == "toy")
    assert row == {"kind": "dataset", "name": "toy", "module": "toy_plugin",
                   "distribution": "xaicxr-toy", "version": "2.5",
                   "options": {"path": "none", "flavour": '"plain"'}}
    assert plugins.get("dataset", "toy").__name__ == "Toy"
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0
    names = {(p["kind"], p["name"]) for p in json.loads(result.stdout)["plugins"]}
    assert ("dataset", "toy") in names and ("dataset", "phantom") in names
    table = runner.invoke(app, ["plugins"], env={"COLUMNS": "200"})
    assert 'flavour="plain"' in table.stderr


def test_broken_plugin_is_reported_not_fatal(fake_distribution):
    fake_distribution("xaicxr-broken", {"broken_plugin": "import this_module_does_not_exist\n"},
                      {"broken": "broken_plugin"})
    failures = [r for r in plugins.available() if "error" in r]
    assert failures == [{"module": "broken_plugin", "distribution": "xaicxr-broken",
                         "error": "ModuleNotFoundError: No module named 'this_module_does_not_exist'"}]
    assert plugins.get("dataset", "phantom").__name__ == "PhantomDataset"
    result = runner.invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["failed"][0]["distribution"] == "xaicxr-broken"
    table = runner.invoke(app, ["plugins"])
    assert table.exit_code == 0
    assert "broken_plugin" in table.stderr and "xaicxr-broken" in table.stderr


def test_hook_that_raises_or_returns_junk_names_the_plugin(fake_distribution):
    fake_distribution("xaicxr-bad-hooks", {
        "raising_plugin": "from xaicxr import hookimpl\n@hookimpl\ndef xaicxr_explainers():\n    raise RuntimeError('boom')\n",
        "junk_plugin": "from xaicxr import hookimpl\n@hookimpl\ndef xaicxr_aggregators():\n    return {'x': 42}\n",
    }, {"raising": "raising_plugin", "junk": "junk_plugin"})
    failures = {f["module"]: f["error"] for f in plugins.available() if "error" in f}
    assert failures["raising_plugin"] == "xaicxr_explainers(): RuntimeError: boom"
    assert "expected a class" in failures["junk_plugin"]
    assert plugins.get("dataset", "folder").__name__ == "FolderDataset"


def test_misspelled_hook_is_reported_with_the_right_name(fake_distribution):
    fake_distribution("xaicxr-typo", {"typo_plugin": (
        "from xaicxr import hookimpl\n"
        "@hookimpl\ndef xaicxr_explainer():\n    return {}\n"
        "@hookimpl\ndef xaicxr_aggregators():\n    return {'typo-mean': object}\n")},
        {"typo": "typo_plugin"})
    failures = {f["module"]: f["error"] for f in plugins.available() if "error" in f}
    assert "'xaicxr_explainer' is not an xaicxr hook; did you mean 'xaicxr_explainers'?" in failures["typo_plugin"]
    assert "typo-mean" not in plugins.registry().names("aggregator"), "a plugin with a bad hook is not half-loaded"
    assert plugins.get("dataset", "folder").__name__ == "FolderDataset"


def test_unknown_name_lists_what_exists_and_the_closest(fresh_plugins):
    with pytest.raises(UnknownPluginError) as err:
        plugins.get("dataset", "fodler")
    message = str(err.value)
    assert "Did you mean 'folder'?" in message
    assert "cxr4" in message and "phantom" in message
    with pytest.raises(UnknownPluginError, match="unknown plugin kind 'datasets'.*'dataset'"):
        plugins.get("datasets", "folder")


def test_two_distributions_claiming_one_name_is_an_error_naming_both(fake_distribution):
    fake_distribution("xaicxr-shadow", {"shadow_plugin": TOY.replace('"toy"', '"folder"')},
                      {"shadow": "shadow_plugin"})
    with pytest.raises(PluginConflictError) as err:
        plugins.get("dataset", "folder")
    assert "xaicxr-shadow" in str(err.value) and "xaicxr (xaicxr_builtins.datasets)" in str(err.value)
    assert plugins.get("dataset", "phantom").__name__ == "PhantomDataset"
    listed = [r for r in plugins.available() if r.get("name") == "folder"]
    assert {r["distribution"] for r in listed} == {"xaicxr", "xaicxr-shadow"}
    table = runner.invoke(app, ["plugins"])
    assert "conflict" in table.stderr


def test_runtime_registration(fresh_plugins):
    import types

    from xaicxr import hookimpl

    class Mean(plugins.Aggregator):
        pass

    module = types.SimpleNamespace(__name__="notebook_plugin",
                                   xaicxr_aggregators=hookimpl(lambda: {"nb-mean": Mean}))
    plugins.register(module, distribution="notebook")
    assert plugins.get("aggregator", "nb-mean") is Mean


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("xaicxr ")
