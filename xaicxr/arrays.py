"""Image and feature caches in HDF5, and Keras batch sequences that read them lazily.

Memory stays flat in the number of images: batches are read from disk as they are needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import h5py
import keras
import numpy as np


def create_rows(h5: h5py.File, name: str, shape: tuple[int, ...], n: int, dtype: str) -> h5py.Dataset:
    """A dataset of ``n`` rows of ``shape``, chunked by row (random row access is one chunk read)."""
    return h5.create_dataset(name, shape=(n, *shape), dtype=dtype, chunks=(1, *shape))


def read_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows in the given order (h5py wants increasing indices, so sort and undo)."""
    order = np.argsort(rows)
    out = np.empty((len(rows), *ds.shape[1:]), dtype=ds.dtype)
    out[order] = ds[np.asarray(rows)[order]]
    return out


class H5Batches(keras.utils.PyDataset):
    """Batches ``(x[rows], y[rows])`` from an HDF5 file, reshuffled each epoch when ``shuffle``."""

    def __init__(self, path: str | Path, x_name: str, rows: Sequence[int], labels: np.ndarray,
                 batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 add_channel: bool = False) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.path = str(path)
        self.x_name = x_name
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.transform = transform
        self.add_channel = add_channel
        self.order = np.arange(len(self.rows))
        self._h5: h5py.File | None = None
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, i: int):
        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r")
        pick = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        x = read_rows(self._h5[self.x_name], self.rows[pick]).astype(np.float32)
        if self.add_channel:
            x = x[..., None]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[pick]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.rng.shuffle(self.order)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
