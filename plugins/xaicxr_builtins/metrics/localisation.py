"""``localisation``: does a map point at the lesion? Next to every map that knows nothing about it.

Per image (Zhang et al. 2018 and the figures of :mod:`xaicxr.analysis.localisation`): pointing
game at tolerance 0 and at ``tolerance`` px (given at 224 px, scaled), lesion energy, energy
lift against the image and against the lungs, Otsu mIoU (CheXlocalize's thresholding), lung
energy. Each is measured against the uninformed maps of :mod:`xaicxr.analysis.baselines` on the
same images: ``skill`` is the figure minus the best of them, with a paired interval.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xaicxr.analysis import baselines as base
from xaicxr.analysis.localisation import TOLERANCE_AT_224, Targets, class_figures, default_tolerance
from xaicxr.io import html
from xaicxr.io.text import describe
from xaicxr.plugins import MapMetric, ReportPart
from xaicxr.plugins.metric import flat_estimate

ROW_FIGURES = ("pointing_game", "pointing_game_tolerance", "energy_lift", "energy_lift_lungs", "iou_50", "iobb_hit_25",
               "lung_energy")
"""The figures a study table shows (``xaicxr study``)."""


class Localisation(MapMetric):
    """Pointing game, lesion energy, lifts, mIoU and lung energy of the maps, each beside the best
    uninformed map (``skill``). Without lesion masks only the lung energy is measured."""

    key = "per_image"
    title = "Where the maps point (per image)"
    baselines = base.NAMES

    def __init__(self, tolerance: float = TOLERANCE_AT_224) -> None:
        if not np.isfinite(tolerance) or tolerance < 0:
            raise ValueError(f"'tolerance' must be a finite number of pixels >= 0, got {tolerance}")
        self.tolerance = tolerance
        self._truth: tuple[Any, Any, Targets] | None = None

    def truth(self, lung: np.ndarray, lesion: np.ndarray | None) -> Targets:
        """The masks with what the scores need derived once (the tolerance regions cost a
        distance transform per image), reused while the same arrays are scored again (an
        explainer's maps, then each baseline's)."""
        if self._truth is None or self._truth[0] is not lesion or self._truth[1] is not lung:
            size = (lesion if lesion is not None else lung).shape[-1]
            self._truth = (lesion, lung, Targets(lesion, lung, default_tolerance(size, self.tolerance)))
        return self._truth[2]

    def scores(self, maps: np.ndarray, lung: np.ndarray, lesion: np.ndarray | None = None,
               degenerate: np.ndarray | None = None) -> dict[str, np.ndarray]:
        return self.truth(lung, lesion).scores(maps, degenerate)

    def figures(self, scores: dict[str, np.ndarray], baselines: Mapping[str, dict[str, np.ndarray]] | None = None,
                *, lung: np.ndarray, lesion: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
        truth = self.truth(lung, lesion)
        out = class_figures(scores, truth, seed=seed)
        if baselines:
            reference = {name: class_figures(s, truth, seed=seed) for name, s in baselines.items()}
            skill = base.skill(out, scores, reference, dict(baselines), truth, seed=seed)
            if skill:
                out["skill"] = skill
        return out

    def section(self, part: ReportPart) -> list[str]:
        if part.store is None:
            return _baselines_section(part.metrics.get("baselines", {}))
        if not part.figures:
            return []
        rows = []
        lungs_only = {cls: q["lung_energy"] for cls, q in part.figures.items()
                      if "pointing_game" not in q and q.get("lung_energy")}
        for cls, q in part.figures.items():
            if cls in lungs_only or not q.get("n"):
                continue
            skill = q.get("skill", {})
            rows.append([cls, q.get("n"), q.get("pointing_game"), q.get("pointing_game_tolerance"),
                         html.versus(skill.get("pointing_game")), q.get("energy_lift"),
                         html.versus(skill.get("energy_lift")), q.get("energy_lift_lungs"), q.get("miou"),
                         q.get("iou_50"), q.get("iobb_hit_25"), html.versus(skill.get("iobb_hit_25")),
                         q.get("lung_energy")])
        parts = [f"<h3>{self.title}</h3>",
                 html.table(["class", "n", "pointing game", "pointing (tolerance)", "skill over best baseline (pointing)",
                             "energy lift", "skill (lift)", "lung lift", "mIoU (Otsu)", "IoU (cut at 0.5 max)",
                             "IoBB hit (T 0.25)", "skill (IoBB hit)", "lung energy"], rows)]
        if lungs_only:
            parts.append(_lungs_only_note(lungs_only))
        unreliable = not_relied_on(part.metrics)
        if unreliable:
            parts.append(html.note(f"The model does not rely on the lesion for {', '.join(unreliable)}: localisation "
                                   "figures there do not test the explainer."))
        tolerance = next((q["tolerance_px"] for q in part.figures.values() if q.get("tolerance_px") is not None), None)
        within = f"with tolerance: within {tolerance} px. " if tolerance is not None else ""
        parts.append(html.note("Pointing game: share of maps whose maximum is in the lesion (Zhang et al. 2018; ties "
                               f"shared); {within}Skill: the figure minus the best uninformed baseline on the same "
                               "images, paired 95 % interval (above 0: better than knowing nothing). Lung lift 1 = a "
                               "map spread evenly over the lungs."))
        return parts

    def row(self, figures: Any, cls: str) -> dict[str, Any]:
        q = (figures or {}).get(cls) or {}
        out: dict[str, Any] = {}
        for name in ROW_FIGURES:
            out.update(flat_estimate(name, q.get(name)))
        skill = q.get("skill", {}).get("pointing_game")
        if skill:
            out["pointing_baseline"] = skill["baseline"]
            out.update(flat_estimate("pointing_skill", skill))
        return out


def not_relied_on(metrics: dict[str, Any]) -> list[str]:
    """Classes whose lesion (phantom twins) or annotated region (real films) the model is shown
    not to rely on."""
    twins = [c for c, r in metrics.get("reliance", {}).items() if r.get("has_lesion") and not r.get("relies_on_lesion")]
    regions = [c for c, r in metrics.get("region_reliance", {}).items()
               if r.get("has_region") and r.get("relies_on_region") is False and c not in twins
               and not metrics.get("reliance", {}).get(c, {}).get("has_lesion")]
    return twins + regions


def _lungs_only_note(lung_energy: dict[str, Any]) -> str:
    return html.note("Without a lesion annotation only the lung energy is measured: " + "; ".join(
        f"{cls} {describe(value)}" for cls, value in lung_energy.items()) + ".")


def _baselines_section(baselines: dict[str, Any]) -> list[str]:
    rows = []
    for cls, per in baselines.items():
        for name, f in per.items():
            if "pointing_game" in f:
                rows.append([cls, name, f.get("pointing_game"), f.get("pointing_game_tolerance"), f.get("energy_lift"),
                             f.get("energy_lift_lungs"), f.get("miou"), f.get("iou_50"), f.get("iobb_hit_25"),
                             f.get("lung_energy")])
    if not rows:
        return []
    return ["<h2>What maps that know nothing about the lesion score</h2>",
            html.note("uniform: flat over the image; lungs: flat in the image's own lungs; lungs_blurred: that mask "
                      "blurred; class_prior: the mean training lesion mask of the class; random: noise. Same images, "
                      "same pass as the explainers below."),
            html.table(["class", "baseline", "pointing game", "pointing (tolerance)", "energy lift", "lung lift",
                        "mIoU", "IoU (0.5 max)", "IoBB hit (0.25)", "lung energy"], rows)]
