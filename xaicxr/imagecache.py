"""The decoded, resized images of a run's split, in one HDF5 file per input size.

Training, evaluation and explanation read from it, so each image is decoded once per size.
Rows are ordered train, val, test; ``content_sha256`` identifies the pixels exactly (the data
part of the feature-cache key). Lesion and lung masks, where the dataset has them, are stored
beside the images at the same geometry (``lesion``, ``lung``; ``has_lesion``/``has_lung`` say
which rows have one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from . import storage
from .data.loader import iter_batches
from .data.records import Record, Skipped
from .data.split import SPLITS
from .imaging import ResizePolicy
from .progress import progress_bar

FORMAT = 2
MASKS = ("lesion", "lung")


@dataclass
class ImageCache:
    path: Path
    ids: list[str]
    labels: np.ndarray
    splits: np.ndarray
    content_sha256: str

    def rows(self, split: str) -> np.ndarray:
        if split == "all":
            return np.arange(len(self.ids))
        return np.flatnonzero(self.splits == SPLITS.index(split))


def read_block(cache: ImageCache, rows: np.ndarray) -> dict[str, np.ndarray | None]:
    """Images (n, S, S) float32 and masks (None where no row of the block has one) for ``rows``."""
    from .arrays import read_rows

    with h5py.File(cache.path, "r") as h5:
        out: dict[str, np.ndarray | None] = {"images": read_rows(h5["images"], rows).astype(np.float32)}
        for m in MASKS:
            flags = h5[f"has_{m}"][...][rows]
            out[m] = read_rows(h5[m], rows) if flags.any() else None
    return out


def image_cache_path(run_dir: Path, size: int) -> Path:
    return Path(run_dir) / "cache" / f"images-{size}.h5"


def _key(split: dict[str, list[str]], size: int, resize: str) -> str:
    parts = (FORMAT, size, [split[s] for s in SPLITS]) + (() if resize == "pad" else (resize,))
    blob = repr(parts).encode()
    return hashlib.sha256(blob).hexdigest()


def open_image_cache(path: Path) -> ImageCache:
    with h5py.File(path, "r") as h5:
        return ImageCache(path, [i.decode() for i in h5["ids"][...]], h5["labels"][...],
                          h5["split"][...], h5.attrs["content_sha256"])


def build_image_cache(run_dir: Path, split: dict[str, list[str]], records: Sequence[Record],
                      classes: Sequence[str], size: int, *, workers: int | None = None,
                      max_pixels: int = 100_000_000, batch_size: int = 32,
                      resize: ResizePolicy = "pad") -> ImageCache:
    """Decode every split record at ``size`` by the ``resize`` policy (reused when split, size
    and policy are unchanged).

    A file that no longer decodes is left out and appended to ``skipped.json``.
    """
    path = image_cache_path(run_dir, size)
    key = _key(split, size, resize)
    if path.is_file():
        with h5py.File(path, "r") as h5:
            current = h5.attrs.get("key") == key
        if current:
            return open_image_cache(path)
    by_id = {r.id: r for r in records}
    ordered = [by_id[i] for s in SPLITS for i in split[s]]
    split_of = {i: k for k, s in enumerate(SPLITS) for i in split[s]}
    skipped: list[Skipped] = []
    digest = hashlib.sha256()
    ids: list[str] = []
    labels: list[int] = []
    with storage.atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        images = h5.create_dataset("images", shape=(0, size, size), maxshape=(None, size, size),
                                   dtype="float16", chunks=(1, size, size))
        masks = {m: h5.create_dataset(m, shape=(0, size, size), maxshape=(None, size, size),
                                      dtype="bool", chunks=(1, size, size), compression="lzf")
                 for m in MASKS}
        has = {m: [] for m in MASKS}
        with progress_bar(f"decoding images at {size} px", len(ordered)) as advance:
            for batch in iter_batches(ordered, classes, size, batch_size, workers=workers,
                                      max_pixels=max_pixels, on_skip=skipped.append, resize=resize):
                start = images.shape[0]
                block = batch.images.astype(np.float16)
                images.resize(start + len(block), axis=0)
                images[start:] = block
                for m in MASKS:
                    masks[m].resize(start + len(block), axis=0)
                    value = getattr(batch, m)
                    if value is not None:
                        masks[m][start:] = value
                    has[m].extend(r.__dict__[f"{m}_mask"] is not None for r in batch.records)
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
    if skipped:
        previous = storage.read_json(Path(run_dir) / "skipped.json") if (Path(run_dir) / "skipped.json").exists() else []
        storage.write_json(Path(run_dir) / "skipped.json", previous + [s.to_json() for s in skipped])
    return open_image_cache(path)
