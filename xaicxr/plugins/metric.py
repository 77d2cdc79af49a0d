"""The metric plugin contract: one quality figure (or one family of figures) as one class.

A metric holds its options (typed keyword arguments of ``__init__``, as every plugin) and nothing
else. **What it needs is the parameters of its methods**: the quality stage gives each parameter
the input of that name (:data:`INPUTS`), and leaves out, with the reason, a metric whose required
input the run cannot give (lesion masks on a set without them, counterfactual twins of real
films). From Python, call :meth:`Metric.evaluate` with arrays::

    from xaicxr.plugins import get
    localisation = get("metric", "localisation")(tolerance=15.0)
    figures = localisation.evaluate(maps, lesion=masks, lung=lungs,
                                    baselines={"uniform": np.ones_like(maps)})
    figures["pointing_game"]        # {"value": 0.62, "ci95": [0.48, 0.75], "n": 50}
    figures["skill"]["pointing_game"]   # the same minus the best baseline, paired interval

Every estimate is a ``{"value", "ci95": [lo, hi], "n"}`` record
(:mod:`xaicxr.analysis.intervals`). A metric's figures go to ``metrics.json`` under its
:attr:`~Metric.key`, nested by its :attr:`~Metric.scope` (:data:`SCOPES`); two metrics may share
a key when their figure names differ (``localisation`` and ``reliability`` both fill
``per_image``). :meth:`Metric.section` renders its part of the report.

A metric of scope ``"maps"`` (:class:`MapMetric`) scores one explainer's maps of one class's
images in two steps, :meth:`~MapMetric.scores` (per image, kept in ``quality.h5``) then
:meth:`~MapMetric.figures` (estimates with intervals), so that the maps that know nothing about
the lesion (:attr:`~MapMetric.baselines`) are scored once per image set and every explainer's
figure stands next to theirs, paired image by image.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Mapping

import numpy as np

from ..errors import MetricInputError
from .options import Configurable

Scope = Literal["maps", "template", "templates", "explainer", "run"]

SCOPES: dict[str, str] = {
    "maps": "one explainer's maps of one class's images: metrics[key][store][class]",
    "template": "one aggregator's template of one class: metrics[key]['<store>-<aggregator>'][class]",
    "templates": "every class template of one aggregator: metrics[key]['<store>-<aggregator>']",
    "explainer": "one explainer (with its layer and target) re-run on a sample: metrics[key][store]",
    "run": "the run as a whole: metrics[key]",
}
"""Where a metric's figures sit in ``metrics.json``, by scope."""

INPUTS: dict[str, str] = {
    "maps": "(N, H, W) float32 in [0, 1]: the maps scored (an explainer's, or a baseline's); scope 'template': "
            "the (M, H, W) heatmaps the template aggregated (M = n), as the store holds them",
    "degenerate": "(N,) bool: maps that came back without signal; they count as misses",
    "images": "(N, H, W) float32 in [0, 1]: the images as the model takes them, without the channel",
    "lesion": "(N, H, W) bool: lesion masks (every image of the set has them)",
    "lung": "(N, H, W) bool: lung fields (the dataset's masks, else segmented from the image)",
    "prior": "(H, W) float32 or None: the class's mean lesion mask over training images",
    "targets": "(N,) int: the class each map explains",
    "labels": "(N,) int: the true classes",
    "class_names": "list[str]: the model's classes, in output order",
    "model": "the Keras model (input (N, H, W, 1), a 'logits' layer, softmax 'probs' output)",
    "executor": "xaicxr.executors.model_passes.ModelExecutor: the model's passes through the run's executor "
                "([run] executor): predict(images), or map_spans(task, n, size) with a picklable "
                "task(model, (start, stop)) that a cluster worker runs with the model loaded there",
    "explainer": "the xaicxr.plugins.Explainer of the store, made with its options",
    "layer": "str: the layer the store explains ('' for input-space methods)",
    "target": "xaicxr.plugins.Target or None: the score the store explains (None: the explainer's default)",
    "template": "(H, W) float: one class's template",
    "n": "int: heatmaps aggregated into the template",
    "aggregator": "xaicxr.plugins.Aggregator: the aggregator that built the template, with its options "
                  "(init, update, finalize rebuild it from resampled maps)",
    "paired": "bool: scope 'template': whether maps[i] is of the same image as lesion[i] and lung[i], i.e. the "
              "template aggregated exactly the class's scored images (by true label, none left out by "
              "correct_only or max_images); False: two different sets of images",
    "templates": "{class name: (H, W)}: one aggregator's templates of every class",
    "twins": ("{change: (N, H, W)}: counterfactual images (the dataset's counterfactual(); phantoms); for a map "
              "metric, of its class's images, when it declares the ``changes`` it needs; a map metric with a "
              "``ground_truth`` method gets the mean of it over the training images as its class_prior"),
    "train_seed": "int: the seed the model was trained with",
    "split": "str: the split the images come from ('test'; 'val' in a study that chooses on validation)",
    "seed": "int: [quality] seed, for every random draw and bootstrap",
}
"""The inputs the quality stage gives, by parameter name."""


@dataclass
class ReportPart:
    """What :meth:`Metric.section` renders: the run-level part of the report (``store`` None),
    or the part of one explainer's store. ``figures`` are the metric's own (``metrics.json``
    under its key, for this store where the scope has stores); ``metrics`` is the whole file;
    PNG figures go into ``out``, named after the metric and the store."""

    figures: Any
    metrics: dict[str, Any]
    classes: list[str]
    out: Any
    store: str | None = None
    aggregators: list[str] = field(default_factory=list)


class Metric(Configurable, ABC):
    """Base of metric plugins. Subclasses set :attr:`key`, :attr:`scope`, :attr:`title` and
    implement :meth:`evaluate` (:class:`MapMetric`: :meth:`~MapMetric.scores` and
    :meth:`~MapMetric.figures`); options are typed keyword arguments of ``__init__``, kept as
    attributes of the same name and checked there (a ``ValueError`` names the option)."""

    key: ClassVar[str]
    """The ``metrics.json`` key its figures go under."""
    scope: ClassVar[Scope]
    """What one evaluation is about (:data:`SCOPES`)."""
    title: ClassVar[str] = ""
    """The heading of its report section."""
    sampled: ClassVar[bool] = False
    """Whether it costs model passes per image: then it sees ``[quality] faithfulness_images``
    images per class (the same sample for every such metric), not all of them."""

    @abstractmethod
    def evaluate(self, **inputs: Any) -> dict[str, Any]:
        """The figures, each estimate a ``{"value", "ci95", "n"}`` record. The parameters of an
        implementation name the :data:`INPUTS` it needs."""

    def select(self, labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        """Scope ``explainer``: the rows of the store (by their ``labels``) to re-explain; all of
        them by default."""
        return np.arange(len(labels))

    also_keys: ClassVar[tuple[str, ...]] = ()
    """The keys :meth:`also` writes."""

    def also(self, figures: dict[str, Any]) -> dict[str, Any]:
        """Other ``metrics.json`` keys (:attr:`also_keys`) derived from the figures, ``{key:
        value}`` at the same nesting (the randomisation test's one-line ``sanity``); none by
        default."""
        return {}

    def section(self, part: ReportPart) -> list[str]:
        """HTML of its report section (pieces from :mod:`xaicxr.io.html`); by default, at the
        level of a store, a table of the top-level estimates per class."""
        from ..io import html

        if part.store is None or not isinstance(part.figures, dict) or not part.figures:
            return []
        rows = []
        names: list[str] = []
        for cls, figures in part.figures.items():
            if isinstance(figures, dict):
                names += [k for k, v in figures.items() if html.is_estimate(v) and k not in names]
        for cls, figures in part.figures.items():
            if isinstance(figures, dict):
                rows.append([cls] + [figures.get(k) for k in names])
        if not names:
            return []
        return [f"<h3>{html.escape(self.title or self.key)}</h3>", html.table(["class", *names], rows)]

    def row(self, figures: Any, cls: str) -> dict[str, Any]:
        """Columns of the study table (``xaicxr study``, one row per store and class) from the
        metric's figures of the store (scope ``run``: of the run): by default each top-level
        estimate of ``figures[cls]`` as ``name``, ``name_lo``, ``name_hi``."""
        own = figures.get(cls) if isinstance(figures, dict) else None
        out: dict[str, Any] = {}
        for name, value in (own or {}).items():
            if isinstance(value, dict) and "value" in value and "ci95" in value:
                out.update(flat_estimate(name, value))
        return out


class MapMetric(Metric):
    """A metric of one explainer's maps of one class's images, scored per image and then
    summarised: :meth:`scores` -> :meth:`figures`. The uninformed maps named in
    :attr:`baselines` (:data:`xaicxr.analysis.baselines.NAMES`) are scored on the same images;
    :meth:`figures` is given their per-image scores to measure the maps against them."""

    scope: ClassVar[Scope] = "maps"
    baselines: tuple[str, ...] = ()
    """The uninformed maps this metric also scores, and measures the explainer against."""
    group: ClassVar[str] = "scores"
    """Where :meth:`kept` arrays go in ``quality.h5``: ``<group>/<store>/<class>/<name>``."""

    def kept(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The per-image arrays ``quality.h5`` keeps (all of :meth:`scores` by default)."""
        return scores

    def kept_attrs(self) -> dict[str, Any]:
        """Attributes of ``<group>/<store>`` in ``quality.h5`` (the curves' fractions, say)."""
        return {}

    @abstractmethod
    def scores(self, **inputs: Any) -> dict[str, np.ndarray]:
        """Per-image arrays (first axis: the images), kept in ``quality.h5``."""

    @abstractmethod
    def figures(self, scores: dict[str, np.ndarray],
                baselines: Mapping[str, dict[str, np.ndarray]] | None = None,
                **inputs: Any) -> dict[str, Any]:
        """The figures of ``scores``; with ``baselines`` ``{name: their scores}``, also the skill
        over the best of them (paired, same images)."""

    def evaluate(self, maps: np.ndarray, baselines: Mapping[str, np.ndarray] | None = None,
                 **inputs: Any) -> dict[str, Any]:
        """:meth:`figures` of :meth:`scores` of ``maps``; ``baselines`` ``{name: maps}`` (each
        (N, H, W) or one (H, W) map for every image) are scored too and measured against."""
        own = call_with_inputs(self.scores, {**inputs, "maps": maps}, self)
        scored = {name: call_with_inputs(self.scores, {**inputs, "maps": _batch(m, len(maps)), "degenerate": None},
                                         self)
                  for name, m in (baselines or {}).items()}
        return call_with_inputs(self.figures, {**inputs, "maps": maps, "scores": own,
                                               "baselines": scored or None}, self)


# --------------------------------------------------------------------------- inputs by name


def required_inputs(fn: Callable[..., Any]) -> list[str]:
    """The parameters of ``fn`` without a default: what it cannot run without."""
    return [name for name, p in inspect.signature(fn).parameters.items()
            if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def call_with_inputs(fn: Callable[..., Any], inputs: Mapping[str, Any], metric: Any = None) -> Any:
    """``fn`` called with the entries of ``inputs`` its parameters name (a ``**kwargs``
    parameter takes all of them); a required parameter that ``inputs`` lacks, or holds as None,
    is a :class:`~xaicxr.errors.MetricInputError` naming the metric and the input."""
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return fn(**inputs)
    missing = [name for name in required_inputs(fn) if inputs.get(name) is None]
    if missing:
        who = f"metric {type(metric).__name__}" if metric is not None else getattr(fn, "__qualname__", "function")
        raise MetricInputError(f"{who} needs {', '.join(repr(m) for m in missing)}, which "
                               f"{'is' if len(missing) == 1 else 'are'} not given here")
    return fn(**{name: inputs[name] for name in params if name in inputs})


def predict_probabilities(model: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, C) class probabilities of gray images (N, H, W) in [0, 1], ``batch_size`` at a time."""
    import keras

    images = np.asarray(images, np.float32)
    return np.concatenate([keras.ops.convert_to_numpy(model(images[i:i + batch_size, ..., None], training=False))
                           for i in range(0, len(images), batch_size)]
                          or [np.zeros((0, model.output_shape[-1]), np.float32)])


def flat_estimate(name: str, estimate: Mapping[str, Any] | None) -> dict[str, Any]:
    """An estimate as three columns: ``name``, ``name_lo``, ``name_hi``."""
    if not estimate:
        return {}
    lo, hi = estimate.get("ci95", [None, None])
    return {name: estimate.get("value"), f"{name}_lo": lo, f"{name}_hi": hi}


def _batch(maps: np.ndarray, n: int) -> np.ndarray:
    maps = np.asarray(maps, np.float32)
    return np.broadcast_to(maps, (n, *maps.shape)) if maps.ndim == 2 else maps
