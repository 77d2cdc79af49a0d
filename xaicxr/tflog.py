"""TensorFlow's own log noise (C++ logs, absl, its Python loggers and warnings) kept off the
terminal unless ``--verbose`` is given.

TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` when it is first imported, so :func:`configure` must
run before any command imports it (the CLI imports TensorFlow lazily, inside the commands). A
level the user set in the environment is kept. Some C++ lines (CUDA stubs, "All log messages
before absl::InitializeLog()") are written during the import itself whatever that level says,
so in the quiet mode the first import of TensorFlow runs with the process's stderr pointed at
/dev/null. The Python side (the ``tensorflow`` and ``absl``
loggers, warnings raised from TensorFlow, Keras and tf-keras-vis) is set on every call, so it
also holds when TensorFlow is already loaded.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import warnings
from typing import Any

NOISY_LOGGERS = ("tensorflow", "absl", "keras", "h5py")
NOISY_MODULES = r"(tensorflow|keras|tf_keras|tf_keras_vis|absl|h5py)(\.|$)"
_USER_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")


def configure(verbose: bool = False) -> None:
    """Quiet (the default) or let everything through (``verbose``)."""
    if _USER_LEVEL is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    level = logging.INFO if verbose else logging.ERROR
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    try:
        from absl import logging as absl_logging  # only present with TensorFlow
        absl_logging.set_verbosity("info" if verbose else "error")
    except ImportError:
        pass
    warnings.filterwarnings("default" if verbose else "ignore", module=NOISY_MODULES)
    if not verbose and "tensorflow" not in sys.modules and not any(
            isinstance(f, _SilentTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SilentTensorFlowImport())


class _SilentTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first ``import tensorflow`` (whoever asks for it, if anyone) with the process's
    stderr pointed at /dev/null, so a command that never needs TensorFlow does not pay for
    importing it."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            try:
                run(module)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                os.close(null)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
