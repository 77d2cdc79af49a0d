"""Is a stage's output still what the stage wrote? A checksum kept in ``stages.json`` answers
cheaply; when it differs, a full check (the file opens, has its schema, every row reads back)
tells a file that was corrupted (truncated, overwritten) from one that was changed on purpose
(``merge-heatmaps``, ``xaicxr explain`` on the run)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ..errors import StoreError

READ_BLOCK_BYTES = 64 << 20
"""How much of a dataset is read at once: a large heatmap store is checked in blocks of rows."""


def file_digest(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def problem(path: str | Path) -> str | None:
    """Why ``path`` is not a usable file of its kind (None when it is): it must open, have the
    schema of its kind, and every byte of its data must read back."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty"
    try:
        if path.suffix == ".h5":
            return _h5_problem(path)
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".keras":
            from .modelfile import archive_problem

            bomb = archive_problem(path)
            if bomb is not None:
                return bomb
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                if bad is not None:
                    return f"damaged member {bad}"
    except (OSError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile, StoreError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def _h5_problem(path: Path) -> str | None:
    """Every dataset must read back, in blocks; a heatmap store's maps must also be finite."""
    from .heatmap_store import MAP_DATASETS, HeatmapStore, first_nonfinite_row

    finite: tuple[str, ...] = ()
    if path.parent.name == "heatmaps":
        with HeatmapStore(path) as store:
            if len(store.ids) != len(store):
                return f"{len(store.ids)} ids but {len(store)} heatmaps"
        finite = MAP_DATASETS
    with h5py.File(path, "r") as h5:
        datasets: list[h5py.Dataset] = []
        h5.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        for d in datasets:
            for start, block in _blocks(d):
                if d.name.lstrip("/") in finite and not np.isfinite(block).all():
                    return (f"{d.name.lstrip('/')} row {start + first_nonfinite_row(block)} holds NaN "
                            f"or infinite values")
    return None


def _blocks(d: h5py.Dataset) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows)`` blocks of at most :data:`READ_BLOCK_BYTES` (one row if a row is
    larger) covering ``d``; a scalar dataset is one block."""
    if not d.shape:
        yield 0, d[()]
        return
    row_bytes = d.dtype.itemsize * int(np.prod(d.shape[1:], dtype=np.int64))
    step = max(1, READ_BLOCK_BYTES // max(1, row_bytes))
    for start in range(0, max(1, d.shape[0]), step):
        yield start, d[start:start + step]
