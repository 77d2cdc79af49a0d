"""``randomisation``: do the maps change when what the model learned is destroyed?

The cascading model-parameter randomisation test (Adebayo et al. 2018), its reference level (two
different images' trained maps) and the random-logit test (Sixt et al. 2020), on a class-balanced
sample of ``randomisation_images`` explained images, re-explained with the store's own explainer,
layer and target (:mod:`xaicxr.analysis.randomisation`), through the run's executor. Its one-line
verdict goes to ``metrics.json`` ``sanity``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaicxr.analysis.intervals import describe
from xaicxr.analysis.randomisation import DRAWS, MARGIN, randomisation_test
from xaicxr.io import figures as pictures
from xaicxr.io import html
from xaicxr.plugins import Metric, ReportPart
from xaicxr.plugins.options import at_least


class Randomisation(Metric):
    """The cascade, reference level and random-logit test of one explainer; the weights are
    re-initialised ``randomisation_draws`` times, draws ``randomisation_draw``,
    ``randomisation_draw + 1``, ... of the training seed's stream; ``randomisation_margin`` is
    the minimum effect of both pass rules (Spearman)."""

    key = "randomisation"
    scope = "explainer"
    title = "Cascading randomisation (Adebayo et al. 2018)"
    also_keys = ("sanity",)

    def __init__(self, randomisation_images: int = 48, randomisation_draw: int = 0, randomisation_draws: int = DRAWS,
                 randomisation_margin: float = MARGIN) -> None:
        self.randomisation_images = at_least("randomisation_images", randomisation_images, 1)
        self.randomisation_draw = at_least("randomisation_draw", randomisation_draw, 0)
        self.randomisation_draws = at_least("randomisation_draws", randomisation_draws, 1)
        if not 0 <= randomisation_margin < 1:
            raise ValueError(f"'randomisation_margin' must be in [0, 1) (a Spearman difference), got {randomisation_margin}")
        self.randomisation_margin = randomisation_margin

    def select(self, labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
        """A class-balanced sample of rows: ``randomisation_images / n_classes`` of each class."""
        rng = np.random.default_rng(seed)
        per_class = max(1, self.randomisation_images // max(n_classes, 1))
        return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[:per_class]
                                       for k in range(n_classes)])).astype(np.int64)

    def evaluate(self, model: Any, explainer: Any, images: np.ndarray, targets: np.ndarray, labels: np.ndarray,
                 class_names: list[str], layer: str, train_seed: int, target: Any = None,
                 seed: int = 0, executor: Any = None) -> dict[str, Any]:
        """The test's figures; ``executor`` (the run's) runs the cascade, a span of images per
        task."""
        result = randomisation_test(model, explainer, images[..., None], targets, labels, class_names,
                                    layer=layer, train_seed=train_seed, draw=self.randomisation_draw,
                                    draws=self.randomisation_draws, margin=self.randomisation_margin, seed=seed,
                                    target=target, executor=executor)
        result["cascade"] = result.pop("steps")
        return result

    def also(self, figures: dict[str, Any]) -> dict[str, Any]:
        return {"sanity": sanity_line(figures)}

    def section(self, part: ReportPart) -> list[str]:
        result = part.figures
        if part.store is None or not result:
            return []
        sanity = part.metrics.get("sanity", {}).get(part.store, {})
        fig = pictures.cascade_figure(result, part.store, part.out / f"cascade-{part.store}.png")
        rl = result["random_logit"]
        return [f"<h3>{self.title}</h3>",
                f"<p><b>{html.escape(sanity.get('summary', ''))}</b></p>",
                html.figure(fig, f"{part.store}: similarity to the trained maps as layers are randomised from the top"),
                f"<p>Random-logit test (Sixt et al. 2020): maps for a random other class keep Spearman "
                f"{describe(rl['spearman'])}, SSIM {describe(rl['ssim'])} with the maps of the explained class; "
                f"per image, {describe(rl['difference_from_reference'])} above the reference: "
                f"<b>{'passes' if rl['passes'] else 'fails'}</b> (passes below +{result['margin']:g}).</p>",
                html.note(f"Per image, Spearman rank correlation and SSIM between the trained model's map and the map "
                          f"after randomising every weighted layer from the top down to the named one, averaged over "
                          f"{result['draws']} re-initialisations (the interval resamples images and re-initialisations); "
                          "the grey band is the similarity of each image's trained map to the other images' of its "
                          "class (what the shared layout alone gives). The test passes when, at the dotted line, each "
                          f"image's map is below its reference by more than {result['margin']:g} (lower end of the "
                          "paired interval).")]

    def row(self, figures: Any, cls: str) -> dict[str, Any]:
        if not figures:
            return {}
        return {"randomisation_passes": figures.get("passes"),
                "random_logit_passes": (figures.get("random_logit") or {}).get("passes")}


def sanity_line(result: dict[str, Any]) -> dict[str, Any]:
    """The verdict of the test in one line, with the figures it rests on."""
    index = result.get("explained_layer_step")
    step = result["cascade"][index] if index is not None else None
    ref = result["reference"]["spearman"]
    if step is None or step["spearman"]["value"] is None:
        summary = "no cascade step above the explained layer could be scored"
    else:
        summary = (f"{'passes' if result['passes'] else 'fails'}: after randomising every layer above "
                   f"{result.get('layer') or 'the input'} ({result.get('draws', 1)} draws), maps keep Spearman "
                   f"{describe(step['spearman'])} with the trained ones, against {describe(ref)} between "
                   f"different images' trained maps; per image, "
                   f"{describe(result['pass_rule']['difference'])} below it (passes above {result['margin']:g})")
    return {"passes": bool(result["passes"]),
            "spearman_above_layer_randomised": step["spearman"] if step else None,
            "reference_spearman": ref, "below_reference": result["pass_rule"]["difference"],
            "random_logit_spearman": result["random_logit"]["spearman"],
            "random_logit_passes": bool(result["random_logit"]["passes"]),
            "mean_template_r": result.get("mean_template_r"), "layer": result.get("layer"), "summary": summary}
