"""The quality stage: can these heatmaps and templates be trusted? Every chosen metric
(``[quality] metrics``, :mod:`xaicxr.plugins.metric`) on every explainer's store, each figure
next to what a map that knows nothing earns, with its 95 % interval (docs/quality.md).

The stage knows no metric by name. It gathers the inputs a metric's parameters ask for and hands
them over by scope:

- ``maps``: per explainer and true class, the maps that explain the image's own class (with
  ``targets = "predicted"`` a misclassified image's map explains another class and is counted in
  ``n_other_target``), with the images, masks (lungs segmented where the dataset has none) and
  the class prior, and the class's counterfactual twins where the metric declares the
  ``changes`` it needs and the dataset plugin can make them; also the uninformed maps a metric
  names (``baselines``), scored once per set of images: their figures go to ``metrics.json``
  ``baselines`` (those of the first set of explained images; an explainer that explained other
  images carries its own under ``per_image[store][class]["baselines"]``). A map metric that
  scores against a ground truth of its own, made by a ``ground_truth`` method from inputs named
  as ``scores``'s are (the pixels a lesion-removed twin changes), gets as its ``class_prior``
  baseline the mean of that ground truth over the class's training images;
- ``template`` / ``templates``: each aggregator's template of a class / of every class; a
  class's template comes with the heatmaps it aggregated (``maps``), the ``aggregator`` that built
  it and whether those maps are of the class's scored images, row for row (``paired``);
- ``explainer``: the store's explainer, layer and target, on the rows the metric selects;
- ``run``: the explained images of the run, their labels and masks, and counterfactual twins
  where the dataset plugin can make them.

Each twin is rendered once (:class:`TwinSource`): those a map metric asked for are kept for the
run metrics (the reliance test), which see the same images.

A metric whose required input the run cannot give is listed with the reason under
``metrics.json`` ``not_measured``. ``quality.h5`` keeps the per-image arrays each map metric keeps
(``scores/<store>/<class>/...``, ``curves/...``) and the baselines' (``baselines/...``).

A store of a binary task's score (``target = "binary:<task>"``) is not scored: its reason is
under ``quality_skipped`` (see :data:`BINARY_SKIP_REASON`).

Every metric is also given ``executor``: the model's passes through the run's executor
(:class:`~xaicxr.executors.model_passes.ModelExecutor`; on a cluster the workers load
``model.keras`` once each, :class:`ModelFile`). The metrics cut their passes into fixed spans,
so ``quality.h5`` and the figures are the same whichever executor computes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py
import numpy as np

from ..analysis import baselines as base
from ..analysis.lungs import segment_lungs
from ..config import build_plugin, chosen_metrics, make_metric
from ..errors import MetricInputError, StoreError
from ..executors.model_passes import ModelExecutor
from ..io import atomic
from ..io.heatmap_store import HeatmapStore
from ..io.imagecache import SPLITS, ImageCache
from ..io.resize import fit_square
from ..io.template_store import is_multi_component, read_template_file
from ..plugins import Aggregator, registry
from ..plugins.metric import MapMetric, Metric, call_with_inputs
from ..progress import console, progress_bar
from ..rundir import RunDir
from . import Run

NAME = "quality"
TABLES = ("quality",)

BINARY_SKIP_REASON = (
    "not scored: the maps explain a binary task's score (the summed probability of its positive classes), "
    "not one class. Every quality figure here is defined for one class: localisation against that class's "
    "lesions next to that class's prior, deletion/insertion and template faithfulness on that class's "
    "probability, randomisation of that class's maps. Scoring the positive side against the union of its "
    "classes' lesions would pool lesions of different shapes and places under one prior and one score; "
    "compare the class stores' figures instead, and the side templates in the report.")
"""Why a binary store gets no quality figures (``metrics.json`` ``quality_skipped``)."""

MISSING_INPUT = {
    "twins": "the dataset plugin makes no counterfactual twins (the phantoms do)",
    "lesion": "the dataset has no lesion masks",
}
"""Why the run cannot give an input, where the reason is not the input's name itself."""


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.quality]


def mostly_degenerate(flags: np.ndarray) -> bool:
    """More than half the maps of a store are degenerate: its figures would score the fallback
    (zeros), not the explainer, so they are not computed."""
    return len(flags) > 0 and float(np.mean(flags)) > 0.5


def degenerate_reason(flags: np.ndarray) -> str:
    return (f"{int(np.sum(flags))} of {len(flags)} maps are degenerate (no signal: all zero, constant or "
            "non-finite), so its figures would measure the fallback, not the explainer; not scored. Look "
            "for a layer the score does not depend on, or a saturated output (docs/api.md)")


def run(run: Run) -> dict[str, Any]:
    opts = run.cfg["quality"]
    metrics = [(name, make_metric(name, opts)) for name in chosen_metrics(opts)]
    cache = run.image_cache()
    classes = run.dir.read_split()["classes"]
    figures = Figures(metrics)
    sets: dict[tuple, ImageSet] = {}
    aggregators = {spec["name"]: build_plugin("aggregate", spec) for spec in run.cfg["aggregate"]}
    passes = model_executor(run)
    twins = TwinSource(run)
    with atomic.atomic_path(run.dir.quality) as tmp, h5py.File(tmp, "w") as out:
        for job in run.jobs():
            with HeatmapStore(run.dir.heatmaps(job.store)) as store:
                if store.is_binary:
                    figures.out["quality_skipped"][job.store] = {"target": store.target, "reason": BINARY_SKIP_REASON}
                    continue
                if mostly_degenerate(store.degenerate):
                    figures.out["quality_skipped"][job.store] = {"target": store.target,
                                                                 "reason": degenerate_reason(store.degenerate)}
                    continue
                key = (tuple(store.ids), store.targets.tobytes())
                if key not in sets:
                    sets[key] = ImageSet(store, cache, classes, opts, run.model, passes,
                                         out.require_group(f"baselines/{job.store}"), twins)
                images, first = sets[key], next(iter(sets.values()))
                figures.out["baselines"] = first.baseline_figures
                _map_metrics(figures, images, store, job.store, out, own_baselines=images is not first)
                for agg_name, aggregator in aggregators.items():
                    _template_metrics(figures, images, store, aggregator, run.dir.template(job.store, agg_name),
                                      f"{job.store}-{agg_name}")
                _explainer_metrics(figures, run, job, store, cache, classes, passes)
        _run_metrics(figures, run, cache, classes, passes, twins)
        out.attrs["classes"] = list(classes)
    run.dir.update_metrics(figures.out)
    return {"explainers": list(figures.out["per_image"]),
            "sanity": {k: v["passes"] for k, v in figures.out.get("sanity", {}).items()},
            "reliance": {c: v["relies_on_lesion"] for c, v in figures.out.get("reliance", {}).items()},
            "not_measured": figures.out["not_measured"]}


def model_executor(run: Run) -> ModelExecutor:
    """The run's model passes on the run's executor (started on first use): the driver's model
    here, ``model.keras`` on a cluster's workers."""
    model_file = ModelFile(str(run.dir.model), run.model_sha256(), run.unsafe_load)
    return ModelExecutor(run.executor, run.model, load=model_file, load_key=model_file.key)


@dataclass(frozen=True)
class ModelFile:
    """The run's ``model.keras`` as a cluster worker loads it: checked against the digest the
    driver read. Its :attr:`key` is the explain stage's, so a worker that explained keeps the
    same loaded model for the quality passes."""

    path: str
    sha256: str
    unsafe: bool

    @property
    def key(self) -> tuple:
        return ("model", self.path, self.sha256, self.unsafe)

    def __call__(self) -> Any:
        from ..io.modelfile import load_model, model_sha256

        if model_sha256(self.path) != self.sha256:
            raise StoreError(f"{self.path} on this worker is not the model being measured "
                             "(another file, or it changed during the run)")
        return load_model(self.path, unsafe=self.unsafe)


class Figures:
    """What the stage writes to ``metrics.json``: each metric's figures under its key, nested by
    scope, the derived keys (:meth:`Metric.also`), and what could not be measured and why."""

    def __init__(self, metrics: list[tuple[str, Metric]]) -> None:
        self.metrics = metrics
        self.out: dict[str, Any] = {"per_image": {}, "baselines": {}, "quality_skipped": {}, "not_measured": {}}
        for name in registry().names("metric"):  # a metric left out now leaves no figures of an earlier run
            cls = registry().get("metric", name)
            for key in (cls.key, *cls.also_keys):
                self.out.setdefault(key, {})

    def of(self, scope: str) -> list[tuple[str, Metric]]:
        return [(name, m) for name, m in self.metrics if m.scope == scope]

    def merge(self, metric: Metric, path: tuple[str, ...], values: dict[str, Any]) -> None:
        """Merge ``values`` into ``metrics[metric.key][path...]``, and the metric's derived keys
        at the same path."""
        for key, value in ((metric.key, values), *metric.also(values).items()):
            node = self.out.setdefault(key, {})
            for part in path[:-1]:
                node = node.setdefault(part, {})
            if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
                node[path[-1]].update(value)
            else:
                node[path[-1]] = value

    def evaluate(self, name: str, metric: Metric, fn: Callable[..., Any], inputs: Mapping[str, Any]) -> Any:
        """``fn`` with its inputs, or None (and the reason kept) where one is missing."""
        try:
            return call_with_inputs(fn, inputs, metric)
        except MetricInputError as exc:
            missing = [n for n in MISSING_INPUT if f"'{n}'" in str(exc)]
            self.out["not_measured"][name] = str(exc) + "".join(f" ({MISSING_INPUT[n]})" for n in missing)
            return None


# --------------------------------------------------------------------------- the images explained


class ImageSet:
    """The images an explainer explained, per true class: images, masks, class priors, the
    sample the costly metrics see, and the uninformed maps' scores and figures. Built once for
    every explainer that explained the same images for the same targets."""

    def __init__(self, store: HeatmapStore, cache: ImageCache, classes: list[str], opts: dict[str, Any],
                 model: Callable[[], Any], passes: ModelExecutor, out: h5py.Group,
                 twin_source: "TwinSource | None" = None) -> None:
        self.classes, self.opts, self.model, self.passes, self.out = classes, opts, model, passes, out
        self.cache, self.twin_source = cache, twin_source
        self.seed = opts["seed"]
        self.size = store.shape[1]
        self.segmented: set[int] = set()
        rng = np.random.default_rng(self.seed)
        cache_rows = cache.rows_of(store.ids)
        self.exclude = set(cache_rows.tolist())
        self.priors = class_priors(cache, len(classes), exclude=self.exclude)
        self._own_priors: dict[str, dict[int, np.ndarray]] = {}
        self._twins: dict[tuple, _Twins | None] = {}
        self.data: dict[int, dict[str, Any]] = {}
        self.other_target: dict[int, int] = {}
        for k in range(len(classes)):
            of_class = np.flatnonzero(store.labels == k)
            rows = of_class[store.targets[of_class] == k]
            self.other_target[k] = int(len(of_class) - len(rows))
            if opts["max_images"] and len(rows) > opts["max_images"]:
                rows = np.sort(rng.choice(rows, opts["max_images"], replace=False))
            if not len(rows):
                continue
            block = cache.read(cache_rows[rows])
            sample = np.arange(len(rows))
            if opts["faithfulness_images"] and len(rows) > opts["faithfulness_images"]:
                sample = np.sort(rng.choice(len(rows), opts["faithfulness_images"], replace=False))
            self.data[k] = {"rows": rows, "images": block["images"], "lesion": block["lesion"],
                            "lung": self._lungs(block, k), "sample": sample, "ids": [store.ids[r] for r in rows]}
        self.baseline_figures: dict[str, dict[str, Any]] = {classes[k]: {} for k in self.data}
        self._baseline_scores: dict[tuple[str, int], dict[str, dict[str, np.ndarray]]] = {}

    def _lungs(self, block: dict[str, Any], k: int) -> np.ndarray:
        lung, segmented = lungs_of(block)
        if segmented:
            self.segmented.add(k)
        return lung

    def inputs(self, k: int, sampled: bool = False, changes: tuple[str, ...] = (), **given: Any) -> "Inputs":
        """The inputs of class ``k``'s images (its sample with ``sampled``), plus ``given``;
        with ``changes``, also their counterfactual ``twins`` (made on first use)."""
        data = self.data[k]
        pick = data["sample"] if sampled else slice(None)
        n = len(data["rows"][pick])
        makers: dict[str, Callable[[], Any]] = {"model": self.model}
        if changes:
            makers["twins"] = lambda: self.twins(k, sampled, tuple(changes))
        return Inputs({"images": data["images"][pick], "lung": data["lung"][pick],
                       "lesion": None if data["lesion"] is None else data["lesion"][pick],
                       "prior": self.priors.get(k), "targets": np.full(n, k), "labels": np.full(n, k),
                       "class_names": self.classes, "seed": self.seed, "executor": self.passes, **given},
                      **makers)

    def twins(self, k: int, sampled: bool, changes: tuple[str, ...]) -> "_Twins | None":
        """The counterfactual twins of class ``k``'s images (its sample with ``sampled``), the same
        arrays for every metric that asks; None where the dataset cannot make ``changes``."""
        key = (k, sampled, changes)
        if key not in self._twins:
            data = self.data[k]
            ids = np.asarray(data["ids"], dtype=object)[data["sample"] if sampled else slice(None)]
            self._twins[key] = None if self.twin_source is None else self.twin_source.of(list(ids), changes)
        return self._twins[key]

    def prior(self, name: str, metric: MapMetric, k: int) -> np.ndarray | None:
        """The map of ``metric``'s ``class_prior`` baseline for class ``k``: the mean training
        lesion mask, or for a metric with a ``ground_truth`` of its own, the mean of that over the
        same training images (made once per metric)."""
        truth = getattr(metric, "ground_truth", None)
        if truth is None or "class_prior" not in metric.baselines:
            return self.priors.get(k)
        if name not in self._own_priors:
            changes = tuple(getattr(metric, "changes", ()))
            cache, source = self.cache, self.twin_source

            def masks(rows: np.ndarray, block: dict[str, Any]) -> np.ndarray | None:
                ids = [cache.ids[r] for r in rows]
                inputs = Inputs({"images": block["images"], "lesion": block["lesion"], "labels": cache.labels[rows],
                                 "class_names": self.classes},
                                twins=lambda: None if source is None or not changes
                                else source.of(ids, changes, keep=False))
                return call_with_inputs(truth, inputs, metric)

            try:
                self._own_priors[name] = class_priors(cache, len(self.classes), self.exclude, masks)
            except MetricInputError:  # not made for the training images: no class_prior baseline
                self._own_priors[name] = {}
        return self._own_priors[name].get(k)

    def baselines(self, name: str, metric: MapMetric, k: int) -> dict[str, dict[str, np.ndarray]]:
        """The per-image scores of the uninformed maps ``metric`` names, on class ``k``'s images
        (scored once); their figures go to :attr:`baseline_figures`, their kept arrays to
        ``quality.h5``."""
        if (name, k) in self._baseline_scores:
            return self._baseline_scores[(name, k)]
        cls, scored = self.classes[k], {}
        inputs = self.inputs(k, metric.sampled, tuple(getattr(metric, "changes", ())))
        shape = (self.size, self.size)
        for b in metric.baselines:
            prior = self.prior(name, metric, k) if b == "class_prior" else None
            maps = base.baseline_maps(b, inputs["lung"], prior, shape, len(inputs["targets"]), seed=self.seed + k)
            if maps is None:
                continue
            maps = np.ascontiguousarray(np.broadcast_to(maps, (len(inputs["targets"]), *shape)))
            scores = call_with_inputs(metric.scores, inputs.with_(maps=maps, degenerate=None), metric)
            scored[b] = scores
            values = call_with_inputs(metric.figures, inputs.with_(maps=maps, scores=scores, baselines=None), metric)
            entry = self.baseline_figures[cls].setdefault(b, {})
            if metric.key != "per_image":
                entry = entry.setdefault(metric.key, {})
            entry.update(values)
            for array, value in metric.kept(scores).items():
                self.out.create_dataset(f"{cls}/{b}/{array}", data=value)
        self._baseline_scores[(name, k)] = scored
        return scored


def lungs_of(block: dict[str, Any]) -> tuple[np.ndarray, bool]:
    """The lung masks of an image-cache block, segmented from the image where a row has none,
    and whether any row was segmented."""
    lung = block["lung"] if block["lung"] is not None else np.zeros(block["images"].shape, bool)
    missing = np.flatnonzero(~block["has_lung"])
    if len(missing):
        lung = lung.copy()
        for i in missing:
            lung[i] = segment_lungs(block["images"][i])
    return lung, bool(len(missing))


class Inputs(Mapping):
    """A metric's inputs by name; those given as makers (the model) are made on first use, so
    nothing is loaded that no chosen metric asks for."""

    def __init__(self, values: dict[str, Any], **makers: Callable[[], Any]) -> None:
        self.values, self.makers = values, makers

    def with_(self, **values: Any) -> "Inputs":
        return Inputs({**self.values, **values}, **self.makers)

    def __getitem__(self, key: str) -> Any:
        if key not in self.values and key in self.makers:
            return self.makers[key]()
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self.makers), **self.values})

    def __len__(self) -> int:
        return len(set(self.values) | set(self.makers))


def class_priors(cache: ImageCache, n_classes: int, exclude: set[int],
                 masks: Callable[[np.ndarray, dict[str, Any]], np.ndarray | None] | None = None
                 ) -> dict[int, np.ndarray]:
    """The mean lesion mask of every class over training images that are not scored (a prior
    must not have seen the images it is scored on); where the training split is what is scored,
    over the other splits. ``masks(rows, block)``: another ground truth of the cache rows, from
    their block (:meth:`ImageCache.read`), averaged instead of the lesion masks."""
    for splits in (("train",), tuple(s for s in SPLITS if s != "train")):
        rows = np.array([r for s in splits for r in cache.rows(s) if r not in exclude], dtype=np.int64)
        chunks = (rows[i:i + 256] for i in range(0, len(rows), 256))
        truth = masks or (lambda rows, block: block["lesion"])
        priors = base.class_priors(((truth(c, cache.read(c)), cache.labels[c]) for c in chunks), n_classes)
        if priors:
            return priors
    return {}


# --------------------------------------------------------------------------- by scope


def _map_metrics(figures: Figures, images: ImageSet, store: HeatmapStore, name: str, out: h5py.File, *,
                 own_baselines: bool) -> None:
    """Every ``maps`` metric on every class of the store, beside its baselines."""
    metrics = figures.of("maps")
    per_image = figures.out["per_image"].setdefault(name, {})
    with progress_bar(f"quality {name}", len(images.data) * len(metrics), unit="step") as advance:
        for k, data in images.data.items():
            cls = images.classes[k]
            maps = store.read(data["rows"])
            degenerate = store.degenerate[data["rows"]]
            per_image[cls] = {"n": int(len(data["rows"])), "n_degenerate": int(degenerate.sum()),
                              "n_other_target": images.other_target[k]}
            out.create_dataset(f"scores/{name}/{cls}/ids", data=np.array([store.ids[r] for r in data["rows"]],
                                                                         dtype=object), dtype=h5py.string_dtype())
            for metric_name, metric in metrics:
                pick = data["sample"] if metric.sampled else slice(None)
                inputs = images.inputs(k, metric.sampled, tuple(getattr(metric, "changes", ())),
                                       maps=np.ascontiguousarray(maps[pick]), degenerate=degenerate[pick])
                scores = figures.evaluate(metric_name, metric, metric.scores, inputs)
                if scores is not None:
                    reference = images.baselines(metric_name, metric, k)
                    values = figures.evaluate(metric_name, metric, metric.figures,
                                              inputs.with_(scores=scores, baselines=reference))
                    figures.merge(metric, (name, cls), values)
                    group = out.require_group(f"{metric.group}/{name}/{cls}")
                    for array, value in metric.kept(scores).items():
                        group.create_dataset(array, data=value)
                    for attr, value in metric.kept_attrs().items():
                        out[f"{metric.group}/{name}"].attrs[attr] = value
                advance(1)
            if own_baselines:
                per_image[cls]["baselines"] = images.baseline_figures[cls]
            per_image[cls]["lung_source"] = "segmented (scikit-image)" if k in images.segmented else "mask"
    for k, other in images.other_target.items():
        if k not in images.data and other:
            per_image[images.classes[k]] = {"n": 0, "n_other_target": other}


def _template_metrics(figures: Figures, images: ImageSet, store: HeatmapStore, aggregator: Aggregator,
                      path: Path, name: str) -> None:
    """Every ``template`` metric on each class's template of one aggregator, and every
    ``templates`` metric on all of them."""
    per_class, together = figures.of("template"), figures.of("templates")
    if not (per_class or together) or not path.exists():
        return
    loaded = read_template_file(path)
    if is_multi_component(loaded):
        for metric_name, metric in per_class:
            figures.merge(metric, (name,), {
                cls: {"n": int(attrs.get("n", 0)),
                      "explained_variance_ratio": np.asarray(attrs.get("explained_variance_ratio", [])).tolist(),
                      "note": "components, not one map: no localisation figures"}
                for cls, (_, attrs) in loaded.items()})
        return
    for k in images.data:
        cls = images.classes[k]
        if cls not in loaded:
            continue
        template, attrs = loaded[cls]
        n = int(attrs.get("n", 0))
        aggregated = template_rows(store, k, str(attrs.get("by", "true")), bool(attrs.get("correct_only", False)))
        read: dict[str, np.ndarray] = {}

        def aggregated_maps() -> np.ndarray | None:
            """The template's heatmaps, read once; none where the store no longer holds the n
            maps the template counted (a stale template)."""
            if len(aggregated) != n:
                return None
            if "maps" not in read:
                read["maps"] = store.read(aggregated)
            return read["maps"]

        for metric_name, metric in per_class:
            if n == 0:
                figures.merge(metric, (name, cls), {"n": 0, "note": "no heatmap of this class was aggregated"})
                continue
            scored = images.data[k]["rows"][images.data[k]["sample"] if metric.sampled else slice(None)]
            inputs = images.inputs(k, metric.sampled, template=template, n=n, aggregator=aggregator,
                                   paired=bool(np.array_equal(aggregated, scored)))
            values = figures.evaluate(metric_name, metric, metric.evaluate,
                                      Inputs(inputs.values, **inputs.makers, maps=aggregated_maps))
            if values is not None:
                figures.merge(metric, (name, cls), values)
    templates = {c: t for c, (t, _) in loaded.items()}
    for metric_name, metric in together:
        values = figures.evaluate(metric_name, metric, metric.evaluate, {"templates": templates})
        if values is not None:
            figures.merge(metric, (name,), values)


def template_rows(store: HeatmapStore, k: int, by: str, correct_only: bool) -> np.ndarray:
    """The store rows class ``k``'s template aggregated, in store order: the rows
    :func:`~xaicxr.analysis.aggregation.build_templates` groups under class ``k`` by true label
    or prediction (``by``), with ``correct_only`` those predicted right."""
    selected = (store.labels if by == "true" else store.predictions) == k
    if correct_only:
        selected &= store.labels == store.predictions
    return np.flatnonzero(selected)


def _explainer_metrics(figures: Figures, run: Run, job: Any, store: HeatmapStore, cache: ImageCache,
                       classes: list[str], passes: ModelExecutor) -> None:
    """Every ``explainer`` metric on the rows it selects of the store, with the store's own
    explainer, layer and target."""
    for metric_name, metric in figures.of("explainer"):
        rows = metric.select(store.labels, len(classes), run.cfg["quality"]["seed"])
        console.print(f"{metric_name}: {job.store} on {len(rows)} images")
        inputs = Inputs({"images": cache.read(cache.rows_of([store.ids[r] for r in rows]))["images"],
                         "targets": store.targets[rows], "labels": store.labels[rows], "class_names": classes,
                         "explainer": job.explainer, "layer": store.layer, "target": job.target,
                         "train_seed": run.cfg["train"]["seed"], "seed": run.cfg["quality"]["seed"],
                         "executor": passes}, model=run.model)
        values = figures.evaluate(metric_name, metric, metric.evaluate, inputs)
        if values is not None:
            figures.merge(metric, (job.store,), values)


def _run_metrics(figures: Figures, run: Run, cache: ImageCache, classes: list[str], passes: ModelExecutor,
                 source: "TwinSource | None" = None) -> None:
    """Every ``run`` metric on the images of the explained splits (a study that chooses on the
    validation split must not read the test split)."""
    metrics = figures.of("run")
    if not metrics:
        return
    splits = _explained_splits(run.cfg["explain"])
    _, records, _ = run.dir.records()
    by_id = {r.id: r for r in records}
    rows = np.array([r for split in splits for r in cache.rows(split) if cache.ids[r] in by_id], dtype=np.int64)
    block = cache.read(rows) if len(rows) else None
    source = source or TwinSource(run)
    segmented: list[np.ndarray] = []

    def lungs(block: dict[str, Any]) -> np.ndarray:
        if not segmented:
            segmented.append(lungs_of(block)[0])
        return segmented[0]

    for metric_name, metric in metrics:
        if block is None:
            figures.out["not_measured"][metric_name] = f"no explained image of the splits {', '.join(splits)}"
            continue
        twins = source.of([cache.ids[r] for r in rows], tuple(getattr(metric, "changes", ())))
        inputs = Inputs({"images": block["images"], "labels": cache.labels[rows], "lesion": block["lesion"],
                         "class_names": classes, "twins": twins, "split": "+".join(splits),
                         "seed": run.cfg["quality"]["seed"], "executor": passes}, model=run.model,
                        lung=lambda: lungs(block))
        values = figures.evaluate(metric_name, metric, metric.evaluate, inputs)
        if values is not None:
            figures.out[metric.key] = values
            figures.out.update(metric.also(values))


class TwinSource:
    """Counterfactual images of the run's records, made by the dataset plugin on first use and
    resized as the model was trained (:meth:`xaicxr.plugins.Dataset.counterfactual`). Twins of
    the explained images are kept: a map metric's twins of one class and a run metric's of the
    whole split are the same renders, made once; the training images' (a prior) are not kept."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.kept: dict[tuple[str, str], np.ndarray] = {}
        """``(change, id)``: a kept twin, float16."""
        self._dataset: Any = None
        self._records: dict[str, Any] | None = None

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            self._dataset = build_plugin("dataset", self.run.cfg["dataset"])
        return self._dataset

    @property
    def records(self) -> dict[str, Any]:
        if self._records is None:
            _, records, external = self.run.dir.records()
            self._records = {r.id: r for r in (*records, *external)}
        return self._records

    def of(self, ids: list[str], changes: tuple[str, ...], *, keep: bool = True) -> "_Twins | None":
        """The twins of the images ``ids`` by change, or None where the dataset cannot make
        ``changes`` (or none is asked for)."""
        changes = tuple(changes)
        if not changes or not set(changes) <= set(self.dataset.counterfactuals) \
                or any(i not in self.records for i in ids):
            return None
        return _Twins(self, list(ids), changes, keep)

    def render(self, ids: list[str], change: str, keep: bool = True) -> np.ndarray:
        """(N, S, S) float32: the ``change`` twins of ``ids``, rendering those not kept."""
        missing = [i for i in dict.fromkeys(ids) if (change, i) not in self.kept]
        made: dict[str, np.ndarray] = {}
        if missing:
            train = self.run.dir.read_train_info()
            size, resize, mode = int(train["input_size"]), train["resize"], train.get("mode")

            def twin(record: Any) -> np.ndarray:
                image = self.dataset.counterfactual(record, change, self.run.dir.data_dir)
                return fit_square(image, size, policy=resize, mode=mode).astype(np.float16).astype(np.float32)

            with ThreadPoolExecutor() as pool, progress_bar(f"counterfactual twins ({change})",
                                                            len(missing)) as advance:
                for i, image in zip(missing, pool.map(twin, [self.records[i] for i in missing])):
                    made[i] = image
                    advance(1)
            if keep:  # float16 holds them exactly (they were rounded to it)
                self.kept.update(((change, i), image.astype(np.float16)) for i, image in made.items())
        if not ids:
            size = int(self.run.dir.read_train_info()["input_size"])
            return np.zeros((0, size, size), np.float32)
        return np.stack([made[i] if i in made else self.kept[(change, i)].astype(np.float32) for i in ids])


class _Twins(Mapping):
    """Counterfactual images of the images ``ids`` per change, made on first use
    (:class:`TwinSource`), the same arrays on every access."""

    def __init__(self, source: TwinSource, ids: list[str], changes: tuple[str, ...], keep: bool = True) -> None:
        self.source, self.ids, self.changes, self.keep = source, ids, changes, keep
        self.made: dict[str, np.ndarray] = {}

    def __getitem__(self, change: str) -> np.ndarray:
        if change not in self.changes:
            raise KeyError(change)
        if change not in self.made:
            self.made[change] = self.source.render(self.ids, change, self.keep)
        return self.made[change]

    def __contains__(self, change: object) -> bool:
        return change in self.changes

    def __iter__(self) -> Iterator[str]:
        return iter(self.changes)

    def __len__(self) -> int:
        return len(self.changes)


def _explained_splits(specs: list[dict[str, Any]]) -> list[str]:
    """The one split every ``[[explain]]`` table explains, else the test split: figures of
    different splits are never pooled, and a study that explains only the validation split never
    reads the test split."""
    splits = {spec["split"] for spec in specs}
    return [splits.pop()] if len(splits) == 1 and "all" not in splits else ["test"]
