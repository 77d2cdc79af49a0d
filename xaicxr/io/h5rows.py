"""Row access to HDF5 datasets laid out one image per row (the image, feature and heatmap files)."""

from __future__ import annotations

from typing import Sequence

import h5py
import numpy as np


def create_rows(h5: h5py.File, name: str, shape: tuple[int, ...], n: int, dtype: str) -> h5py.Dataset:
    """A dataset of ``n`` rows of ``shape``, chunked by row (random row access is one chunk read)."""
    return h5.create_dataset(name, shape=(n, *shape), dtype=dtype, chunks=(1, *shape))


def read_rows(ds: h5py.Dataset, rows: slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Rows in the order given, repeats allowed (h5py itself wants strictly increasing indices);
    ``None`` or a slice reads a contiguous range."""
    if rows is None:
        rows = slice(None)
    if isinstance(rows, slice):
        return ds[rows]
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros((0, *ds.shape[1:]), ds.dtype)
    unique, inverse = np.unique(rows, return_inverse=True)
    return ds[unique][inverse]
