"""The explain stage: heatmaps of the configured split into ``heatmaps/<explainer>.h5``.

An ``[[explain]]`` entry is resolved once into an :class:`ExplainJob` (the explainer made with
its options, the layer, which targets, the score made for the run's classes and a binary
score's threshold, which rows, the parameters that identify the store), and that one object is
passed down. Images
come from the run's image cache (the exact pixels the model was evaluated on); labels,
predictions and probabilities from ``predictions.h5``.
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
from ..analysis.metrics import default_binary_tasks
from ..config import build_plugin, plugin_options, store_name
from ..errors import ConfigError, ExplainerInputError, ModelMismatchError, StoreError
from ..executors import Executor, LocalExecutor, worker_cached
from ..io.h5rows import read_rows
from ..io.heatmap_store import Columns, HeatmapStore, HeatmapWriter
from ..io.imagecache import ImageCache
from ..io.predictions import read_predictions
from ..plugins.explainer import Explainer
from ..plugins.targets import BinaryScore, Target, explained, make_target
from ..progress import console, progress_bar
from ..rundir import RunDir, Shard
from . import Run

NAME = "explain"
TABLES = ("explain",)


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.heatmaps(store_name(e)) for e in cfg["explain"]]


def run(run: Run) -> dict[str, Any]:
    model, cache = run.model(), run.image_cache()
    written = {}
    for job in run.jobs():
        try:  # resumes a partial store of this job
            path = explain_split(run.dir, job, model, run.model_sha256(), cache,
                                 executor=run.executor(), unsafe_load=run.unsafe_load)
        except ModelMismatchError:  # the model was retrained: its old heatmaps go
            path = explain_split(run.dir, job, model, run.model_sha256(), cache, overwrite=True,
                                 executor=run.executor(), unsafe_load=run.unsafe_load)
        written[job.store] = str(path.relative_to(run.dir.root))
        warn_degenerate(job.store, path)
    return written


def warn_degenerate(store_name: str, path: Path) -> float:
    """Say on the terminal what share of a store's maps are degenerate (a map without signal comes
    back as zeros and flagged, never silently); returns the share."""
    with HeatmapStore(path) as store:
        flags = store.degenerate
    share = float(np.mean(flags)) if len(flags) else 0.0
    if share > 0:
        loud = "[bold red]warning:[/]" if share > 0.5 else "[yellow]warning:[/]"
        console.print(f"{loud} {store_name}: {int(flags.sum())} of {len(flags)} maps ({share:.0%}) are degenerate "
                      "(all zero, constant or non-finite: flagged, kept as zeros)"
                      + ("; its quality figures will not be scored" if share > 0.5 else ""))
    return share


@dataclass(frozen=True)
class ExplainJob:
    """One ``[[explain]]`` entry, resolved once: everything that decides what a store holds.
    The train stage checks it before training, the explain stage writes its store, the quality
    stage re-runs it (randomisation), ``detect`` applies it: all from this one object."""

    name: str
    """The explainer plugin's name."""
    explainer: Explainer
    layer: str | None
    """The requested layer (configured, else the backbone's default); None: the explainer's own."""
    targets: str
    """``true`` (the label), ``predicted``, or ``all`` (every class, kept in ``heatmaps_all``)."""
    split: str
    batch_size: int
    params: dict[str, Any]
    """The explainer's options plus ``targets`` and ``split``: the store's ``params``."""
    target: Target | None = None
    """The configured score (class logit, class probability, a binary task's score), made for
    the run's classes; None: the explainer's default (the class logit; RISE and Score-CAM: the
    class probability)."""
    threshold: float | None = None
    """A binary target's decision threshold (from validation, ``metrics.json``): the store
    keeps it for its predicted side."""
    store: str = ""
    """The store's name (:func:`xaicxr.config.store_name`); empty: the explainer's name."""

    def __post_init__(self) -> None:
        if not self.store:
            object.__setattr__(self, "store", self.name)
        if self.target is not None:
            self.explainer.check_target(self.target)

    @classmethod
    def from_spec(cls, spec: dict[str, Any], rundir: RunDir | None = None, *,
                  classes: list[str] | None = None, tasks: dict[str, dict[str, Any]] | None = None,
                  default_layer: str | None = None) -> "ExplainJob":
        """The job of a resolved ``[[explain]]`` entry. ``classes``, ``tasks`` (binary tasks,
        with their thresholds where known) and ``default_layer`` default to the run's
        (``split.json``, ``metrics.json``, ``train.json``) when ``rundir`` is given."""
        if rundir is not None:
            if classes is None and rundir.split.exists():
                classes = rundir.read_split()["classes"]
            if tasks is None and spec.get("target") and rundir.metrics.exists():
                tasks = rundir.read_metrics().get("binary")
            if default_layer is None and rundir.train_info.exists():
                default_layer = rundir.read_train_info().get("default_layer") or None
        target, threshold = None, None
        if spec.get("target"):
            if classes is None:
                raise ConfigError(f"[[explain]] {spec['name']!r}: target = {spec['target']!r} needs the run's "
                                  "classes (run the split stage first)")
            target = make_target(spec["target"], classes, tasks or default_binary_tasks(classes))
            if isinstance(target, BinaryScore):
                threshold = (tasks or {}).get(target.task, {}).get("threshold")
        try:
            return cls(name=spec["name"], explainer=build_plugin("explain", spec),
                       layer=spec.get("layer") or default_layer,
                       targets=spec["targets"], split=spec["split"], batch_size=spec["batch_size"],
                       params={**plugin_options(spec, "explain"), "targets": spec["targets"],
                               "split": spec["split"]},
                       target=target, threshold=threshold, store=store_name(spec))
        except ExplainerInputError as exc:
            raise ConfigError(f"[[explain]] {spec['name']!r}: {exc}") from None

    def explained(self, classes: np.ndarray) -> Any:
        """What ``explain`` is given for rows of ``classes`` (N,): the class indices alone (the
        explainer's default score), the target bound to them (a class score), or the target
        itself (one score per image, whatever the class)."""
        return explained(self.target, classes)

    def explain_batch(self, model: Any, images: np.ndarray, classes: np.ndarray) -> tuple:
        """``(maps, degenerate)`` of one batch, plus every class's maps and flags when
        ``targets == "all"``."""
        if self.targets != "all":
            return self.explainer.explain_with_info(model, images, self.explained(classes), self.layer)
        maps_all, flags_all = self.explainer.explain_all_with_info(model, images, self.layer, self.target)
        rows = np.arange(len(images))
        return maps_all[rows, classes], flags_all[rows, classes], maps_all, flags_all

    def identity(self, model: Any, model_sha256: str, classes: list[str]) -> dict[str, Any]:
        """The root attributes of the store, but the rows' digest."""
        out: dict[str, Any] = {
            "explainer": self.name, "layer": self.explainer.resolve_layer(model, self.layer),
            "classes": json.dumps(list(classes)), "model_sha256": model_sha256,
            "xaicxr_version": __version__, "params": json.dumps(self.params, sort_keys=True, default=str),
            "target": self.target.label if self.target is not None else self.explainer.default_target.name}
        if isinstance(self.target, BinaryScore):
            out["target_positive"] = json.dumps(self.target.positive_names)
            out["target_threshold"] = float(self.threshold if self.threshold is not None else 0.5)
        return out


def explain_split(rundir: RunDir, job: ExplainJob, model: Any, model_sha256: str, cache: ImageCache,
                  *, overwrite: bool = False, shard: Shard | None = None,
                  executor: Executor | None = None, unsafe_load: bool = False) -> Path:
    """Explain the rows of ``job.split`` (or one shard of them) into the run's store.

    With a cluster ``executor`` the batches are explained by :class:`ExplainRows` on the
    workers (``model`` must be the run's ``model.keras``); the store is written here."""
    preds = read_predictions(rundir.predictions)
    if preds["ids"] != cache.ids:
        raise StoreError("predictions.h5 does not match the image cache; rerun the evaluate stage")
    rows = cache.rows(job.split)
    if len(rows) == 0:
        raise ConfigError(f"[[explain]] split = {job.split!r} has no images in this run")
    path = rundir.heatmaps(job.store)
    if shard is not None:
        rows = rows[slice(*shard.bounds(len(rows)))]
        path = rundir.heatmap_shard(job.store, shard)
    predictions = preds["probs"][rows].argmax(axis=1)
    labels = cache.labels[rows]
    columns = Columns.of([cache.ids[r] for r in rows], labels, predictions, preds["probs"][rows],
                         predictions if job.targets == "predicted" else labels, len(preds["classes"]))
    with h5py.File(cache.path, "r") as h5:
        def images(start: int, stop: int) -> np.ndarray:
            return read_rows(h5["images"], rows[start:stop]).astype(np.float32)[..., None]

        worker = None
        if executor is not None and not executor.local:
            worker = ExplainRows(job, str(rundir.model), model_sha256, unsafe_load, str(cache.path),
                                 np.asarray(rows), columns.targets)
        return explain_to_store(path, job, model, model_sha256, preds["classes"], columns, images,
                                overwrite=overwrite, executor=executor, worker=worker)


@dataclass(frozen=True)
class ExplainRows:
    """Explains one span of a split's rows on a cluster worker, from files alone: the run's
    ``model.keras`` (loaded once per worker and checked against ``model_sha256``) and its image
    cache. Returns what :meth:`HeatmapWriter.write` takes, for the driver to write in order."""

    job: ExplainJob
    model_path: str
    model_sha256: str
    unsafe_load: bool
    cache_path: str
    rows: np.ndarray
    """Image-cache rows of the store's rows."""
    targets: np.ndarray

    def __call__(self, span: tuple[int, int]) -> tuple:
        start, stop = span
        model = worker_cached(("model", self.model_path, self.model_sha256, self.unsafe_load),
                              self._load_model)
        with h5py.File(self.cache_path, "r") as h5:
            images = read_rows(h5["images"], self.rows[start:stop]).astype(np.float32)[..., None]
        return self.job.explain_batch(model, images, self.targets[start:stop])

    def _load_model(self) -> Any:
        from ..io.modelfile import load_model, model_sha256

        if model_sha256(self.model_path) != self.model_sha256:
            raise StoreError(f"{self.model_path} on this worker is not the model being explained "
                             "(another file, or it changed during the run)")
        return load_model(self.model_path, unsafe=self.unsafe_load)


def explain_to_store(path: str | Path, job: ExplainJob, model: Any, model_sha256: str,
                     classes: list[str], columns: Columns, images: Callable[[int, int], np.ndarray],
                     *, overwrite: bool = False, dtype: str = "float16", progress: bool = True,
                     executor: Executor | None = None,
                     worker: Callable[[tuple[int, int]], tuple] | None = None) -> Path:
    """Explain every row of ``columns`` into the store at ``path`` (resuming a partial one).

    ``images(start, stop)`` returns rows [start, stop) as the model takes them, e.g.
    (n, S, S, 1) float32; the score explained is ``job.target``, bound to each batch's
    ``columns.targets`` when it is a class score. The batches are
    computed by ``executor.map`` (here by default), by ``worker`` when given (a picklable function
    of a span, for a cluster); either way they are the same spans and are written in row order,
    so the store does not depend on the executor."""
    n = len(columns)
    size = _image_size(model, images, n)
    all_classes = job.targets == "all"
    identity = job.identity(model, model_sha256, classes)
    with HeatmapWriter(path, identity, columns, size,
                       all_classes=all_classes, dtype=dtype, overwrite=overwrite) as writer:
        if writer.complete:
            return writer.path
        done = writer.done
        resumed = f" (resuming at {done}/{n})" if done else ""
        bar = progress_bar(f"explain {job.name}{resumed}", n - done) if progress else nullcontext(None)
        spans = [(start, min(start + job.batch_size, n)) for start in range(done, n, job.batch_size)]
        explain = worker or (lambda span: _explain_span(job, model, images, columns.targets, span))
        with bar as advance:
            for (start, stop), result in zip(spans, (executor or LocalExecutor()).map(explain, spans)):
                writer.write(start, *result)
                if advance is not None:
                    advance(stop - start)
        return writer.finish()


def _explain_span(job: ExplainJob, model: Any, images: Callable[[int, int], np.ndarray],
                  targets: np.ndarray, span: tuple[int, int]) -> tuple:
    start, stop = span
    batch = np.asarray(images(start, stop), dtype=np.float32)
    if len(batch) != stop - start:
        raise StoreError(f"images({start}, {stop}) returned {len(batch)} rows, expected {stop - start}")
    return job.explain_batch(model, batch, targets[start:stop])


def _image_size(model: Any, images: Callable[[int, int], np.ndarray], n: int) -> tuple[int, int]:
    shape = tuple(model.inputs[0].shape[1:3])
    if all(isinstance(s, int) for s in shape):
        return shape  # type: ignore[return-value]
    if n == 0:
        raise StoreError("the model input has no fixed size and there are no images")
    return tuple(np.asarray(images(0, 1)).shape[1:3])  # type: ignore[return-value]
