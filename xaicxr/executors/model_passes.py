"""A model's passes through the run's executor: the quality metrics' one way to spread their
forward passes (deletion/insertion curves, the randomisation cascade, counterfactual and region
predictions) over a cluster, and a third-party metric's too (its ``executor`` input).

A metric cuts its work into spans of a size it fixes (never from the number of workers) and
hands a *task* ``task(model, span)`` to :meth:`ModelExecutor.map_spans`; the results come back
in span order. Locally the task gets the run's model in this process; on a cluster the task
must be picklable (a module-level class holding its arrays, sent once to every worker per call),
and each worker loads the model once through :func:`~xaicxr.executors.worker_cached`. The same
spans are computed either way, so the figures do not depend on the executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Iterator, TypeVar

import numpy as np

from . import Executor, LocalExecutor, worker_cached

T = TypeVar("T")
R = TypeVar("R")

PREDICT_BATCH = 64


class ModelExecutor:
    """One model's passes, computed by an executor.

    ``model()`` gives the model in this process (made on first use); ``load()`` and
    ``load_key`` are how a cluster worker gets it: a picklable loader (the run's ``model.keras``,
    checked against its digest) and the key of the per-worker cache. ``executor()`` gives the
    executor, called on first use: a run's cluster starts only when a pass needs it."""

    def __init__(self, executor: Callable[[], Executor], model: Callable[[], Any],
                 load: Callable[[], Any] | None = None, load_key: Hashable = None) -> None:
        self._make_executor, self._executor = executor, None
        self._model = model
        self.load, self.load_key = load, load_key

    @classmethod
    def in_process(cls, model: Any) -> "ModelExecutor":
        """Every pass of ``model`` in this process (what a metric uses when given no executor)."""
        return cls(LocalExecutor, lambda: model)

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = self._make_executor()
        return self._executor

    def model(self) -> Any:
        """The model in this process."""
        return self._model()

    def map(self, task: Callable[[Any, T], R], items: Iterable[T]) -> Iterator[R]:
        """``task(model, item)`` for every item, in item order."""
        executor = self.executor
        if executor.local:
            model = self.model()
            return executor.map(lambda item: task(model, item), items)
        if self.load is None:
            raise ValueError("a cluster executor needs a model loader for its workers")
        return executor.map(OnWorker(task, self.load, self.load_key), items)

    def map_spans(self, task: Callable[[Any, tuple[int, int]], R], n: int, size: int) -> list[R]:
        """``task(model, (start, stop))`` for consecutive spans of ``size`` rows of ``range(n)``
        (the last one shorter), in order."""
        return list(self.map(task, spans(n, size)))

    def predict(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """(N, C) class probabilities of gray images (N, H, W) in [0, 1], ``batch_size``
        (default :data:`PREDICT_BATCH`) per task."""
        images = np.ascontiguousarray(images, np.float32)
        if not len(images):
            return np.zeros((0, self.model().output_shape[-1]), np.float32)
        return np.concatenate(self.map_spans(Probabilities(images), len(images), batch_size or PREDICT_BATCH))


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2 size), ..., (.., n)]``: the fixed cut of ``n`` rows."""
    if size < 1:
        raise ValueError(f"a span holds at least one row, got {size}")
    return [(start, min(start + size, n)) for start in range(0, n, size)]


@dataclass(frozen=True)
class OnWorker:
    """``task(model, item)`` on a cluster worker, the model loaded once per worker process."""

    task: Callable[[Any, Any], Any]
    load: Callable[[], Any]
    load_key: Hashable

    def __call__(self, item: Any) -> Any:
        return self.task(worker_cached(self.load_key, self.load), item)


@dataclass(frozen=True)
class Probabilities:
    """The model's output (class probabilities) for one span of gray images."""

    images: np.ndarray

    def __call__(self, model: Any, span: tuple[int, int]) -> np.ndarray:
        import keras

        start, stop = span
        return keras.ops.convert_to_numpy(model(self.images[start:stop, ..., None], training=False))
