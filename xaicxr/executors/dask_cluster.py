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
import re
import shutil
import tempfile
from collections import deque
from typing import Any, Callable, Iterable, Iterator, TypeVar

from ..errors import ConfigError
from . import DEFAULT_PARTITION_ROWS

T = TypeVar("T")
R = TypeVar("R")

TASKS_AHEAD_PER_WORKER = 2
CONNECT_TIMEOUT_S = 30


SCHEMES = ("tcp", "tls", "ucx", "inproc", "ws", "wss")
"""The comm protocols of a Dask scheduler address (``distributed.comm``)."""


def check_address(address: str) -> str:
    """``address`` as a scheduler address (``tcp://host:8786``, or ``host:8786``), or a
    :class:`ConfigError` that shows the form (an ``http://`` URL is the dashboard's, not the
    scheduler's)."""
    match = re.fullmatch(r"(?:(?P<scheme>[a-z]+)://)?(?P<host>[^/:\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)/?", address)
    if not match or (match["scheme"] or "tcp") not in SCHEMES:
        raise ConfigError(f"[run] address = {address!r} is not a Dask scheduler address; expected "
                          f"tcp://HOST:PORT (or {', '.join(s + '://' for s in SCHEMES[1:])}); the scheduler "
                          "listens on 8786 by default, the dashboard's http:// address is not it")
    return address


class DaskExecutor:
    local = False

    def __init__(self, address: str | None = None, workers: int | None = None,
                 partition_rows: int = DEFAULT_PARTITION_ROWS) -> None:
        from distributed import Client, LocalCluster

        self.partition_rows = partition_rows
        self.cluster = None
        self.scratch: str | None = None
        if address:
            check_address(address)
            try:
                self.client = Client(address, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as exc:
                raise ConfigError(f"[run] address = {address!r}: cannot reach the Dask scheduler "
                                  f"({' '.join(str(exc).split())})") from None
        else:
            import dask

            self.scratch = tempfile.mkdtemp(prefix="xaicxr-dask-")  # not Dask's shared /tmp/dask-scratch-space
            self._config = dask.config.set({"temporary-directory": self.scratch})  # what the nannies use too
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.ERROR,
                                        local_directory=self.scratch,
                                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
            # no dashboard, but the scheduler's HTTP server still starts: on a free local port,
            # not Dask's 8787 (a warning on stderr whenever another cluster holds that one)
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
        if self.scratch is not None:
            self._config.__exit__(None, None, None)  # Dask's temporary-directory as it was
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _call(fn: Callable[..., R], *args: Any) -> R:
    return fn(*args)
