"""Where the row-parallel work of a run is computed: in this process, or on a cluster.

An executor does two things: ``map(fn, items)`` yields ``fn(item)`` for every item, **in the
order of the items**, however many workers compute them and in whatever order they finish; and
``reduce(fn, items, merge)`` merges every ``fn(item)`` in an order fixed by the number of items
alone. The explain stage maps spans of rows (one explain batch each) and writes the results into
the heatmap store on the driver, in row order; the templates stage reduces spans of a heatmap
store to aggregator states. So the output never depends on the number of workers or the timing
of the cluster.

``[run] executor`` picks one (:func:`make_executor`): ``"local"`` (this process, the default)
or ``"dask"`` (a Dask distributed cluster at ``address``, or a local one with ``workers``
processes started on the spot; ``pip install xaicxr[dask]``).

A function sent to a cluster must be picklable and find what it needs on the worker: the
model is loaded once per worker process through :func:`worker_cached`
(:class:`~xaicxr.executors.model_passes.ModelExecutor` does it for a model's passes).

Within :func:`shared_executors` (a study's variants), :func:`make_executor` hands out one
executor per ``[run]`` table and stops them only when the block ends, so a cluster is started
once, not once per run.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

from ..errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("local", "dask")
DEFAULT_PARTITION_ROWS = 4096
"""Rows of a heatmap store per template task on a cluster (48 MiB of float16 maps at 224 px)."""


class Executor(Protocol):
    local: bool
    """True when ``fn`` runs in this process (closures over live objects are fine)."""
    partition_rows: int | None
    """Rows per template task; None: the whole store in one pass."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...

    def reduce(self, fn: Callable[[T], R], items: list[T], merge: Callable[[R, R], R]) -> R: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Executor": ...

    def __exit__(self, *exc: Any) -> None: ...


class LocalExecutor:
    """Everything in this process, one item after the other."""

    local = True
    partition_rows = None
    workers = 1

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return (fn(item) for item in items)

    def reduce(self, fn: Callable[[T], R], items: list[T], merge: Callable[[R, R], R]) -> R:
        """``merge`` of every ``fn(item)``, left to right."""
        return functools.reduce(merge, self.map(fn, items))

    def close(self) -> None:
        pass

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


ENGINES = {"dask": ("distributed", "Dask distributed", "pip install 'xaicxr[dask]'")}
"""executor: (module it imports, what it is, how to install it)."""


def check_available(run_cfg: dict[str, Any] | None) -> None:
    """Refuse, before any stage runs, an executor whose engine is not installed here."""
    kind = (run_cfg or {}).get("executor", "local")
    if kind in ENGINES:
        module, engine, install = ENGINES[kind]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"[run] executor = \"{kind}\" needs {engine}, which is not installed: {install}")


def make_executor(run_cfg: dict[str, Any] | None) -> Executor:
    """The executor a resolved ``[run]`` table asks for (within :func:`shared_executors`, the
    block's one executor for that table)."""
    run_cfg = run_cfg or {}
    if _shared is not None:
        key = json.dumps(run_cfg, sort_keys=True, default=str)
        if key not in _shared:
            _shared[key] = _start_executor(run_cfg)
        return Borrowed(_shared[key])
    return _start_executor(run_cfg)


def _start_executor(run_cfg: dict[str, Any]) -> Executor:
    kind = run_cfg.get("executor", "local")
    check_available(run_cfg)
    if kind == "local":
        return LocalExecutor()
    if kind == "dask":
        from .dask_cluster import DaskExecutor

        return DaskExecutor(address=run_cfg.get("address"), workers=run_cfg.get("workers"),
                            partition_rows=run_cfg.get("partition_rows", DEFAULT_PARTITION_ROWS))
    raise ConfigError(f"[run] executor = {kind!r}: use one of {', '.join(map(repr, EXECUTORS))}")


_shared: dict[str, Executor] | None = None


@contextmanager
def shared_executors() -> Iterator[None]:
    """Runs inside the block share their executors: the first run that asks for a ``[run]``
    table starts it, later runs with the same table get the same one (a study's variants on one
    cluster), and every executor started is closed when the block ends."""
    global _shared
    if _shared is not None:  # nested: the outer block owns them
        yield
        return
    _shared = {}
    try:
        yield
    finally:
        started, _shared = _shared, None
        for executor in started.values():
            executor.close()


class Borrowed:
    """An executor lent by :func:`shared_executors`: used like any other, but :meth:`close`
    leaves it running for the next run of the block."""

    def __init__(self, executor: Executor) -> None:
        self.inner = executor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return self.inner.map(fn, items)

    def reduce(self, fn: Callable[[T], R], items: list[T], merge: Callable[[R, R], R]) -> R:
        return self.inner.reduce(fn, items, merge)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Borrowed":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


WORKER_CACHE_SIZE = 2
"""Objects kept per worker process: a study's variants each bring their own model."""
_cache: OrderedDict[Any, Any] = OrderedDict()
_cache_lock = threading.Lock()


def worker_cached(key: Any, make: Callable[[], T]) -> T:
    """``make()`` once per process and ``key`` (a worker's model, say); later calls reuse it.
    A worker process runs many tasks, so the model is loaded and its functions traced once."""
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
        else:
            _cache[key] = make()
            while len(_cache) > WORKER_CACHE_SIZE:
                _cache.popitem(last=False)
        return _cache[key]
