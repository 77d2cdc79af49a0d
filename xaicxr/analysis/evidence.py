"""The counterfactual evidence of an image: the pixels its lesion changes.

Where a dataset can re-make an image without its lesion (the phantoms' ``lesion_removed`` twin,
pixel-identical to the image away from the lesion), the difference between the two is what the
lesion puts in the image: the evidence a model that relies on the lesion can use. It is a second
ground truth beside the lesion mask, and not the same one: the mask holds 90 % of the density
the lesion adds, while the detector blur and the lesion's faint edges change pixels around it
(consolidation fades beyond its mask). A map that points at that halo points at real evidence,
and a figure scored against the mask alone calls it a miss.

The **evidence mask** of an image is where ``|image - twin|`` exceeds :data:`EVIDENCE_THRESHOLD`
(images in [0, 1] as the model takes them). Outside the lesion's support the twin is identical
to the image (difference exactly 0); the smallest change the saved 8-bit images can show is one
grey level (1/255 = 0.0039), and the float16 image cache rounds by at most 2.4e-4. Measured on
the demo phantoms (200 test images, 64 px, easy) and on 128 and 224 px standard sets (30 and 12
per class), the changed pixels' differences run from 1 grey level up: 4 to 12 % of them are a
single level (a lesion change below one level that crossed a rounding step), a further 2 to 7 %
two levels. The changed pixels outside the mask have a median difference of 0.023 (virus),
0.031 (covid) and 0.078 (bacteria) on the demo; a cut at 0.01 keeps 97.6 to 100 % of the lesion
mask's own pixels and 98.8 to 99.9 % of the summed difference, where 0.02 already drops 4 to 5 %
of the virus lesion's pixels (its reticular net is faint). 0.01 (2.55 grey levels) is therefore
above rounding and quantisation and below the faint halo.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .intervals import bootstrap_ratio

EVIDENCE_THRESHOLD = 0.01
"""An image's evidence mask: the pixels where it differs from its lesion-removed twin by more
than this (images in [0, 1])."""

CHANGE = "lesion_removed"
"""The counterfactual change (:attr:`xaicxr.plugins.Dataset.counterfactuals`) the evidence is
measured against."""


def evidence_mask(images: np.ndarray, twins: np.ndarray, threshold: float = EVIDENCE_THRESHOLD) -> np.ndarray:
    """(N, H, W) bool: the pixels where ``images`` and their lesion-removed ``twins`` differ by
    more than ``threshold``."""
    images, twins = np.asarray(images, np.float32), np.asarray(twins, np.float32)
    if images.shape != twins.shape:
        raise ValueError(f"images {images.shape} and their twins {twins.shape} differ in shape")
    return np.abs(images - twins) > threshold


def outside_share(evidence: np.ndarray, lesion: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """The share of the evidence pixels that lie outside the lesion mask, pooled over the images
    that have evidence (their outside pixels over their evidence pixels, a ratio of means with a
    paired bootstrap interval)."""
    n = len(evidence)
    ev = np.asarray(evidence, bool).reshape(n, -1)
    outside = (ev & ~np.asarray(lesion, bool).reshape(n, -1)).sum(axis=1).astype(np.float64)
    total = ev.sum(axis=1).astype(np.float64)
    has = total > 0
    return bootstrap_ratio(np.where(has, outside, np.nan), np.where(has, total, np.nan), seed=seed)
