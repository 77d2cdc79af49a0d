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
