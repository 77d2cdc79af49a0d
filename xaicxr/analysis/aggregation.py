"""Per-class heatmap templates, built by streaming a heatmap store once through aggregators.

The groups are the classes; a store of a binary task's score has templates of its task's two
sides too (``<task>:positive``, ``<task>:negative``: :func:`template_groups`).

Rows are read in contiguous chunks, each chunk is split by class and handed to every
aggregator, so any set of aggregators costs one read pass and memory independent of N. A
shard processes one contiguous span of rows; the states of all shards, combined with
:func:`merge_states`, equal those of the unsharded run.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import h5py
import numpy as np

from ..io.template_store import Grouping, TemplateStates
from ..plugins.aggregator import Aggregator
from ..plugins.targets import binary_sides, side_names
from ..progress import progress_bar


def build_templates(store_path: str | Path, aggregators: Mapping[str, Aggregator], *,
                    by: Grouping = "true", correct_only: bool = False,
                    rows: np.ndarray | None = None, chunk: int = 256,
                    span: tuple[int, int] | None = None, progress: bool = False) -> TemplateStates:
    """Aggregate the store's heatmaps per class (and, for a binary store, per side of its task)
    in one read pass.

    ``by``: group by true label or by prediction (a side: of the label, or of the task's score
    at its threshold). ``correct_only``: only heatmaps whose predicted group equals the true
    one. ``rows``: a boolean mask (N,) or an index array selecting
    the rows to use (e.g. the test split). ``chunk``: rows read at a time (rounded to the
    store's HDF5 chunking). ``span=(start, stop)``: only rows ``[start, stop)`` (one shard).

    Memory: the states (per class: 51 MB for ``median`` at 224x224, 0.4 MB for ``mean``), a
    read buffer and one staging batch per class of ``chunk`` rows each (25 MB at 224x224 in
    float16), whatever N is. Chunks without a selected row are not read.
    """
    if by not in ("true", "predicted"):
        raise ValueError(f"by must be 'true' or 'predicted', got {by!r}")
    with h5py.File(store_path, "r") as store:
        heatmaps = store["heatmaps"]
        total, shape = heatmaps.shape[0], tuple(heatmaps.shape[1:])
        wanted = _row_mask(rows, total)
        plans = []
        for names, true_group, predicted_group in template_groups(store):
            group = true_group if by == "true" else predicted_group
            selected = wanted & (group >= 0) & (group < len(names))
            if correct_only:
                selected &= true_group == predicted_group
            plans.append((names, group, selected))
        states = {name: {g: agg.init(shape) for names, _, _ in plans for g in names}
                  for name, agg in aggregators.items()}
        start, stop = span if span is not None else (0, total)
        step = _read_step(heatmaps, chunk)
        any_selected = np.logical_or.reduce([selected for _, _, selected in plans])
        ranges = [(lo, min(lo + step, stop)) for lo in range(start, stop, step)
                  if any_selected[lo:min(lo + step, stop)].any()]
        batches = [_ClassBatches(len(names), min(step, max(stop - start, 1)), shape, heatmaps.dtype,
                                 lambda k, batch, names=names: _update(aggregators, states, names[k], batch))
                   for names, _, _ in plans]
        total_rows = sum(hi - lo for lo, hi in ranges)
        bar = progress_bar(f"templates {Path(store_path).stem}", total_rows) if progress else nullcontext(None)
        with bar as advance:
            for lo, hi, data in read_chunks(heatmaps, ranges):
                for grouped, (_, group, selected) in zip(batches, plans):
                    grouped.add(data, selected[lo:hi], group[lo:hi])
                if advance is not None:
                    advance(hi - lo)
            for grouped in batches:
                grouped.flush()
    return states


def read_chunks(heatmaps: h5py.Dataset, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(lo, hi, heatmaps[lo:hi])`` for each range, read into one reused buffer (valid
    until the next item). A read-ahead thread was tried and dropped: h5py holds the GIL while
    it decompresses and ``np.add.at`` holds it while it scatters, so nothing overlapped."""
    if not ranges:
        return
    buffer = np.empty((max(hi - lo for lo, hi in ranges), *heatmaps.shape[1:]), heatmaps.dtype)
    for lo, hi in ranges:
        heatmaps.read_direct(buffer, np.s_[lo:hi], np.s_[0:hi - lo])
        yield lo, hi, buffer[:hi - lo]


def _update(aggregators: Mapping[str, Aggregator], states: TemplateStates, cls: str,
            batch: np.ndarray) -> None:
    for name, agg in aggregators.items():
        states[name][cls] = agg.update(states[name][cls], batch)


class _ClassBatches:
    """Collects each class's rows into batches of ``size`` before handing them on: the cost of
    an aggregator update is mostly per batch for small batches, and a store in random class
    order would otherwise give batches of ``size / classes`` rows. Runs of rows of one class
    that fill whole batches are passed through without copying."""

    def __init__(self, classes: int, size: int, shape: tuple[int, ...], dtype: np.dtype,
                 emit: Callable[[int, np.ndarray], None]) -> None:
        self.size, self.shape, self.dtype, self.emit = size, shape, dtype, emit
        self.staged: dict[int, np.ndarray] = {}
        self.fill = [0] * classes

    def add(self, data: np.ndarray, keep: np.ndarray, group: np.ndarray) -> None:
        for index in np.unique(group[keep]):
            self._push(int(index), data, np.flatnonzero(keep & (group == index)))

    def _push(self, k: int, data: np.ndarray, rows: np.ndarray) -> None:
        while len(rows):
            fill = self.fill[k]
            if fill == 0 and len(rows) >= self.size and rows[self.size - 1] - rows[0] == self.size - 1:
                self.emit(k, data[rows[0]:rows[0] + self.size])
                rows = rows[self.size:]
                continue
            staged = self.staged.get(k)
            if staged is None:
                staged = self.staged[k] = np.empty((self.size, *self.shape), self.dtype)
            take = min(len(rows), self.size - fill)
            np.take(data, rows[:take], axis=0, out=staged[fill:fill + take], mode="clip")
            rows = rows[take:]
            self.fill[k] = fill + take
            if self.fill[k] == self.size:
                self.emit(k, staged)
                self.fill[k] = 0

    def flush(self) -> None:
        for k, staged in self.staged.items():
            if self.fill[k]:
                self.emit(k, staged[:self.fill[k]])
                self.fill[k] = 0


def store_classes(store: h5py.File) -> list[str]:
    classes = store.attrs["classes"]
    return list(json.loads(classes) if isinstance(classes, (str, bytes)) else classes)


def template_groups(store: h5py.File) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    """The groupings of a store's rows, each ``(group names, true group (N,), predicted group
    (N,))``: the classes by label and prediction; for a binary store (``target_positive``) also
    its task's sides (:func:`~xaicxr.plugins.targets.side_names`) by the label and by the task's
    score at ``target_threshold``."""
    classes = store_classes(store)
    labels = store["labels"][()]
    groupings = [(classes, labels, store["predictions"][()])]
    if "target_positive" in store.attrs:
        positive = [classes.index(c) for c in json.loads(store.attrs["target_positive"])]
        threshold, probs = float(store.attrs["target_threshold"]), store["probs"][()]
        groupings.append((list(side_names(_text(store.attrs["target"]))),
                          binary_sides(labels, probs, positive, threshold, "true"),
                          binary_sides(labels, probs, positive, threshold, "predicted")))
    return groupings


def group_attrs(store_path: str | Path) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Attributes a template file of this store carries: on the root ``target`` (where the store
    records one) and, for a binary store, ``sides`` (JSON ``{side: [classes]}``); on each side's
    template ``classes`` (JSON list)."""
    with h5py.File(store_path, "r") as store:
        if "target" not in store.attrs:
            return {}, {}
        target = _text(store.attrs["target"])
        if "target_positive" not in store.attrs:
            return {"target": target}, {}
        classes = store_classes(store)
        positive = json.loads(store.attrs["target_positive"])
    sides = dict(zip(side_names(target), (positive, [c for c in classes if c not in positive])))
    return ({"target": target, "sides": json.dumps(sides)},
            {side: {"classes": json.dumps(members)} for side, members in sides.items()})


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _row_mask(rows: np.ndarray | None, total: int) -> np.ndarray:
    if rows is None:
        return np.ones(total, bool)
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != (total,):
            raise ValueError(f"rows mask has shape {rows.shape}, the store has {total} rows")
        return rows.copy()
    if rows.size and (rows.min() < -total or rows.max() >= total):
        raise ValueError(f"rows index out of range for a store of {total} rows")
    mask = np.zeros(total, bool)
    mask[rows.astype(np.intp)] = True
    return mask


def _read_step(heatmaps: h5py.Dataset, chunk: int) -> int:
    """``chunk`` rounded to whole HDF5 chunks, so no compressed chunk is decoded twice."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    rows_per_chunk = heatmaps.chunks[0] if heatmaps.chunks else 1
    return max(rows_per_chunk, chunk // rows_per_chunk * rows_per_chunk)


def merge_states(parts: Iterable[TemplateStates], aggregators: Mapping[str, Aggregator]) -> TemplateStates:
    """Combine the states of several shards (any order) into one; consumes the first part."""
    merged: TemplateStates | None = None
    for part in parts:
        if merged is None:
            merged = part
            continue
        for name, agg in aggregators.items():
            for cls, state in part[name].items():
                merged[name][cls] = agg.merge(merged[name][cls], state) if cls in merged[name] else state
    if merged is None:
        raise ValueError("merge_states needs at least one set of states")
    return merged


def finalize_templates(states: TemplateStates, aggregators: Mapping[str, Aggregator]) -> dict[str, dict[str, np.ndarray]]:
    return {name: {cls: aggregators[name].finalize(state) for cls, state in states[name].items()}
            for name in states}


