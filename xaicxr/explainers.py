"""Explainers for notebooks and scripts: ``from xaicxr.explainers import GradCAM``.

    maps = GradCAM(layer="conv4").explain(model, images, labels)    # (N, H, W) in [0, 1]

Every class here is the registered plugin (what ``[[explain]] name = ...`` runs), taking the
same options, and also ``layer`` at construction: the layer ``explain`` uses when the call names
none (``explain(..., layer=...)`` still wins). :func:`explainer` builds any registered one by its
plugin name, a third party's included. Classes are looked up when first imported, so importing
this module loads neither TensorFlow nor the plugins. The contract every explainer keeps:
:class:`xaicxr.plugins.explainer.Explainer` (docs/api.md)."""

from __future__ import annotations

import inspect
from typing import Any

from .plugins.explainer import CAMExplainer, DegenerateMapsWarning, Explainer
from .plugins.targets import BinaryScore, ClassLogit, ClassProbability

PLUGIN_NAMES = {
    "GradCAM": "gradcam", "GradCAMPlusPlus": "gradcam++", "LayerCAM": "layercam", "HiResCAM": "hirescam",
    "XGradCAM": "xgradcam", "EigenCAM": "eigencam", "AblationCAM": "ablationcam", "ScoreCAM": "scorecam",
    "Saliency": "saliency", "SmoothGrad": "smoothgrad", "IntegratedGradients": "integrated-gradients",
    "Occlusion": "occlusion", "RISE": "rise", "ExtremalPerturbation": "extremal",
    "GradcamTfkv": "gradcam-tfkv", "GradcamPlusPlusTfkv": "gradcam++-tfkv", "LayercamTfkv": "layercam-tfkv",
    "ScorecamTfkv": "scorecam-tfkv",
}
"""The importable name of each built-in explainer and its plugin name."""

__all__ = [*PLUGIN_NAMES, "explainer", "with_layer", "Explainer", "CAMExplainer", "DegenerateMapsWarning",
           "ClassLogit", "ClassProbability", "BinaryScore"]

_made: dict[type, type] = {}


def explainer(name: str, layer: str | None = None, **options: Any) -> Explainer:
    """The registered explainer ``name`` (``"gradcam"``, ``"rise"``, a third party's) made with
    ``options``, explaining ``layer`` unless a call names another."""
    from . import plugins

    return with_layer(plugins.get("explainer", name))(layer=layer, **options)


def with_layer(cls: type[Explainer]) -> type[Explainer]:
    """``cls`` with a ``layer`` argument at construction, used by every call that names no layer.

    A subclass of ``cls`` (so ``isinstance`` and every method hold; ``plugin_class`` is ``cls``)
    whose ``__init__`` signature is ``cls``'s plus ``layer``, so :meth:`Explainer.options`, which
    reads that signature, lists ``layer`` with ``cls``'s options. The plugin contract is
    untouched: the layer is applied where every public call passes through
    (``explain_with_info``, ``explain_all_with_info``, ``resolve_layer``)."""
    if cls in _made:
        return _made[cls]
    signature = inspect.signature(cls.__init__)
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("layer", inspect.Parameter.KEYWORD_ONLY, default=None))

    def __init__(self, *args: Any, layer: str | None = None, **options: Any) -> None:
        cls.__init__(self, *args, **options)
        self.layer = layer

    __init__.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]

    # explain and explain_all go through these two (Explainer's contract), so they are left
    # alone: their DegenerateMapsWarning then points at the caller's line, not at this module.
    def explain_with_info(self, model, images, targets, layer=None):
        return cls.explain_with_info(self, model, images, targets, self.layer if layer is None else layer)

    def explain_all_with_info(self, model, images, layer=None, target=None):
        return cls.explain_all_with_info(self, model, images, self.layer if layer is None else layer, target)

    def resolve_layer(self, model, layer=None):
        return cls.resolve_layer(self, model, self.layer if layer is None else layer)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{cls.__name__}({shown})"

    made = type(cls.__name__, (cls,), {
        "__init__": __init__, "explain_with_info": explain_with_info, "explain_all_with_info": explain_all_with_info,
        "resolve_layer": resolve_layer, "__repr__": __repr__, "__module__": __name__,
        "__qualname__": cls.__name__, "__doc__": cls.__doc__, "plugin_class": cls})
    _made[cls] = made
    return made


def __getattr__(name: str) -> Any:
    if name in PLUGIN_NAMES:
        from . import plugins

        made = with_layer(plugins.get("explainer", PLUGIN_NAMES[name]))
        globals()[name] = made
        return made
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(PLUGIN_NAMES))
