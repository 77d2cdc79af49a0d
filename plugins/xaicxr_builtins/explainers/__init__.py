"""Built-in explainers: native compiled CAMs (``gradcam``, ``gradcam++``, ``layercam``,
``hirescam``, ``xgradcam``, ``eigencam``, ``ablationcam``, ``scorecam``) and
tf-keras-vis backed ones (``gradcam-tfkv``, ``gradcam++-tfkv``, ``layercam-tfkv``,
``scorecam-tfkv``, ``saliency``, ``smoothgrad``) and native input-space ones
(``integrated-gradients``, ``occlusion``, ``rise``, ``extremal``). No TensorFlow import happens
here."""

from xaicxr import hookimpl

from .cams import AblationCAM, EigenCAM, HiResCAM, XGradCAM
from .extremal import ExtremalPerturbation
from .gradcam import GradCAM, GradCAMPlusPlus, LayerCAM
from .perturbation import RISE, IntegratedGradients, Occlusion
from .scorecam import ScoreCAM
from .tfkv import (GradcamPlusPlusTfkv, GradcamTfkv, LayercamTfkv, Saliency, ScorecamTfkv,
                   SmoothGrad)


@hookimpl
def xaicxr_explainers():
    return {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "layercam": LayerCAM,
        "hirescam": HiResCAM,
        "xgradcam": XGradCAM,
        "eigencam": EigenCAM,
        "ablationcam": AblationCAM,
        "scorecam": ScoreCAM,
        "gradcam-tfkv": GradcamTfkv,
        "gradcam++-tfkv": GradcamPlusPlusTfkv,
        "layercam-tfkv": LayercamTfkv,
        "scorecam-tfkv": ScorecamTfkv,
        "saliency": Saliency,
        "smoothgrad": SmoothGrad,
        "integrated-gradients": IntegratedGradients,
        "occlusion": Occlusion,
        "rise": RISE,
        "extremal": ExtremalPerturbation,
    }
