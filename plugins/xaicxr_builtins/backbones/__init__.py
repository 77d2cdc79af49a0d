"""Built-in backbone plugins: ``vgg19``."""

from xaicxr import hookimpl

from .vgg19 import VGG19Backbone


@hookimpl
def xaicxr_backbones():
    return {"vgg19": VGG19Backbone}
