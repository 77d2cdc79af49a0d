"""``model.keras``: atomic saving, loading with Keras ``safe_mode``, and the digests that identify
a model (the file) and a frozen feature extractor (its weights)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import keras
import numpy as np

from ..errors import ModelFileError
from . import layers  # noqa: F401  (registers GrayToColour, which every model file holds)
from .atomic import atomic_path

MAX_JSON_BYTES = 64 << 20
"""The most ``config.json`` or ``metadata.json`` may hold uncompressed. Keras reads each whole
into memory and parses it (a few times its size at the peak); the configuration of a model is
kilobytes, and even a graph of thousands of layers stays below a few MiB, so more than this is
not a model's description but an archive made to exhaust memory."""

MAX_EXPANSION = 100
"""The most a large member may expand (uncompressed over stored size). Keras stores members
uncompressed (1:1) and float weights hardly compress even when an archive is zipped again, so
a member that expands more than this and beyond :data:`EXPANSION_FLOOR` is a zip bomb. Keras's
own guard has the same ratio but starts at 4 GiB, after a load has already used gigabytes."""

EXPANSION_FLOOR = 64 << 20
"""Members smaller than this may compress any amount (a small config, all-zero biases)."""

MAX_TOTAL_BYTES = 8 << 30
"""The most all members may hold uncompressed. Keras reads the weights into memory when they
fit (peaking near three times their size); the largest built-in backbone (ResNet50, ~25 M
parameters) holds ~100 MB, so 8 GiB (two billion float32 weights) leaves room for an imported
model yet refuses an archive that would fill memory or disk before Keras says anything."""


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save atomically: a crash leaves the previous file or none, never half of one."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def load_model(path: str | Path, *, unsafe: bool = False) -> keras.Model:
    """Load ``model.keras`` with Keras ``safe_mode``: arbitrary code (Lambda layers) is refused
    unless ``unsafe=True`` is passed deliberately (``--unsafe-load`` on the command line).
    A file that is not a model says what it is instead (Keras calls it "File not found")."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model at {path}; run the train stage first (xaicxr train)")
    problem = _not_a_model(path)
    if problem:
        raise ModelFileError(f"{path} is not a Keras model file: {problem}; train again "
                             f"(xaicxr train RUN_DIR) or restore the file")
    try:
        return keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "unsafe" in str(exc).lower():
            raise ModelFileError(
                f"{path} contains code that Keras will only run with safe_mode off "
                f"(e.g. a Lambda layer). Load it only if you trust its source: pass --unsafe-load. "
                f"Keras said: {_first_sentence(exc)}") from None
        raise ModelFileError(f"{path} cannot be loaded: {_first_sentence(exc)}") from None
    except (TypeError, KeyError, AttributeError, ImportError) as exc:
        raise ModelFileError(
            f"{path} cannot be rebuilt: it refers to Python code that is not available here (a "
            f"Lambda layer's named function, or a custom layer or object that is not registered). "
            f"Keras said: {_first_sentence(exc)}") from None


def _not_a_model(path: Path) -> str | None:
    """Why ``path`` is not a ``.keras`` archive (a zip holding ``config.json``, its members of
    sizes a model can have: :func:`archive_problem`), or None."""
    size = path.stat().st_size
    if size == 0:
        return "it is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        return f"it is not a zip archive ({size} bytes starting with {head!r})"
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        return f"its zip archive is damaged ({exc})"
    if "config.json" not in names:
        return "the zip archive holds no config.json"
    return archive_problem(path)


def archive_problem(path: Path) -> str | None:
    """Why the zip ``path``'s members are too large to open (a zip bomb), or None: read from its
    central directory, before anything is decompressed."""
    with zipfile.ZipFile(path) as z:
        members = z.infolist()
    for info in members:
        if info.filename in ("config.json", "metadata.json") and info.file_size > MAX_JSON_BYTES:
            return (f"its {info.filename} declares {_mib(info.file_size)} uncompressed, more than the "
                    f"{_mib(MAX_JSON_BYTES)} any model's description needs")
    for info in members:
        if info.file_size > EXPANSION_FLOOR and info.file_size > MAX_EXPANSION * info.compress_size:
            return (f"its member {info.filename} expands from {_mib(info.compress_size)} to "
                    f"{_mib(info.file_size)}, more than {MAX_EXPANSION} times: a zip bomb, not "
                    f"weights Keras wrote")
    total = sum(info.file_size for info in members)
    if total > MAX_TOTAL_BYTES:
        largest = max(members, key=lambda info: info.file_size)
        return (f"its members declare {_mib(total)} uncompressed ({largest.filename} "
                f"{_mib(largest.file_size)}), more than the {_mib(MAX_TOTAL_BYTES)} a model may hold")
    return None


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _first_sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    cut = text.find(". ")
    return text if cut < 0 else text[:cut + 1]


def model_sha256(path: str | Path) -> str:
    """The sha256 of a model file; of a folder (a TensorFlow SavedModel), of every file in it:
    its relative path and contents, in sorted order."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def weights_digest(layers: list[keras.layers.Layer]) -> str:
    """A hash of the weights of ``layers``: identifies a frozen feature extractor exactly."""
    h = hashlib.sha256()
    for layer in layers:
        for w in layer.weights:
            h.update(w.path.encode())
            h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return h.hexdigest()
