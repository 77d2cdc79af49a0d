"""Built-in fills."""

from xaicxr import hookimpl


@hookimpl
def xaicxr_fills():
    return {}
