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

from . import plugins, storage
from .config import dump_config, plugin_options
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

    def path(self, name: str) -> Path:
        return self.dir / name


@dataclass(frozen=True)
class Stage:
    name: str
    tables: tuple[str, ...]
    outputs: tuple[str, ...]
    run: Callable[[Run], dict[str, Any]]


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
    split = split_records(records, data["classes"], test=s["test"], val=s["val"], seed=s["seed"],
                          group_by_patient=s["group_by_patient"],
                          use_dataset_split=s["use_dataset_split"], external_test=external)
    summary = split_summary(split, records + external, data["classes"])
    storage.write_json(run.path("split.json"), {
        "classes": data["classes"], "external_test": bool(external), **s, **summary, **split})
    return summary["sizes"]


def load_dataset_index(run_dir: Path) -> dict[str, Any]:
    raw = storage.read_json(Path(run_dir) / "dataset.json")
    as_records = lambda rows: [Record(**{**r, **{k: Path(r[k]) for k in ("path", "lesion_mask", "lung_mask") if r[k]}})
                               for r in rows]
    return {**raw, "records": as_records(raw["records"]), "external_test": as_records(raw["external_test"])}


STAGES: tuple[Stage, ...] = (
    Stage("dataset", ("dataset",), ("dataset.json", "skipped.json"), stage_dataset),
    Stage("split", ("dataset", "split"), ("split.json",), stage_split),
)


def config_hash(cfg: dict[str, Any], tables: tuple[str, ...]) -> str:
    blob = json.dumps({t: cfg.get(t) for t in tables}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_pipeline(cfg: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Run every stage (or skip it when its outputs are current); return a summary."""
    run = Run(Path(run_dir), cfg)
    run.dir.mkdir(parents=True, exist_ok=True)
    storage.write_text(run.path("config.toml"), dump_config(cfg))
    state = _read_state(run.dir)
    stale = False
    timings, ran, skipped_stages = {}, [], []
    for stage in STAGES:
        digest = config_hash(cfg, stage.tables)
        done = state.get(stage.name, {})
        current = (not stale and done.get("hash") == digest
                   and all(run.path(o).exists() for o in stage.outputs))
        if current:
            skipped_stages.append(stage.name)
            run.results[stage.name] = done.get("result", {})
            timings[stage.name] = done.get("seconds", 0.0)
            continue
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
    return {"run_dir": str(run.dir), "stages_run": ran, "stages_skipped": skipped_stages,
            "timings_s": timings, **run.results}


def _read_state(run_dir: Path) -> dict[str, Any]:
    try:
        state = storage.read_json(run_dir / STAGES_FILE)
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
