"""The Dask distributed executor (``[run] executor = "dask"``; ``pip install xaicxr[dask]``).

With ``address`` it connects to a running scheduler (``dask scheduler`` plus ``dask worker``
on the cluster's nodes, or a SLURM/PBS/Kubernetes deployment from dask-jobqueue or
dask-kubernetes); without, it starts a local cluster of ``workers`` processes, one thread each,
and stops it when the run ends.

Tasks are submitted a few per worker ahead (memory stays bounded whatever the number of rows)
and their results are handed back in submission order. The mapped function is sent to every
worker once (``scatter``), not with each task. Dask resubmits the task of a worker that died.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, Iterable, Iterator, TypeVar

from ..errors import ConfigError
from . import DEFAULT_PARTITION_ROWS

T = TypeVar("T")
R = TypeVar("R")

TASKS_AHEAD_PER_WORKER = 2
CONNECT_TIMEOUT_S = 30


class DaskExecutor:
    local = False

    def __init__(self, address: str | None = None, workers: int | None = None,
                 partition_rows: int = DEFAULT_PARTITION_ROWS) -> None:
        from distributed import Client, LocalCluster

        self.partition_rows = partition_rows
        self.cluster = None
        if address:
            try:
                self.client = Client(address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"[run] address = {address!r}: cannot reach the Dask scheduler "
                                  f"({exc})") from None
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.ERROR)
            self.client = Client(self.cluster)

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        shared = self.client.scatter(fn, broadcast=True, hash=False)
        ahead = TASKS_AHEAD_PER_WORKER * max(1, self.workers)
        pending: deque = deque()
        try:
            for item in items:
                pending.append(self.client.submit(_call, shared, item, pure=False))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            if pending:
                self.client.cancel(list(pending))

    def reduce(self, fn: Callable[[T], R], items: list[T], merge: Callable[[R, R], R]) -> R:
        """``fn`` of every item and the merges all run on the workers, in a fixed binary tree
        (items 0+1, 2+3, ..., then their results pairwise), so only the result travels to the
        driver and the merge order depends on the number of items alone. ``merge`` may update
        its first argument in place: each intermediate result is merged once."""
        if not items:
            raise ValueError("reduce needs at least one item")
        shared_fn = self.client.scatter(fn, broadcast=True, hash=False)
        shared_merge = self.client.scatter(merge, broadcast=True, hash=False)
        level = [self.client.submit(_call, shared_fn, item, pure=False) for item in items]
        while len(level) > 1:
            level = [self.client.submit(_call, shared_merge, level[i], level[i + 1], pure=False)
                     if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
        return level[0].result()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _call(fn: Callable[..., R], *args: Any) -> R:
    return fn(*args)
