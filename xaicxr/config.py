"""Load, validate and resolve a run configuration (TOML).

Core keys have fixed types here; every other key of a plugin's table is checked against the
plugin class's keyword parameters (:mod:`xaicxr.options`). Errors name the key and the file.
"""

from __future__ import annotations

import copy
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import tomli_w

from . import plugins
from .errors import ConfigError, PluginError
from .executors import DEFAULT_PARTITION_ROWS
from .plugins.options import check_options, describe, matches
from .plugins.targets import BINARY_PREFIX, parse_target

DEFAULT_SOURCE = "the embedded default configuration"

CORE_KEYS: dict[str, dict[str, tuple[Any, Any]]] = {
    "dataset": {"name": (str, "phantom"), "test_path": (str | None, None),
                "max_pixels": (int, 100_000_000), "workers": (int | None, None),
                "resize": (Literal["pad", "stretch", "crop"], "pad"), "mode": (Literal["L", "as-decoded"] | None, None)},
    "split": {"test": (float, 0.2), "val": (float, 0.1), "seed": (int, 0),
              "group_by_patient": (bool, True), "use_dataset_split": (bool, False),
              "test_pattern": (str | None, None)},
    "backbone": {"name": (str, "vgg19")},
    "train": {"epochs": (int, 30), "batch_size": (int, 32), "learning_rate": (float, 1e-3),
              "augment": (bool, False), "cache_features": (bool, True), "patience": (int, 6),
              "seed": (int, 0), "class_weights": (bool, True),
              "lr_schedule": (Literal["constant", "cosine"], "constant")},
    "binary": {},
    "explain": {"name": (str, "gradcam"), "layer": (str | None, None),
                "targets": (Literal["true", "predicted", "all"], "true"), "target": (str | None, None),
                "split": (Literal["test", "val", "train", "all"], "test"),
                "batch_size": (int, 16)},
    "aggregate": {"name": (str, "mean")},
    "templates": {"by": (Literal["true", "predicted"], "true"), "correct_only": (bool, False)},
    "probe": {"enabled": (bool, True), "folds": (int, 5), "flag": (float, 0.8)},
    "quality": {"tolerance": (float, 15.0), "max_images": (int, 1000), "partitions": (int, 20),
                "faithfulness": (bool, True), "fills": (list[Literal["road", "blur"]], ["road", "blur"]),
                "fractions": (int, 11), "faithfulness_images": (int, 100),
                "faithfulness_baselines": (list[Literal["uniform", "lungs", "lungs_blurred", "class_prior", "random"]],
                                           ["uniform", "lungs", "class_prior"]),
                "template_q": (float, 0.05), "template_draws": (int, 3),
                "randomisation": (bool, True), "randomisation_images": (int, 48),
                "randomisation_draw": (int, 0), "reliance": (bool, True), "seed": (int, 0)},
    "run": {"executor": (Literal["local", "dask"], "local"), "address": (str | None, None),
            "workers": (int | None, None), "partition_rows": (int, DEFAULT_PARTITION_ROWS)},
}
"""Core keys per table: ``{key: (type, default)}``. Plugin tables also take their plugin's options."""

PLUGIN_TABLES = {"dataset": "dataset", "backbone": "backbone", "explain": "explainer",
                 "aggregate": "aggregator"}
"""Tables whose ``name`` selects a plugin of this kind."""
ARRAY_TABLES = {"explain", "aggregate"}
"""Arrays of tables (``[[explain]]``): one entry per explainer / aggregator."""
FREE_TABLES = {"binary"}
"""Tables whose keys are user-chosen names (binary tasks)."""
DEFAULT_BINARY_TASKS = ("covid-vs-rest", "abnormal-vs-normal")
"""The tasks ``analysis.metrics.default_binary_tasks`` defines when ``[binary]`` is empty (where
the classes allow: a class named like covid; one named normal)."""


def default_text() -> str:
    return files("xaicxr").joinpath("default.toml").read_text(encoding="utf-8")


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """The resolved configuration: defaults filled in, every key checked."""
    if path is None:
        raw, source = tomllib.loads(default_text()), DEFAULT_SOURCE
    else:
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return resolve(raw, source)


def resolve(raw: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """A table left out of ``raw`` is the embedded demo's table; a table given is resolved from
    the core and plugin defaults, so ``[backbone] name = "vgg19"`` alone means the paper's VGG19."""
    unknown = sorted(set(raw) - set(CORE_KEYS))
    if unknown:
        raise ConfigError(f"unknown table [{unknown[0]}] in {source}; known tables: "
                          + ", ".join(f"[{t}]" for t in CORE_KEYS))
    cfg: dict[str, Any] = {}
    demo = tomllib.loads(default_text())
    for table, keys in CORE_KEYS.items():
        given = raw[table] if table in raw else demo.get(table, {})
        if not isinstance(given, dict) and table not in ARRAY_TABLES:
            raise ConfigError(f"[{table}] in {source} must be a table")
        if table in FREE_TABLES:
            cfg[table] = _resolve_binary(given, source)
        elif table in ARRAY_TABLES:
            cfg[table] = _resolve_array(table, given, keys, source)
        else:
            cfg[table] = _resolve_table(table, given, keys, source)
    _check_test_set_choice(raw, cfg, source)
    _check_quality(cfg["quality"], source)
    _check_targets(cfg, source)
    if cfg["dataset"].get("mode") == "as-decoded":  # the default spelled out (a study axis): same run
        del cfg["dataset"]["mode"]
    _check_probe(cfg["probe"], source)
    _check_run(cfg["run"], source)
    _check_positive(cfg, source)
    return cfg


def _check_targets(cfg: dict[str, Any], source: str) -> None:
    """Each ``[[explain]]`` ``target`` names a known score (a binary task of ``[binary]``, else
    a default task; whether the classes have it is checked before training)."""
    for i, entry in enumerate(cfg["explain"]):
        check_target(entry, cfg, f"[[explain]] in {source} (entry {i + 1})")


def check_target(entry: dict[str, Any], cfg: dict[str, Any], where: str) -> None:
    """An ``[[explain]]`` entry's ``target``: a task of ``cfg``'s ``[binary]`` (else a default
    task), and one score per class where every class is explained (``targets = "all"``)."""
    if "target" not in entry:
        return
    parse_target(entry["target"], list(cfg["binary"]) or list(DEFAULT_BINARY_TASKS), where)
    if entry["target"].startswith(BINARY_PREFIX) and entry["targets"] == "all":
        raise ConfigError(f"'targets' in {where} is \"all\" (every class), but target "
                          f"{entry['target']!r} has one score per image; use targets = \"true\"")


def store_name(entry: dict[str, Any]) -> str:
    """The name of an ``[[explain]]`` entry's heatmap store (``heatmaps/<store>.h5``) and of its
    templates: the explainer's name, plus ``.<target>`` when a ``target`` is configured
    (``gradcam.binary-covid-vs-rest``), so one run explains classes and binary scores side by side."""
    target = entry.get("target")
    return entry["name"] if not target else f"{entry['name']}.{target.replace(':', '-')}"


def _check_run(run: dict[str, Any], source: str) -> None:
    where = f"[run] in {source}"
    for key in ("workers", "partition_rows"):
        if key in run and run[key] < 1:
            raise ConfigError(f"'{key}' in {where} must be at least 1, got {run[key]}")
    if "address" in run and "workers" in run:
        raise ConfigError(f"{where}: 'workers' sizes the local cluster started when there is no "
                          "'address'; the cluster at 'address' has its own workers")
    if run["executor"] == "local" and ("address" in run or "workers" in run):
        raise ConfigError(f"{where}: 'address' and 'workers' need executor = \"dask\"")


def _check_positive(cfg: dict[str, Any], source: str) -> None:
    """Training and batching values that type-check but cannot work (an untrained model would
    be reported as if trained; a zero batch divides by zero)."""
    train = cfg["train"]
    for key in ("epochs", "batch_size"):
        if train[key] < 1:
            raise ConfigError(f"'{key}' in [train] in {source} must be at least 1, got {train[key]}")
    if not train["learning_rate"] > 0:
        raise ConfigError(f"'learning_rate' in [train] in {source} must be positive, got {train['learning_rate']}")
    if train["patience"] < 0:
        raise ConfigError(f"'patience' in [train] in {source} must be 0 or more, got {train['patience']}")
    for spec in cfg["explain"]:
        if spec["batch_size"] < 1:
            raise ConfigError(f"'batch_size' in [[explain]] {spec['name']!r} in {source} must be at least 1, "
                              f"got {spec['batch_size']}")


def _check_quality(quality: dict[str, Any], source: str) -> None:
    """Values that type-check but cannot work."""
    where = f"[quality] in {source}"
    if not quality["fills"]:
        raise ConfigError(f"'fills' in {where} is empty; use \"road\", \"blur\" or both, or faithfulness = false")
    if quality["fractions"] < 2:
        raise ConfigError(f"'fractions' in {where} must be at least 2 (0 and 1 of the pixels), got {quality['fractions']}")
    if not 0 < quality["template_q"] <= 1:
        raise ConfigError(f"'template_q' in {where} must be in (0, 1], got {quality['template_q']}")
    for key in ("max_images", "faithfulness_images", "randomisation_images", "partitions", "template_draws"):
        if quality[key] < 0 or (key in ("randomisation_images", "partitions", "template_draws") and quality[key] < 1):
            raise ConfigError(f"'{key}' in {where} must be positive, got {quality[key]}")


def _check_probe(probe: dict[str, Any], source: str) -> None:
    if probe["folds"] < 2:
        raise ConfigError(f"'folds' in [probe] in {source} must be at least 2, got {probe['folds']}")
    if not 0.5 < probe["flag"] <= 1:
        raise ConfigError(f"'flag' in [probe] in {source} must be an AUC in (0.5, 1], got {probe['flag']}")


def _check_test_set_choice(raw: dict[str, Any], cfg: dict[str, Any], source: str) -> None:
    """``test_pattern`` decides the test set alone: it excludes the other ways of choosing one,
    and the ``test`` fraction is dropped so ``config.toml`` does not claim one was used."""
    split = cfg["split"]
    if "test_pattern" not in split:
        return
    clash = ("[dataset] test_path" if "test_path" in cfg["dataset"] else
             "[split] use_dataset_split" if split["use_dataset_split"] else
             "[split] test" if isinstance(raw.get("split"), dict) and "test" in raw["split"] else None)
    if clash:
        raise ConfigError(f"[split] test_pattern in {source} cannot be combined with {clash}: "
                          "test_pattern alone decides the test set")
    del split["test"]


def _resolve_array(table: str, given: Any, keys: dict[str, tuple[Any, Any]], source: str) -> list:
    if isinstance(given, dict):
        given = [given]
    if not isinstance(given, list) or not all(isinstance(t, dict) for t in given):
        raise ConfigError(f"[[{table}]] in {source} must be an array of tables ([[{table}]] entries)")
    out = [_resolve_table(table, entry, keys, f"{source} (entry {i + 1})") for i, entry in enumerate(given)]
    names = [store_name(e) for e in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"[[{table}]] in {source}: {duplicates[0]!r} appears twice; "
                          "compare variants in a study instead (xaicxr study)")
    return out


def resolve_entry(table: str, given: dict[str, Any], source: str) -> dict[str, Any]:
    """One entry of an array table (an ``[[explain]]`` built on the command line, say)."""
    return _resolve_table(table, given, CORE_KEYS[table], source)


def _resolve_binary(given: dict[str, Any], source: str) -> dict[str, Any]:
    """``[binary]``: ``task = { positive = ["covid"] }``; empty means the defaults for the classes."""
    for task, spec in given.items():
        where = f"[binary] {task!r} in {source}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a table like {{ positive = [\"covid\"] }}")
        unknown = sorted(set(spec) - {"positive"})
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in {where}; known keys: positive")
        positive = spec.get("positive")
        if not (isinstance(positive, list) and positive and all(isinstance(c, str) for c in positive)):
            raise ConfigError(f"wrong type for 'positive' in {where}: expected a non-empty list of class names")
    return copy.deepcopy(given)


def _resolve_table(table: str, given: dict[str, Any], keys: dict[str, tuple[Any, Any]],
                   source: str) -> dict[str, Any]:
    where = f"[{table}] in {source}"
    out = {k: copy.deepcopy(default) for k, (_, default) in keys.items()}
    plugin_options = {}
    for key, value in given.items():
        if key in keys:
            hint = keys[key][0]
            if not matches(value, hint):
                raise ConfigError(f"wrong type for {key!r} in {where}: got {value!r}, expected {describe(hint)}")
            if hint is float:
                value = float(value)
            out[key] = value
        elif table in PLUGIN_TABLES:
            plugin_options[key] = value
        else:
            raise ConfigError(f"unknown key {key!r} in {where}; known keys: {', '.join(keys)}")
    if table in PLUGIN_TABLES:
        kind = PLUGIN_TABLES[table]
        try:
            cls = plugins.get(kind, out["name"])
        except PluginError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        check_options(cls, plugin_options, f"{where} (options of {kind} {out['name']!r})")
        out.update(plugin_options)
    return {k: v for k, v in out.items() if v is not None}


def plugin_options(table: dict[str, Any], table_name: str) -> dict[str, Any]:
    """The keys of a resolved plugin table that belong to the plugin, not the core."""
    core = CORE_KEYS.get(table_name, {})
    return {k: v for k, v in table.items() if k not in core}


def build_plugin(table_name: str, table: dict[str, Any]) -> Any:
    """The plugin a resolved table (``[dataset]``, ``[backbone]``, an ``[[explain]]`` or
    ``[[aggregate]]`` entry) names, made with its options."""
    cls = plugins.get(PLUGIN_TABLES[table_name], table["name"])
    return cls(**plugin_options(table, table_name))


def dump_config(cfg: dict[str, Any]) -> str:
    return tomli_w.dumps(cfg)

