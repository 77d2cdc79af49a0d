"""``faithfulness``: does the model need the pixels a map ranks first?

Deletion and insertion curves (Petsiuk et al. 2018) with each fill of ``fills`` (ROAD's noisy
linear imputation, Rong et al. 2022; a blur; a third party's fill plugin): the class probability
as the pixels are removed most relevant first (deletion: a faithful map makes it fall early) or
kept most relevant first (insertion: rise early), at ``fractions`` evenly spaced fractions of the
image. Each AUC stands next to the same curves of uninformed orders (``faithfulness_baselines``:
``uniform`` is a random order) on the same images, paired (:mod:`xaicxr.analysis.faithfulness`).

ROAD's two orders (Rong et al. 2022) are the same curves read another way: removing the most
relevant first (MoRF) is deletion, removing the least relevant first (LeRF) a fraction r is
insertion at 1 - r, so the LeRF AUC equals the insertion AUC. ``morf_lerf_gap`` = LeRF AUC -
MoRF AUC per image: large when the map's order separates what the model needs from what it does
not; about 0 for a random order. A map that is flat on an image (the ``uniform`` baseline, a
degenerate map) orders its pixels at random; its curves are averaged over ``random_orders``
random orders, so the baseline is not one draw's luck.
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
from xaicxr.plugins.options import at_least

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
                 faithfulness_baselines: list[str] = ["uniform", "lungs", "class_prior"],  # noqa: B006
                 random_orders: int = 3) -> None:
        self.random_orders = at_least("random_orders", random_orders, 1)
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
        maps = np.ascontiguousarray(maps)
        flat = np.flatnonzero(np.ptp(maps.reshape(len(maps), -1), axis=1) == 0) if len(maps) else np.empty(0, int)
        fractions = np.linspace(0, 1, self.fractions)
        out = {}
        for fill in self.fills:
            curves = perturbation_curves(model, images, maps, targets, fill=fill, fractions=fractions, seed=seed,
                                         executor=executor)
            if len(flat) and self.random_orders > 1:
                curves = _averaged_on(flat, curves, [
                    perturbation_curves(model, np.asarray(images)[flat], maps[flat], np.asarray(targets)[flat],
                                        fill=fill, fractions=fractions, seed=seed + order, executor=executor)
                    for order in range(1, self.random_orders)])
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
            for part, better in (("deletion_auc", min), ("insertion_auc", max), ("morf_lerf_gap", max)):
                own = _figure(scores, fill, part)
                figures[part] = bootstrap_mean(own, seed=seed)
                if baselines:
                    means = {b: float(np.nanmean(_figure(s, fill, part))) for b, s in baselines.items()}
                    best = better(means, key=means.get)
                    reference = _figure(baselines[best], fill, part)
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
                             f["insertion_auc"], html.versus(f.get("insertion_auc_skill")),
                             f.get("morf_lerf_gap"), html.versus(f.get("morf_lerf_gap_skill"))])
        baselines = part.metrics.get("baselines", {})
        orders = sorted({b for per in baselines.values() for b, f in per.items() if "faithfulness" in f})
        picture = pictures.perturbation_figure(part.figures, baselines, part.store,
                                               part.out / f"faithfulness-{part.store}.png")
        return [f"<h3>{self.title}</h3>",
                html.table(["class", "fill", "deletion AUC (lower = better)", "skill over best baseline order",
                            "insertion AUC (higher = better)", "skill over best baseline order",
                            "LeRF - MoRF AUC (higher = better)", "skill over best baseline order"], rows),
                html.figure(picture, f"{part.store}: mean deletion and insertion curves"),
                html.note("Pixels removed most relevant first (deletion) or kept most relevant first (insertion), "
                          f"filled by {' / '.join(self.fills)} (road: ROAD's noisy linear imputation, Rong et al. 2022); "
                          "the class probability along the way. LeRF - MoRF: ROAD's least-relevant-first minus "
                          "most-relevant-first removal AUC (Rong et al. 2022), the insertion minus the deletion AUC. "
                          f"Uninformed orders compared: {', '.join(orders) or 'none'} (uniform = random order, its "
                          f"curves averaged over {self.random_orders} orders).")]

    def row(self, figures: Any, cls: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fill, f in ((figures or {}).get(cls) or {}).items():
            out.update(flat_estimate(f"deletion_auc:{fill}", f.get("deletion_auc")))
            out.update(flat_estimate(f"insertion_auc:{fill}", f.get("insertion_auc")))
        return out


def _figure(scores: Mapping[str, np.ndarray], fill: str, name: str) -> np.ndarray:
    """A per-image figure of ``scores``: an AUC, or the LeRF - MoRF gap (insertion - deletion)."""
    if name == "morf_lerf_gap":
        return scores[f"{fill}/insertion_auc"] - scores[f"{fill}/deletion_auc"]
    return scores[f"{fill}/{name}"]


def _averaged_on(rows: np.ndarray, curves: dict[str, Any], more: list[dict[str, Any]]) -> dict[str, Any]:
    """``curves`` with ``rows``' curves and AUCs replaced by their mean over ``curves`` and each
    of ``more`` (the same rows under other random orders)."""
    out = dict(curves)
    for name in ("deletion", "insertion", "deletion_auc", "insertion_auc"):
        values = np.array(curves[name], copy=True)
        values[rows] = np.mean([curves[name][rows], *[m[name] for m in more]], axis=0)
        out[name] = values
    return out
