"""The decoded, resized images of a run's split, in one HDF5 file per input size.

Training, evaluation and explanation read from it, so each image is decoded once per size.
Rows are ordered train, val, test; ``content_sha256`` identifies the pixels exactly (the data
part of the feature-cache key). Lesion and lung masks, where the dataset has them, are stored
beside the images at the same geometry (``lesion``, ``lung``; ``has_lesion``/``has_lung`` say
which rows have one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from ..errors import StoreError
from .records import Record, Skipped
from ..progress import progress_bar
from . import atomic
from .h5rows import read_rows
from .loader import iter_batches
from .resize import Mode, ResizePolicy

SPLITS = ("train", "val", "test")
"""The splits of a run, in the order of their codes in the ``split`` columns of the image cache
and ``predictions.h5``."""
MASKS = ("lesion", "lung")


@dataclass
class ImageCache:
    path: Path
    ids: list[str]
    labels: np.ndarray
    splits: np.ndarray
    content_sha256: str

    def rows(self, split: str) -> np.ndarray:
        """Rows of one split (``"all"``: every row)."""
        if split == "all":
            return np.arange(len(self.ids))
        return np.flatnonzero(self.splits == SPLITS.index(split))

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """The rows holding ``ids`` (e.g. the ids of a heatmap store), in that order."""
        if self._row_of is None:
            self._row_of = {i: r for r, i in enumerate(self.ids)}
        try:
            return np.array([self._row_of[i] for i in ids], dtype=np.int64)
        except KeyError as exc:
            raise StoreError(f"image {exc.args[0]!r} is not in the image cache {self.path}; "
                             "was it made for another split?") from None

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray | None]:
        """Images (n, S, S) float32, and the masks (None where no row of the block has one;
        rows without one are all False there, and ``has_lesion`` / ``has_lung`` say which)."""
        with h5py.File(self.path, "r") as h5:
            out: dict[str, np.ndarray | None] = {"images": read_rows(h5["images"], rows).astype(np.float32)}
            for m in MASKS:
                flags = h5[f"has_{m}"][...][rows]
                out[f"has_{m}"] = flags.astype(bool)
                out[m] = read_rows(h5[m], rows) if flags.any() else None
        return out

    _row_of: dict[str, int] | None = field(default=None, repr=False, compare=False)


def has_mask(record: Record, kind: str) -> bool:
    """Whether the record's ``kind`` mask is known (a lesion's from a mask file or boxes)."""
    return getattr(record, f"{kind}_mask") is not None or (kind == "lesion" and bool(record.boxes))


def _key(split: dict[str, list[str]], size: int, resize: str, mode: Mode = None,
         records: Sequence[Record] = ()) -> str:
    policy = resize if mode is None else (resize, mode)  # without a mode, the key of earlier caches
    parts: tuple = (size, policy, [split[s] for s in SPLITS])
    annotations = _annotations(records)
    if annotations:
        parts += (annotations,)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _annotations(records: Sequence[Record]) -> list[tuple]:
    """What the masks of the cache are made from, so that changed boxes or a redrawn mask make a
    new cache: each record's boxes and its mask files' folder, name and content digest (the
    run's own phantom masks move with a copied run directory, so no absolute path or time)."""
    def file(path: Path | None) -> tuple | None:
        if path is None:
            return None
        try:
            digest = hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
        except OSError:
            digest = None
        return Path(path).parent.name, Path(path).name, digest

    return [(r.id, r.boxes, file(r.lesion_mask), file(r.lung_mask)) for r in records
            if r.boxes or r.lesion_mask is not None or r.lung_mask is not None]


def open_image_cache(path: Path) -> ImageCache:
    if not Path(path).is_file():
        raise StoreError(f"no image cache at {path}; run the train stage first (xaicxr train)")
    with h5py.File(path, "r") as h5:
        return ImageCache(path, [i.decode() for i in h5["ids"][...]], h5["labels"][...],
                          h5["split"][...], h5.attrs["content_sha256"])


def build_image_cache(path: Path, split: dict[str, list[str]], records: Sequence[Record],
                      classes: Sequence[str], size: int, *, workers: int | None = None,
                      max_pixels: int = 100_000_000, batch_size: int = 32,
                      resize: ResizePolicy = "pad", mode: Mode = None) -> tuple[ImageCache, list[Skipped]]:
    """Decode every split record in ``mode`` at ``size`` by the ``resize`` policy into ``path``; an
    existing file made for the same split, size, policy and mode is reused. Returns the cache and
    the files that no longer decode (left out)."""
    by_id = {r.id: r for r in records}
    ordered = [by_id[i] for s in SPLITS for i in split[s]]
    key = _key(split, size, resize, mode, ordered)
    if Path(path).is_file():
        with h5py.File(path, "r") as h5:
            current = h5.attrs.get("key") == key
        if current:
            return open_image_cache(path), []
    split_of = {i: k for k, s in enumerate(SPLITS) for i in split[s]}
    skipped: list[Skipped] = []
    digest = hashlib.sha256()
    ids: list[str] = []
    labels: list[int] = []
    with atomic.atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        images = h5.create_dataset("images", shape=(0, size, size), maxshape=(None, size, size),
                                   dtype="float16", chunks=(1, size, size))
        masks = {m: h5.create_dataset(m, shape=(0, size, size), maxshape=(None, size, size),
                                      dtype="bool", chunks=(1, size, size), compression="lzf")
                 for m in MASKS}
        has = {m: [] for m in MASKS}
        with progress_bar(f"decoding images at {size} px", len(ordered)) as advance:
            for batch in iter_batches(ordered, classes, size, batch_size, workers=workers,
                                      max_pixels=max_pixels, on_skip=skipped.append, resize=resize, mode=mode):
                start = images.shape[0]
                block = batch.images.astype(np.float16)
                images.resize(start + len(block), axis=0)
                images[start:] = block
                for m in MASKS:
                    masks[m].resize(start + len(block), axis=0)
                    value = getattr(batch, m)
                    if value is not None:
                        masks[m][start:] = value
                    has[m].extend(has_mask(r, m) for r in batch.records)
                digest.update(block.tobytes())
                ids.extend(batch.ids)
                labels.extend(batch.labels.tolist())
                advance(len(batch.ids))
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        h5.create_dataset("labels", data=np.array(labels, dtype=np.int64))
        h5.create_dataset("split", data=np.array([split_of[i] for i in ids], dtype=np.int8))
        for m in MASKS:
            h5.create_dataset(f"has_{m}", data=np.array(has[m], dtype=bool))
        h5.attrs["key"] = key
        h5.attrs["content_sha256"] = digest.hexdigest()
        h5.attrs["classes"] = list(classes)
        h5.attrs["resize"] = resize
        h5.attrs["mode"] = mode or "as decoded"
    return open_image_cache(path), skipped
