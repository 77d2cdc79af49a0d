"""A classical lung-field segmentation (scikit-image), for lung-energy figures on images that
come without lung masks.

Lungs are the large dark regions inside the body: the body is the filled, eroded region above a
low threshold (so air around the patient and letterbox padding are outside it); inside it the
smoothed image is thresholded by Otsu, the two largest dark regions are kept, then closed and
filled so vessels and lesions inside the lungs count as lung. Its agreement with the phantoms' true lung masks (Dice about 0.7) is
checked by ``tests/test_quality.py`` and described in docs/data.md.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import filters, measure, morphology


def segment_lungs(image: np.ndarray, min_area: float = 0.02) -> np.ndarray:
    """(H, W) gray in [0, 1] -> bool lung mask; empty when no plausible lung region is found."""
    image = np.asarray(image, np.float64)
    size = max(image.shape)
    body = ndimage.binary_fill_holes(filters.gaussian(image, sigma=max(size / 128, 0.5)) > 0.05)
    body = ndimage.binary_erosion(body, morphology.disk(max(1, size // 32)))
    if body.sum() < min_area * image.size:
        return np.zeros(image.shape, bool)
    smooth = filters.gaussian(image, sigma=max(size / 40, 1.0))
    if np.ptp(smooth[body]) < 1e-6:
        return np.zeros(image.shape, bool)
    dark = body & (smooth < filters.threshold_otsu(smooth[body]))
    labels = measure.label(dark)
    regions = [r for r in measure.regionprops(labels) if r.area >= min_area * image.size]
    regions.sort(key=lambda r: r.area, reverse=True)
    mask = np.isin(labels, [r.label for r in regions[:2]])
    return ndimage.binary_fill_holes(ndimage.binary_closing(mask, morphology.disk(max(1, size // 32))))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0
