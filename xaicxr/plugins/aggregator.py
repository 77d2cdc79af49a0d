"""The aggregator plugin contract: streaming, mergeable per-pixel statistics of heatmaps.

An aggregator object holds only its options; all data lives in a *state*, a plain ``dict`` of
numpy arrays and scalars (always with ``"n"``, the number of heatmaps seen). States can be
saved to an HDF5 group and loaded back, so sharded runs merge their partial results later.

    agg = Median()
    state = agg.init((224, 224))
    for batch in batches:                 # (N, H, W) float in [0, 1]
        state = agg.update(state, batch)
    template = agg.finalize(state)        # (H, W), or (K, H, W) for multi-component ones

``update`` and ``merge`` may reuse the buffers of the state they are given (``merge(a, b)``
those of ``a``): keep using the returned state, not the old one. ``b`` is never modified.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import h5py
import numpy as np

from .options import Configurable

State = dict[str, Any]
"""An aggregator state: ``{name: numpy array | int | float | str}``, always with ``"n"``."""

_COMPRESS_FROM = 1 << 16
"""Arrays with at least this many elements are saved gzip-compressed (histograms are sparse)."""


class Aggregator(Configurable):
    """Streaming template builder: ``init -> update* -> merge* -> finalize``.

    Subclasses implement the four methods; memory must not depend on the number of heatmaps,
    and ``merge`` of the states of two halves must equal ``update`` over the whole (exactly,
    or within a documented bound). Options are typed keyword arguments of ``__init__``, stored
    as attributes of the same name (``options()`` reads them back).
    """

    components: ClassVar[bool] = False
    """True when ``finalize`` returns (K, H, W), components first, instead of (H, W)."""

    def init(self, shape: tuple[int, int]) -> State:
        raise NotImplementedError

    def update(self, state: State, heatmaps: np.ndarray) -> State:
        raise NotImplementedError

    def merge(self, a: State, b: State) -> State:
        raise NotImplementedError

    def finalize(self, state: State) -> np.ndarray:
        raise NotImplementedError

    def info(self, state: State) -> dict[str, Any]:
        """Extra figures stored beside the template (attributes of its dataset); small arrays or
        scalars, e.g. the explained variance of PCA components."""
        return {}

    def count(self, state: State) -> int:
        return int(state["n"])

    def save_state(self, state: State, group: h5py.Group) -> None:
        """Write ``state`` into an (empty) HDF5 group: arrays as datasets, scalars as attributes."""
        group.attrs["__aggregator__"] = type(self).__qualname__
        group.attrs["__options__"] = json.dumps(self.options(), sort_keys=True)
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                big = value.size >= _COMPRESS_FROM
                group.create_dataset(key, data=value, compression="gzip" if big else None,
                                     compression_opts=1 if big else None, shuffle=big)
            else:
                group.attrs[key] = value
        group.attrs["__arrays__"] = json.dumps(
            sorted(k for k, v in state.items() if isinstance(v, np.ndarray)))

    def load_state(self, group: h5py.Group) -> State:
        """Read a state written by ``save_state``; refuses one made with other options."""
        saved = json.loads(group.attrs.get("__options__", "{}"))
        mine = json.loads(json.dumps(self.options(), sort_keys=True))
        if saved != mine:
            raise ValueError(f"state in {group.name} was made by {group.attrs.get('__aggregator__')} "
                             f"with options {saved}, not {mine}")
        state: State = {}
        for key, value in group.attrs.items():
            if not key.startswith("__"):
                state[key] = value.item() if isinstance(value, np.generic) else value
        for key in json.loads(group.attrs.get("__arrays__", "[]")):
            state[key] = group[key][()]
        return state


def as_batch(heatmaps: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``heatmaps`` as (N, *shape) floating array (a single (H, W) map becomes N = 1)."""
    batch = np.asarray(heatmaps)
    if batch.ndim == len(shape):
        batch = batch[None]
    if batch.ndim != len(shape) + 1 or batch.shape[1:] != tuple(shape):
        raise ValueError(f"heatmaps of shape {batch.shape} do not fit a state of shape {tuple(shape)}; "
                         f"expected (N, {', '.join(map(str, shape))})")
    if not np.issubdtype(batch.dtype, np.floating):
        batch = batch.astype(np.float64)
    return batch


def check_compatible(a: State, b: State, *keys: str) -> None:
    """Raise if two states cannot be merged (different image size or layout)."""
    for key in keys:
        if np.shape(a[key]) != np.shape(b[key]):
            raise ValueError(f"cannot merge states: {key!r} has shape {np.shape(a[key])} "
                             f"in one and {np.shape(b[key])} in the other")


def pooled_mean(a: State, b: State) -> tuple[int, np.ndarray, float]:
    """Two states' per-pixel ``mean`` over ``n`` maps pooled (Chan, Golub and LeVeque 1979):
    ``(n, mean, weight)``, where the squared difference of the two means times ``weight`` =
    n_a n_b / n is what pooling adds to a sum of squared deviations. Checks the two states fit."""
    check_compatible(a, b, "mean")
    na, nb = a["n"], b["n"]
    n = na + nb
    if nb == 0:
        return n, a["mean"], 0.0
    return n, a["mean"] + (b["mean"] - a["mean"]) * (nb / n), na * nb / n


def reject_nonfinite(values: np.ndarray, what: str = "heatmaps") -> None:
    if not np.isfinite(values).all():
        raise ValueError(f"{what} contain NaN or infinite values")
