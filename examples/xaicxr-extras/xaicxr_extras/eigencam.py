"""``eigencam``: Eigen-CAM (Muhammad & Yeasin 2020), the first principal component of the target
layer's activations. No gradients and no class: the map shows what the layer responds to most,
whatever the prediction, so it is the same for every target class.

The activations of each image, (h*w, k), are centred per channel and projected on their first
right singular vector. A principal direction has no sign, so the map is flipped where needed to
correlate positively with the mean activation over channels (otherwise half the maps would
highlight the background). The base class then applies ReLU, upsamples and scales to [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xaicxr.plugins import Explainer
from xaicxr.plugins.explainer import check_images


def eigen_maps(acts: np.ndarray) -> np.ndarray:
    """(N, h, w, k) activations -> (N, h, w) sign-fixed first-principal-component projections."""
    acts = np.asarray(acts, dtype=np.float64)
    n, h, w, k = acts.shape
    flat = acts.reshape(n, h * w, k)
    centred = flat - flat.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)  # batched over N
    proj = np.einsum("npk,nk->np", centred, vt[:, 0, :])
    mean_map = flat.mean(axis=2)
    corr = np.einsum("np,np->n", proj - proj.mean(1, keepdims=True),
                     mean_map - mean_map.mean(1, keepdims=True))
    proj *= np.where(corr < 0, -1.0, 1.0)[:, None]
    return proj.reshape(n, h, w).astype(np.float32)


class EigenCAM(Explainer):
    """Eigen-CAM. Options: none (the target layer comes from ``[[explain]] layer``)."""

    def raw_maps(self, model: Any, images: np.ndarray, targets: np.ndarray,
                 layer: str | None) -> Any:
        acts, _ = self.explainable(model, layer).model(images, training=False)
        return eigen_maps(np.asarray(acts))

    def explain_all_with_info(self, model: Any, images: Any,
                              layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Class-agnostic: one pass, the same map repeated for each class."""
        images = check_images(model, images)
        n_classes = self._n_classes(model, layer)
        maps, flags = self.explain_with_info(model, images, np.zeros(len(images), np.int64), layer)
        return self._store_flags(np.repeat(maps[:, None], n_classes, axis=1),
                                 np.repeat(flags[:, None], n_classes, axis=1))
