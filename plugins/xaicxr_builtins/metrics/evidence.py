"""``localisation-evidence``: does a map point at what the lesion changed? The second ground truth.

The lesion mask is one ground truth; the pixels the lesion actually changes are another, and on
the phantoms they differ: the detector blur and the lesion's faint edges change pixels around
its mask (bacterial consolidation fades beyond it). So each image's **evidence mask**, where it
differs from its lesion-removed counterfactual twin by more than ``evidence_threshold``
(:mod:`xaicxr.analysis.evidence`), is scored with the same figures as ``localisation``
(pointing game with and without tolerance, energy and its lifts, mIoU, IoU at cuts, IoBB hits;
:mod:`xaicxr.analysis.localisation`), each beside the same uninformed maps, with ``skill``. The
``class_prior`` baseline here is the mean *evidence* mask of the class's training images (the
quality stage averages :meth:`EvidenceLocalisation.ground_truth` over them, as it averages the
lesion masks for ``localisation``). ``evidence_outside_lesion`` says per class how much of the
evidence lies outside the mask, i.e. how far the two ground truths differ.

Figures go to ``metrics.json`` ``per_image_evidence[store][class]``, under the names of
``per_image`` (so the two read side by side) except the energy and area, which are
``evidence_energy`` and ``evidence_area``; the per-image scores to ``quality.h5``
``scores/<store>/<class>/evidence_*``. Datasets that make no twins (real films): not measured.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xaicxr.analysis import baselines as base
from xaicxr.analysis.evidence import CHANGE, EVIDENCE_THRESHOLD, evidence_mask, outside_share
from xaicxr.analysis.localisation import TOLERANCE_AT_224, Targets, class_figures, default_tolerance
from xaicxr.errors import MetricInputError
from xaicxr.io import html
from xaicxr.plugins import MapMetric, ReportPart
from xaicxr.plugins.metric import flat_estimate

RENAMED = {"lesion_energy": "evidence_energy", "lesion_area": "evidence_area"}
"""Figures of :func:`~xaicxr.analysis.localisation.class_figures` named after the lesion that here
measure the evidence mask."""

ROW_FIGURES = ("pointing_game", "pointing_game_tolerance", "energy_lift", "iou_50", "iobb_hit_25",
               "evidence_outside_lesion")
"""The figures a study table shows (``xaicxr study``), as ``evidence_<figure>``."""


class EvidenceLocalisation(MapMetric):
    """The ``localisation`` figures of the maps against each image's evidence mask (the pixels
    its lesion-removed twin changes), beside the same uninformed maps (``skill``), and the share
    of the evidence outside the lesion mask."""

    key = "per_image_evidence"
    title = "Where the maps point: lesion mask and counterfactual evidence"
    baselines = base.NAMES
    changes = (CHANGE,)
    """The counterfactual change it needs of the dataset."""

    def __init__(self, tolerance: float = TOLERANCE_AT_224, evidence_threshold: float = EVIDENCE_THRESHOLD) -> None:
        if not np.isfinite(tolerance) or tolerance < 0:
            raise ValueError(f"'tolerance' must be a finite number of pixels >= 0, got {tolerance}")
        if not np.isfinite(evidence_threshold) or not 0 <= evidence_threshold < 1:
            raise ValueError(f"'evidence_threshold' must be in [0, 1) (images are in [0, 1]), got {evidence_threshold}")
        self.tolerance = tolerance
        self.evidence_threshold = evidence_threshold
        self._truth: tuple[tuple[Any, ...], Targets] | None = None

    def ground_truth(self, images: np.ndarray, twins: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, H, W) bool: the evidence masks of ``images``. The quality stage also averages them
        over the class's training images: the ``class_prior`` baseline of this ground truth."""
        if CHANGE not in twins:
            raise MetricInputError(f"metric {type(self).__name__} needs the {CHANGE!r} twins, which are not given "
                                   f"here (only {', '.join(map(repr, twins)) or 'none'})")
        return evidence_mask(images, twins[CHANGE], self.evidence_threshold)

    def truth(self, images: np.ndarray, twins: Mapping[str, np.ndarray], lung: np.ndarray) -> Targets:
        """The evidence masks as :class:`~xaicxr.analysis.localisation.Targets`, reused while the
        same arrays are scored again (an explainer's maps, then each baseline's)."""
        key = (images, twins[CHANGE] if CHANGE in twins else None, lung)
        if self._truth is None or any(a is not b for a, b in zip(self._truth[0], key)):
            evidence = self.ground_truth(images, twins)
            self._truth = (key, Targets(evidence, lung, default_tolerance(evidence.shape[-1], self.tolerance)))
        return self._truth[1]

    def scores(self, maps: np.ndarray, images: np.ndarray, twins: Mapping[str, np.ndarray], lung: np.ndarray,
               degenerate: np.ndarray | None = None) -> dict[str, np.ndarray]:
        scores = self.truth(images, twins, lung).scores(maps, degenerate)
        scores.pop("lung_energy", None)  # the same as localisation's: not a figure of the evidence
        return scores

    def kept(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``quality.h5`` keeps them beside ``localisation``'s, as ``evidence_<score>``."""
        return {"evidence_energy" if name == "lesion_energy" else f"evidence_{name}": value
                for name, value in scores.items()}

    def figures(self, scores: dict[str, np.ndarray], baselines: Mapping[str, dict[str, np.ndarray]] | None = None,
                *, images: np.ndarray, twins: Mapping[str, np.ndarray], lung: np.ndarray,
                lesion: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
        truth = self.truth(images, twins, lung)
        out: dict[str, Any] = {"n_evidence": int(truth.has_lesion.sum()),
                               "evidence_threshold": self.evidence_threshold,
                               **class_figures(scores, truth, seed=seed)}
        if baselines:
            reference = {name: class_figures(s, truth, seed=seed) for name, s in baselines.items()}
            skill = base.skill(out, scores, reference, dict(baselines), truth, seed=seed)
            if skill:
                out["skill"] = {RENAMED.get(k, k): v for k, v in skill.items()}
        if lesion is not None:
            out["evidence_outside_lesion"] = outside_share(truth.lesion, lesion, seed=seed)
        return {RENAMED.get(k, k): v for k, v in out.items()}

    def section(self, part: ReportPart) -> list[str]:
        if part.store is None or not part.figures:
            return []
        mask = part.metrics.get("per_image", {}).get(part.store, {})
        rows = []
        for cls, q in part.figures.items():
            if not q.get("n_evidence"):
                continue
            m, skill = mask.get(cls, {}), q.get("skill", {})
            rows.append([cls, q["n_evidence"], m.get("pointing_game"), q.get("pointing_game"),
                         html.versus(skill.get("pointing_game")), q.get("pointing_game_tolerance"),
                         m.get("energy_lift"), q.get("energy_lift"), html.versus(skill.get("energy_lift")),
                         m.get("iou_50"), q.get("iou_50"), m.get("iobb_hit_25"), q.get("iobb_hit_25"),
                         q.get("evidence_outside_lesion")])
        if not rows:
            return []
        threshold = next(iter(part.figures.values())).get("evidence_threshold", EVIDENCE_THRESHOLD)
        return [f"<h3>{self.title}</h3>",
                html.table(["class", "n", "pointing (mask)", "pointing (evidence)", "skill (evidence pointing)",
                            "pointing (evidence, tolerance)", "lift (mask)", "lift (evidence)",
                            "skill (evidence lift)", "IoU 0.5 (mask)", "IoU 0.5 (evidence)", "IoBB hit (mask)",
                            "IoBB hit (evidence)", "evidence outside mask"], rows),
                html.note(f"Evidence: the pixels where the image differs by more than {threshold:g} from its "
                          "counterfactual twin rendered without the lesion. The lesion mask leaves out part of "
                          "what the lesion changes (last column), so a map can miss the mask and still point at "
                          "real evidence. Skill: the figure minus the best uninformed map on the same images "
                          "(its class_prior is the mean training evidence mask of the class), paired 95 % interval.")]

    def row(self, figures: Any, cls: str) -> dict[str, Any]:
        q = (figures or {}).get(cls) or {}
        out: dict[str, Any] = {}
        for name in ROW_FIGURES:
            out.update(flat_estimate(f"evidence_{name}" if not name.startswith("evidence_") else name, q.get(name)))
        skill = q.get("skill", {}).get("pointing_game")
        if skill:
            out["evidence_pointing_baseline"] = skill["baseline"]
            out.update(flat_estimate("evidence_pointing_skill", skill))
        return out
