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
* **Reference level**: the same figures between the trained map of each image and the trained
  maps of *every other* image of the same class (and the same target), averaged per image. Every
  map shares a layout (the centre of the image, the border of the receptive fields, the
  upsampling grid), so two unrelated maps are already far from uncorrelated; a randomised map
  that stays at or above this level has not been shown to depend on the weights at all. A fixed
  pass line (say r < 0.5) cannot tell a faithful explainer from one that only shows image
  structure: LayerCAM's trained-vs-randomised Spearman (0.43-0.47 on cxr3-real) equalled that of
  two different images' trained maps (0.49).
* **Random logit** (Sixt et al. 2020, "When Explanations Lie: Why Many Modified BP
  Attributions Fail"): each image is also explained for a random *other* class with the
  trained model; maps that stay alike do not depend on the class.

**Draws.** The randomised weights are one draw of the initializers, and the figures move with
the draw (the final step of one Grad-CAM cascade ranged from -0.02 to 0.20 over draws), so the
cascade is run ``draws`` times (default 3), each with its own re-initialisation. A step's figure
is the mean over images of each image's mean over the draws; its interval resamples images and
draws (:func:`~xaicxr.analysis.intervals.crossed_bootstrap_mean`), so it carries the draw
variance.

**Pass rules**, both per image and paired, with a fixed margin (default 0.05), so that a larger
sample narrows the interval without changing what is claimed:

* ``passes`` (the cascade): once every layer above the explained layer is randomised, each
  image's randomised map is less like its trained map than the other images' trained maps are:
  the lower end of the interval of mean(reference - Spearman at the explained-layer step) lies
  above the margin. For Grad-CAM-like methods these are the steps that matter: the layers below
  the explained layer supply the activations the map is made of, and randomising them destroys
  image structure as much as learning.
* ``random_logit.passes``: the map of a random other class is no more like the explained
  class's map than the other images' maps of the explained class are, up to the margin: the
  upper end of the interval of mean(random-logit Spearman - reference) lies below the margin.
  An explainer that ignores the class gives a random-logit Spearman near 1, far above the
  reference. Two classes whose evidence lies in the same region can fail it with a faithful
  explainer: read it beside the reliance figures.

Speed: the model is cloned once into a working copy, the randomised arrays are assigned to its
variables in place step by step, so the explainer's compiled function for the copy is traced
once and reused at every step (and for the trained maps, made with the copy before the first
step). The images are taken :data:`BATCH` at a time, each span through the whole cascade, in
this process or on a cluster's workers (``executor``); the reference pairs, the random other
classes and the bootstrap are drawn here, from ``seed`` alone.
"""

from __future__ import annotations

import hashlib
import random
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from scipy.stats import rankdata

from ..kerasgraph import output_layer, parent_layers
from ..progress import progress_bar
from .intervals import bootstrap_mean, crossed_bootstrap_mean, estimate, paired_difference
from .stats import pearson

METHOD = ("cascading model-parameter randomisation, top (logits) to input, explained again after "
          "every step (Adebayo et al. 2018), averaged over several re-initialisations; reference: "
          "each image's trained map against those of every other image of the same class; random "
          "logit: the map of a random other class (Sixt et al. 2020)")
READING = ("Spearman near the trained identity (1) at a step means the maps survived randomising "
           "every layer down to that step; the check passes when, with every layer above the "
           "explained one randomised, each image's map is less like its trained map than the other "
           "images' trained maps are (the reference), by more than the margin; the random-logit "
           "check passes when the map of another class is no more like the explained class's map "
           "than the reference, up to the margin (a random-logit similarity near 1 means the maps "
           "ignore the class).")
BATCH = 16
"""Images per explainer call: bounds the memory of the gradient tape at full size."""
DRAWS = 3
"""Re-initialisations of the weights the cascade is run with."""
MARGIN = 0.05
"""The pass rules' minimum effect, in Spearman."""


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


def fresh_weights(model: Any, seed: int, steps: list[Step]) -> dict[str, list[np.ndarray]]:
    """The randomised weights of every layer of ``steps``, by path: fresh draws of each layer's
    own initializers, those of ``keras.models.clone_model`` under
    ``keras.utils.set_random_seed(seed)`` (the same seed draws the same weights)."""
    import keras

    keras.utils.set_random_seed(seed)
    with _own_randint(seed):
        layers = leaf_layers(keras.models.clone_model(model))
    return {path: layers[path].get_weights() for step in steps for path in step.layers}


@contextmanager
def _own_randint(seed: int) -> Iterator[None]:
    """``random.randint`` from a generator of this thread alone, seeded with ``seed``, for the
    duration. Keras draws the seed of every unseeded initializer with ``random.randint`` of
    Python's shared generator, which other threads of the process draw from too (a Dask client's
    did, between ``set_random_seed`` and the clone, and the weights changed from one call to the
    next); the sequence is the one ``random.seed(seed)`` gives a quiet process."""
    own, shared, thread = random.Random(seed), random.randint, threading.get_ident()

    def randint(a: int, b: int) -> int:
        return own.randint(a, b) if threading.get_ident() == thread else shared(a, b)

    random.randint = randint
    try:
        yield
    finally:
        random.randint = shared


def cascade(model: Any, seed: int, steps: list[Step] | None = None, *,
            fresh: dict[str, list[np.ndarray]] | None = None,
            keep: dict[Any, Any] | None = None) -> Iterator[tuple[int, Any]]:
    """Randomise ``model``'s steps cumulatively in one working copy; ``model`` is left as it is.

    Yields ``(-1, copy)`` with the trained weights, then ``(i, copy)`` once step ``i`` is
    randomised as well (the same copy every time: use it before asking for the next step).
    The randomised values are ``fresh`` (default: :func:`fresh_weights` of ``seed``). They are
    assigned to the copy's variables in place: a function compiled for the copy is traced once
    for the whole cascade. With ``keep`` (a dict) the copy is kept there for the next cascade of
    the same model (a span of images at a time, :class:`CascadeSpan`), so it is traced once for
    all of them. The global seed is set to ``seed`` before the first yield, so an explainer that
    draws from it starts from the same state at every cascade."""
    import keras

    steps = cascade_steps(model) if steps is None else steps
    if fresh is None:
        fresh = fresh_weights(model, seed, steps)
    working = None if keep is None else keep.get(id(model))
    if working is None:
        working = keras.models.clone_model(model)
        if keep is not None:
            keep[id(model)] = working
    layers = leaf_layers(working)
    working.set_weights(model.get_weights())
    keras.utils.set_random_seed(seed)
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


def similarity_rows(a: RankedMaps, b: RankedMaps) -> dict[str, np.ndarray]:
    """Spearman, Spearman of absolute values and SSIM of each pair of maps (NaN where a map is
    constant)."""
    return {"spearman": _rank_correlation(a.ranks, b.ranks),
            "spearman_abs": _rank_correlation(a.abs_ranks, b.abs_ranks),
            "ssim": ssim_rows(a.maps, b.maps)}


def summarise(rows: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Each figure of :func:`similarity_rows` as a mean with a bootstrap 95 % interval; pairs
    with a constant map are left out."""
    return {name: bootstrap_mean(values, seed=seed) for name, values in rows.items()}


def _degenerate(maps: np.ndarray) -> np.ndarray:
    return np.ptp(maps.reshape(len(maps), -1), axis=1) == 0


def reference_rows(trained: RankedMaps, labels: np.ndarray, targets: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
    """Per image, the mean Spearman, Spearman of absolute values and SSIM between its map and the
    map of every other image with the same label and target (NaN for an image without one), and
    the number of such pairs. All pairs, not a sample of disjoint ones: each image gets its own
    reference, so the pass rule can pair them."""
    n = len(labels)
    rows = {name: np.full(n, np.nan) for name in ("spearman", "spearman_abs", "ssim")}
    pairs = 0
    for key in sorted(set(zip(labels.tolist(), targets.tolist()))):
        group = np.flatnonzero((labels == key[0]) & (targets == key[1]))
        if len(group) < 2:
            continue
        pairs += len(group) * (len(group) - 1) // 2
        for name, ranks in (("spearman", trained.ranks), ("spearman_abs", trained.abs_ranks)):
            rows[name][group] = _mean_off_diagonal(_correlation_matrix(ranks[group]))
        ssim = np.full((len(group), len(group)), np.nan)
        for a in range(len(group)):
            for b in range(a + 1, len(group)):
                ssim[a, b] = ssim[b, a] = ssim_rows(trained.maps[group[a]][None], trained.maps[group[b]][None])[0]
        rows["ssim"][group] = _mean_off_diagonal(ssim)
    return rows, pairs


def _correlation_matrix(centred: np.ndarray) -> np.ndarray:
    norms = np.sqrt((centred * centred).sum(axis=1))
    products = centred @ centred.T
    outer = np.outer(norms, norms)
    return np.divide(products, outer, out=np.full(products.shape, np.nan), where=outer > 0)


def _mean_off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """Each row's mean over the other columns, NaN entries left out (NaN where none is left)."""
    off = matrix.copy()
    np.fill_diagonal(off, np.nan)
    finite = np.isfinite(off)
    total = np.where(finite, off, 0.0).sum(axis=1)
    count = finite.sum(axis=1)
    return np.divide(total, count, out=np.full(len(off), np.nan), where=count > 0)


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
                       train_seed: int, draw: int = 0, draws: int = DRAWS, margin: float = MARGIN,
                       max_steps: int | None = None, seed: int = 0, target: Any = None,
                       executor: Any = None) -> dict[str, Any]:
    """The cascade, the reference level and the random-logit test of ``explainer`` on ``images``
    (see the module docstring); a JSON-ready dict.

    ``targets`` are the classes the maps explain, ``labels`` the true classes (they define the
    reference pairs and the class-mean templates of ``template_r``, the figure of the earlier
    one-cut check, kept for continuity, averaged over the draws). The weights are re-drawn
    ``draws`` times, with ``randomisation_seed(train_seed, draw + d)`` for d = 0, 1, ...;
    ``margin`` is the pass rules' minimum effect; ``seed`` draws the random other classes and
    the bootstrap. ``max_steps`` stops the cascade early, but never before the explained-layer
    step, which the pass rule needs. ``target``: the score the maps explain (a
    :class:`~xaicxr.plugins.targets.Target`, bound to each batch's classes; None: the
    explainer's default). ``executor`` (a :class:`~xaicxr.executors.model_passes.ModelExecutor`)
    runs the cascade on spans of :data:`BATCH` images (:class:`CascadeSpan`), in this process when
    None: the same spans either way, so the same figures.
    """
    if draws < 1:
        raise ValueError(f"'draws' must be at least 1, got {draws}")
    images = np.asarray(images, np.float32)
    targets = np.asarray(targets, np.int64)
    labels = np.asarray(labels, np.int64)
    path = explainer.resolve_layer(model, layer or None)
    steps = cascade_steps(model)
    cut = explained_layer_step(model, steps, path)
    n_run = len(steps) if max_steps is None else min(len(steps), max(max_steps, (cut or 0) + 1))
    n_classes = int(model.outputs[0].shape[-1])
    result: dict[str, Any] = {"method": METHOD, "layer": path, "n": int(len(images)),
                              "draw": int(draw), "draws": int(draws), "margin": float(margin),
                              "steps_total": len(steps), "steps": [], "explained_layer_step": cut}
    if len(images) == 0:
        return {**result, "reference": {**_no_similarity(), "pairs": 0},
                "random_logit": {**_no_similarity(), "n": 0, "difference_from_reference": _missing(),
                                 "passes": False},
                "pass_rule": {"difference": _missing()}, "degenerate_trained": 0,
                "template_r": {}, "mean_template_r": None, "passes": False, "reading": READING}

    others = other_classes(targets, n_classes, seed) if n_classes > 1 else None
    seeds = [randomisation_seed(train_seed, draw + d) for d in range(draws)]
    cuts = [(start, min(start + BATCH, len(images))) for start in range(0, len(images), BATCH)]
    per_span = 1 + draws * n_run
    remote = executor is not None and not executor.executor.local
    with progress_bar(f"cascade {path or type(explainer).__name__}", len(cuts) * per_span, unit="step") as advance:
        task = CascadeSpan(explainer, images, targets, others, path or None, target, seeds[0],
                           tuple(steps[:n_run]), tuple(fresh_weights(model, s, steps[:n_run]) for s in seeds), cut,
                           advance=advance)
        spans = []
        for span in (task(model, c) for c in cuts) if executor is None else executor.map(task, cuts):
            spans.append(span)
            if remote:  # a worker's copy of the task cannot advance this process's bar
                advance(per_span)
    trained = RankedMaps.of(np.concatenate([s["trained"] for s in spans]))
    by_draw = [[_joined([s["steps"][d][i] for s in spans]) for i in range(n_run)] for d in range(draws)]
    for i, step in enumerate(steps[:n_run]):
        rows = {name: np.stack([by_draw[d][i][name] for d in range(draws)], axis=1)
                for name in by_draw[0][i]}
        degenerate = rows.pop("degenerate")
        result["steps"].append({"step": i, "name": step.name, "randomised": list(step.layers),
                                "above_explained_layer": cut is not None and i <= cut,
                                **{name: crossed_bootstrap_mean(v, seed=seed) for name, v in rows.items()},
                                "degenerate": int(degenerate.sum())})

    reference_per_image, pairs = reference_rows(trained, labels, targets)
    reference = summarise(reference_per_image, seed)
    random_logit = _random_logit(spans, reference_per_image["spearman"], margin, seed) if others is not None \
        else {**_no_similarity(), "n": 0, "difference_from_reference": _missing(), "passes": False}
    at_cut = cut is not None and cut < n_run
    rule = {"difference": _missing(), "passes": False}
    template_r: dict[str, float | None] = {}
    if at_cut:
        spearman_at_cut = np.stack([by_draw[d][cut]["spearman"] for d in range(draws)], axis=1)
        rule = cascade_rule(reference_per_image["spearman"], spearman_at_cut, margin, seed=seed)
        maps_at_cut = [np.concatenate([s["at_cut"][d] for s in spans]) for d in range(draws)]
        template_r = _mean_template_r([_template_r(trained.maps, m, labels, classes) for m in maps_at_cut])
    finite = [r for r in template_r.values() if r is not None]
    return {**result,
            "reference": {**reference, "pairs": int(pairs)},
            "random_logit": random_logit,
            "pass_rule": {"difference": rule["difference"]},
            "degenerate_trained": int(_degenerate(trained.maps).sum()),
            "template_r": template_r,
            "mean_template_r": float(np.mean(finite)) if finite else None,
            "passes": rule["passes"],
            "reading": READING}


def cascade_rule(reference: np.ndarray, at_cut: np.ndarray, margin: float, *, seed: int = 0) -> dict[str, Any]:
    """The cascade's pass rule: ``reference`` (images,) each image's Spearman with the other
    images' trained maps, ``at_cut`` (images, draws) its Spearman with its own map once every
    layer above the explained one is randomised. Passes when the lower end of the interval of
    mean(reference - at_cut) (images and draws resampled) lies above ``margin``."""
    at_cut = np.asarray(at_cut, np.float64)
    at_cut = at_cut[:, None] if at_cut.ndim == 1 else at_cut
    difference = crossed_bootstrap_mean(np.asarray(reference, np.float64)[:, None] - at_cut, seed=seed)
    lower = difference["ci95"][0]
    return {"difference": difference, "passes": lower is not None and lower > margin}


def random_logit_rule(random_logit: np.ndarray, reference: np.ndarray, margin: float, *,
                      seed: int = 0) -> dict[str, Any]:
    """The random-logit pass rule: ``random_logit`` (images,) each image's Spearman between the
    maps of the explained class and of a random other class, ``reference`` as in
    :func:`cascade_rule`. Passes when the upper end of the interval of
    mean(random_logit - reference) lies below ``margin``."""
    difference = paired_difference(random_logit, reference, seed=seed)
    upper = difference["ci95"][1]
    return {"difference_from_reference": difference, "passes": upper is not None and upper < margin}


def _random_logit(spans: list[dict[str, Any]], reference: np.ndarray, margin: float, seed: int) -> dict[str, Any]:
    rows = _joined([s["random_logit"] for s in spans])
    return {**summarise(rows, seed), "n": int(len(reference)),
            **random_logit_rule(rows["spearman"], reference, margin, seed=seed)}


def _mean_template_r(per_draw: list[dict[str, float | None]]) -> dict[str, float | None]:
    out = {}
    for cls in per_draw[0]:
        values = [r[cls] for r in per_draw if r.get(cls) is not None]
        out[cls] = float(np.mean(values)) if values else None
    return out


@dataclass(frozen=True, eq=False)
class CascadeSpan:
    """The cascade on one span of images: a picklable task of ``ModelExecutor.map_spans``, so
    spans can run on a cluster's workers. Returns
    the trained maps, per step the per-image similarity to them and degenerate flags, the
    random-logit similarity and the maps at the explained-layer step: the figures over all
    images are computed from these by the caller."""

    explainer: Any
    images: np.ndarray
    targets: np.ndarray
    others: np.ndarray | None
    """A random other class per image (random logit); None with one class."""
    layer: str | None
    target: Any
    weights_seed: int
    """The global seed set before every cascade (the first draw's): an explainer that draws
    from it (RISE's masks) starts from the same state in every draw."""
    steps: tuple[Step, ...]
    fresh: tuple[dict[str, list[np.ndarray]], ...]
    """The randomised weights of each draw, drawn once by the caller: a worker's own draw could
    differ (its other threads share Python's random state, which Keras draws initializer seeds
    from)."""
    cut: int | None
    working_copies: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """The cascade's working copy, kept from one span to the next in the process that runs them
    (:func:`cascade`'s ``keep``); empty when the task is sent to a worker."""
    advance: Any = field(default=None, compare=False, repr=False)
    """Called once per explained step (the trained maps and each draw's steps) in the process
    that made the task: a long cascade shows its progress; None on a worker."""

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "working_copies": {}, "advance": None}

    def _done_one(self) -> None:
        if self.advance is not None:
            self.advance(1)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __call__(self, model: Any, span: tuple[int, int]) -> dict[str, Any]:
        part = slice(*span)
        images, targets = self.images[part], self.targets[part]
        out: dict[str, Any] = {"steps": [], "random_logit": None, "at_cut": []}
        trained = None
        for fresh in self.fresh:
            steps, at_cut = [], None
            for i, working in cascade(model, self.weights_seed, list(self.steps), fresh=fresh,
                                      keep=self.working_copies):
                if i < 0:
                    if trained is None:
                        trained = self._trained(working, images, targets, part, out)
                        self._done_one()
                    continue
                maps = explain_batches(self.explainer, working, images, targets, self.layer, self.target)
                steps.append({**similarity_rows(trained, RankedMaps.of(maps)), "degenerate": _degenerate(maps)})
                self._done_one()
                if i == self.cut:
                    at_cut = maps
            out["steps"].append(steps)
            out["at_cut"].append(at_cut)
        return out

    def _trained(self, working: Any, images: np.ndarray, targets: np.ndarray, part: slice,
                 out: dict[str, Any]) -> RankedMaps:
        """The trained maps (the same in every draw: made once) and the random-logit rows."""
        maps = explain_batches(self.explainer, working, images, targets, self.layer, self.target)
        trained = RankedMaps.of(maps)
        out["trained"] = maps
        if self.others is not None:
            other = explain_batches(self.explainer, working, images, self.others[part], self.layer, self.target)
            out["random_logit"] = similarity_rows(trained, RankedMaps.of(other))
        return trained


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-image arrays of consecutive spans, joined by name."""
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _no_similarity() -> dict[str, Any]:
    return {"spearman": _missing(), "spearman_abs": _missing(), "ssim": _missing()}
