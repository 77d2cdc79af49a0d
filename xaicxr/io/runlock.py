"""One process at a time in a run directory: ``RUN_DIR/xaicxr.lock`` holds the pid, host, start
time and command of the process that works in it. A second process is refused with a message
naming the holder. A lock left by a process that died (same host, its pid no longer running) is
stale: it is taken over with a warning. A lock from another host cannot be checked from here;
the message says which file to delete once that process is known to be gone."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import RunLockedError
from ..progress import console


class RunLock:
    """``with RunLock(path):`` holds the lock for the block."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                     "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))}

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(self.info) + "\n", encoding="utf-8")
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # fails if the lock exists: create and fill in one step
                    remove_stale_temporaries(self.path.parent)
                    return self
                except FileExistsError:
                    holder = read_holder(self.path)
                    if not is_stale(holder):
                        raise RunLockedError(_refusal(self.path, holder)) from None
                    console.print(f"[yellow]warning:[/] taking over the stale lock {self.path} of process "
                                  f"{holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}),"
                                  " which is no longer running")
                    self.path.unlink(missing_ok=True)
            raise RunLockedError(f"cannot take the lock {self.path}: other processes keep taking it")
        finally:
            tmp.unlink(missing_ok=True)

    def __exit__(self, *exc: Any) -> None:
        holder = read_holder(self.path)
        if (holder.get("pid"), holder.get("host")) == (self.info["pid"], self.info["host"]):
            self.path.unlink(missing_ok=True)


def read_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def is_stale(holder: dict[str, Any]) -> bool:
    """The holder ran on this host and its pid is gone."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _refusal(path: Path, holder: dict[str, Any]) -> str:
    if not holder:
        return (f"{path.parent} is locked by {path}, which cannot be read; if no xaicxr process "
                f"works in this run directory, delete {path}")
    return (f"{path.parent} is in use by process {holder.get('pid')} on {holder.get('host')} since "
            f"{holder.get('started')} ({holder.get('command')}); wait for it to finish, or, if that "
            f"process is gone, delete {path}")


TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}(?:\.[A-Za-z0-9]+)?$")
"""The name :func:`xaicxr.io.atomic.atomic_path` gives a file being written: ``.<name>.<pid>.<hex>``."""
QUIET_S = 600
"""A temporary untouched for this long whose process is gone is stale. The pid alone is not
enough: a shard on another host sharing the folder has a pid that means nothing here, but it
keeps writing to its file."""


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove the temporaries under ``root`` left by writers that died (kill -9, power loss):
    their pid no longer runs here and the file has not changed for :data:`QUIET_S` seconds."""
    removed = []
    now = time.time()
    for path in root.rglob(".*"):
        match = TEMPORARY.match(path.name)
        if not match or not path.is_file():
            continue
        try:
            quiet = now - path.stat().st_mtime > QUIET_S
        except OSError:
            continue
        if quiet and not _running(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        console.print(f"note: removed {len(removed)} temporary file(s) of processes that died while writing "
                      f"in {root}")
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
