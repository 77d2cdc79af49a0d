"""Built-in backbone plugins: ``vgg19`` and, over ``keras.applications``, ``resnet50``,
``densenet121``, ``efficientnetb0``, ``mobilenetv3small``, ``convnexttiny``."""

from xaicxr import hookimpl

from .applications import FAMILIES
from .vgg19 import VGG19Backbone


@hookimpl
def xaicxr_backbones():
    return {"vgg19": VGG19Backbone, **{family.plugin_name(): family for family in FAMILIES}}
