"""Template files ``templates/<explainer>-<aggregator>.h5`` and the saved aggregator states of
sharded template runs (``shards/<explainer>.states-K-of-N.h5``).

A template file holds one dataset per class name, (H, W) float32 ((K, H, W) for
multi-component aggregators such as ``pca``), with attrs ``n``, ``aggregator``, ``by``,
``correct_only`` and the aggregator's ``info`` figures (e.g. explained variance). A class
without any heatmap gets a template of zeros and ``n = 0``. The root records the store's
``target`` where it has one; the store of a binary task's score adds one dataset per side of
the task (``<task>:positive``, ``<task>:negative``, each with attr ``classes``, JSON) and the
root attr ``sides`` (JSON ``{side: [classes]}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping, Protocol

import h5py
import numpy as np

from ..errors import StoreError
from .atomic import atomic_path

Grouping = Literal["true", "predicted"]
State = dict[str, Any]
"""An aggregator's state (:mod:`xaicxr.plugins.aggregator`): arrays and scalars, with ``"n"``."""
TemplateStates = dict[str, dict[str, State]]
"""``{aggregator name: {class name: state}}``."""


class StateCodec(Protocol):
    """What saving and loading states needs of an aggregator: how it writes a state into an
    HDF5 group and reads it back (:class:`xaicxr.plugins.Aggregator` does both)."""

    def save_state(self, state: State, group: h5py.Group) -> None: ...

    def load_state(self, group: h5py.Group) -> State: ...


def write_template_file(path: str | Path, templates: Mapping[str, np.ndarray], *, aggregator: str,
                        by: Grouping, correct_only: bool, counts: Mapping[str, int],
                        extra: Mapping[str, Mapping[str, Any]] | None = None,
                        attrs: Mapping[str, Any] | None = None) -> None:
    """Write one aggregator's templates atomically: a float32 dataset per class with attrs
    ``n``, ``aggregator``, ``by``, ``correct_only`` plus ``extra[class]``; ``attrs`` go on the
    root (e.g. the aggregator's options)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as out:
        out.attrs["aggregator"] = aggregator
        out.attrs["classes"] = json.dumps(list(templates))
        for key, value in (attrs or {}).items():
            out.attrs[key] = value
        for cls, template in templates.items():
            ds = out.create_dataset(cls, data=np.asarray(template, np.float32))
            ds.attrs["n"] = int(counts[cls])
            ds.attrs["aggregator"] = aggregator
            ds.attrs["by"] = by
            ds.attrs["correct_only"] = bool(correct_only)
            for key, value in ((extra or {}).get(cls) or {}).items():
                ds.attrs[key] = value


def read_template_file(path: str | Path) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """``{class: (template, attrs)}`` from a template file."""
    if not Path(path).is_file():
        raise StoreError(f"no template file at {path}; run the templates stage first (xaicxr template)")
    try:
        with h5py.File(path, "r") as f:
            return {cls: (f[cls][()], dict(f[cls].attrs)) for cls in f}
    except (OSError, KeyError, ValueError, AttributeError) as exc:
        raise StoreError(f"{path} is not a readable template file ({exc}); delete it and run "
                         "the templates stage again (xaicxr template RUN_DIR)") from None


def is_multi_component(loaded: dict[str, tuple[np.ndarray, dict[str, Any]]]) -> bool:
    """Whether templates read by :func:`read_template_file` are (K, H, W) components (``pca``)
    rather than one (H, W) map per class."""
    return any(np.ndim(template) == 3 for template, _ in loaded.values())


def save_states(path: str | Path, states: TemplateStates, aggregators: Mapping[str, StateCodec],
                **meta: Any) -> None:
    """Save partial states (e.g. of one shard) to HDF5, atomically: group ``<agg>/<class>``
    per state; ``meta`` (by, correct_only, shard, ...) as root attrs, JSON-encoded."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as out:
        out.attrs["meta"] = json.dumps(meta, sort_keys=True, default=_jsonable)
        for name, per_class in states.items():
            group = out.create_group(name, track_order=True)
            for cls, state in per_class.items():
                aggregators[name].save_state(state, group.create_group(cls))


def load_states(path: str | Path, aggregators: Mapping[str, StateCodec]) -> tuple[TemplateStates, dict[str, Any]]:
    """States and meta saved by ``save_states``, for the aggregators named in ``aggregators``."""
    with h5py.File(path, "r") as f:
        missing = [name for name in aggregators if name not in f]
        if missing:
            raise KeyError(f"{path} holds no state for aggregator(s) {missing}; it has {list(f)}")
        states = {name: {cls: agg.load_state(f[name][cls]) for cls in f[name]}
                  for name, agg in aggregators.items()}
        return states, json.loads(f.attrs.get("meta", "{}"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in state meta")

