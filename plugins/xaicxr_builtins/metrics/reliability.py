"""``reliability``: do the maps of one class agree with each other, and is their mean stable?

Consistency (mean pairwise Pearson r between the class's maps) and Spearman-Brown corrected
split-half reliability of the mean map (:mod:`xaicxr.analysis.reliability`). High values say the
class's template is reproducible from these images, not that it shows the disease: an untrained
network's maps are reliable too (read it beside the randomisation test).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xaicxr.analysis.reliability import consistency, split_half
from xaicxr.io import html
from xaicxr.plugins import MapMetric, ReportPart
from xaicxr.plugins.metric import flat_estimate


class Reliability(MapMetric):
    """Consistency and split-half reliability of one class's maps (over ``partitions`` random
    halvings)."""

    key = "per_image"
    title = "Do the maps of a class agree?"

    def __init__(self, partitions: int = 20) -> None:
        if partitions < 1:
            raise ValueError(f"'partitions' must be at least 1, got {partitions}")
        self.partitions = partitions

    def scores(self, maps: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    def figures(self, scores: dict[str, np.ndarray], baselines: Mapping[str, dict[str, np.ndarray]] | None = None,
                *, maps: np.ndarray, seed: int = 0) -> dict[str, Any]:
        return {"consistency": consistency(maps, seed=seed),
                "split_half": split_half(maps, partitions=self.partitions, seed=seed)}

    def section(self, part: ReportPart) -> list[str]:
        if part.store is None or not part.figures:
            return []
        rows = [[cls, q.get("n"), q.get("consistency"), q.get("split_half")] for cls, q in part.figures.items()
                if "consistency" in q]
        if not rows:
            return []
        return [f"<h3>{self.title}</h3>",
                html.table(["class", "n", "consistency (mean pairwise r)", "split-half (Spearman-Brown)"], rows),
                html.note("Split-half: the mean maps of two random halves of the class's images, correlated and "
                          "stepped up to full size (Spearman-Brown); intervals by bootstrap over images. Reliable maps "
                          "are not evidence of faithful ones: see the randomisation test.")]

    def row(self, figures: Any, cls: str) -> dict[str, Any]:
        q = (figures or {}).get(cls) or {}
        return {**flat_estimate("consistency", q.get("consistency")), **flat_estimate("split_half", q.get("split_half"))}
