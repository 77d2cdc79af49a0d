"""The heatmap store ``RUN_DIR/heatmaps/<explainer>.h5``: a resumable writer and a lazy reader.

Layout (contract, see DESIGN.md):

* ``heatmaps`` (N, H, W) in [0, 1], **stored as float16** by default (``dtype="float32"`` to
  keep full precision): the step is at most 2^-11 ~ 4.9e-4 near 1, far below anything a
  template or a quality figure can resolve, and it halves the file. Readers get float32.
* ``ids`` (N,) utf-8 strings; ``labels``, ``predictions``, ``targets`` (N,) int64;
  ``probs`` (N, C) float32; ``degenerate`` (N,) bool: maps that came back all zero (no
  gradient signal, see :mod:`xaicxr.explainer`).
* with ``all_classes=True`` also ``heatmaps_all`` (N, C, H, W) and ``degenerate_all`` (N, C).
* root attributes ``explainer``, ``layer`` (the layer actually used, ``""`` for input-gradient
  methods), ``classes`` (JSON list), ``model_sha256``, ``xaicxr_version``, ``params`` (JSON),
  and ``job_sha256``: a digest of everything that determines the content besides the model
  and the parameters (ids, targets, labels, predictions, probs, shapes, storage type).

Heatmaps are chunked one image per chunk, shuffled and gzip-compressed, and written batch by
batch, so memory does not grow with N.

Resuming: the work goes to ``<explainer>.h5.partial`` beside the target, whose attribute
``done`` (rows finished) is updated and flushed after every batch. A later call with the same
model, explainer, layer, parameters and job continues from that row. When every row is done,
the partial file is copied object by object into a fresh file, which replaces the target with
one ``os.replace``; the copy discards the partial's history (freed chunks, the progress
attribute), so a resumed store is byte-identical to an uninterrupted one.

A finished or partial store made with another model (``model_sha256`` differs) is refused
unless ``overwrite=True``; one that matches completely is returned as it is. A finished store
made with other parameters, layer or images is recomputed and replaced (the configuration
changed on purpose); a partial one that does not match is discarded.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import h5py
import numpy as np

from .errors import XaicxrError

PARTIAL_SUFFIX = ".partial"
DATASETS = ("heatmaps", "degenerate", "ids", "labels", "predictions", "probs", "targets")
ALL_CLASS_DATASETS = ("heatmaps_all", "degenerate_all")
IDENTITY_ATTRS = ("explainer", "layer", "classes", "model_sha256", "xaicxr_version", "params",
                  "job_sha256")
_GZIP = {"compression": "gzip", "compression_opts": 4, "shuffle": True}


class StoreError(XaicxrError):
    """A heatmap store is missing, malformed, or belongs to another model."""


class ModelMismatchError(StoreError):
    pass


def store_path(run_dir: str | Path, explainer_name: str) -> Path:
    """``RUN_DIR/heatmaps/<explainer>.h5``."""
    return Path(run_dir) / "heatmaps" / f"{explainer_name}.h5"


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


# --------------------------------------------------------------------------- writer


def explain_to_store(path: str | Path, *, explainer: Any, explainer_name: str, model: Any,
                     model_sha256: str, layer: str | None, classes: Sequence[str],
                     ids: Sequence[str], labels: Any, predictions: Any, probs: Any, targets: Any,
                     images: Callable[[int, int], np.ndarray], batch_size: int = 16,
                     params: dict[str, Any] | None = None, overwrite: bool = False,
                     all_classes: bool = False, dtype: str = "float16",
                     progress: bool = True) -> Path:
    """Explain every image into the store at ``path`` (resuming a partial one) and return it.

    ``images(start, stop)`` returns rows [start, stop) as the model takes them, e.g.
    (n, S, S, 1) float32. ``params`` defaults to ``explainer.options()``.
    """
    from . import __version__

    path = Path(path)
    if batch_size < 1:
        raise StoreError(f"batch_size must be >= 1, got {batch_size}")
    columns = _columns(ids, labels, predictions, probs, targets, len(classes))
    n = len(columns["ids"])
    size = _image_size(model, images, n)
    params = _options(explainer) if params is None else params
    attrs = {
        "explainer": explainer_name,
        "layer": _resolved_layer(explainer, model, layer),
        "classes": json.dumps(list(classes)),
        "model_sha256": model_sha256,
        "xaicxr_version": __version__,
        "params": json.dumps(params, sort_keys=True, default=str),
    }
    attrs["job_sha256"] = _job_digest(columns, size, dtype, all_classes)

    if path.exists() and not overwrite:
        if _matches(_read_identity(path), attrs, path):
            return path
    partial = partial_path(path)
    done = _resume_point(partial, attrs, overwrite)
    if done is None:
        _create(partial, attrs, columns, size, len(classes), dtype, all_classes)
        done = 0
    with h5py.File(partial, "r+") as h5, _progress(progress, explainer_name, n, done) as advance:
        for start in range(done, n, batch_size):
            stop = min(start + batch_size, n)
            batch = np.asarray(images(start, stop), dtype=np.float32)
            if len(batch) != stop - start:
                raise StoreError(f"images({start}, {stop}) returned {len(batch)} rows, "
                                 f"expected {stop - start}")
            _write_batch(h5, explainer, model, layer, batch, columns["targets"][start:stop],
                         start, all_classes)
            h5.attrs["done"] = stop
            h5.flush()
            advance(stop - start)
    _finalize(partial, path)
    return path


def _columns(ids: Sequence[str], labels: Any, predictions: Any, probs: Any, targets: Any,
             n_classes: int) -> dict[str, Any]:
    columns = {
        "ids": [str(i) for i in ids],
        "labels": np.asarray(labels, dtype=np.int64),
        "predictions": np.asarray(predictions, dtype=np.int64),
        "probs": np.asarray(probs, dtype=np.float32),
        "targets": np.asarray(targets, dtype=np.int64),
    }
    n = len(columns["ids"])
    for name, value in columns.items():
        if len(value) != n:
            raise StoreError(f"{name} has {len(value)} rows but ids has {n}")
    if columns["probs"].shape != (n, n_classes):
        raise StoreError(f"probs has shape {columns['probs'].shape}, expected ({n}, {n_classes})")
    targets = columns["targets"]
    if n and (targets.min() < 0 or targets.max() >= n_classes):
        raise StoreError(f"targets must be class indices in [0, {n_classes}), got "
                         f"{targets.min()}..{targets.max()}")
    return columns


def _image_size(model: Any, images: Callable[[int, int], np.ndarray], n: int) -> tuple[int, int]:
    shape = tuple(model.inputs[0].shape[1:3])
    if all(isinstance(s, int) for s in shape):
        return shape  # type: ignore[return-value]
    if n == 0:
        raise StoreError("the model input has no fixed size and there are no images")
    return tuple(np.asarray(images(0, 1)).shape[1:3])  # type: ignore[return-value]


def _options(explainer: Any) -> dict[str, Any]:
    return explainer.options() if hasattr(explainer, "options") else {}


def _resolved_layer(explainer: Any, model: Any, layer: str | None) -> str:
    if hasattr(explainer, "resolve_layer"):
        return explainer.resolve_layer(model, layer)
    return layer or ""


def _job_digest(columns: dict[str, Any], size: tuple[int, int], dtype: str,
                all_classes: bool) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"size": list(size), "dtype": dtype, "all_classes": all_classes,
                         "n": len(columns["ids"])}).encode())
    h.update("\0".join(columns["ids"]).encode("utf-8"))
    for name in ("labels", "predictions", "probs", "targets"):
        h.update(np.ascontiguousarray(columns[name]).tobytes())
    return h.hexdigest()


def _read_identity(path: Path) -> dict[str, Any] | None:
    """The identifying attributes of a store, or None if it cannot be read."""
    try:
        with h5py.File(path, "r") as h5:
            found = {k: _text(h5.attrs[k]) for k in IDENTITY_ATTRS if k in h5.attrs}
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
            "pass overwrite=True "
            "(--overwrite) to replace it, or use another run directory")
    return all(found.get(k) == v for k, v in attrs.items())


def _resume_point(partial: Path, attrs: dict[str, Any], overwrite: bool) -> int | None:
    """Rows already done in a matching partial file; None (and the file removed) otherwise."""
    if not partial.exists():
        return None
    if not overwrite:
        found = _read_identity(partial)
        if _matches(found, attrs, partial) and found is not None and found["done"] >= 0:
            return found["done"]
        _say(f"discarding {partial}: " + ("unreadable" if found is None else
                                          "made with other settings or images"))
    partial.unlink()
    return None


def _say(message: str) -> None:
    from .progress import console

    console.print(message)


def _create(partial: Path, attrs: dict[str, Any], columns: dict[str, Any], size: tuple[int, int],
            n_classes: int, dtype: str, all_classes: bool) -> None:
    partial.parent.mkdir(parents=True, exist_ok=True)
    n = len(columns["ids"])
    with h5py.File(partial, "w") as h5:
        for key, value in attrs.items():
            h5.attrs[key] = value
        h5.attrs["done"] = 0
        _rows(h5, "heatmaps", n, size, dtype, 1)
        _rows(h5, "degenerate", n, (), bool, 4096)
        if all_classes:
            _rows(h5, "heatmaps_all", n, (n_classes, *size), dtype, 1)
            _rows(h5, "degenerate_all", n, (n_classes,), bool, 4096)
        h5.create_dataset("ids", data=np.array(columns["ids"], dtype=object),
                          dtype=h5py.string_dtype("utf-8"), track_times=False)
        for name in ("labels", "predictions", "probs", "targets"):
            h5.create_dataset(name, data=columns[name], track_times=False)


def _rows(h5: h5py.File, name: str, n: int, row: tuple[int, ...], dtype: Any,
          rows_per_chunk: int) -> None:
    """A compressed dataset of ``n`` rows, chunked by a fixed number of rows (so the layout does
    not depend on the batch size). An empty one must be resizable to be chunked at all."""
    chunks = (max(1, min(n, rows_per_chunk)), *row)
    h5.create_dataset(name, shape=(n, *row), dtype=dtype, chunks=chunks,
                      maxshape=None if n else (None, *row), track_times=False, **_GZIP)


def _write_batch(h5: h5py.File, explainer: Any, model: Any, layer: str | None, batch: np.ndarray,
                 targets: np.ndarray, start: int, all_classes: bool) -> None:
    stop = start + len(batch)
    if all_classes:
        maps_all, flags_all = _explain_all(explainer, model, batch, layer)
        rows = np.arange(len(batch))
        maps, flags = maps_all[rows, targets], flags_all[rows, targets]
        h5["heatmaps_all"][start:stop] = maps_all
        h5["degenerate_all"][start:stop] = flags_all
    else:
        maps, flags = _explain(explainer, model, batch, targets, layer)
    h5["heatmaps"][start:stop] = maps
    h5["degenerate"][start:stop] = flags


def _explain(explainer: Any, model: Any, images: np.ndarray, targets: np.ndarray,
             layer: str | None) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(explainer, "explain_with_info"):
        return explainer.explain_with_info(model, images, targets, layer)
    maps = np.asarray(explainer.explain(model, images, targets, layer=layer), dtype=np.float32)
    return maps, ~np.any(maps > 0, axis=(1, 2))


def _explain_all(explainer: Any, model: Any, images: np.ndarray,
                 layer: str | None) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(explainer, "explain_all_with_info"):
        return explainer.explain_all_with_info(model, images, layer)
    n_classes = int(model.outputs[0].shape[-1])
    runs = [_explain(explainer, model, images, np.full(len(images), c), layer)
            for c in range(n_classes)]
    return np.stack([m for m, _ in runs], axis=1), np.stack([d for _, d in runs], axis=1)


def _finalize(partial: Path, path: Path) -> None:
    """Copy the finished partial file into a fresh one, replace the target, drop the partial."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with h5py.File(partial, "r") as src, h5py.File(tmp, "w") as dst:
            for key in IDENTITY_ATTRS:
                dst.attrs[key] = src.attrs[key]
            for name in DATASETS + ALL_CLASS_DATASETS:
                if name in src:
                    src.copy(src[name], dst, name=name)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    partial.unlink()


def _progress(enabled: bool, name: str, total: int, done: int) -> Any:
    """A progress bar over the rows still to do (so the rate is not inflated by a resume)."""
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(lambda n=1: None)
    from .progress import progress_bar

    resumed = f" (resuming at {done}/{total})" if done else ""
    return progress_bar(f"explain {name}{resumed}", total - done)


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def shard_paths(run_dir: str | Path, explainer_name: str) -> list[Path]:
    """The shard stores ``shards/<explainer>.shard-K-of-N.h5`` of one explainer, in order;
    an error if a shard is missing or they disagree on N."""
    found = sorted(Path(run_dir, "shards").glob(f"{explainer_name}.shard-*-of-*.h5"))
    if not found:
        raise StoreError(f"no shard stores shards/{explainer_name}.shard-K-of-N.h5 in {run_dir}")
    parts = {}
    for path in found:
        k, n = path.name[len(explainer_name) + len(".shard-"):-len(".h5")].split("-of-")
        parts[(int(n), int(k))] = path
    counts = {n for n, _ in parts}
    if len(counts) != 1:
        raise StoreError(f"shard stores of {explainer_name} disagree on the number of shards: {sorted(counts)}")
    n = counts.pop()
    missing = [k for k in range(n) if (n, k) not in parts]
    if missing:
        raise StoreError(f"shard {missing[0]}/{n} of {explainer_name} is missing (explain --shard {missing[0]}/{n})")
    return [parts[(n, k)] for k in range(n)]


def merge_stores(parts: Sequence[str | Path], path: str | Path) -> Path:
    """Concatenate shard stores (in order) into one store, laid out exactly as an unsharded
    explain writes it; the shards must share model, explainer, layer, classes and parameters."""
    path = Path(path)
    stores = [HeatmapStore(p) for p in parts]
    try:
        first = stores[0]
        for other in stores[1:]:
            for key in ("explainer", "layer", "classes", "model_sha256", "params"):
                if getattr(other, key) != getattr(first, key):
                    raise StoreError(f"cannot merge {other.path.name} into {first.path.name}: {key} differs")
        all_classes = first.has_all_classes
        if any(s.has_all_classes != all_classes for s in stores):
            raise StoreError("cannot merge shards with and without per-class heatmaps")
        columns = {"ids": [i for s in stores for i in s.ids],
                   **{k: np.concatenate([getattr(s, k) for s in stores])
                      for k in ("labels", "predictions", "probs", "targets")}}
        size = tuple(first.shape[1:])
        dtype = str(first._h5["heatmaps"].dtype)
        attrs = {k: _text(first._h5.attrs[k]) for k in IDENTITY_ATTRS}
        attrs["job_sha256"] = _job_digest(columns, size, dtype, all_classes)
        partial = partial_path(path)
        _create(partial, attrs, columns, size, len(first.classes), dtype, all_classes)
        with h5py.File(partial, "r+") as h5:
            start = 0
            for s in stores:
                stop = start + len(s)
                for name in ("heatmaps", "degenerate") + (ALL_CLASS_DATASETS if all_classes else ()):
                    h5[name][start:stop] = s._h5[name][()]
                start = stop
            h5.attrs["done"] = start
    finally:
        for s in stores:
            s.close()
    _finalize(partial, path)
    return path


# --------------------------------------------------------------------------- reader


class HeatmapStore:
    """A finished heatmap store, open for reading. Small columns are loaded at once; heatmaps
    are read on demand (:meth:`read`, :meth:`batches`), so memory stays independent of N."""

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
        missing = [d for d in DATASETS if d not in self._h5] + \
                  [a for a in IDENTITY_ATTRS[:-1] if a not in self._h5.attrs]
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

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._h5["heatmaps"].shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def has_all_classes(self) -> bool:
        return "heatmaps_all" in self._h5

    def read(self, rows: slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Heatmaps of ``rows`` (all if None) as float32 (n, H, W), in the order given."""
        return _read_rows(self._h5["heatmaps"], rows)

    def read_all_classes(self,
                         rows: slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(n, C, H, W) maps of every class; only in stores written with ``all_classes=True``."""
        if not self.has_all_classes:
            raise StoreError(f"{self.path} has no per-class heatmaps; rerun explain with all "
                             "classes to get them")
        return _read_rows(self._h5["heatmaps_all"], rows)

    def batches(self, batch_size: int = 256, rows: Sequence[int] | np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(row indices, heatmaps)`` batches over ``rows`` (all if None), for aggregators."""
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


def read_store(path: str | Path) -> HeatmapStore:
    """Open a finished store (use as a context manager, or call ``close()``)."""
    return HeatmapStore(path)


def _read_rows(ds: h5py.Dataset, rows: slice | Sequence[int] | np.ndarray | None) -> np.ndarray:
    if rows is None:
        rows = slice(None)
    if isinstance(rows, slice):
        return ds[rows].astype(np.float32)
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros((0, *ds.shape[1:]), np.float32)
    unique, inverse = np.unique(rows, return_inverse=True)
    return ds[unique].astype(np.float32)[inverse]
