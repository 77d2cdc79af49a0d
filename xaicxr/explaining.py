"""The explain stage: heatmaps for the configured split into ``heatmaps/<explainer>.h5``.

Images come from the run's image cache (the exact pixels the model was evaluated on); labels,
predictions and probabilities from ``predictions.h5``. The store is resumable (see
:mod:`xaicxr.heatmaps`): an interrupted explain continues where it stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import plugins
from .arrays import read_rows
from .config import plugin_options
from .errors import ConfigError
from .evaluate import read_predictions
from .heatmaps import explain_to_store, store_path
from .imagecache import ImageCache


def make_explainer(spec: dict[str, Any]):
    return plugins.get("explainer", spec["name"])(**plugin_options(spec, "explain"))


def target_layer(spec: dict[str, Any], run_dir: Path) -> str | None:
    """The configured layer, else the backbone's default (from ``train.json``), else the
    explainer's own choice (the last convolutional layer)."""
    if spec.get("layer"):
        return spec["layer"]
    train = Path(run_dir) / "train.json"
    if train.exists():
        from .storage import read_json

        return read_json(train).get("default_layer") or None
    return None


def rows_for(cache: ImageCache, split: str) -> np.ndarray:
    rows = cache.rows(split)
    if len(rows) == 0:
        raise ConfigError(f"[[explain]] split = {split!r} has no images in this run")
    return rows


def explain_split(run_dir: Path, model: Any, model_sha: str, cache: ImageCache, spec: dict[str, Any],
                  *, overwrite: bool = False, shard: tuple[int, int] | None = None) -> Path:
    """Explain the rows of ``spec["split"]`` (or one contiguous shard of them) into the store."""
    preds = read_predictions(run_dir)
    if preds["ids"] != cache.ids:
        raise ConfigError("predictions.h5 does not match the image cache; rerun the evaluate stage")
    rows = rows_for(cache, spec["split"])
    path = store_path(run_dir, spec["name"])
    if shard is not None:
        k, n = shard
        rows = rows[k * len(rows) // n:(k + 1) * len(rows) // n]
        path = Path(run_dir) / "shards" / f"{spec['name']}.shard-{k}-of-{n}.h5"
    labels = cache.labels[rows]
    predictions = preds["probs"][rows].argmax(axis=1)
    targets = predictions if spec["targets"] == "predicted" else labels

    params = {**plugin_options(spec, "explain"), "targets": spec["targets"], "split": spec["split"]}
    with h5py.File(cache.path, "r") as h5:
        def images(start: int, stop: int) -> np.ndarray:
            return read_rows(h5["images"], rows[start:stop]).astype(np.float32)[..., None]

        return explain_to_store(
            path, explainer=make_explainer(spec), explainer_name=spec["name"], model=model,
            model_sha256=model_sha, layer=target_layer(spec, run_dir), classes=preds["classes"],
            ids=[cache.ids[r] for r in rows], labels=labels, predictions=predictions,
            probs=preds["probs"][rows], targets=targets, images=images,
            batch_size=spec["batch_size"], params=params, overwrite=overwrite,
            all_classes=spec["targets"] == "all")
