"""Built-in fills (``[quality] fills``), registered like a third party's."""

from xaicxr import hookimpl

from .blur import Blur
from .road import Road


@hookimpl
def xaicxr_fills():
    return {"blur": Blur, "road": Road}
