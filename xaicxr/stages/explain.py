"""The explain stage: heatmaps of the configured split into ``heatmaps/<explainer>.h5``.

An ``[[explain]]`` entry is resolved once into an :class:`ExplainJob` (the explainer made with
its options, the layer, which targets, which rows, the parameters that identify the store),
and that one object is passed down. Images come from the run's image cache (the exact pixels
the model was evaluated on); labels, predictions and probabilities from ``predictions.h5``.
The store is resumable (:class:`~xaicxr.io.heatmap_store.HeatmapWriter`): an interrupted
explain continues where it stopped.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from .. import __version__
from ..config import build_plugin, plugin_options
from ..errors import ConfigError, ModelMismatchError, StoreError
from ..io.h5rows import read_rows
from ..io.heatmap_store import Columns, HeatmapWriter
from ..io.imagecache import ImageCache
from ..io.predictions import read_predictions
from ..progress import progress_bar
from ..rundir import RunDir, Shard
from . import Run

NAME = "explain"
TABLES = ("explain",)


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.heatmaps(e["name"]) for e in cfg["explain"]]


def run(run: Run) -> dict[str, Any]:
    model, cache = run.model(), run.image_cache()
    written = {}
    for spec in run.cfg["explain"]:
        job = ExplainJob.from_spec(spec, run.dir)
        try:  # resumes a partial store of this job
            path = explain_split(run.dir, job, model, run.model_sha256(), cache)
        except ModelMismatchError:  # the model was retrained: its old heatmaps go
            path = explain_split(run.dir, job, model, run.model_sha256(), cache, overwrite=True)
        written[job.name] = str(path.relative_to(run.dir.root))
    return written


@dataclass(frozen=True)
class ExplainJob:
    """One ``[[explain]]`` entry, resolved: everything that decides what a store holds."""

    name: str
    """The explainer plugin's name, which is also the store's name."""
    explainer: Any
    layer: str | None
    """The requested layer (configured, else the backbone's default); None: the explainer's own."""
    targets: str
    """``true`` (the label), ``predicted``, or ``all`` (every class, kept in ``heatmaps_all``)."""
    split: str
    batch_size: int
    params: dict[str, Any]
    """The explainer's options plus ``targets`` and ``split``: the store's ``params``."""

    @classmethod
    def from_spec(cls, spec: dict[str, Any], rundir: RunDir | None = None) -> "ExplainJob":
        layer = spec.get("layer")
        if not layer and rundir is not None and rundir.train_info.exists():
            layer = rundir.read_train_info().get("default_layer") or None
        return cls(name=spec["name"], explainer=build_plugin("explain", spec), layer=layer,
                   targets=spec["targets"], split=spec["split"], batch_size=spec["batch_size"],
                   params={**plugin_options(spec, "explain"), "targets": spec["targets"],
                           "split": spec["split"]})

    def identity(self, model: Any, model_sha256: str, classes: list[str]) -> dict[str, str]:
        """The root attributes of the store, but the rows' digest."""
        resolve = getattr(self.explainer, "resolve_layer", None)
        return {"explainer": self.name,
                "layer": resolve(model, self.layer) if resolve else (self.layer or ""),
                "classes": json.dumps(list(classes)), "model_sha256": model_sha256,
                "xaicxr_version": __version__,
                "params": json.dumps(self.params, sort_keys=True, default=str)}


def explain_split(rundir: RunDir, job: ExplainJob, model: Any, model_sha256: str, cache: ImageCache,
                  *, overwrite: bool = False, shard: Shard | None = None) -> Path:
    """Explain the rows of ``job.split`` (or one shard of them) into the run's store."""
    preds = read_predictions(rundir.predictions)
    if preds["ids"] != cache.ids:
        raise StoreError("predictions.h5 does not match the image cache; rerun the evaluate stage")
    rows = cache.rows(job.split)
    if len(rows) == 0:
        raise ConfigError(f"[[explain]] split = {job.split!r} has no images in this run")
    path = rundir.heatmaps(job.name)
    if shard is not None:
        rows = rows[slice(*shard.bounds(len(rows)))]
        path = rundir.heatmap_shard(job.name, shard)
    predictions = preds["probs"][rows].argmax(axis=1)
    labels = cache.labels[rows]
    columns = Columns.of([cache.ids[r] for r in rows], labels, predictions, preds["probs"][rows],
                         predictions if job.targets == "predicted" else labels, len(preds["classes"]))
    with h5py.File(cache.path, "r") as h5:
        def images(start: int, stop: int) -> np.ndarray:
            return read_rows(h5["images"], rows[start:stop]).astype(np.float32)[..., None]

        return explain_to_store(path, job, model, model_sha256, preds["classes"], columns, images,
                                overwrite=overwrite)


def explain_to_store(path: str | Path, job: ExplainJob, model: Any, model_sha256: str,
                     classes: list[str], columns: Columns, images: Callable[[int, int], np.ndarray],
                     *, overwrite: bool = False, dtype: str = "float16", progress: bool = True) -> Path:
    """Explain every row of ``columns`` into the store at ``path`` (resuming a partial one).

    ``images(start, stop)`` returns rows [start, stop) as the model takes them, e.g.
    (n, S, S, 1) float32."""
    n = len(columns)
    size = _image_size(model, images, n)
    all_classes = job.targets == "all"
    with HeatmapWriter(path, job.identity(model, model_sha256, classes), columns, size,
                       all_classes=all_classes, dtype=dtype, overwrite=overwrite) as writer:
        if writer.complete:
            return writer.path
        done = writer.done
        resumed = f" (resuming at {done}/{n})" if done else ""
        bar = progress_bar(f"explain {job.name}{resumed}", n - done) if progress else nullcontext(None)
        with bar as advance:
            for start in range(done, n, job.batch_size):
                stop = min(start + job.batch_size, n)
                batch = np.asarray(images(start, stop), dtype=np.float32)
                if len(batch) != stop - start:
                    raise StoreError(f"images({start}, {stop}) returned {len(batch)} rows, "
                                     f"expected {stop - start}")
                writer.write(start, *_explain_batch(job, model, batch, columns.targets[start:stop]))
                if advance is not None:
                    advance(stop - start)
        return writer.finish()


def _explain_batch(job: ExplainJob, model: Any, images: np.ndarray, targets: np.ndarray) -> tuple:
    """``(maps, degenerate)``, plus every class's maps and flags when ``job.targets == "all"``."""
    if job.targets != "all":
        return _explain(job.explainer, model, images, targets, job.layer)
    if hasattr(job.explainer, "explain_all_with_info"):
        maps_all, flags_all = job.explainer.explain_all_with_info(model, images, job.layer)
    else:
        runs = [_explain(job.explainer, model, images, np.full(len(images), c), job.layer)
                for c in range(int(model.outputs[0].shape[-1]))]
        maps_all, flags_all = np.stack([m for m, _ in runs], axis=1), np.stack([d for _, d in runs], axis=1)
    rows = np.arange(len(images))
    return maps_all[rows, targets], flags_all[rows, targets], maps_all, flags_all


def _explain(explainer: Any, model: Any, images: np.ndarray, targets: np.ndarray,
             layer: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Maps and degenerate flags, from any object with ``explain`` (a plugin need not subclass
    :class:`~xaicxr.plugins.Explainer`)."""
    if hasattr(explainer, "explain_with_info"):
        return explainer.explain_with_info(model, images, targets, layer)
    maps = np.asarray(explainer.explain(model, images, targets, layer=layer), dtype=np.float32)
    return maps, ~np.any(maps > 0, axis=(1, 2))


def _image_size(model: Any, images: Callable[[int, int], np.ndarray], n: int) -> tuple[int, int]:
    shape = tuple(model.inputs[0].shape[1:3])
    if all(isinstance(s, int) for s in shape):
        return shape  # type: ignore[return-value]
    if n == 0:
        raise StoreError("the model input has no fixed size and there are no images")
    return tuple(np.asarray(images(0, 1)).shape[1:3])  # type: ignore[return-value]
