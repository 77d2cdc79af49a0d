"""The fill plugin contract: how a perturbation metric fills the pixels it removes.

A removed pixel must get some value, and which one matters as much as which pixels are removed:
a constant is out of distribution, so a drop may measure the hole's shape rather than the
information removed (Rong et al. 2022, ROAD). A fill is two halves, so that the model's scoring
stays one compiled function per (model, fill, size) whatever the fill:

* :meth:`Fill.values`, in numpy outside TensorFlow: per perturbed row, an (H, W) array the fill
  needs (the blurred image, a noise field). Randomness comes from ``(seed, image, tag)``, so a
  row's values do not depend on how rows are batched.
* :meth:`Fill.apply`, TensorFlow ops traced into the compiled scorer: the perturbed batch from
  the images, the removed pixels and those values.

:meth:`Fill.prepare` runs once per image set before any row (the blur fill blurs every image
there), and :meth:`Fill.fill` applies a fill to arrays from Python.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .options import Configurable


class Fill(Configurable, ABC):
    """Base of fill plugins (blur, ROAD imputation, a third party's). Options are keyword
    arguments of ``__init__``; images are (N, H, W) float32 in [0, 1]."""

    def prepare(self, images: np.ndarray) -> Any:
        """Computed once for a whole image set, handed to every :meth:`values` call."""
        return None

    @abstractmethod
    def values(self, images: np.ndarray, prepared: Any, image_index: np.ndarray, tags: np.ndarray,
               seed: int) -> np.ndarray:
        """(B, H, W) float32: what row b's removed pixels are filled from, for the image
        ``images[image_index[b]]`` and the perturbation ``tags[b]`` of that image."""

    @abstractmethod
    def apply(self, images: Any, removed: Any, values: Any) -> Any:
        """TensorFlow ops: (B, H, W) float32 images, (B, H, W) bool removed, (B, H, W) values
        -> the perturbed images. Known pixels must pass through unchanged."""

    def cache_key(self) -> tuple:
        """What distinguishes compiled functions made for this fill: its class and options."""
        return (type(self).__module__, type(self).__qualname__,
                tuple(sorted((k, repr(v)) for k, v in self.options().items())))

    def fill(self, images: np.ndarray, removed: np.ndarray, seed: int = 0) -> np.ndarray:
        """(N, H, W) ``images`` with the ``removed`` (bool, same shape) pixels filled."""
        images = np.ascontiguousarray(images, np.float32)
        removed = np.asarray(removed, bool)
        if images.ndim != 3 or removed.shape != images.shape:
            raise ValueError(f"images {images.shape} and removed {removed.shape} must both be (N, H, W)")
        if not len(images):
            return images.copy()
        index = np.arange(len(images))
        values = self.values(images, self.prepare(images), index, np.zeros(len(images), np.int64), seed)
        fn = compiled_apply(self, images.shape[1:])
        return np.concatenate([fn(images[i:i + 64], removed[i:i + 64], values[i:i + 64]).numpy()
                               for i in range(0, len(images), 64)])


_applied: dict[tuple, Any] = {}


def compiled_apply(fill: Fill, shape: tuple[int, ...]) -> Any:
    """``fill.apply`` as one ``tf.function`` per (fill, image shape) with a free batch size."""
    import tensorflow as tf

    shape = tuple(int(s) for s in shape)
    key = (fill.cache_key(), shape)
    fn = _applied.get(key)
    if fn is None:
        spec = tf.TensorSpec((None, *shape), tf.float32)
        fn = _applied[key] = tf.function(
            fill.apply, input_signature=[spec, tf.TensorSpec((None, *shape), tf.bool), spec],
            autograph=False)
    return fn


def make_fill(fill: Fill | str) -> Fill:
    """A fill instance: ``fill`` itself, or the registered fill plugin of that name with its
    default options."""
    if isinstance(fill, Fill):
        return fill
    from . import get

    return get("fill", fill)()
