"""The evaluate stage: predictions for every cached image, and ``metrics.json`` on the test set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from . import storage
from .data.split import SPLITS
from .imagecache import ImageCache
from .metrics import binary_task, classification_report, default_binary_tasks
from .models import model_sha256
from .progress import progress_bar

PREDICTIONS = "predictions.h5"


def predict_cache(model: keras.Model, cache: ImageCache, batch_size: int = 64) -> np.ndarray:
    n = len(cache.ids)
    probs = np.zeros((n, model.output_shape[-1]), dtype=np.float32)
    with h5py.File(cache.path, "r") as h5, progress_bar("predicting", n) as advance:
        images = h5["images"]
        for start in range(0, n, batch_size):
            x = images[start:start + batch_size].astype(np.float32)[..., None]
            probs[start:start + len(x)] = keras.ops.convert_to_numpy(model(x, training=False))
            advance(len(x))
    return probs


def write_predictions(run_dir: Path, cache: ImageCache, probs: np.ndarray, classes: list[str],
                      model_path: Path) -> None:
    with storage.atomic_path(Path(run_dir) / PREDICTIONS) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("ids", data=np.array(cache.ids, dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("labels", data=cache.labels)
        h5.create_dataset("split", data=cache.splits)
        h5.create_dataset("probs", data=probs)
        h5.create_dataset("predictions", data=probs.argmax(axis=1))
        h5.attrs["classes"] = list(classes)
        h5.attrs["splits"] = list(SPLITS)
        h5.attrs["model_sha256"] = model_sha256(model_path)


def read_predictions(run_dir: Path) -> dict[str, Any]:
    with h5py.File(Path(run_dir) / PREDICTIONS, "r") as h5:
        return {"ids": [i.decode() for i in h5["ids"][...]], "labels": h5["labels"][...],
                "split": h5["split"][...], "probs": h5["probs"][...],
                "classes": list(h5.attrs["classes"]), "model_sha256": h5.attrs["model_sha256"]}


def evaluation(classes: list[str], labels: np.ndarray, splits: np.ndarray, probs: np.ndarray,
               binary: dict[str, dict], *, test_set: str = "internal split", seed: int = 0) -> dict[str, Any]:
    test = splits == SPLITS.index("test")
    val = splits == SPLITS.index("val")
    report = classification_report(labels[test], probs[test], classes)
    tasks = binary or default_binary_tasks(classes)
    out = {"classes": list(classes), **report,
           "test_set": test_set,
           "n_test": int(test.sum()), "n_val": int(val.sum()),
           "val": {k: v for k, v in classification_report(labels[val], probs[val], classes).items()
                   if k in ("accuracy", "macro_f1")},
           "binary": {}}
    for name, task in tasks.items():
        out["binary"][name] = binary_task(task["positive"], list(classes), labels[val], probs[val],
                                          labels[test], probs[test], seed=seed)
    return out
