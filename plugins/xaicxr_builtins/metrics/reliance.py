"""``reliance``: does the model rely on the lesion at all? Counterfactual twins, not heatmaps.

Every explained image is re-made by its dataset with the lesion removed and with the lesion kept
only inside its mask (datasets that can: the phantoms); the accuracy and the class-probability
drop on those twins say, per class, whether the lesion is the model's evidence
(:mod:`xaicxr.analysis.reliance`). Where it is not, a localisation figure of that class does not
test the explainer. The predictions go through the run's executor.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xaicxr.analysis.reliance import reliance_figures
from xaicxr.executors.model_passes import ModelExecutor
from xaicxr.io import html
from xaicxr.plugins import Metric, ReportPart

CHANGES = ("lesion_removed", "lesion_in_mask_only")


class Reliance(Metric):
    """Accuracy and class-probability drop on the lesion-removed and mask-only twins, per class,
    and whether the model relies on the lesion."""

    key = "reliance"
    scope = "run"
    title = "Does the model rely on the lesion? (counterfactual twins)"
    changes = CHANGES
    """The counterfactual changes it needs of the dataset."""

    def evaluate(self, model: Any, images: np.ndarray, twins: Mapping[str, np.ndarray], labels: np.ndarray,
                 class_names: list[str], lesion: np.ndarray | None = None, split: str = "",
                 seed: int = 0, executor: ModelExecutor | None = None) -> dict[str, Any]:
        has_lesion = (lesion.reshape(len(images), -1).any(axis=1) if lesion is not None
                      else np.zeros(len(images), bool))
        predict = (executor or ModelExecutor.in_process(model)).predict
        probs = {"original": predict(images),
                 **{change: predict(twins[change]) for change in self.changes}}
        figures = reliance_figures(labels, probs["original"], probs["lesion_removed"], probs["lesion_in_mask_only"],
                                   class_names, has_lesion, seed=seed)
        return {cls: {**f, "split": split} for cls, f in figures.items()}

    def section(self, part: ReportPart) -> list[str]:
        if part.store is not None or not part.figures:
            return []
        rows = [[c, r["n"], r["accuracy"], r["accuracy_lesion_removed"], r["accuracy_lesion_in_mask_only"],
                 r["probability_drop"], r["probability_drop_mask_only"],
                 r["relies_on_lesion"] if r["has_lesion"] else None] for c, r in part.figures.items()]
        return [f"<h2>{self.title}</h2>",
                html.note("Each explained image re-made from its seeds with the lesion removed, and with the lesion "
                          "kept only inside its mask. Where removing the lesion collapses the answer, the lesion is the "
                          "model's evidence and a heatmap that points elsewhere is the explainer failing; where it "
                          "does not, localisation figures of that class do not test the explainer."),
                html.table(["class", "n", "accuracy", "lesion removed", "lesion only in mask", "p drop (removed)",
                            "p drop (mask only)", "relies on lesion"], rows)]

    def row(self, figures: Any, cls: str) -> dict[str, Any]:
        reliance = (figures or {}).get(cls)
        return {"relies_on_lesion": reliance["relies_on_lesion"]} if reliance else {}
