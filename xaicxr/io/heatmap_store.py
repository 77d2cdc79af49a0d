"""The heatmap store ``RUN_DIR/heatmaps/<explainer>.h5``: a resumable writer and a lazy reader.

Layout (a contract: outside tools read these names):

* ``heatmaps`` (N, H, W) in [0, 1], **stored as float16** by default (``dtype="float32"`` to
  keep full precision): the step is at most 2^-11 ~ 4.9e-4 near 1, far below anything a
  template or a quality figure can resolve, and it halves the file. Readers get float32.
* ``ids`` (N,) utf-8 strings; ``labels``, ``predictions``, ``targets`` (N,) int64;
  ``probs`` (N, C) float32; ``degenerate`` (N,) bool: maps that came back all zero (no
  gradient signal, see :mod:`xaicxr.plugins.explainer`).
* with ``all_classes=True`` also ``heatmaps_all`` (N, C, H, W) and ``degenerate_all`` (N, C).
* root attributes ``explainer``, ``layer`` (the layer actually used, ``""`` for input-gradient
  methods), ``classes`` (JSON list), ``model_sha256``, ``xaicxr_version``, ``params`` (JSON),
  and ``job_sha256``: a digest of everything that determines the content besides the model
  and the parameters (ids, targets, labels, predictions, probs, shapes, storage type).
* ``target``: the explained score (``logit``, ``probability`` or ``binary:<task>``; stores
  written before targets existed lack it: their explainer's default). A binary store holds one
  map per image, of the task's score (the summed probabilities of its positive classes, whatever
  ``targets`` says: that column keeps the class the targets rule chose), and also has
  ``target_positive`` (JSON list of the positive classes) and ``target_threshold`` (the task's
  threshold from ``metrics.json``: an image is predicted positive when its score is at least
  that). These attributes are part of the store's identity.

Heatmaps are chunked one image per chunk, shuffled and gzip-compressed, and written batch by
batch, so memory does not grow with N.

Resuming (:class:`HeatmapWriter`): the work goes to ``<explainer>.h5.partial`` beside the
target, whose attribute ``done`` (rows finished) is updated and flushed after every batch. A
later writer with the same identity continues from that row. When every row is done, the
partial file is copied object by object into a fresh file, which replaces the target in one
rename; the copy discards the partial's history (freed chunks, the progress attribute), so a
resumed store is byte-identical to an uninterrupted one.

A finished or partial store made with another model (``model_sha256`` differs) is refused
unless ``overwrite=True``; one that matches completely is kept as it is. A finished store made
with other parameters, layer or images is recomputed and replaced (the configuration changed
on purpose); a partial one that does not match is discarded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from ..errors import ModelMismatchError, StoreError
from ..progress import console
from .atomic import atomic_path
from .h5rows import read_rows

PARTIAL_SUFFIX = ".partial"
ROW_DATASETS = ("heatmaps", "degenerate")
ALL_CLASS_DATASETS = ("heatmaps_all", "degenerate_all")
MAP_DATASETS = ("heatmaps", "heatmaps_all")
"""The datasets of maps: every value finite (a NaN in one makes templates and quality fail)."""
COLUMNS = ("ids", "labels", "predictions", "probs", "targets")
IDENTITY_ATTRS = ("explainer", "layer", "classes", "model_sha256", "xaicxr_version", "params",
                  "job_sha256")
TARGET_ATTRS = ("target", "target_positive", "target_threshold")
"""Identity attributes a store may lack (written before targets existed; a class target)."""
_GZIP = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


@dataclass(frozen=True)
class Columns:
    """The per-image columns of a store, checked against each other and the classes."""

    ids: list[str]
    labels: np.ndarray
    predictions: np.ndarray
    probs: np.ndarray
    targets: np.ndarray

    @classmethod
    def of(cls, ids: Sequence[str], labels: Any, predictions: Any, probs: Any, targets: Any,
           n_classes: int) -> "Columns":
        probs = np.asarray(probs, dtype=np.float32)
        columns = cls([str(i) for i in ids], np.asarray(labels, dtype=np.int64),
                      np.asarray(predictions, dtype=np.int64),
                      probs.reshape(0, n_classes) if probs.size == 0 else probs,
                      np.asarray(targets, dtype=np.int64))
        n = len(columns.ids)
        for name in COLUMNS[1:]:
            if len(getattr(columns, name)) != n:
                raise StoreError(f"{name} has {len(getattr(columns, name))} rows but ids has {n}")
        if columns.probs.shape != (n, n_classes):
            raise StoreError(f"probs has shape {columns.probs.shape}, expected ({n}, {n_classes})")
        if n and (columns.targets.min() < 0 or columns.targets.max() >= n_classes):
            raise StoreError(f"targets must be class indices in [0, {n_classes}), got "
                             f"{columns.targets.min()}..{columns.targets.max()}")
        return columns

    def __len__(self) -> int:
        return len(self.ids)

    def digest(self, size: tuple[int, int], dtype: str, all_classes: bool) -> str:
        """The ``job_sha256`` of a store of these rows."""
        h = hashlib.sha256()
        h.update(json.dumps({"size": list(size), "dtype": dtype, "all_classes": all_classes,
                             "n": len(self)}).encode())
        h.update("\0".join(self.ids).encode("utf-8"))
        for name in COLUMNS[1:]:
            h.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        return h.hexdigest()


# --------------------------------------------------------------------------- writer


class HeatmapWriter:
    """Writes one store, resuming a matching ``.partial`` file; use as a context manager.

    ``identity`` holds the root attributes but ``job_sha256`` (computed from the columns).
    After opening, ``done`` rows are already written (all of them when a matching finished
    store exists: then ``complete`` is true and nothing needs to be written).
    """

    def __init__(self, path: str | Path, identity: dict[str, str], columns: Columns,
                 size: tuple[int, int], *, all_classes: bool = False, dtype: str = "float16",
                 overwrite: bool = False) -> None:
        self.path = Path(path)
        self.columns = columns
        self.all_classes = all_classes
        self.attrs = {**identity, "job_sha256": columns.digest(size, dtype, all_classes)}
        self.complete = False
        self.done = 0
        self._h5: h5py.File | None = None
        if self.path.exists() and not overwrite and _matches(_read_identity(self.path), self.attrs, self.path):
            self.complete, self.done = True, len(columns)
            return
        partial = partial_path(self.path)
        done = _resume_point(partial, self.attrs, overwrite)
        if done is None:
            _create(partial, self.attrs, columns, size, len(json.loads(identity["classes"])), dtype,
                    all_classes)
            done = 0
        self.done = done
        self._h5 = h5py.File(partial, "r+")

    def write(self, start: int, maps: np.ndarray, degenerate: np.ndarray,
              maps_all: np.ndarray | None = None, degenerate_all: np.ndarray | None = None) -> None:
        """Rows ``[start, start + len(maps))``, then the progress mark, flushed to disk.

        Maps are cast to the stored type by numpy first: HDF5's own float32 -> float16
        conversion halves some values just below a power of two (0.24996771 was stored as 0.125,
        432 of 1.8 million values of one store), where numpy rounds to nearest (0.25). A map
        with a NaN or infinite value (after the cast) is refused: explainers zero those and flag
        the map degenerate, so only a writer that skips them gets here."""
        assert self._h5 is not None, "the store is complete; nothing to write"
        stop = start + len(maps)
        stored = self._h5["heatmaps"].dtype
        with np.errstate(over="ignore"):  # a map beyond float16 becomes inf, refused below
            rows = {"heatmaps": np.asarray(maps).astype(stored)}
            if self.all_classes:
                rows["heatmaps_all"] = np.asarray(maps_all).astype(stored)
        for name, values in rows.items():
            _refuse_nonfinite(values, name, start, self.path)
        self._h5["heatmaps"][start:stop] = rows["heatmaps"]
        self._h5["degenerate"][start:stop] = degenerate
        if self.all_classes:
            self._h5["heatmaps_all"][start:stop] = rows["heatmaps_all"]
            self._h5["degenerate_all"][start:stop] = degenerate_all
        self._h5.attrs["done"] = stop
        self._h5.flush()
        self.done = stop

    def finish(self) -> Path:
        """Replace the target by a clean copy of the finished partial file."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
            _finalize(partial_path(self.path), self.path)
            self.complete = True
        return self.path

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> HeatmapWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _refuse_nonfinite(maps: np.ndarray, name: str, start: int, path: Path) -> None:
    if not np.isfinite(maps).all():
        raise StoreError(f"cannot write {name} row {start + first_nonfinite_row(maps)} to {path}: "
                         f"it holds NaN or infinite values; an explainer must zero them and flag the "
                         f"map degenerate (xaicxr.plugins.explainer.finish_maps does)")


def first_nonfinite_row(rows: np.ndarray) -> int:
    """The index of the first row of ``rows`` that holds a NaN or infinite value (-1: none)."""
    bad = np.flatnonzero(~np.isfinite(rows.reshape(len(rows), -1)).all(1)) if len(rows) else []
    return int(bad[0]) if len(bad) else -1


def _read_identity(path: Path) -> dict[str, Any] | None:
    """The identifying attributes of a store, or None if it cannot be read."""
    try:
        with h5py.File(path, "r") as h5:
            found = {k: _text(h5.attrs[k]) for k in IDENTITY_ATTRS + TARGET_ATTRS if k in h5.attrs}
            found["done"] = int(h5.attrs.get("done", -1))
            return found
    except (OSError, KeyError, ValueError):
        return None


def _matches(found: dict[str, Any] | None, attrs: dict[str, Any], path: Path) -> bool:
    """Whether ``found`` is the same job; raise if it is another model's."""
    if found is None:
        return False
    if "model_sha256" in found and found["model_sha256"] != attrs["model_sha256"]:
        raise ModelMismatchError(
            f"{path} holds heatmaps of another model (model_sha256 "
            f"{found['model_sha256'][:12]}..., this model is {attrs['model_sha256'][:12]}...); "
            "pass overwrite=True (--overwrite) to replace it, or use another run directory")
    return all(found.get(k) == v for k, v in attrs.items())


def _resume_point(partial: Path, attrs: dict[str, Any], overwrite: bool) -> int | None:
    """Rows already done in a matching partial file; None (and the file removed) otherwise."""
    if not partial.exists():
        return None
    if not overwrite:
        found = _read_identity(partial)
        if _matches(found, attrs, partial) and found is not None and found["done"] >= 0:
            return found["done"]
        console.print(f"discarding {partial}: " + ("unreadable" if found is None else
                                                   "made with other settings or images"))
    partial.unlink()
    return None


def _create(partial: Path, attrs: dict[str, Any], columns: Columns, size: tuple[int, int],
            n_classes: int, dtype: str, all_classes: bool) -> None:
    partial.parent.mkdir(parents=True, exist_ok=True)
    n = len(columns)
    with h5py.File(partial, "w") as h5:
        for key, value in attrs.items():
            h5.attrs[key] = value
        h5.attrs["done"] = 0
        _rows(h5, "heatmaps", n, size, dtype, 1)
        _rows(h5, "degenerate", n, (), bool, 4096)
        if all_classes:
            _rows(h5, "heatmaps_all", n, (n_classes, *size), dtype, 1)
            _rows(h5, "degenerate_all", n, (n_classes,), bool, 4096)
        h5.create_dataset("ids", data=np.array(columns.ids, dtype=object),
                          dtype=h5py.string_dtype("utf-8"), track_times=False)
        for name in COLUMNS[1:]:
            h5.create_dataset(name, data=getattr(columns, name), track_times=False)


def _rows(h5: h5py.File, name: str, n: int, row: tuple[int, ...], dtype: Any,
          rows_per_chunk: int) -> None:
    """A compressed dataset of ``n`` rows, chunked by a fixed number of rows (so the layout does
    not depend on the batch size). An empty one must be resizable to be chunked at all."""
    chunks = (max(1, min(n, rows_per_chunk)), *row)
    h5.create_dataset(name, shape=(n, *row), dtype=dtype, chunks=chunks,
                      maxshape=None if n else (None, *row), track_times=False, **_GZIP)


def _finalize(partial: Path, path: Path) -> None:
    """Copy the finished partial file into a fresh one, replace the target, drop the partial."""
    with atomic_path(path) as tmp:
        with h5py.File(partial, "r") as src, h5py.File(tmp, "w") as dst:
            for key in IDENTITY_ATTRS + TARGET_ATTRS:
                if key in src.attrs:
                    dst.attrs[key] = src.attrs[key]
            for name in ROW_DATASETS + COLUMNS + ALL_CLASS_DATASETS:
                if name in src:
                    src.copy(src[name], dst, name=name)
    partial.unlink()


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def merge_stores(parts: Sequence[str | Path], path: str | Path) -> Path:
    """Concatenate shard stores (in order) into one store, laid out exactly as an unsharded
    explain writes it; the shards must share model, explainer, layer, classes and parameters."""
    stores = [HeatmapStore(p) for p in parts]
    try:
        first = stores[0]
        for other in stores[1:]:
            for key in ("explainer", "layer", "classes", "model_sha256", "params", "target",
                        "target_positive", "target_threshold"):
                if getattr(other, key) != getattr(first, key):
                    raise StoreError(f"cannot merge {other.path.name} into {first.path.name}: {key} differs")
        all_classes = first.has_all_classes
        if any(s.has_all_classes != all_classes for s in stores):
            raise StoreError("cannot merge shards with and without per-class heatmaps")
        columns = Columns.of([i for s in stores for i in s.ids],
                             *(np.concatenate([getattr(s, k) for s in stores]) for k in COLUMNS[1:]),
                             n_classes=len(first.classes))
        identity = {k: _text(first._h5.attrs[k]) for k in IDENTITY_ATTRS + TARGET_ATTRS
                    if k != "job_sha256" and k in first._h5.attrs}
        writer = HeatmapWriter(path, identity, columns, first.shape[1:], all_classes=all_classes,
                               dtype=str(first._h5["heatmaps"].dtype), overwrite=True)
        with writer:
            start = 0
            for s in stores:
                arrays = [s._h5[name][()] for name in ROW_DATASETS + (ALL_CLASS_DATASETS if all_classes else ())]
                writer.write(start, *arrays)
                start += len(s)
            return writer.finish()
    finally:
        for s in stores:
            s.close()


# --------------------------------------------------------------------------- reader


class HeatmapStore:
    """A finished heatmap store, open for reading (use as a context manager). Small columns are
    loaded at once; heatmaps are read on demand (:meth:`read`, :meth:`batches`), so memory
    stays independent of N."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            hint = " (an unfinished run left a .partial file; rerun explain to finish it)" \
                if partial_path(self.path).exists() else ""
            raise StoreError(f"no heatmap store at {self.path}{hint}")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"cannot read heatmap store {self.path}: {exc}") from None
        missing = [d for d in ROW_DATASETS + COLUMNS if d not in self._h5] + \
                  [a for a in IDENTITY_ATTRS if a not in self._h5.attrs]
        if missing:
            self.close()
            raise StoreError(f"{self.path} is not a heatmap store: missing {', '.join(missing)}")
        attrs = {k: _text(v) for k, v in self._h5.attrs.items()}
        self.explainer: str = attrs["explainer"]
        self.layer: str = attrs["layer"]
        self.classes: list[str] = json.loads(attrs["classes"])
        self.model_sha256: str = attrs["model_sha256"]
        self.xaicxr_version: str = attrs["xaicxr_version"]
        self.params: dict[str, Any] = json.loads(attrs["params"])
        self.ids: list[str] = [_text(v) for v in self._h5["ids"][()]]
        self.labels: np.ndarray = self._h5["labels"][()]
        self.predictions: np.ndarray = self._h5["predictions"][()]
        self.probs: np.ndarray = self._h5["probs"][()]
        self.targets: np.ndarray = self._h5["targets"][()]
        self.degenerate: np.ndarray = self._h5["degenerate"][()].astype(bool)
        self.target: str = attrs.get("target", "")
        """The explained score; ``""``: a store written before targets (its explainer's default)."""
        self.target_positive: list[str] | None = (json.loads(attrs["target_positive"])
                                                  if "target_positive" in attrs else None)
        self.target_threshold: float | None = (float(attrs["target_threshold"])
                                               if "target_threshold" in attrs else None)

    @property
    def is_binary(self) -> bool:
        """Whether the maps explain a binary task's score (one per image, sides not classes)."""
        return self.target_positive is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._h5["heatmaps"].shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def has_all_classes(self) -> bool:
        return "heatmaps_all" in self._h5

    def read(self, rows: slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Heatmaps of ``rows`` (all if None) as float32 (n, H, W), in the order given; a map
        with a NaN or infinite value (a store changed after it was written) is refused."""
        maps = read_rows(self._h5["heatmaps"], rows).astype(np.float32)
        if not np.isfinite(maps).all():
            row = np.arange(len(self))[slice(None) if rows is None else rows][first_nonfinite_row(maps)]
            raise StoreError(f"{self.path} holds NaN or infinite values in heatmap row {row}, so it is "
                             f"corrupt: remove it and run xaicxr run again, or rebuild it with xaicxr "
                             f"explain RUN_DIR --overwrite")
        return maps

    def batches(self, batch_size: int = 256, rows: Sequence[int] | np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(row indices, heatmaps)`` batches over ``rows`` (all if None)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            yield chunk, self.read(chunk)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> HeatmapStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
