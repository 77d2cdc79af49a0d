"""Decode records into batches lazily and in parallel; files that fail are reported, not fatal.

At most a few batches are in flight, so memory does not grow with the size of the dataset.
Decoding runs in threads: PIL and pydicom release the GIL in their decoders, and on the
2-core reference machine two threads roughly double throughput.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .records import Record, Skipped
from .imaging import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageInfo, read_image, read_mask
from .resize import Mode, ResizePolicy, fit_square, fit_square_mask


@dataclass
class Batch:
    """Images (B, S, S) float32 in [0, 1]; masks are None when no record of the batch has one."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    records: list[Record]
    lesion: np.ndarray | None = None
    lung: np.ndarray | None = None


@dataclass
class Decoded:
    record: Record
    image: np.ndarray | None
    info: ImageInfo | None
    lesion: np.ndarray | None = None
    lung: np.ndarray | None = None
    error: str | None = None


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode(record: Record, size: int | None, max_pixels: int = DEFAULT_MAX_PIXELS,
           resize: ResizePolicy = "pad", mode: Mode = None) -> Decoded:
    """One record -> image (brought to ``mode`` and resized to ``size`` by the ``resize`` policy,
    if a size is given) and masks."""
    try:
        image, info = read_image(record.path, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return Decoded(record, None, None, error=str(exc))
    masks = {}
    for key in ("lesion", "lung"):
        mask_path = getattr(record, f"{key}_mask")
        if mask_path is None:
            continue
        try:
            mask = read_mask(mask_path, image.shape)
        except Exception as exc:
            return Decoded(record, None, info, error=f"{key} mask unreadable: {exc}")
        masks[key] = mask
    if record.boxes:
        try:
            drawn = box_mask(record.boxes, image.shape)
        except ValueError as exc:
            return Decoded(record, None, info, error=str(exc))
        masks["lesion"] = drawn | masks["lesion"] if "lesion" in masks else drawn
    if size:
        masks = {key: fit_square_mask(mask, size, resize) for key, mask in masks.items()}
        image = fit_square(image, size, policy=resize, mode=mode)
    return Decoded(record, image, info, **masks)


def box_mask(boxes: Sequence[Sequence[float]], shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) bool: every pixel a box ``(x, y, w, h)`` (stored-image pixels, top-left origin)
    touches. A box with no pixel inside the image is an error (its coordinates belong to
    another size: see the folder dataset's ``box_scale``)."""
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros((height, width), bool)
    for x, y, w, h in boxes:
        x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
        x1, y1 = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box (x {x:g}, y {y:g}, w {w:g}, h {h:g}) has no pixel inside the {width} x {height} "
                             "image (boxes must be in pixels of the stored image; see box_scale)")
        mask[y0:y1, x0:x1] = True
    return mask


def iter_decoded(records: Iterable[Record], size: int | None, *, workers: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, window: int = 64,
                 resize: ResizePolicy = "pad", mode: Mode = None) -> Iterator[Decoded]:
    """Decode in order with at most ``window`` images in flight."""
    workers = workers or default_workers()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[Decoded]] = deque()
        for record in records:
            pending.append(pool.submit(decode, record, size, max_pixels, resize, mode))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def iter_batches(records: Sequence[Record], classes: Sequence[str], size: int, batch_size: int = 32,
                 *, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 on_skip: Callable[[Skipped], None] | None = None,
                 resize: ResizePolicy = "pad", mode: Mode = None) -> Iterator[Batch]:
    """Batches of decoded, resized images; a record that fails to decode goes to ``on_skip``."""
    index = {c: i for i, c in enumerate(classes)}
    chunk: list[Decoded] = []
    for item in iter_decoded(records, size, workers=workers, max_pixels=max_pixels,
                             window=max(2 * batch_size, 8), resize=resize, mode=mode):
        if item.error is not None:
            if on_skip is not None:
                on_skip(Skipped(str(item.record.path), item.error))
            continue
        chunk.append(item)
        if len(chunk) == batch_size:
            yield _stack(chunk, index, size)
            chunk = []
    if chunk:
        yield _stack(chunk, index, size)


def _stack(items: list[Decoded], index: dict[str, int], size: int) -> Batch:
    def masks(key: str) -> np.ndarray | None:
        if all(getattr(it, key) is None for it in items):
            return None
        empty = np.zeros((size, size), bool)
        return np.stack([getattr(it, key) if getattr(it, key) is not None else empty for it in items])

    return Batch(images=np.stack([it.image for it in items]).astype(np.float32, copy=False),
                 labels=np.array([index[it.record.label] for it in items], dtype=np.int64),
                 ids=[it.record.id for it in items], records=[it.record for it in items],
                 lesion=masks("lesion"), lung=masks("lung"))
