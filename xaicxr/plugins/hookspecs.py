"""The hooks a plugin may implement. Each returns ``{name: class}`` for one plugin kind, and
every class subclasses that kind's base class in :mod:`xaicxr.plugins` (a class that does not
is reported against its plugin and left out).

A plugin is a module (or object) registered through the ``xaicxr`` entry-point group and
decorated with ``@xaicxr.hookimpl``. It implements any subset of these hooks. Classes take
their options as keyword arguments: the matching table of the config file.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("xaicxr")


@hookspec
def xaicxr_backbones() -> dict[str, type]:
    """Model builders. A backbone class builds the transfer model (Keras 3): base network,
    frozen layers, classification head; it owns the preprocessing of grayscale images and
    names its default Grad-CAM target layer."""


@hookspec
def xaicxr_datasets() -> dict[str, type]:
    """Image sources. A dataset class subclasses ``xaicxr.plugins.Dataset``: ``scan()`` lists
    records (id, label, path, patient, masks) and skipped files with reasons; the core decodes,
    resizes and batches them."""


@hookspec
def xaicxr_explainers() -> dict[str, type]:
    """Heatmap methods. ``Explainer(**options).explain(model, images, targets, layer=None)``
    returns (N, H, W) float32 in [0, 1] at input resolution."""


@hookspec
def xaicxr_aggregators() -> dict[str, type]:
    """Streaming template builders: ``init(shape) -> state``, ``update(state, heatmaps)``,
    ``merge(a, b)``, ``finalize(state)``; memory independent of the number of heatmaps."""


@hookspec
def xaicxr_metric() -> dict[str, type]:
    """Quality figures. A metric class subclasses ``xaicxr.plugins.Metric``: its options are
    typed keyword arguments; the parameters of ``evaluate`` say what it needs (maps, masks,
    images, the model, counterfactual twins...); it returns ``{"value", "ci95", "n"}`` records
    under its ``metrics.json`` key and renders its own report section. Chosen in
    ``[quality] metrics = [...]``."""


@hookspec
def xaicxr_fills() -> dict[str, type]:
    """How a perturbation metric fills the pixels it removes (deletion/insertion, template and
    region reliance). A fill class subclasses ``xaicxr.plugins.Fill``. Chosen in
    ``[quality] fills = [...]``."""


KINDS: dict[str, str] = {
    "backbone": "xaicxr_backbones",
    "dataset": "xaicxr_datasets",
    "explainer": "xaicxr_explainers",
    "aggregator": "xaicxr_aggregators",
    "metric": "xaicxr_metric",
    "fill": "xaicxr_fills",
}
"""Plugin kind -> the hook that registers it."""
