"""xaicxr: plugin-based explainability for chest X-ray classifiers."""

from importlib.metadata import PackageNotFoundError, version as _version

import pluggy

try:
    __version__ = _version("xaicxr")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

hookimpl = pluggy.HookimplMarker("xaicxr")
"""Marker for plugin hook implementations: ``@xaicxr.hookimpl``."""

__all__ = ["__version__", "hookimpl"]
