"""Built-in quality metrics."""

from xaicxr import hookimpl


@hookimpl
def xaicxr_metric():
    return {}
