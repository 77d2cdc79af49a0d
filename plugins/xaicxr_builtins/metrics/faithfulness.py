"""``faithfulness``: does the model need the pixels a map ranks first?

Deletion and insertion curves (Petsiuk et al. 2018) with each fill of ``fills`` (ROAD's noisy
linear imputation, Rong et al. 2022; a blur; a third party's fill plugin): the class probability
as the pixels are removed most relevant first (deletion: a faithful map makes it fall early) or
kept most relevant first (insertion: rise early), at ``fractions`` evenly spaced fractions of the
image. Each AUC stands next to the same curves of uninformed orders (``faithfulness_baselines``:
``uniform`` is a random order) on the same images, paired (:mod:`xaicxr.analysis.faithfulness`).
The forward passes go through the run's executor (one task per batch of perturbed images).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xaicxr import plugins
from xaicxr.analysis.baselines import NAMES
from xaicxr.analysis.faithfulness import perturbation_curves
from xaicxr.analysis.intervals import bootstrap_mean, paired_difference
from xaicxr.io import figures as pictures
from xaicxr.io import html
from xaicxr.plugins import MapMetric, ReportPart
from xaicxr.plugins.metric import flat_estimate

CURVES = ("deletion", "insertion")


def check_fills(fills: list[str]) -> list[str]:
    """``fills`` named by registered fill plugins (at least one, none twice)."""
    known = plugins.registry().names("fill")
    if not fills:
        raise ValueError("'fills' is empty; name at least one fill: " + ", ".join(known))
    for fill in fills:
        if fill not in known:
            raise ValueError(f"'fills' names {fill!r}, which is not a fill plugin; fills: {', '.join(known)}")
    if len(set(fills)) != len(fills):
        raise ValueError(f"'fills' names a fill twice: {fills}")
    return list(fills)


MAX_FRACTIONS = 101
"""More points than one per 1 % of the pixels resolve nothing more, and each costs a forward
pass per image and fill (100,000 of them was a raw HDF5 error after training)."""


class Faithfulness(MapMetric):
    """Deletion and insertion AUCs per fill, with the skill over the best uninformed order."""

    key = "faithfulness"
    title = "Deletion and insertion"
    sampled = True
    group = "curves"

    def __init__(self, fills: list[str] = ["road", "blur"], fractions: int = 11,  # noqa: B006 (read-only)
                 faithfulness_baselines: list[str] = ["uniform", "lungs", "class_prior"]) -> None:  # noqa: B006
        if not 2 <= fractions <= MAX_FRACTIONS:
            raise ValueError(f"'fractions' must be from 2 (0 and 1 of the pixels) to {MAX_FRACTIONS} "
                             f"(a curve point per 1 % of the pixels), got {fractions}")
        unknown = [b for b in faithfulness_baselines if b not in NAMES]
        if unknown:
            raise ValueError(f"'faithfulness_baselines' names {unknown[0]!r}; baselines: {', '.join(NAMES)}")
        self.fills = check_fills(fills)
        self.fractions = fractions
        self.faithfulness_baselines = list(faithfulness_baselines)
        self.baselines = tuple(self.faithfulness_baselines)

    def scores(self, maps: np.ndarray, images: np.ndarray, model: Any, targets: np.ndarray,
               seed: int = 0, executor: Any = None) -> dict[str, np.ndarray]:
        """Per fill, the curves and their AUCs; ``executor`` (the run's) computes the forward
        passes."""
        out = {}
        for fill in self.fills:
            curves = perturbation_curves(model, images, np.ascontiguousarray(maps), targets, fill=fill,
                                         fractions=np.linspace(0, 1, self.fractions), seed=seed,
                                         executor=executor)
            for part in CURVES:
                out[f"{fill}/{part}"] = curves[part]
                out[f"{fill}/{part}_auc"] = curves[f"{part}_auc"]
        return out

    def kept(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The curves (``quality.h5`` ``curves/<store>/<class>/<fill>/<deletion|insertion>``)."""
        return {name: values.astype(np.float32) for name, values in scores.items() if not name.endswith("_auc")}

    def kept_attrs(self) -> dict[str, Any]:
        return {"fractions": np.linspace(0, 1, self.fractions)}

    def figures(self, scores: dict[str, np.ndarray], baselines: Mapping[str, dict[str, np.ndarray]] | None = None,
                *, seed: int = 0) -> dict[str, Any]:
        """Per fill: AUCs with intervals and the mean curves; with ``baselines``, the fractions and
        the skill over the best uninformed order: for deletion the lowest baseline AUC minus the
        map's (a faithful map deletes the evidence first), for insertion the map's minus the
        highest."""
        out: dict[str, Any] = {}
        for fill in self.fills:
            figures: dict[str, Any] = {}
            if baselines is not None:
                figures["fractions"] = [round(float(f), 4) for f in np.linspace(0, 1, self.fractions)]
            for part in CURVES:
                figures[f"{part}_curve"] = np.nanmean(scores[f"{fill}/{part}"], axis=0).round(5).tolist()
            for part, better in (("deletion_auc", min), ("insertion_auc", max)):
                own = scores[f"{fill}/{part}"]
                figures[part] = bootstrap_mean(own, seed=seed)
                if baselines:
                    means = {b: float(np.nanmean(s[f"{fill}/{part}"])) for b, s in baselines.items()}
                    best = better(means, key=means.get)
                    reference = baselines[best][f"{fill}/{part}"]
                    diff = (paired_difference(reference, own, seed=seed) if part == "deletion_auc"
                            else paired_difference(own, reference, seed=seed))
                    figures[f"{part}_skill"] = {"baseline": best, **diff}
            out[fill] = figures
        return out

    def section(self, part: ReportPart) -> list[str]:
        if part.store is None or not part.figures:
            return []
        rows = []
        for cls, fills in part.figures.items():
            for fill, f in fills.items():
                rows.append([cls, fill, f["deletion_auc"], html.versus(f.get("deletion_auc_skill")),
                             f["insertion_auc"], html.versus(f.get("insertion_auc_skill"))])
        baselines = part.metrics.get("baselines", {})
        orders = sorted({b for per in baselines.values() for b, f in per.items() if "faithfulness" in f})
        picture = pictures.perturbation_figure(part.figures, baselines, part.store,
                                               part.out / f"faithfulness-{part.store}.png")
        return [f"<h3>{self.title}</h3>",
                html.table(["class", "fill", "deletion AUC (lower = better)", "skill over best baseline order",
                            "insertion AUC (higher = better)", "skill over best baseline order"], rows),
                html.figure(picture, f"{part.store}: mean deletion and insertion curves"),
                html.note("Pixels removed most relevant first (deletion) or kept most relevant first (insertion), "
                          f"filled by {' / '.join(self.fills)} (road: ROAD's noisy linear imputation, Rong et al. 2022); "
                          "the class probability along the way. Uninformed orders compared: "
                          f"{', '.join(orders) or 'none'} (uniform = random order).")]

    def row(self, figures: Any, cls: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fill, f in ((figures or {}).get(cls) or {}).items():
            out.update(flat_estimate(f"deletion_auc:{fill}", f.get("deletion_auc")))
            out.update(flat_estimate(f"insertion_auc:{fill}", f.get("insertion_auc")))
        return out
