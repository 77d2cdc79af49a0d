"""Does the model rely on the lesion? Measured with counterfactual twins, not with heatmaps.

A synthetic dataset can re-make each image from its seeds with the lesion removed, and with the
lesion kept only inside its mask. If the model's answer collapses without the lesion, the lesion
is its evidence, and heatmap mass elsewhere is the explainer's failure, not the model's; if the
answer survives with the lesion kept only inside the mask, the mask holds that evidence. Only
then is a localisation benchmark on that class a test of the explainer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .intervals import bootstrap_mean, proportion

RELIES_DROP = 0.25
"""The model relies on the lesion when removing it lowers the class probability by at least this
much on average (the lower end of the 95 % interval, so the claim survives the sample size)."""


def reliance_figures(labels: np.ndarray, original: np.ndarray, removed: np.ndarray,
                     mask_only: np.ndarray, classes: list[str], has_lesion: np.ndarray, *,
                     seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per class: accuracy on the images, on their lesion-removed twins and on the twins with
    the lesion kept only inside its mask (Wilson intervals), the mean drop of the class
    probability in both (bootstrap intervals), and whether the model relies on the lesion.

    ``original``, ``removed``, ``mask_only``: (N, C) probabilities; ``has_lesion``: (N,) bool."""
    out: dict[str, dict[str, Any]] = {}
    for k, cls in enumerate(classes):
        rows = np.flatnonzero(labels == k)
        if not len(rows):
            continue
        figures: dict[str, Any] = {"n": int(len(rows)), "has_lesion": bool(has_lesion[rows].any())}
        for name, probs in (("", original), ("_lesion_removed", removed), ("_lesion_in_mask_only", mask_only)):
            figures[f"accuracy{name}"] = proportion(probs[rows].argmax(axis=1) == k)
        figures["probability_drop"] = bootstrap_mean(original[rows, k] - removed[rows, k], seed=seed)
        figures["probability_drop_mask_only"] = bootstrap_mean(original[rows, k] - mask_only[rows, k], seed=seed)
        low = figures["probability_drop"]["ci95"][0]
        figures["relies_on_lesion"] = bool(figures["has_lesion"] and low is not None and low >= RELIES_DROP)
        out[cls] = figures
    return out
