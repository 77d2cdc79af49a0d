"""Plugins: the contract every plugin kind follows, and the registry that finds them.

This is the one namespace a plugin author imports::

    from xaicxr.plugins import hookimpl, Dataset, Record, Scan, Skipped, Backbone, \
        Explainer, CAMExplainer, Aggregator, Metric, MapMetric, Fill, Target, ClassLogit, \
        ClassProbability, BinaryScore

and the Python API (contract) for finding plugins: :func:`get`, :func:`available`,
:func:`register`, :func:`reset`. Nothing here imports TensorFlow, so listing plugins is fast.

- :mod:`.hookspecs`: the hooks, one per plugin kind;
- :mod:`.registry`: discovery through the ``xaicxr`` entry-point group, failures pinned on
  the plugin at fault, name conflicts;
- :mod:`.options`: a plugin's options are the typed keyword arguments of its ``__init__``;
- :mod:`.dataset`, :mod:`.backbone`, :mod:`.explainer`, :mod:`.aggregator`, :mod:`.metric`,
  :mod:`.fill`: the base class of each kind (and :mod:`.layers`, the Keras preprocessing layer backbones put in their models);
- :mod:`.targets`: what an explanation explains (class logit, class probability, a binary
  task's score, any callable of the logits).
"""

from __future__ import annotations

import threading
from typing import Any

from .. import hookimpl
from .aggregator import Aggregator, State
from .backbone import LOGITS, PROBS, Backbone, KerasApplication, weights_file
from .dataset import Dataset, Progress, Record, Scan, Skipped, require_dir, walk_images
from .explainer import CAMExplainer, Explainer
from .fill import Fill, make_fill
from .metric import MapMetric, Metric, ReportPart
from .registry import Registry
from .targets import BinaryScore, ClassLogit, ClassProbability, ScoreFunction, Target

__all__ = ["hookimpl", "Aggregator", "State", "Backbone", "KerasApplication", "LOGITS", "PROBS", "weights_file",
           "Dataset", "Progress", "Record", "Scan", "Skipped", "require_dir", "walk_images",
           "Explainer", "CAMExplainer", "Metric", "MapMetric", "ReportPart", "Fill", "make_fill", "Target", "ClassLogit", "ClassProbability", "BinaryScore",
           "ScoreFunction", "Registry", "registry", "reset", "get", "available",
           "register"]

_registry: Registry | None = None
_lock = threading.Lock()


def registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry()
        return _registry


def reset() -> None:
    """Forget discovered plugins; the next call rediscovers them (after installing a package)."""
    global _registry
    with _lock:
        _registry = None


def get(kind: str, name: str) -> type:
    """The class registered as ``name`` for ``kind`` (backbone, dataset, explainer, aggregator,
    metric, fill)."""
    return registry().get(kind, name)


def available() -> list[dict[str, str]]:
    """``{kind, name, module, distribution, version}`` per plugin, then
    ``{module, distribution, error}`` per plugin module that failed to load."""
    return registry().available()


def register(plugin: Any, **source: str) -> None:
    """Register a plugin object or module at runtime (notebooks, tests)."""
    registry().register(plugin, **source)
