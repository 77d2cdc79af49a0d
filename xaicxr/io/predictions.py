"""``predictions.h5``: the class probabilities of every cached image, with labels and splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from . import atomic
from .imagecache import SPLITS, ImageCache


def write_predictions(path: Path, cache: ImageCache, probs: np.ndarray, classes: list[str],
                      model_sha256: str) -> None:
    with atomic.atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset("ids", data=np.array(cache.ids, dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("labels", data=cache.labels)
        h5.create_dataset("split", data=cache.splits)
        h5.create_dataset("probs", data=probs)
        h5.create_dataset("predictions", data=probs.argmax(axis=1))
        h5.attrs["classes"] = list(classes)
        h5.attrs["splits"] = list(SPLITS)
        h5.attrs["model_sha256"] = model_sha256


def read_predictions(path: Path) -> dict[str, Any]:
    if not Path(path).is_file():
        raise StoreError(f"no predictions at {path}; run the evaluate stage first (xaicxr evaluate)")
    with h5py.File(path, "r") as h5:
        return {"ids": [i.decode() for i in h5["ids"][...]], "labels": h5["labels"][...],
                "split": h5["split"][...], "probs": h5["probs"][...],
                "classes": list(h5.attrs["classes"]), "model_sha256": h5.attrs["model_sha256"]}
