"""Model-parameter randomisation: do the maps depend on what the model learned?

Three questions, one answer each, all measured on the same images:

* **Cascade** (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", cascading randomisation):
  the weighted layers are re-initialised one *step* at a time from the top (``logits``) down to
  the input, cumulatively, and the images are explained again after every step. Per step and
  image: Spearman rank correlation between the trained and the randomised map, of the maps and
  of their absolute values, and SSIM. The paper reports both rank correlations because for
  signed maps (gradients) the sign can flip while the magnitudes stay; for maps in [0, 1], as
  every xaicxr explainer returns, the two coincide, and both are kept for comparison with the
  literature.
* **Reference level**: the same figures between the trained maps of two *different* images of
  the same class (and the same target). Every map shares a layout (the centre of the image, the
  border of the receptive fields, the upsampling grid), so two unrelated maps are already far
  from uncorrelated; a randomised map that stays at or above this level has not been shown to
  depend on the weights at all. A fixed pass line (say r < 0.5) cannot tell a faithful
  explainer from one that only shows image structure: LayerCAM's trained-vs-randomised Spearman
  (0.43-0.47 on cxr3-real) equalled that of two different images' trained maps (0.49).
* **Random logit** (Sixt et al. 2020, "When Explanations Lie: Why Many Modified BP
  Attributions Fail"): each image is also explained for a random *other* class with the
  trained model; maps that stay alike do not depend on the class.

``passes`` holds when, once every layer above the explained layer is randomised, the upper end
of the Spearman interval lies below the lower end of the reference interval. For Grad-CAM-like
methods these are the steps that matter: the layers below the explained layer supply the
activations the map is made of, and randomising them destroys image structure as much as
learning.

Speed: the model is cloned once into a working copy, the randomised arrays are assigned to its
variables in place step by step, so the explainer's compiled function for the copy is traced
once and reused at every step (and for the trained maps, made with the copy before the first
step).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from scipy.stats import rankdata

from ..kerasgraph import output_layer, parent_layers
from .intervals import bootstrap_mean, estimate, wholly_above
from .stats import pearson

METHOD = ("cascading model-parameter randomisation, top (logits) to input, explained again after "
          "every step (Adebayo et al. 2018); reference: trained maps of two different images of "
          "the same class; random logit: the map of a random other class (Sixt et al. 2020)")
READING = ("Spearman near the trained identity (1) at a step means the maps survived randomising "
           "every layer down to that step; the check passes when, with every layer above the "
           "explained one randomised, the maps are less like the trained maps than another "
           "image's trained maps are (the reference), and a random-logit similarity near 1 means "
           "the maps ignore the class.")
BATCH = 16
"""Images per explainer call: bounds the memory of the gradient tape at full size."""


@dataclass(frozen=True)
class Step:
    """One step of the cascade: a layer with a kernel (``name``, a path as
    :func:`xaicxr.kerasgraph.iter_layers` spells it) and the normalisation layers that follow it
    (weights, no kernel) up to the next kernel layer; ``layers`` lists them all, kernel first."""

    name: str
    layers: tuple[str, ...]


# --------------------------------------------------------------------------- seeds and copies


def randomisation_seed(train_seed: int, draw: int) -> int:
    """The seed of the ``draw``-th re-initialisation for a model trained with ``train_seed``.

    Re-initialising with the training seed itself would re-draw the very weights training started
    from; a head that moved little from them (early stopping after two epochs, say) then makes the
    maps "survive" randomisation (r 0.97 against about 0.2 with any other draw, measured on
    cxr3-real). A hash keeps the draws apart from the training stream and reproducible (the
    string is that of the earlier check, so its seeds are unchanged)."""
    digest = hashlib.sha256(f"xaicxr-sanity/{train_seed}/{draw}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


# --------------------------------------------------------------------------- the steps


def leaf_layers(model: Any) -> dict[str, Any]:
    """Every layer that is not itself a model, by path, in graph order."""
    from ..kerasgraph import is_submodel, iter_layers

    return {ref.path: ref.layer for ref in iter_layers(model) if not is_submodel(ref.layer)}


def _has_kernel(layer: Any) -> bool:
    return any(w.name.endswith("kernel") for w in layer.weights)


def _upstream_kernel(layer: Any, kernel_ids: dict[int, str]) -> Any | None:
    """The nearest kernel layer upstream of ``layer`` in its graph (breadth first), or None when
    the walk meets an input first (an input of a nested model, say)."""
    frontier, seen = parent_layers(layer), set()
    while frontier:
        nxt = []
        for op in frontier:
            if id(op) in seen:
                continue
            seen.add(id(op))
            if id(op) in kernel_ids:
                return op
            nxt += parent_layers(op)
        frontier = nxt
    return None


def cascade_steps(model: Any) -> list[Step]:
    """The steps of the cascade, top-down (the ``logits`` step first).

    A normalisation layer joins the kernel layer it follows in the graph (found by walking back
    through its inputs, so a shortcut's BatchNorm joins the shortcut's convolution even where the
    layer list interleaves branches); failing that, the kernel layer before it in graph order.
    Weighted layers before the first kernel layer (none in the built-in backbones) belong to no
    step and stay trained."""
    layers = leaf_layers(model)
    kernels = [path for path, layer in layers.items() if _has_kernel(layer)]
    kernel_ids = {id(layers[path]): path for path in kernels}
    members: dict[str, list[str]] = {path: [path] for path in kernels}
    previous = None
    for path, layer in layers.items():
        if path in members:
            previous = path
            continue
        if not layer.weights:
            continue
        owner = _upstream_kernel(layer, kernel_ids)
        owner_path = kernel_ids[id(owner)] if owner is not None else previous
        if owner_path is not None:
            members[owner_path].append(path)
    return [Step(path, tuple(members[path])) for path in reversed(kernels)]


def explained_layer_step(model: Any, steps: list[Step], layer_path: str) -> int | None:
    """Index of the last step above ``layer_path`` (None if no step is above it).

    "Above" is by graph position: a step is above the explained layer when its kernel layer is
    neither that layer nor one of its ancestors, so it does not shape the activations the map is
    made of. The answer is the last step of the unbroken run of such steps from the top: in a
    branching graph a kernel layer of a parallel branch that sits lower in graph order than an
    ancestor is randomised only later. ``layer_path`` "" (an explainer without a layer) puts
    every step above.

    The ancestors are walked in the explainer's own graph (every call of each layer), so a layer
    inside a nested model also finds the layers before that model."""
    if not layer_path:
        return len(steps) - 1 if steps else None
    from ..kerasgraph import explainable_model

    start = output_layer(explainable_model(model, layer_path).model)
    ancestors, frontier = {id(start)}, [start]
    while frontier:
        nxt = []
        for op in frontier:
            for parent in parent_layers(op, every_call=True):
                if id(parent) not in ancestors:
                    ancestors.add(id(parent))
                    nxt.append(parent)
        frontier = nxt
    layers = leaf_layers(model)
    run = 0
    while run < len(steps) and id(layers[steps[run].name]) not in ancestors:
        run += 1
    return run - 1 if run else None


# --------------------------------------------------------------------------- the cascade


def cascade(model: Any, seed: int, steps: list[Step] | None = None) -> Iterator[tuple[int, Any]]:
    """Randomise ``model``'s steps cumulatively in one working copy; ``model`` is left as it is.

    Yields ``(-1, copy)`` with the trained weights, then ``(i, copy)`` once step ``i`` is
    randomised as well (the same copy every time: use it before asking for the next step).
    The randomised values are fresh draws of each layer's own initializers, those of
    ``keras.models.clone_model`` under ``keras.utils.set_random_seed(seed)`` (the same seed
    draws the same weights). They are assigned to the copy's variables in place: a function
    compiled for the copy is traced once for the whole cascade."""
    import keras

    steps = cascade_steps(model) if steps is None else steps
    keras.utils.set_random_seed(seed)
    working = keras.models.clone_model(model)
    layers = leaf_layers(working)
    fresh = {path: layers[path].get_weights() for step in steps for path in step.layers}
    working.set_weights(model.get_weights())
    yield -1, working
    for i, step in enumerate(steps):
        for path in step.layers:
            layers[path].set_weights(fresh[path])
        yield i, working


def explain_batches(explainer: Any, model: Any, images: np.ndarray, targets: np.ndarray,
                    layer: str | None, target: Any = None) -> np.ndarray:
    """``explainer``'s maps of ``images`` for the classes ``targets``, :data:`BATCH` at a time;
    ``target``: the score explained (None: the explainer's default)."""
    from ..plugins.targets import explained

    return np.concatenate([explainer.explain_with_info(model, images[i:i + BATCH],  # flags: the metric's to judge
                                                       explained(target, targets[i:i + BATCH]), layer=layer)[0]
                           for i in range(0, len(images), BATCH)])


# --------------------------------------------------------------------------- similarity


def _centred_ranks(flat: np.ndarray) -> np.ndarray:
    ranks = rankdata(flat, axis=1)
    return ranks - ranks.mean(axis=1, keepdims=True)


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.divide((a * b).sum(axis=1), den, out=np.full(len(a), np.nan), where=den > 0)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (average ranks for ties); NaN where either
    map is constant (a degenerate all-zero map has no ranking)."""
    return _rank_correlation(_centred_ranks(a.reshape(len(a), -1)),
                             _centred_ranks(b.reshape(len(b), -1)))


@dataclass(frozen=True)
class RankedMaps:
    """Maps with the centred ranks of each map and of its absolute values, computed once: the
    trained maps are compared at every step, and ranking, not correlating, is what costs."""

    maps: np.ndarray
    ranks: np.ndarray
    abs_ranks: np.ndarray

    @classmethod
    def of(cls, maps: np.ndarray) -> "RankedMaps":
        flat = maps.reshape(len(maps), -1)
        ranks = _centred_ranks(flat)
        abs_ranks = ranks if (flat >= 0).all() else _centred_ranks(np.abs(flat))
        return cls(maps, ranks, abs_ranks)

    def __getitem__(self, rows: Any) -> "RankedMaps":
        return RankedMaps(self.maps[rows], self.ranks[rows], self.abs_ranks[rows])


def ssim_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM (Wang et al. 2004, as ``skimage.metrics.structural_similarity``, data range 1) of
    each pair of maps; NaN where either is constant, so all figures describe the same pairs."""
    from skimage.metrics import structural_similarity

    out = np.full(len(a), np.nan)
    for i, (x, y) in enumerate(zip(a, b)):
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            out[i] = structural_similarity(x.astype(np.float64), y.astype(np.float64),
                                           data_range=1.0)
    return out


def similarity(a: RankedMaps, b: RankedMaps, seed: int) -> dict[str, Any]:
    """Spearman, Spearman of absolute values and SSIM of paired maps, each a mean with a
    bootstrap 95 % interval; pairs with a constant map are left out."""
    return {"spearman": bootstrap_mean(_rank_correlation(a.ranks, b.ranks), seed=seed),
            "spearman_abs": bootstrap_mean(_rank_correlation(a.abs_ranks, b.abs_ranks), seed=seed),
            "ssim": bootstrap_mean(ssim_rows(a.maps, b.maps), seed=seed)}


def _degenerate(maps: np.ndarray) -> np.ndarray:
    return np.ptp(maps.reshape(len(maps), -1), axis=1) == 0


def reference_pairs(labels: np.ndarray, targets: np.ndarray, seed: int) -> np.ndarray:
    """(m, 2) rows of disjoint pairs of different images with the same label and target, drawn
    at random (seeded). Disjoint, so the pairs are independent and the bootstrap over them is
    honest; same target, so both maps explain the same class."""
    rng = np.random.default_rng(seed)
    pairs = []
    for key in sorted(set(zip(labels.tolist(), targets.tolist()))):
        rows = rng.permutation(np.flatnonzero((labels == key[0]) & (targets == key[1])))
        pairs += [rows[i:i + 2] for i in range(0, len(rows) - 1, 2)]
    return np.array(pairs, np.int64).reshape(-1, 2)


def other_classes(targets: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """A random class other than each target (seeded), uniform over the other classes."""
    rng = np.random.default_rng(seed)
    return (targets + rng.integers(1, n_classes, size=len(targets))) % n_classes


def _template_r(trained: np.ndarray, randomised: np.ndarray, labels: np.ndarray,
                classes: list[str]) -> dict[str, float | None]:
    out = {}
    for k, cls in enumerate(classes):
        pick = labels == k
        if pick.any():
            r = pearson(trained[pick].mean(axis=0), randomised[pick].mean(axis=0))
            out[cls] = float(r) if np.isfinite(r) else None
    return out


def _missing() -> dict[str, Any]:
    return estimate(None, None, None, 0)


# --------------------------------------------------------------------------- the test


def randomisation_test(model: Any, explainer: Any, images: np.ndarray, targets: np.ndarray,
                       labels: np.ndarray, classes: list[str], *, layer: str | None,
                       train_seed: int, draw: int = 0, max_steps: int | None = None,
                       seed: int = 0, target: Any = None) -> dict[str, Any]:
    """The cascade, the reference level and the random-logit test of ``explainer`` on ``images``
    (see the module docstring); a JSON-ready dict.

    ``targets`` are the classes the maps explain, ``labels`` the true classes (they define the
    reference pairs and the class-mean templates of ``template_r``, the figure of the earlier
    one-cut check, kept for continuity). The weights are re-drawn with
    ``randomisation_seed(train_seed, draw)``; ``seed`` draws the reference pairs, the random
    other classes and the bootstrap. ``max_steps`` stops the cascade early, but never before
    the explained-layer step, which the pass rule needs. ``target``: the score the maps explain
    (a :class:`~xaicxr.plugins.targets.Target`, bound to each batch's classes; None: the
    explainer's default).
    """
    images = np.asarray(images, np.float32)
    targets = np.asarray(targets, np.int64)
    labels = np.asarray(labels, np.int64)
    path = explainer.resolve_layer(model, layer or None)
    steps = cascade_steps(model)
    cut = explained_layer_step(model, steps, path)
    n_run = len(steps) if max_steps is None else min(len(steps), max(max_steps, (cut or 0) + 1))
    n_classes = int(model.outputs[0].shape[-1])
    result: dict[str, Any] = {"method": METHOD, "layer": path, "n": int(len(images)),
                              "draw": int(draw), "steps_total": len(steps), "steps": [],
                              "explained_layer_step": cut}
    if len(images) == 0:
        return {**result, "reference": {**_no_similarity(), "pairs": 0},
                "random_logit": {**_no_similarity(), "n": 0}, "degenerate_trained": 0,
                "template_r": {}, "mean_template_r": None, "passes": False, "reading": READING}

    explain_layer = path or None
    trained = other = at_cut = None
    others = other_classes(targets, n_classes, seed) if n_classes > 1 else None
    for i, working in cascade(model, randomisation_seed(train_seed, draw), steps[:n_run]):
        maps = explain_batches(explainer, working, images, targets, explain_layer, target)
        if i < 0:
            trained = RankedMaps.of(maps)
            if others is not None:
                other = RankedMaps.of(explain_batches(explainer, working, images, others, explain_layer, target))
            continue
        result["steps"].append({"step": i, "name": steps[i].name, "randomised": list(steps[i].layers),
                                "above_explained_layer": cut is not None and i <= cut,
                                **similarity(trained, RankedMaps.of(maps), seed),
                                "degenerate": int(_degenerate(maps).sum())})
        if i == cut:
            at_cut = maps

    pairs = reference_pairs(labels, targets, seed)
    reference = (similarity(trained[pairs[:, 0]], trained[pairs[:, 1]], seed) if len(pairs)
                 else _no_similarity())
    random_logit = similarity(trained, other, seed) if other is not None else _no_similarity()
    template_r = _template_r(trained.maps, at_cut, labels, classes) if at_cut is not None else {}
    finite = [r for r in template_r.values() if r is not None]
    return {**result,
            "reference": {**reference, "pairs": int(len(pairs))},
            "random_logit": {**random_logit, "n": int(len(images)) if other is not None else 0},
            "degenerate_trained": int(_degenerate(trained.maps).sum()),
            "template_r": template_r,
            "mean_template_r": float(np.mean(finite)) if finite else None,
            "passes": _passes(result["steps"], cut, reference),
            "reading": READING}


def _no_similarity() -> dict[str, Any]:
    return {"spearman": _missing(), "spearman_abs": _missing(), "ssim": _missing()}


def _passes(steps: list[dict[str, Any]], cut: int | None, reference: dict[str, Any]) -> bool:
    """Whether the Spearman interval at the explained-layer step lies wholly below the
    reference interval (False when either is missing)."""
    if cut is None or cut >= len(steps):
        return False
    return wholly_above(reference["spearman"], steps[cut]["spearman"])
