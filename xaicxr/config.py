"""Load, validate and resolve a run configuration (TOML).

Core keys have fixed types here; every other key of a plugin's table is checked against the
plugin class's keyword parameters (:mod:`xaicxr.options`). Errors name the key and the file.
"""

from __future__ import annotations

import copy
import inspect
import os
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import tomli_w

from . import plugins
from .errors import ConfigError, PluginError, XaicxrError
from .executors import DEFAULT_PARTITION_ROWS
from .plugins.options import check_options, describe, matches, option_spec
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
    "model": {"path": (str | None, None), "classes": (list[str] | None, None),
              "outputs": (Literal["auto", "softmax", "logits", "sigmoid"], "auto"),
              "input_size": (int | None, None), "channels": (Literal[1, 3] | None, None),
              "value_range": (list[float], [0.0, 1.0]), "mean": (list[float] | None, None),
              "std": (list[float] | None, None), "sha256": (str | None, None)},
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
    "quality": {"metrics": (list[str], None), "max_images": (int, 1000), "faithfulness_images": (int, 100),
                "faithfulness": (bool, True), "randomisation": (bool, True), "reliance": (bool, True),
                "seed": (int, 0)},
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
DEFAULT_METRICS = ("reliance", "region-reliance", "localisation", "localisation-evidence", "reliability", "template",
                   "template-faithfulness", "faithfulness", "randomisation", "distinctiveness")
"""``[quality] metrics`` when not given: every built-in metric, in report order."""
METRIC_SWITCHES = {"faithfulness": ("faithfulness", "template-faithfulness"), "randomisation": ("randomisation",),
                   "reliance": ("reliance", "region-reliance")}
"""``[quality]`` booleans that leave metrics out (``faithfulness = false`` drops the two that
perturb images); the same name given a table sets that metric's options instead."""
MERGED_TABLES = {"dataset", "split", "backbone", "train", "templates", "probe", "quality", "run"}
"""Tables that, when given, are laid over the embedded default's table key by key (a plugin
table only while it names the same plugin): ``[train] seed = 1`` changes the seed and keeps the
rest of the demo's training. Arrays of tables and ``[binary]`` replace the default's."""
PATH_KEYS = {"dataset": ("path", "test_path", "covid_path", "covid_metadata", "covid_images"),
             "backbone": ("weights",), "model": ("path",)}
"""Keys that hold file or folder paths: relative ones resolve from the config file's folder."""
NOT_PATHS = {"none", "imagenet"}
"""Values of path keys that are names, not paths (``weights = "imagenet"``)."""
MODEL_ONLY_TRAIN_KEYS = ("seed",)
"""What ``[train]`` may hold beside ``[model] path``: the seed of the sanity checks' draws."""
DEFAULT_BINARY_TASKS = ("covid-vs-rest", "abnormal-vs-normal")
"""The tasks ``analysis.metrics.default_binary_tasks`` defines when ``[binary]`` is empty (where
the classes allow: a class named like covid; one named normal)."""


def default_text() -> str:
    return files("xaicxr").joinpath("default.toml").read_text(encoding="utf-8")


def load_config(path: str | Path | None = None, relative_to: str | Path | None = None) -> dict[str, Any]:
    """The resolved configuration: defaults filled in, every key checked. Relative paths in the
    file resolve from the file's folder (``relative_to`` overrides that folder)."""
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
        raw = absolute_paths(raw, Path(relative_to) if relative_to is not None else Path(path).parent)
    return resolve(raw, source)


def absolute_paths(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``raw`` with the relative paths of its :data:`PATH_KEYS` (and dataset options ending in
    ``_path``) made absolute from ``folder``: a config means the same files from wherever it is
    run (a study's base resolves from the study or base file the same way)."""
    out = copy.deepcopy(raw)
    for table, keys in PATH_KEYS.items():
        section = out.get(table)
        if not isinstance(section, dict):
            continue
        names = set(keys) | ({k for k in section if k.endswith("_path")} if table == "dataset" else set())
        for key in names:
            value = section.get(key)
            if isinstance(value, str) and value and value not in NOT_PATHS:
                path = Path(value).expanduser()
                section[key] = str(path if path.is_absolute() else Path(os.path.abspath(folder / path)))
    return out


def resolve(raw: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """A table left out of ``raw`` is the embedded demo's table; a table given is laid over the
    demo's (:data:`MERGED_TABLES`; a plugin table naming another plugin starts from that plugin's
    defaults), and arrays of tables and ``[binary]`` replace the demo's. With ``[model] path``
    (a model trained elsewhere) there is no ``[backbone]`` and ``[train]`` holds only ``seed``."""
    unknown = sorted(set(raw) - set(CORE_KEYS))
    if unknown:
        raise ConfigError(f"unknown table [{unknown[0]}] in {source}; known tables: "
                          + ", ".join(f"[{t}]" for t in CORE_KEYS))
    cfg: dict[str, Any] = {}
    demo = tomllib.loads(default_text())
    own_model = isinstance(raw.get("model"), dict) and bool(raw["model"])
    if own_model:
        demo = _demo_for_own_model(demo, raw, source)
    for table, keys in CORE_KEYS.items():
        given = raw[table] if table in raw else demo.get(table, {})
        if not isinstance(given, dict) and table not in ARRAY_TABLES:
            raise ConfigError(f"[{table}] in {source} must be a table")
        if table in raw and table in MERGED_TABLES and isinstance(demo.get(table), dict):
            given = _laid_over(table, given, demo[table])
        if own_model and table == "backbone":
            cfg[table] = {}
        elif own_model and table == "train":
            cfg[table] = {"seed": _resolve_table(table, given, keys, source)["seed"]}
        elif table == "model":
            cfg[table] = _resolve_model(given, source)
        elif table in FREE_TABLES:
            cfg[table] = _resolve_binary(given, source)
        elif table == "quality":
            cfg[table] = _resolve_quality(given, source)
        elif table in ARRAY_TABLES:
            cfg[table] = _resolve_array(table, given, keys, source)
        else:
            cfg[table] = _resolve_table(table, given, keys, source)
    _check_test_set_choice(raw, cfg, source)
    _check_targets(cfg, source)
    if cfg["dataset"].get("mode") == "as-decoded":  # the default spelled out (a study axis): same run
        del cfg["dataset"]["mode"]
    _check_probe(cfg["probe"], source)
    _check_run(cfg["run"], source)
    _check_positive(cfg, source)
    return cfg


def _laid_over(table: str, given: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """``given`` over the demo's ``default`` table (:data:`MERGED_TABLES`). A plugin table
    naming another plugin than the demo's keeps only what it gives; ``[quality]`` keeps the
    demo's per-metric options only for the metrics chosen (:func:`_resolve_quality` drops the
    others' silently: they were not asked for)."""
    if table in PLUGIN_TABLES and given.get("name", default.get("name")) != default.get("name"):
        return given
    merged = {**copy.deepcopy(default), **given}
    if table == "quality":
        merged[INHERITED] = sorted(set(default) - set(given))
    return merged


INHERITED = "__inherited__"
"""Marks, in a ``[quality]`` being resolved, the keys that came from the demo's table."""


def _demo_for_own_model(demo: dict[str, Any], raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The demo's tables as defaults for a run of a model trained elsewhere: no backbone and no
    training (refused if given), and the demo's explainers at the model's own default layer (the
    demo's layer names are VGG19's)."""
    if "backbone" in raw:
        raise ConfigError(f"[backbone] in {source}: the model comes from [model] path, so there is "
                          "nothing to build; remove [backbone] (or [model] to train one)")
    extra = sorted(set(raw.get("train", {})) - set(MODEL_ONLY_TRAIN_KEYS))
    if extra:
        raise ConfigError(f"[train] in {source}: the model comes from [model] path and is not trained "
                          f"here; [train] takes only {', '.join(MODEL_ONLY_TRAIN_KEYS)} then, not {extra[0]!r}")
    demo = copy.deepcopy(demo)
    demo.pop("backbone", None)
    demo["train"] = {}
    for entry in demo.get("explain", []):
        entry.pop("layer", None)
    return demo


def _resolve_model(given: dict[str, Any], source: str) -> dict[str, Any]:
    """``[model]``: a model trained elsewhere (:mod:`xaicxr.usermodel`): ``path`` and ``classes``
    are required together; the rest describes the input and outputs. ``sha256`` is not given but
    recorded: the digest of the file this run imported (read again at every load, so a changed
    file changes the train stage's hash and the run imports it again)."""
    where = f"[model] in {source}"
    if not given:
        return {}
    out = _resolve_table("model", {k: v for k, v in given.items() if k != "sha256"}, CORE_KEYS["model"], source)
    for key in ("path", "classes"):
        if key not in out:
            raise ConfigError(f"{where}: {key!r} is required (the model file, and its outputs' class "
                              "names in output order)")
    if len(set(out["classes"])) != len(out["classes"]) or not out["classes"]:
        raise ConfigError(f"'classes' in {where} must name each output once, got {out['classes']}")
    low, high = out["value_range"] if len(out["value_range"]) == 2 else (None, None)
    if low is None or not low < high:
        raise ConfigError(f"'value_range' in {where} must be [black, white] with black < white, got "
                          f"{out['value_range']}")
    for key in ("mean", "std"):
        if key in out and len(out[key]) not in (1, out.get("channels", len(out[key]))):
            raise ConfigError(f"'{key}' in {where} has {len(out[key])} values for {out['channels']} channels")
    if any(v <= 0 for v in out.get("std", [])):
        raise ConfigError(f"'std' in {where} must be positive, got {out['std']}")
    if "input_size" in out and out["input_size"] < 8:
        raise ConfigError(f"'input_size' in {where} must be at least 8, got {out['input_size']}")
    path = Path(out["path"]).expanduser()
    if not path.exists():
        raise ConfigError(f"'path' in {where}: {path} does not exist (a Keras .keras/.h5 file or a "
                          "TensorFlow SavedModel folder; a relative path is read from the config's folder)")
    from .io.modelfile import model_sha256

    out["sha256"] = model_sha256(path)
    return out


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
    if "address" in run:
        from .executors.dask_cluster import check_address

        check_address(run["address"])
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
        if key in train and train[key] < 1:
            raise ConfigError(f"'{key}' in [train] in {source} must be at least 1, got {train[key]}")
    if "learning_rate" in train and not 0 < train["learning_rate"] < float("inf"):
        raise ConfigError(f"'learning_rate' in [train] in {source} must be positive and finite, got {train['learning_rate']}")
    if train.get("patience", 0) < 0:
        raise ConfigError(f"'patience' in [train] in {source} must be 0 or more, got {train['patience']}")
    for spec in cfg["explain"]:
        if spec["batch_size"] < 1:
            raise ConfigError(f"'batch_size' in [[explain]] {spec['name']!r} in {source} must be at least 1, "
                              f"got {spec['batch_size']}")


def _resolve_quality(given: dict[str, Any], source: str) -> dict[str, Any]:
    """``[quality]``: the core keys, the options of the chosen metrics and per-metric tables.

    A metric's options are the keyword arguments of its class (like every plugin's). Given at
    the top level of ``[quality]`` (``fills = ["road"]``), an option goes to every chosen metric
    that takes an option of that name (``tolerance`` sets the localisation of the maps and of
    the templates alike); given in the metric's own table (``[quality.faithfulness]``), to that
    metric only. The defaults of every chosen metric's options are filled in, so ``config.toml``
    shows what was used. Every metric is made with its options here, so a value that cannot
    work is an error before anything runs."""
    where = f"[quality] in {source}"
    core = CORE_KEYS["quality"]
    given = dict(given)
    inherited = set(given.pop(INHERITED, ()))
    tables = {k: v for k, v in given.items() if isinstance(v, dict)}
    flat = {k: v for k, v in given.items() if k not in tables}
    out = _resolve_table("quality", {k: v for k, v in flat.items() if k in core}, core, source)
    names = list(out.get("metrics", DEFAULT_METRICS))
    out["metrics"] = names
    classes = {}
    for name in names:
        try:
            classes[name] = plugins.get("metric", name)
        except PluginError as exc:
            raise ConfigError(f"'metrics' in {where}: {exc}") from None
    if len(set(names)) != len(names):
        raise ConfigError(f"'metrics' in {where} names a metric twice: {names}")
    takes = {opt: [n for n, cls in classes.items() if opt in option_spec(cls)]
             for cls in classes.values() for opt in option_spec(cls)}
    for key, value in flat.items():
        if key in core:
            continue
        if key not in takes and key in inherited:
            continue
        if key not in takes:
            known = sorted(set(core) | set(takes))
            raise ConfigError(f"unknown key {key!r} in {where}; known keys: {', '.join(known)} "
                              f"(and a table per metric: {', '.join(names)})")
        for name in takes[key]:
            check_options(classes[name], {key: value}, f"{where} (an option of metric {name!r})")
        hint = option_spec(classes[takes[key][0]])[key][0]
        out[key] = float(value) if hint is float else value
    for name, table in tables.items():
        if name not in classes and name in inherited:
            continue
        if name not in classes:
            raise ConfigError(f"[quality.{name}] in {source}: {name!r} is not one of the chosen metrics "
                              f"({', '.join(names)})")
        check_options(classes[name], table, f"[quality.{name}] in {source}")
        out[name] = copy.deepcopy(table)
    for opt, owners in takes.items():
        default = option_spec(classes[owners[0]])[opt][1]
        if opt not in out and default is not inspect.Parameter.empty and default is not None:
            out[opt] = copy.deepcopy(default)
    for name in names:
        try:
            make_metric(name, out)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where} (metric {name!r}): {exc}") from None
    for key in ("max_images", "faithfulness_images"):
        if out[key] < 0:
            raise ConfigError(f"'{key}' in {where} must be 0 or more, got {out[key]}")
    return out


def chosen_metrics(quality: dict[str, Any]) -> list[str]:
    """The metrics a resolved ``[quality]`` runs: ``metrics`` without those a switch leaves out."""
    off = {name for switch, names in METRIC_SWITCHES.items() if quality.get(switch) is False for name in names}
    return [name for name in quality["metrics"] if name not in off]


def make_metric(name: str, quality: dict[str, Any]) -> Any:
    """Metric ``name`` made with its options from a resolved ``[quality]`` (its own table over
    the shared top-level keys)."""
    cls = plugins.get("metric", name)
    own = quality.get(name) if isinstance(quality.get(name), dict) else {}
    shared = {opt: quality[opt] for opt in option_spec(cls) if opt in quality and not isinstance(quality[opt], dict)}
    return cls(**{**shared, **own})


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
        try:  # a value of the right type that cannot work is an error now, not after training
            cls(**plugin_options)
        except (TypeError, ValueError, XaicxrError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where} (options of {kind} {out['name']!r}): {exc}") from None
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
    """``cfg`` as TOML, without empty tables (``[model]`` when the backbone is trained here)."""
    return tomli_w.dumps({k: v for k, v in cfg.items() if v != {}})

