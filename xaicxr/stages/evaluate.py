"""The evaluate stage: predictions for every cached image (``predictions.h5``) and the
classification figures of the test set (``metrics.json``): accuracy, per class, confusion, and
the binary tasks derived from the softmax with the threshold chosen on validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from ..analysis.intervals import proportion
from ..analysis.metrics import binary_task, classification_report, default_binary_tasks
from ..errors import DataError
from ..io.imagecache import SPLITS, ImageCache
from ..io.predictions import write_predictions
from ..plugins.metric import predict_probabilities
from ..progress import progress_bar
from ..rundir import RunDir
from . import Run

NAME = "evaluate"
TABLES = ("binary",)


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.metrics, rundir.predictions]


def run(run: Run) -> dict[str, Any]:
    model = run.model()
    cache = run.image_cache()
    probs = predict_cache(model, cache)
    split = run.dir.read_split()
    classes = split["classes"]
    write_predictions(run.dir.predictions, cache, probs, classes, run.model_sha256())
    for task, spec in run.cfg["binary"].items():
        missing = [c for c in spec["positive"] if c not in classes]
        if missing:
            raise DataError(f"[binary] {task!r}: class {missing[0]!r} is not one of {classes}")
    figures = evaluation(classes, cache.labels, cache.splits, probs, run.cfg["binary"],
                         test_set=split["test_set"], seed=run.cfg["split"]["seed"])
    run.dir.update_metrics(figures)
    return {"accuracy": round(figures["accuracy"], 4), "macro_f1": round(figures["macro_f1"], 4),
            "binary_auc": {k: round(v["auc"], 4) for k, v in figures["binary"].items()},
            "test_set": figures["test_set"]}


def predict_cache(model: keras.Model, cache: ImageCache, batch_size: int = 64) -> np.ndarray:
    n = len(cache.ids)
    probs = np.zeros((n, model.output_shape[-1]), dtype=np.float32)
    with h5py.File(cache.path, "r") as h5, progress_bar("predicting", n) as advance:
        images = h5["images"]
        for start in range(0, n, batch_size):
            x = images[start:start + batch_size].astype(np.float32)
            probs[start:start + len(x)] = predict_probabilities(model, x, batch_size)
            advance(len(x))
    return probs


def evaluation(classes: list[str], labels: np.ndarray, splits: np.ndarray, probs: np.ndarray,
               binary: dict[str, dict], *, test_set: str = "internal split", seed: int = 0) -> dict[str, Any]:
    test = splits == SPLITS.index("test")
    val = splits == SPLITS.index("val")
    report = classification_report(labels[test], probs[test], classes)
    tasks = binary or default_binary_tasks(classes)
    out = {"classes": list(classes), **report,
           "accuracy_ci95": proportion(probs[test].argmax(1) == labels[test])["ci95"],
           "test_set": test_set,
           "n_test": int(test.sum()), "n_val": int(val.sum()),
           "val": {k: v for k, v in classification_report(labels[val], probs[val], classes).items()
                   if k in ("accuracy", "macro_f1")},
           "binary": {}}
    for name, task in tasks.items():
        out["binary"][name] = binary_task(task["positive"], list(classes), labels[val], probs[val],
                                          labels[test], probs[test], seed=seed)
    return out
