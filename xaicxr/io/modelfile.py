"""``model.keras``: atomic saving, loading with Keras ``safe_mode``, and the digests that identify
a model (the file) and a frozen feature extractor (its weights)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np

from ..errors import ModelFileError
from ..plugins import layers  # noqa: F401  (registers GrayToColour, which every model file holds)
from .atomic import atomic_path


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save atomically: a crash leaves the previous file or none, never half of one."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def load_model(path: str | Path, *, unsafe: bool = False) -> keras.Model:
    """Load ``model.keras`` with Keras ``safe_mode``: arbitrary code (Lambda layers) is refused
    unless ``unsafe=True`` is passed deliberately (``--unsafe-load`` on the command line)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model at {path}; run the train stage first (xaicxr train)")
    try:
        return keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "unsafe" in str(exc).lower():
            raise ModelFileError(
                f"{path} contains code that Keras will only run with safe_mode off "
                f"(e.g. a Lambda layer). Load it only if you trust its source: pass --unsafe-load. "
                f"Keras said: {exc}") from None
        raise


def model_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
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
