"""Atomic writes: a reader (or a resumed run) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.
    ``suffix`` is for writers that insist on a file extension (Keras wants ``.keras``).

    The temporary file is not created here: the writer creates it, so it gets the usual
    permissions (the umask), not the private mode of ``tempfile.mkstemp``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON: NaN and infinities (an AUC without positives, say) become null."""
    write_text(path, json.dumps(finite_json(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None and every string made
    :func:`printable`, so it always serialises to valid (UTF-8) JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(k) if isinstance(k, str) else k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def printable(text: str) -> str:
    """``text`` as valid UTF-8. A file name that is not valid UTF-8 reaches Python with its
    undecodable bytes as lone surrogates (PEP 383); each such byte becomes the four characters
    ``\\xNN`` (so ``b"scan\\xff.png"`` reads ``scan\\xff.png``). Valid text is returned unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def update_json(path: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """Merge ``values`` into the JSON object at ``path`` (each writer owns its keys), atomically."""
    path = Path(path)
    current = read_json(path) if path.exists() else {}
    current.update(values)
    write_json(path, current)
    return current
