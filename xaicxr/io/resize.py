"""How a decoded image becomes the model's square: the resize policy.

By default (``"pad"``) the aspect ratio is preserved, the long side is scaled to the target
size and the short side is padded symmetrically with zeros (black, the usual X-ray
background). ``"stretch"`` scales each axis to the target (what Keras'
``load_img(target_size=...)`` does, and so most published CXR code); ``"crop"`` takes the
centred square and scales it. Padding keeps all anatomy but marks every non-square source with
black bars that a classifier can learn; stretch and crop leave no such mark.
:func:`fit_square_box` says where the image lies inside the square (for ``"pad"``, the part of
a heatmap that covers the image; the whole square otherwise).

``"pad"`` pads every image to the same aspect, the square, square ones included (with no bars),
so padding a square image is the plain resize.

Before any of that, ``mode = "L"`` (:func:`to_mode`) makes every image 8-bit gray: a file stored
as RGB, 16-bit or DICOM is quantised to the 256 levels an 8-bit grayscale file has, as if each
had been converted to PIL's ``"L"`` first, so the colour mode or bit depth of a source cannot
leak into the pixels the model sees.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

RESIZE_POLICIES = ("pad", "stretch", "crop")
ResizePolicy = Literal["pad", "stretch", "crop"]
MODES = ("L",)
Mode = Literal["L"] | None


def to_mode(image: np.ndarray, mode: Mode = None) -> np.ndarray:
    """``image`` (gray in [0, 1]) as ``mode`` stores it: ``"L"`` rounds to the 256 levels of 8-bit
    gray (PIL's own RGB to L conversion rounds the same weighted sum); None leaves it as decoded."""
    if mode is None:
        return image
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} or None; got {mode!r}")
    a = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    return (np.round(a * 255.0) / 255.0).astype(np.float32)


def fit_square_box(shape: tuple[int, int], size: int,
                   policy: ResizePolicy = "pad") -> tuple[int, int, int, int]:
    """Where :func:`fit_square` puts an image of ``shape`` (H, W): ``(top, left, h, w)``.

    With ``"stretch"`` and ``"crop"`` the image fills the square: stretch scales the two axes
    differently, and crop shows only the centred min(H, W) square of the original."""
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1 or size < 1:
        raise ValueError(f"need a non-empty image and size >= 1, got shape={shape}, size={size}")
    _check_policy(policy)
    if policy != "pad":
        return 0, 0, size, size
    scale = size / max(height, width)
    new_h = size if height >= width else max(1, min(size, round(height * scale)))
    new_w = size if width >= height else max(1, min(size, round(width * scale)))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def fit_square(
    image: np.ndarray, size: int, *, resample: Literal["bilinear", "nearest"] = "bilinear",
    policy: ResizePolicy = "pad", mode: Mode = None,
) -> np.ndarray:
    """A float32 (size, size) array in [0, 1], made by the resize ``policy`` after :func:`to_mode`
    (module docstring).

    ``"bilinear"`` (the default) antialiases when reducing (PIL widens its filter support by the
    reduction factor, so it averages like an area filter); ``"nearest"`` is for masks.
    """
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"fit_square needs a 2-D array, got shape {a.shape}")
    a = to_mode(np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0), mode)
    if policy == "crop":
        side = min(a.shape)
        top, left = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
        a = a[top : top + side, left : left + side]
    top, left, new_h, new_w = fit_square_box(a.shape, size, policy)
    out = np.zeros((size, size), dtype=np.float32)
    out[top : top + new_h, left : left + new_w] = resize(a, (new_h, new_w), resample)
    return np.clip(out, 0.0, 1.0, out=out)


def fit_square_mask(mask: np.ndarray, size: int, policy: ResizePolicy = "pad") -> np.ndarray:
    """:func:`fit_square` for a mask: nearest neighbour, bool (size, size)."""
    return fit_square(np.asarray(mask, dtype=np.float32), size, resample="nearest", policy=policy) > 0.5


def _check_policy(policy: str) -> None:
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {', '.join(RESIZE_POLICIES)}; got {policy!r}")


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


def resize(a: np.ndarray, shape: tuple[int, int], resample: str) -> np.ndarray:
    """``a`` at ``shape`` (H, W) with PIL's ``bilinear`` (antialiased when reducing) or ``nearest``."""
    if a.shape == shape:
        return a
    try:
        method = _RESAMPLE[resample]
    except KeyError:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}") from None
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    return np.asarray(img.resize((shape[1], shape[0]), method), dtype=np.float32)
