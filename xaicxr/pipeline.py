"""``xaicxr run``: the stages of a run, each writing its files into the run directory.

Every stage declares the config tables it depends on. A stage whose outputs exist and whose
configuration hash matches the one recorded in ``stages.json`` is skipped; a changed stage and
every stage after it run again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import plugins, storage
from .config import CORE_KEYS, dump_config, plugin_options
from .data.inventory import take_inventory
from .data.records import Record
from .data.split import split_records, split_summary
from .errors import DataError
from .progress import console, progress_bar

STAGES_FILE = "stages.json"


@dataclass
class Run:
    """A run directory and its resolved configuration."""

    dir: Path
    cfg: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)
    unsafe_load: bool = False

    def path(self, name: str) -> Path:
        return self.dir / name


@dataclass(frozen=True)
class Stage:
    name: str
    tables: tuple[str, ...]
    outputs: Callable[[dict[str, Any]], list[str]]
    run: Callable[[Run], dict[str, Any]]


def _files(*names: str) -> Callable[[dict[str, Any]], list[str]]:
    return lambda cfg: list(names)


def stage_dataset(run: Run) -> dict[str, Any]:
    table = run.cfg["dataset"]
    cls = plugins.get("dataset", table["name"])
    dataset = cls(**plugin_options(table, "dataset"))
    workers, max_pixels = table.get("workers"), table["max_pixels"]
    main = _inventory(dataset, run, workers, max_pixels, "dataset")
    external = None
    if "test_path" in table:
        external = _inventory(dataset.external(table["test_path"]), run, workers, max_pixels, "external test")
        if external.classes != main.classes:
            raise DataError(f"test_path classes {external.classes} differ from the dataset's {main.classes}")
    skipped = main.skipped + (external.skipped if external else [])
    storage.write_json(run.path("skipped.json"), [s.to_json() for s in skipped])
    summary = main.summary()
    del summary["skipped"]
    storage.write_json(run.path("dataset.json"), {
        "dataset": table["name"], "classes": main.classes, "summary": summary,
        "records": [r.to_json() for r in main.records],
        "external_test": [_external(r).to_json() for r in external.records] if external else []})
    if not main.records:
        raise DataError(f"no usable image in dataset {table['name']!r}; see {run.path('skipped.json')}")
    return {"images": len(main.records), "counts": summary["counts"], "skipped": len(skipped)}


def _inventory(dataset, run: Run, workers, max_pixels, label: str):
    with progress_bar(f"scanning {label}", None) as advance:
        scan = dataset.scan(run.path("data"), progress=advance)
    with progress_bar(f"checking {label} images", len(scan.records)) as advance:
        return take_inventory(scan, workers=workers, max_pixels=max_pixels, progress=advance)


def _external(record: Record) -> Record:
    return Record(**{**record.__dict__, "id": f"external/{record.id}", "subset": "test"})


def stage_split(run: Run) -> dict[str, Any]:
    data = load_dataset_index(run.dir)
    records, external = data["records"], data["external_test"]
    s = run.cfg["split"]
    split = split_records(records, data["classes"], test=s.get("test", 0.0), val=s["val"], seed=s["seed"],
                          group_by_patient=s["group_by_patient"],
                          use_dataset_split=s["use_dataset_split"], external_test=external,
                          test_pattern=s.get("test_pattern"))
    summary = split_summary(split, records + external, data["classes"])
    test_set = ("external (test_path)" if external else
                "leave-source-out ([split] test_pattern)" if s.get("test_pattern") else "internal split")
    storage.write_json(run.path("split.json"), {
        "classes": data["classes"], "external_test": bool(external), "test_set": test_set,
        **s, **summary, **split})
    return summary["sizes"]


def _test_set_name(split: dict[str, Any]) -> str:
    """How the test set was chosen (split.json written before ``test_set`` existed has only the flag)."""
    return split.get("test_set") or ("external (test_path)" if split["external_test"] else "internal split")


def run_config(run_dir: Path, config: Path | None = None) -> dict[str, Any]:
    """The configuration of an existing run directory (its ``config.toml``), or ``config``."""
    from .config import load_config

    own = Path(run_dir) / "config.toml"
    if config is not None:
        return load_config(config)
    if own.is_file():
        return load_config(own)
    raise DataError(f"{run_dir} is not a run directory (no config.toml); start one with "
                    f"`xaicxr run [CONFIG] --out {run_dir}`")


def load_dataset_index(run_dir: Path) -> dict[str, Any]:
    raw = storage.read_json(Path(run_dir) / "dataset.json")
    as_records = lambda rows: [Record(**{**r, **{k: Path(r[k]) for k in ("path", "lesion_mask", "lung_mask") if r[k]}})
                               for r in rows]
    return {**raw, "records": as_records(raw["records"]), "external_test": as_records(raw["external_test"])}


def read_split(run_dir: Path) -> dict[str, Any]:
    return storage.read_json(Path(run_dir) / "split.json")


def build_backbone(cfg: dict[str, Any]):
    table = cfg["backbone"]
    return plugins.get("backbone", table["name"])(**plugin_options(table, "backbone"))


def stage_train(run: Run) -> dict[str, Any]:
    from .imagecache import build_image_cache
    from .models import save_model
    from .train import distribution_strategy, fit

    data = load_dataset_index(run.dir)
    split = read_split(run.dir)
    backbone = build_backbone(run.cfg)
    cache = build_image_cache(run.dir, split, data["records"] + data["external_test"], data["classes"],
                              backbone.input_size, workers=run.cfg["dataset"].get("workers"),
                              max_pixels=run.cfg["dataset"]["max_pixels"],
                              resize=run.cfg["dataset"]["resize"])
    import keras

    keras.utils.set_random_seed(run.cfg["train"]["seed"])
    with distribution_strategy().scope():
        model = backbone.build(list(data["classes"]))
    preprocessing = json.dumps({"backbone": run.cfg["backbone"]["name"],
                                "input_size": backbone.input_size,
                                "layer": _preprocess_config(model)}, sort_keys=True)
    result = fit(model, backbone.freeze_until, cache, run.dir, run.cfg["train"], preprocessing)
    save_model(model, run.path("model.keras"))
    storage.write_json(run.path("train.json"), {
        "backbone": run.cfg["backbone"], "train": run.cfg["train"],
        "freeze_until": backbone.freeze_until, "default_layer": backbone.default_layer,
        "input_size": backbone.input_size, "resize": run.cfg["dataset"]["resize"],
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        **result.to_json()})
    return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "best_val_loss": round(result.best_val_loss, 4), "timings_s": result.timings_s,
            "feature_cache_reused": result.feature_cache_reused}


def _preprocess_config(model) -> Any:
    try:
        return model.get_layer("preprocess").get_config()
    except ValueError:
        return None


def stage_evaluate(run: Run) -> dict[str, Any]:
    from .evaluate import evaluation, predict_cache, write_predictions
    from .imagecache import image_cache_path, open_image_cache
    from .models import load_model

    model = load_model(run.path("model.keras"), unsafe=run.unsafe_load)
    size = int(model.input_shape[1])
    cache = open_image_cache(image_cache_path(run.dir, size))
    probs = predict_cache(model, cache)
    split = read_split(run.dir)
    classes = split["classes"]
    write_predictions(run.dir, cache, probs, classes, run.path("model.keras"))
    for task, spec in run.cfg["binary"].items():
        missing = [c for c in spec["positive"] if c not in classes]
        if missing:
            raise DataError(f"[binary] {task!r}: class {missing[0]!r} is not one of {classes}")
    figures = evaluation(classes, cache.labels, cache.splits, probs, run.cfg["binary"],
                         test_set=_test_set_name(split), seed=run.cfg["split"]["seed"])
    storage.update_json(run.path("metrics.json"), figures)
    return {"accuracy": round(figures["accuracy"], 4), "macro_f1": round(figures["macro_f1"], 4),
            "binary_auc": {k: round(v["auc"], 4) for k, v in figures["binary"].items()},
            "test_set": figures["test_set"]}


def _run_cache(run: Run):
    from .imagecache import image_cache_path, open_image_cache

    size = int(storage.read_json(run.path("train.json"))["input_size"])
    return open_image_cache(image_cache_path(run.dir, size))


def stage_explain(run: Run) -> dict[str, Any]:
    from .explaining import explain_split
    from .models import load_model, model_sha256

    model = load_model(run.path("model.keras"), unsafe=run.unsafe_load)
    sha = model_sha256(run.path("model.keras"))
    cache = _run_cache(run)
    written = {}
    for spec in run.cfg["explain"]:
        path = explain_split(run.dir, model, sha, cache, spec, overwrite=True)
        written[spec["name"]] = str(path.relative_to(run.dir))
    return written


def stage_templates(run: Run) -> dict[str, Any]:
    from .models import load_model
    from .templating import build_all

    figures = build_all(run.dir, run.cfg, _run_cache(run),
                        lambda: load_model(run.path("model.keras"), unsafe=run.unsafe_load))
    storage.update_json(run.path("metrics.json"), figures)
    return {"templates": sorted(figures["templates"]),
            "sanity_mean_template_r": {k: v.get("mean_template_r") for k, v in figures["sanity"].items()}}


def stage_report(run: Run) -> dict[str, Any]:
    from .report import write_report

    return {"report": str(write_report(run.dir, run.cfg, _run_cache(run)))}


STAGES: tuple[Stage, ...] = (
    Stage("dataset", ("dataset",), _files("dataset.json", "skipped.json"), stage_dataset),
    Stage("split", ("dataset", "split"), _files("split.json"), stage_split),
    Stage("train", ("dataset", "dataset.resize", "split", "backbone", "train"),
          _files("model.keras", "train.json"), stage_train),
    Stage("evaluate", ("binary",), _files("metrics.json", "predictions.h5"), stage_evaluate),
    Stage("explain", ("explain",), lambda cfg: [f"heatmaps/{e['name']}.h5" for e in cfg["explain"]], stage_explain),
    Stage("templates", ("aggregate", "templates"),
          lambda cfg: [f"templates/{e['name']}-{a['name']}.h5" for e in cfg["explain"] for a in cfg["aggregate"]],
          stage_templates),
    Stage("report", (), _files("report/index.html"), stage_report),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


SEPARATELY_HASHED = {"dataset": ("resize",)}
"""Keys left out of their table's hash; a stage that depends on one names it (``"dataset.resize"``).

Scanning and splitting do not depend on how images are resized, so changing ``resize`` reruns
training onwards only; and a key at its default is left out, so runs made before the key existed
keep their hashes."""


def config_hash(cfg: dict[str, Any], tables: tuple[str, ...]) -> str:
    picked: dict[str, Any] = {}
    for name in tables:
        table, _, key = name.partition(".")
        if key:
            value = cfg.get(table, {}).get(key)
            if value != CORE_KEYS[table][key][1]:
                picked[name] = value
        elif table in SEPARATELY_HASHED:
            picked[name] = {k: v for k, v in cfg.get(table, {}).items() if k not in SEPARATELY_HASHED[table]}
        else:
            picked[name] = cfg.get(table)
    blob = json.dumps(picked, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_pipeline(cfg: dict[str, Any], run_dir: str | Path, *, until: str | None = None,
                 force: str | None = None, unsafe_load: bool = False) -> dict[str, Any]:
    """Run every stage (or skip it when its outputs are current); return a summary.

    ``until`` stops after that stage; ``force`` reruns that stage (and so everything after it).
    """
    run = Run(Path(run_dir), cfg, unsafe_load=unsafe_load)
    run.dir.mkdir(parents=True, exist_ok=True)
    storage.write_text(run.path("config.toml"), dump_config(cfg))
    state = _read_state(run.dir)
    stale = False
    timings, ran, skipped_stages = {}, [], []
    digest = ""
    for stage in STAGES:
        digest = config_hash({**cfg, "upstream": digest}, ("upstream", *stage.tables))
        done = state.get(stage.name, {})
        current = (not stale and stage.name != force and done.get("hash") == digest
                   and all(run.path(o).exists() for o in stage.outputs(cfg)))
        if current:
            skipped_stages.append(stage.name)
            run.results[stage.name] = done.get("result", {})
            timings[stage.name] = done.get("seconds", 0.0)
        else:
            stale = True
            console.print(f"[bold cyan]stage[/] {stage.name}")
            start = time.perf_counter()
            result = stage.run(run)
            seconds = round(time.perf_counter() - start, 3)
            state[stage.name] = {"hash": digest, "seconds": seconds, "result": result}
            storage.write_json(run.path(STAGES_FILE), state)
            run.results[stage.name] = result
            timings[stage.name] = seconds
            ran.append(stage.name)
        if stage.name == until:
            break
    if run.path("metrics.json").exists():
        storage.update_json(run.path("metrics.json"), {"timings_s": timings})
    return {"run_dir": str(run.dir), "stages_run": ran, "stages_skipped": skipped_stages,
            "timings_s": timings, **run.results}


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        state = storage.read_json(run_dir / STAGES_FILE)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
