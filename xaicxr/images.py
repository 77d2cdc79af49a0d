"""Images as a model takes them, for notebooks: ``load_images(paths, model=model)``.

Decoding and sizing are the pipeline's own (:func:`xaicxr.io.imaging.read_image`: PNG, JPEG,
16-bit, DICOM with its VOI LUT or window; :func:`xaicxr.io.resize.fit_square`: the ``resize``
policy and ``mode``), so an image loaded here is the image a run would have cached, pixel for
pixel, and ``detect`` would have explained. :func:`load_masks` sizes lesion and lung masks as a
run does (:func:`xaicxr.io.imaging.read_mask`, nearest neighbour), for the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .errors import DataError
from .io.imaging import DEFAULT_MAX_PIXELS, ImageDecodeError, read_image, read_mask
from .io.resize import RESIZE_POLICIES, Mode, ResizePolicy, fit_square, fit_square_mask, to_mode

__all__ = ["load_images", "load_masks"]

Paths = str | Path | Iterable[str | Path]


def load_images(paths: Paths, model: Any = None, *, size: int | None = None,
                resize: ResizePolicy = "pad", mode: Mode = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                skipped: list[tuple[str, str]] | None = None) -> np.ndarray:
    """(N, S, S, C) float32 in [0, 1]: the files (or one file) decoded to gray and made square of
    side ``size`` (else the ``model``'s input size), with C the model's channels (gray repeated)
    or 1. ``resize`` (``"pad"``, ``"stretch"``, ``"crop"``) and ``mode`` (None or ``"L"``) are
    the run's ``[data]`` options of the same names: give those the model was trained with.

    A file that cannot be decoded raises :class:`~xaicxr.errors.DataError` naming it; pass a list
    as ``skipped`` to leave such files out instead, each appended as ``(path, reason)``."""
    side, channels = _side(model, size, resize)
    to_mode(np.zeros((1, 1), np.float32), mode)  # a wrong mode fails before any file is read
    images = _load(paths, lambda path: fit_square(read_image(path, max_pixels=max_pixels)[0], side,
                                                  policy=resize, mode=mode), side, skipped)
    images = images.astype(np.float32, copy=False)[..., None]
    return np.repeat(images, channels, axis=-1) if channels != 1 else images


def load_masks(paths: Paths, model: Any = None, *, size: int | None = None, resize: ResizePolicy = "pad",
               skipped: list[tuple[str, str]] | None = None) -> np.ndarray:
    """(N, S, S) bool: mask files (any non-zero pixel is foreground; JPEG: above half the
    maximum) made square as :func:`load_images` makes their images, nearest neighbour, so they
    lie on the maps of those images. Give the same ``size`` (or ``model``) and ``resize``. A run
    first brings a mask stored at another resolution than its image to the image's; a mask of
    the image's aspect ratio comes out the same either way. Errors and ``skipped`` as in
    :func:`load_images`."""
    side, _ = _side(model, size, resize)
    return _load(paths, lambda path: fit_square_mask(read_mask(path), side, resize), side, skipped).astype(bool)


def _side(model: Any, size: int | None, resize: str) -> tuple[int, int]:
    """The square's side and the channels: ``size``, else the model's input (N, S, S, C)."""
    if resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}; got {resize!r}")
    channels = 1
    if model is not None:
        shape = tuple(model.inputs[0].shape)
        if len(shape) != 4:
            raise DataError(f"load_images: model input {shape} is not (N, H, W, C) images")
        height, width, channels = shape[1], shape[2], shape[3] or 1
        if size is None and height is not None and height != width:
            raise DataError(f"load_images: model input {height}x{width} is not square; a run's images are")
        size = size or height
    if not size:
        raise DataError("load_images needs a size: pass size=S or a model with a fixed input size")
    return int(size), int(channels)


def _load(paths: Paths, read: Callable[[Path], np.ndarray], side: int,
          skipped: list[tuple[str, str]] | None) -> np.ndarray:
    """``read`` of every path stacked (N, side, side); a file it cannot decode raises a
    :class:`DataError` naming it, or goes to ``skipped``."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for path in paths:
        try:
            out.append(read(Path(path)))
        except ImageDecodeError as exc:
            if skipped is None:
                raise DataError(f"{path}: {exc}") from None
            skipped.append((str(path), str(exc)))
    return np.stack(out) if out else np.zeros((0, side, side), np.float32)
