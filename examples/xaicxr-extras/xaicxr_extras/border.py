"""``border-energy``: how much of a map lies on the image's border, where a shortcut lives.

Text marks, rulers, collimation edges and padding sit in the outer frame of a radiograph, not in
the lungs; a model that separates its classes by source (the paper's covid images come from
other hospitals than the rest) often looks there. This metric is the share of each map's mass in
a frame of ``frame`` px (given at 224 px, scaled to the image), beside what a flat map (its share
is the frame's share of the image) and a flat map inside the lungs earn on the same images.

A complete third-party metric: one class with its option, what it needs named by the parameters
of ``scores`` and ``figures``, intervals from xaicxr's own helpers, and a report section.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xaicxr.analysis.intervals import bootstrap_mean, paired_difference
from xaicxr.io import html
from xaicxr.plugins import MapMetric, ReportPart


class BorderEnergy(MapMetric):
    """The share of each map's mass in the image's outer frame, and its excess over a flat map
    (paired per image: above 0, the maps favour the border)."""

    key = "border_energy"
    title = "How much of the map lies on the border?"
    baselines = ("uniform", "lungs")

    def __init__(self, frame: float = 16.0) -> None:
        if not frame > 0:
            raise ValueError(f"'frame' must be a positive number of pixels, got {frame}")
        self.frame = frame

    def scores(self, maps: np.ndarray) -> dict[str, np.ndarray]:
        n, height, width = maps.shape
        band = max(1, int(round(self.frame * max(height, width) / 224)))
        border = np.ones((height, width), bool)
        border[band:height - band, band:width - band] = False
        mass = maps.reshape(n, -1).sum(axis=1)
        inside = (maps * border).reshape(n, -1).sum(axis=1)
        return {"border_share": np.divide(inside, mass, out=np.full(n, np.nan), where=mass > 0)}

    def figures(self, scores: dict[str, np.ndarray], baselines: Mapping[str, dict[str, np.ndarray]] | None = None,
                seed: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {"border_share": bootstrap_mean(scores["border_share"], seed=seed)}
        if baselines and "uniform" in baselines:
            out["excess_over_flat"] = paired_difference(scores["border_share"], baselines["uniform"]["border_share"],
                                                        seed=seed)
        return out

    def section(self, part: ReportPart) -> list[str]:
        if part.store is None or not part.figures:
            return []
        flat = {cls: b.get("uniform", {}).get(self.key, {}).get("border_share")
                for cls, b in part.metrics.get("baselines", {}).items()}
        rows = [[cls, f.get("border_share"), flat.get(cls), f.get("excess_over_flat")]
                for cls, f in part.figures.items()]
        return [f"<h3>{self.title}</h3>",
                html.table(["class", "share of the map on the border", "a flat map's share", "excess (paired)"], rows),
                html.note(f"Border: the outer {self.frame:g} px at 224 px, scaled. An excess above 0 means the maps "
                          "put more weight on the border than a flat map: look for text marks or padding.")]
