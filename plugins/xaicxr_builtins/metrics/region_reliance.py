"""``region-reliance``: does the model rely on the region an expert marked? Real films, no twins.

Per class, on the explained images that carry a box or lesion mask: the drop of the class
probability when the marked region is filled (ROAD imputation and blur) against the drop when
same-area regions placed at random in the lungs are filled, paired per image
(:mod:`xaicxr.analysis.region_reliance`). ``relies_on_region`` gates the reading of every
localisation figure of the class, as ``reliance`` does on the phantoms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from xaicxr.analysis.region_reliance import region_reliance
from xaicxr.executors.model_passes import PREDICT_BATCH, ModelExecutor
from xaicxr.io import html
from xaicxr.plugins import Metric, ReportPart
from xaicxr.plugins.fill import compiled_apply, make_fill


@dataclass(frozen=True)
class FilledProbabilities:
    """The class probabilities of one span of gray images whose ``removed`` pixels a fill plugin
    fills (:mod:`xaicxr.plugins.fill`) on the worker: the fill's values of row i are drawn from
    ``(seed, i, 0)`` with i the row in the whole array, so a span's rows are filled exactly as
    :meth:`Fill.fill` fills them, whatever the spans."""

    images: np.ndarray
    removed: np.ndarray
    fill: Any
    prepared: Any
    """``fill.prepare(images)`` of the whole array, made once on the driver."""
    seed: int

    def __call__(self, model: Any, span: tuple[int, int]) -> np.ndarray:
        import keras

        start, stop = span
        rows = np.arange(start, stop)
        values = self.fill.values(self.images, self.prepared, rows, np.zeros(len(rows), np.int64), self.seed)
        perturbed = compiled_apply(self.fill, self.images.shape[1:])(self.images[start:stop],
                                                                    self.removed[start:stop], values)
        return keras.ops.convert_to_numpy(model(perturbed[..., None], training=False))


def filled_on(passes: ModelExecutor, batch_size: int = PREDICT_BATCH) -> Any:
    """``filled(images, removed, fill, seed)`` -> (N, C) for :func:`region_reliance`: the rows
    filled and scored by ``passes`` (the run's executor), ``batch_size`` rows per task."""
    def filled(images: np.ndarray, removed: np.ndarray, fill: Any, seed: int) -> np.ndarray:
        images = np.ascontiguousarray(images, np.float32)
        task = FilledProbabilities(images, np.ascontiguousarray(removed, bool), fill, fill.prepare(images), int(seed))
        return np.concatenate(passes.map_spans(task, len(images), batch_size))

    return filled


class RegionReliance(Metric):
    """Class-probability drop when the annotated region is filled, against same-area random lung
    regions, per fill, with paired two-level bootstrap intervals; ``relies_on_region`` per class."""

    key = "region_reliance"
    scope = "run"
    title = "Does the model rely on the annotated region? (region filled vs. matched random regions)"

    def __init__(self, region_fills: list[str] | None = None, random_regions: int = 8, region_images: int = 50,
                 region_margin: float = 0.02, region_min_images: int = 10) -> None:
        fills = ["road", "blur"] if region_fills is None else list(region_fills)
        if not fills or len(set(fills)) != len(fills):
            raise ValueError(f"'region_fills' must name one or more distinct fill plugins, got {fills}")
        if random_regions < 1:
            raise ValueError(f"'random_regions' (placements per image) must be >= 1, got {random_regions}")
        if region_images < 2:
            raise ValueError(f"'region_images' (per class) must be >= 2, got {region_images}")
        if not (np.isfinite(region_margin) and 0 <= region_margin < 1):
            raise ValueError(f"'region_margin' must be a probability difference in [0, 1), got {region_margin}")
        self.region_fills, self.random_regions = fills, random_regions
        if region_min_images < 2:
            raise ValueError(f"'region_min_images' must be >= 2, got {region_min_images}")
        self.region_images, self.region_margin = region_images, region_margin
        self.region_min_images = region_min_images
        self._made = {name: make_fill(name) for name in fills}

    def evaluate(self, model: Any, images: np.ndarray, lesion: np.ndarray, lung: np.ndarray, labels: np.ndarray,
                 class_names: list[str], split: str = "", seed: int = 0,
                 executor: ModelExecutor | None = None) -> dict[str, Any]:
        """Per class; the images are filled and scored by ``executor`` (the run's), in spans."""
        passes = executor or ModelExecutor.in_process(model)
        has_region = lesion.reshape(len(lesion), -1).any(axis=1)
        rng = np.random.default_rng(seed)
        out: dict[str, Any] = {}
        for k, cls in enumerate(class_names):
            rows = np.flatnonzero((labels == k) & has_region)
            if not len(rows):
                if (labels == k).any():
                    out[cls] = {"n": 0, "has_region": False, "relies_on_region": None, "split": split,
                                "note": "no image of this class has an annotated region"}
                continue
            if len(rows) > self.region_images:
                rows = np.sort(rng.choice(rows, self.region_images, replace=False))
            figures = region_reliance(passes.predict, images[rows], lesion[rows], lung[rows], k, self._made,
                                      regions=self.random_regions, margin=self.region_margin, seed=seed + k,
                                      filled=filled_on(passes), min_images=self.region_min_images)
            out[cls] = {"has_region": True, **figures, "split": split}
        return out

    def section(self, part: ReportPart) -> list[str]:
        if part.store is not None or not part.figures:
            return []
        rows = []
        for cls, r in part.figures.items():
            if not r.get("has_region"):
                continue
            for name, f in r.get("fills", {}).items():
                rows.append([cls, name, r["n"], r.get("n_without_placement"), r.get("p_original"), f["drop_region"],
                             f["drop_random"], f["difference"], r["relies_on_region"]])
        if not rows:
            return []
        return [f"<h2>{self.title}</h2>",
                html.note("Each image's annotated region (the expert's box or mask) is filled, and so, in turn, are "
                          f"up to {next(iter(part.figures.values())).get('random_regions', '')} regions of the same "
                          "shape placed at random away from the region with about its share of lung (within 0.2; in "
                          "the lungs for a lesion in the lungs). Images without room for such a placement are left "
                          "out, and counted. Difference: the region's drop "
                          "minus the random regions' mean drop, paired per image, 95 % interval over images and "
                          "placements. The model relies on the region when the difference's lower bound is above "
                          "the margin for every fill; where it does not, localisation figures of that class do not "
                          "test the explainer."),
                html.table(["class", "fill", "n", "left out: no room for a matched region", "p (original)",
                            "p drop (region)", "p drop (random regions)", "difference", "relies on region"], rows)]

    def row(self, figures: Any, cls: str) -> dict[str, Any]:
        reliance = (figures or {}).get(cls)
        return {"relies_on_region": reliance["relies_on_region"]} if reliance else {}
