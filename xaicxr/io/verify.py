"""Is a stage's output still what the stage wrote? A checksum kept in ``stages.json`` answers
cheaply; when it differs, a full check (the file opens, has its schema, every row reads back)
tells a file that was corrupted (truncated, overwritten) from one that was changed on purpose
(``merge-heatmaps``, ``xaicxr explain`` on the run)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import h5py

from ..errors import StoreError


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
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                if bad is not None:
                    return f"damaged member {bad}"
    except (OSError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile, StoreError) as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def _h5_problem(path: Path) -> str | None:
    if path.parent.name == "heatmaps":
        from .heatmap_store import HeatmapStore

        with HeatmapStore(path) as store:
            if len(store.ids) != len(store):
                return f"{len(store.ids)} ids but {len(store)} heatmaps"
    with h5py.File(path, "r") as h5:
        datasets: list[h5py.Dataset] = []
        h5.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
        for d in datasets:
            d[()]
    return None
