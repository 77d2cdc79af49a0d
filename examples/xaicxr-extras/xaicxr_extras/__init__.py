"""xaicxr-extras: third-party plugins for xaicxr, registered through the ``xaicxr`` entry-point
group. This module is the entry point and holds the hook implementations; it imports no
TensorFlow (the plugin classes import Keras when they build or explain), so ``xaicxr plugins``
stays fast."""

from xaicxr import hookimpl

from .densenet import DenseNet121Backbone
from .eigencam import EigenCAM

__version__ = "0.1.0"


@hookimpl
def xaicxr_backbones():
    return {"densenet121": DenseNet121Backbone}


@hookimpl
def xaicxr_explainers():
    return {"eigencam": EigenCAM}
