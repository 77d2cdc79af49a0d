"""Errors users are meant to read. The CLI prints their message and exits non-zero, no traceback."""


class XaicxrError(Exception):
    """Base of every error that explains a user-fixable problem."""


class ConfigError(XaicxrError):
    """A configuration file or option is wrong; the message names the key and the file."""


class PluginError(XaicxrError):
    """A plugin cannot be found, is ambiguous, or misbehaved; the message names the plugin."""


class UnknownPluginError(PluginError):
    pass


class PluginConflictError(PluginError):
    pass


class DataError(XaicxrError):
    """A dataset cannot be used at all (missing folder, no class folders, no usable image)."""


class WeightsNotFoundError(XaicxrError):
    """Pretrained weights are not on this machine; the message says how to get them."""


class ModelFileError(XaicxrError):
    """``model.keras`` is missing or cannot be loaded (or needs ``--unsafe-load``)."""


class LayerNotFoundError(XaicxrError):
    """The target layer does not exist, or its output is not (N, h, w, k)."""


class ExplainerInputError(XaicxrError):
    """Images or targets that do not fit the model."""


class StoreError(XaicxrError):
    """A heatmap or template store is missing, malformed, or belongs to another model."""


class ModelMismatchError(StoreError):
    """A heatmap store was made with another model."""


class RunLockedError(XaicxrError):
    """Another process works in the run directory (``RUN_DIR/xaicxr.lock`` names it)."""


class MetricInputError(XaicxrError):
    """A metric was asked for figures without an input it needs (lesion masks, the model...)."""


class TrainingError(XaicxrError):
    """Training could not produce a usable model (the loss became NaN or infinite)."""
