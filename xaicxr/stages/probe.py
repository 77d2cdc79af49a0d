"""The probe stage: the shortcut probe (:mod:`xaicxr.analysis.probe`) on the run's images,
written to ``probe.json`` and ``metrics.json`` (``probe``).

The file features were taken when the dataset stage decoded each file (``dataset.json``
``image_features``); a run directory made before that has its files decoded once here. The
model's input images come from the image cache, so the ``input_*`` features show what the
resize policy and mode left of each cue. Only the records of the split are probed (the
external test set, if any, too: it is where a shortcut would hurt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py

from ..analysis.metrics import default_binary_tasks
from ..analysis.probe import pixel_features, probe
from ..io import atomic
from ..io.imagecache import open_image_cache
from ..plugins import Record
from ..progress import progress_bar
from ..rundir import RunDir
from . import Run

NAME = "probe"
TABLES = ("probe", "binary")


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.probe]


def run(run: Run) -> dict[str, Any]:
    cfg = run.cfg["probe"]
    if not cfg["enabled"]:
        result: dict[str, Any] = {"enabled": False}
    else:
        classes, records = probed_records(run.dir)
        features = file_features_of(run.dir, records)
        add_input_features(run.dir, features)
        kept = [r for r in records if r.id in features]
        result = probe([features[r.id] for r in kept], [r.label for r in kept], [r.patient for r in kept],
                       classes, run.cfg["binary"] or default_binary_tasks(classes),
                       folds=cfg["folds"], seed=run.cfg["split"]["seed"], flag=cfg["flag"])
    atomic.write_json(run.dir.probe, result)
    run.dir.update_metrics({"probe": result})
    return {"flagged": [f"{f['target']}: {f['feature']} {f['auc']:.2f}" for f in result.get("flagged", [])][:10]}


def probed_records(rundir: RunDir) -> tuple[list[str], list[Record]]:
    classes, records, external = rundir.records()
    return classes, records + external


def file_features_of(rundir: RunDir, records: list[Record]) -> dict[str, dict[str, Any]]:
    """``dataset.json``'s features, or (an older run directory) one decode pass over the files."""
    stored = atomic.read_json(rundir.dataset_index).get("image_features")
    if stored is not None:
        return {r.id: stored[r.id] for r in records if r.id in stored}
    from ..plugins import Scan
    from .dataset import take_inventory

    with progress_bar("decoding for the probe", len(records)) as advance:
        inventory = take_inventory(Scan(classes=[], records=records), progress=advance)
    return inventory.features


def add_input_features(rundir: RunDir, features: dict[str, dict[str, Any]]) -> bool:
    """Add ``input_*`` features from the image cache (the model's inputs), where there is one."""
    if not rundir.train_info.exists():
        return False
    path = rundir.image_cache(int(rundir.read_train_info()["input_size"]))
    if not path.exists():
        return False
    ids = open_image_cache(path).ids
    with h5py.File(path, "r") as h5:
        images = h5["images"]
        for row, rid in enumerate(ids):
            if rid in features:
                features[rid].update({f"input_{k}": v for k, v in pixel_features(images[row]).items()})
    for rid in [rid for rid, f in features.items() if "input_mean" not in f]:
        del features[rid]  # a file the train stage could not decode is not in the cache
    return True
