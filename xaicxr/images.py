"""Images as a model takes them, for notebooks: ``load_images(paths, model=model)``.

Decoding and sizing are the pipeline's own (:func:`xaicxr.io.imaging.read_image`: PNG, JPEG,
16-bit, DICOM with its VOI LUT or window; :func:`xaicxr.io.resize.fit_square`: the ``resize``
policy and ``mode``), so an image loaded here is the image a run would have cached, pixel for
pixel, and ``detect`` would have explained."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import DataError
from .io.imaging import DEFAULT_MAX_PIXELS, ImageDecodeError, read_image
from .io.resize import Mode, ResizePolicy, fit_square

__all__ = ["load_images"]


def load_images(paths: Iterable[str | Path], model=None, *, size: int | None = None,
                resize: ResizePolicy = "pad", mode: Mode = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                skipped: list[tuple[str, str]] | None = None) -> np.ndarray:
    """(N, S, S, C) float32 in [0, 1]: the files decoded to gray and made square of side ``size``
    (else the ``model``'s input size), with C the model's channels (gray repeated) or 1.

    A file that cannot be decoded raises :class:`~xaicxr.errors.DataError` naming it; pass a list
    as ``skipped`` to leave such files out instead, each appended as ``(path, reason)``."""
    channels = 1
    if model is not None:
        _, height, _, channels = (tuple(model.inputs[0].shape) + (None,) * 4)[:4]
        size = size or height
        channels = channels or 1
    if not size:
        raise DataError("load_images needs a size: pass size=S or a model with a fixed input size")
    out = []
    for path in paths:
        try:
            raw, _ = read_image(Path(path), max_pixels=max_pixels)
        except ImageDecodeError as exc:
            if skipped is None:
                raise DataError(f"{path}: {exc}") from None
            skipped.append((str(path), str(exc)))
            continue
        out.append(fit_square(raw, int(size), policy=resize, mode=mode))
    images = np.stack(out)[..., None] if out else np.zeros((0, int(size), int(size), 1), np.float32)
    return np.repeat(images, int(channels), axis=-1) if channels != 1 else images
