"""The templates scored as maps in their own right: ``template``, ``template-faithfulness``,
``distinctiveness``.

The paper's claim is about templates ("the regions the model relies on for each condition"), so
each aggregator's template of each class gets its own figures
(:mod:`xaicxr.analysis.template_quality`): correlation with the class's lesion frequency, peak in
the lungs, the template used as every image's map; whether the model needs the template's top
region more than random lung regions of the same area (:mod:`xaicxr.analysis.faithfulness`); and
how alike the class templates are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaicxr.analysis.faithfulness import template_faithfulness
from xaicxr.analysis.intervals import bootstrap_mean, paired_difference
from xaicxr.analysis.localisation import TOLERANCE_AT_224, Targets, default_tolerance
from xaicxr.analysis.template_quality import TEMPLATE_BOOT, distinctiveness, template_figures
from xaicxr.io import html
from xaicxr.plugins import Aggregator, Metric, ReportPart
from xaicxr.plugins.options import at_least

from .faithfulness import check_fills


class TemplateLocalisation(Metric):
    """A template on its class's images: r with the lesion frequency map (bias-corrected), peak
    in the lungs, and the localisation figures of the template used as every image's map.

    The interval of the r resamples images for the template too: give ``maps`` (the heatmaps the
    template aggregated) and the ``aggregator`` that built it; ``paired`` (the default) says
    ``maps[i]`` and ``lesion[i]`` are of the same image, False that they are of different sets
    of images (a template by prediction, or of correct predictions only), resampled
    independently. Without them only the masks are resampled, an interval that leaves out the
    template's own noise (its ``resampled`` field says so). ``template_resamples``: the
    bootstrap replicates of that interval (a fifth of them, at most 200, for an aggregator with a
    large state, whose rebuilding dominates the cost)."""

    key = "templates"
    scope = "template"
    title = "The templates as maps"

    def __init__(self, tolerance: float = TOLERANCE_AT_224, template_resamples: int = TEMPLATE_BOOT) -> None:
        if not np.isfinite(tolerance) or tolerance < 0:
            raise ValueError(f"'tolerance' must be a finite number of pixels >= 0, got {tolerance}")
        self.tolerance = tolerance
        self.template_resamples = at_least("template_resamples", template_resamples, 20)

    def evaluate(self, template: np.ndarray, n: int, lung: np.ndarray, lesion: np.ndarray | None = None,
                 seed: int = 0, maps: np.ndarray | None = None, aggregator: Aggregator | None = None,
                 paired: bool = True) -> dict[str, Any]:
        truth = Targets(lesion, lung, default_tolerance(lung.shape[-1], self.tolerance))
        return template_figures(template, truth, n=n, seed=seed, maps=maps, aggregator=aggregator, paired=paired,
                                n_boot=self.template_resamples)

    def section(self, part: ReportPart) -> list[str]:
        rows = [[agg, cls, t.get("n"), t.get("lesion_frequency_r"), t.get("peak_in_lungs"),
                 t.get("as_fixed_map", {}).get("pointing_game"), t.get("as_fixed_map", {}).get("energy_lift")]
                for agg, per_class in _by_aggregator(part) for cls, t in per_class.items() if "as_fixed_map" in t]
        if not rows:
            return []
        return [f"<h3>{self.title}</h3>",
                html.table(["aggregator", "class", "n", "r with lesion frequency", "peak in lungs",
                            "pointing (as fixed map)", "lift (as fixed map)"], rows),
                html.note("Each template scored on its class's images as if it were every image's map.")]


class TemplateFaithfulness(Metric):
    """Occluding the template's top ``template_q`` of the image (filled by the first of
    ``fills``) against ``template_draws`` random lung regions of the same area: the drop of the
    class probability, paired per image. A flat template claims no region: no figure."""

    key = "templates"
    scope = "template"
    title = "Does the model need the template's region?"
    sampled = True

    def __init__(self, fills: list[str] = ["road", "blur"], template_q: float = 0.05,  # noqa: B006 (read-only)
                 template_draws: int = 3) -> None:
        if not 0 < template_q <= 1:
            raise ValueError(f"'template_q' must be in (0, 1], got {template_q}")
        if template_draws < 1:
            raise ValueError(f"'template_draws' must be at least 1, got {template_draws}")
        self.fills = check_fills(fills)
        self.template_q = template_q
        self.template_draws = template_draws

    def evaluate(self, template: np.ndarray, images: np.ndarray, lung: np.ndarray, model: Any,
                 targets: np.ndarray, seed: int = 0, executor: Any = None) -> dict[str, Any]:
        if not np.ptp(template) > 0:
            return {}
        fill = self.fills[0]
        result = template_faithfulness(model, images, targets, template, lung, q=self.template_q, fill=fill,
                                       draws=self.template_draws, seed=seed, executor=executor)
        return {"faithfulness": {
            "q": self.template_q, "fill": fill,
            "template_drop": bootstrap_mean(result["template_drop"], seed=seed),
            "random_lung_region_drop": bootstrap_mean(result["random_drop"], seed=seed),
            "difference": paired_difference(result["template_drop"], result["random_drop"], seed=seed)}}

    def section(self, part: ReportPart) -> list[str]:
        rows = [[agg, cls, f.get("template_drop"), f.get("random_lung_region_drop"), f.get("difference")]
                for agg, per_class in _by_aggregator(part) for cls, t in per_class.items()
                for f in [t.get("faithfulness")] if f]
        if not rows:
            return []
        return [f"<h3>{self.title}</h3>",
                html.table(["aggregator", "class", "p drop: template region", "p drop: random lung region",
                            "difference"], rows),
                html.note(f"The class probability drop when the template's top {100 * self.template_q:g} % of the image "
                          f"is removed (filled by {self.fills[0]}), against random lung regions of the same area "
                          "(the difference is paired per image).")]


class Distinctiveness(Metric):
    """Pearson r between every pair of one aggregator's class templates (lower = more
    class-specific)."""

    key = "distinctiveness"
    scope = "templates"
    title = "Distinctiveness (Pearson r between class templates)"

    def evaluate(self, templates: dict[str, np.ndarray]) -> dict[str, Any]:
        return distinctiveness(templates)

    def section(self, part: ReportPart) -> list[str]:
        if part.store is None or not part.figures or not part.aggregators:
            return []
        matrix = part.figures.get(part.aggregators[0])
        if not matrix:
            return []
        return [f"<h3>{self.title}</h3>",
                html.note(f"{part.aggregators[0]} templates."),
                html.table([""] + list(matrix), [[a] + [matrix[a][b] for b in matrix] for a in matrix])]


def _by_aggregator(part: ReportPart) -> list[tuple[str, dict[str, Any]]]:
    """The figures of a template metric for a store, per aggregator."""
    if part.store is None or not part.figures:
        return []
    return [(agg, part.figures[agg]) for agg in part.aggregators if agg in part.figures]
