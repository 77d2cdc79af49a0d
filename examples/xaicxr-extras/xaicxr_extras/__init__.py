"""xaicxr-extras: third-party plugins for xaicxr, registered through the ``xaicxr`` entry-point
group. This module is the entry point and holds the hook implementations; it imports no
TensorFlow (the plugin classes import Keras when they build), so ``xaicxr plugins`` stays fast.

Eigen-CAM, which this example once carried as its explainer, is now built in (``eigencam``);
it works on this package's backbone like every built-in explainer. So does DenseNet121:
xaicxr now builds it in as ``densenet121``, and this package registers its own version under
the name ``chexnet`` (two distributions may not register one name). Its metric,
``border-energy`` (:mod:`.border`), is the worked example of a third-party quality figure."""

from xaicxr import hookimpl

from .border import BorderEnergy
from .densenet import DenseNet121Backbone

__version__ = "0.1.0"


@hookimpl
def xaicxr_backbones():
    return {"chexnet": DenseNet121Backbone}


@hookimpl
def xaicxr_metric():
    return {"border-energy": BorderEnergy}
