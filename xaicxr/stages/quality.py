"""The quality stage: can these heatmaps and templates be trusted? Every figure next to what a
map that knows nothing earns, with its 95 % interval (docs/quality.md).

For each explainer of the run, on the images it explained, grouped by true class (only maps that
explain the image's own class are scored against its lesion: with ``targets = "predicted"``, a
misclassified image's map explains another class and is counted in ``n_other_target``):

- ``per_image``: localisation against the lesion masks (pointing game at tolerance 0 and at the
  default tolerance, lesion energy, lifts, Otsu mIoU), lung energy, consistency and split-half
  reliability, and the ``skill`` over the best uninformed baseline;
- ``baselines``: the same figures for maps that ignore the lesion, on the same images, plus
  their deletion/insertion AUCs (the first set of explained images; an explainer that explained
  other images carries its own under ``per_image[explainer][class]["baselines"]``);
- ``templates``: each aggregator's template scored as a map, and template faithfulness;
- ``faithfulness``: deletion and insertion AUCs with a blur and a ROAD imputation fill;
- ``randomisation``: the cascading model-parameter randomisation test, its reference level and
  the random-logit test; ``sanity``: its one-line summary;
- ``reliance`` (datasets that can make counterfactual twins; ``{}`` otherwise): whether the model
  relies on the lesion at all, per class: where it does not, a localisation figure tests nothing.

``quality.h5`` keeps the per-image scores of every explainer and baseline and the explainers'
deletion/insertion curves, for re-analysis.

A store of a binary task's score (``target = "binary:<task>"``) is not scored: its reason is
under ``quality_skipped`` (see :data:`BINARY_SKIP_REASON`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..analysis import baselines as base
from ..analysis.intervals import bootstrap_mean, describe, paired_difference
from ..analysis.localisation import Targets, class_figures, default_tolerance
from ..analysis.lungs import segment_lungs
from ..analysis.reliability import consistency, split_half
from ..analysis.reliance import reliance_figures
from ..analysis.template_quality import distinctiveness, template_figures
from ..config import build_plugin, store_name
from ..io import atomic
from ..io.heatmap_store import HeatmapStore
from ..io.imagecache import SPLITS, ImageCache
from ..io.resize import fit_square
from ..io.template_store import is_multi_component, read_template_file
from ..plugins.targets import make_target
from ..progress import console, progress_bar
from ..rundir import RunDir
from . import Run
from .evaluate import predict_images

NAME = "quality"
TABLES = ("quality",)

BINARY_SKIP_REASON = (
    "not scored: the maps explain a binary task's score (the summed probability of its positive classes), "
    "not one class. Every quality figure here is defined for one class: localisation against that class's "
    "lesions next to that class's prior, deletion/insertion and template faithfulness on that class's "
    "probability, randomisation of that class's maps. Scoring the positive side against the union of its "
    "classes' lesions would pool lesions of different shapes and places under one prior and one score; "
    "compare the class stores' figures instead, and the side templates in the report.")
"""Why a binary store gets no quality figures (``metrics.json`` ``quality_skipped``)."""


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.quality]


def run(run: Run) -> dict[str, Any]:
    opts = run.cfg["quality"]
    cache = run.image_cache()
    classes = run.dir.read_split()["classes"]
    figures: dict[str, Any] = {"per_image": {}, "baselines": {}, "templates": {}, "faithfulness": {},
                               "randomisation": {}, "sanity": {}, "distinctiveness": {}, "reliance": {},
                               "quality_skipped": {}}
    sets: dict[tuple, _ImageSet] = {}
    with atomic.atomic_path(run.dir.quality) as tmp, h5py.File(tmp, "w") as out:
        for spec in run.cfg["explain"]:
            name = store_name(spec)
            with HeatmapStore(run.dir.heatmaps(name)) as store:
                if store.is_binary:
                    figures["quality_skipped"][name] = {"target": store.target, "reason": BINARY_SKIP_REASON}
                    continue
                key = (tuple(store.ids), store.targets.tobytes())
                if key not in sets:
                    sets[key] = _ImageSet(store, cache, classes, opts, out.require_group(f"baselines/{name}"))
                images, first = sets[key], next(iter(sets.values()))
                figures["baselines"] = first.baseline_figures
                figures["per_image"][name] = _per_image(images, store, opts, out.require_group(f"scores/{name}"),
                                                        own_baselines=images is not first)
                if opts["faithfulness"]:
                    figures["faithfulness"][name] = _faithfulness(run, images, store, opts,
                                                                  out.require_group(f"curves/{name}"))
                for agg in run.cfg["aggregate"]:
                    key_t = f"{name}-{agg['name']}"
                    figures["templates"][key_t], distinct = _templates(run, images, opts, name, agg["name"])
                    if distinct is not None:
                        figures["distinctiveness"][key_t] = distinct
                if opts["randomisation"]:
                    result = _randomisation(run, store, cache, classes, opts, spec)
                    figures["randomisation"][name] = result
                    figures["sanity"][name] = _sanity_line(result)
        if opts["reliance"]:
            figures["reliance"] = _reliance(run, cache, classes, opts) or {}
        out.attrs["classes"] = list(classes)
    run.dir.update_metrics(figures)
    return {"explainers": list(figures["per_image"]),
            "sanity": {k: v["passes"] for k, v in figures["sanity"].items()},
            "reliance": {c: v["relies_on_lesion"] for c, v in figures["reliance"].items()}}


# --------------------------------------------------------------------------- the images explained


class _ImageSet:
    """The images an explainer explained, per true class: images, masks, scoring targets, the
    uninformed baselines and their deletion/insertion curves. Built once for every explainer
    that explained the same images for the same targets."""

    def __init__(self, store: HeatmapStore, cache: ImageCache, classes: list[str], opts: dict[str, Any],
                 out: h5py.Group) -> None:
        self.classes, self.opts = classes, opts
        self.size = store.shape[1]
        self.tolerance = default_tolerance(self.size, opts["tolerance"])
        self.segmented: set[int] = set()
        rng = np.random.default_rng(opts["seed"])
        cache_rows = cache.rows_of(store.ids)
        self.priors = _class_priors(cache, len(classes), exclude=set(cache_rows.tolist()))
        self.data: dict[int, dict[str, Any]] = {}
        self.other_target: dict[int, int] = {}
        for k in range(len(classes)):
            of_class = np.flatnonzero(store.labels == k)
            rows = of_class[store.targets[of_class] == k]
            self.other_target[k] = int(len(of_class) - len(rows))
            if opts["max_images"] and len(rows) > opts["max_images"]:
                rows = np.sort(rng.choice(rows, opts["max_images"], replace=False))
            if not len(rows):
                continue
            block = cache.read(cache_rows[rows])
            lung = self._lungs(block, k)
            targets = Targets(block["lesion"], lung, self.tolerance)
            sample = np.arange(len(rows))
            if opts["faithfulness_images"] and len(rows) > opts["faithfulness_images"]:
                sample = np.sort(rng.choice(len(rows), opts["faithfulness_images"], replace=False))
            self.data[k] = {"rows": rows, "images": block["images"], "targets": targets, "sample": sample}
        self.baseline_scores, self.baseline_figures = {}, {}
        for k, data in self.data.items():
            scores = base.baseline_scores(data["targets"], self.priors.get(k), (self.size, self.size),
                                          seed=opts["seed"] + k)
            self.baseline_scores[k] = scores
            self.baseline_figures[classes[k]] = {b: class_figures(s, data["targets"], seed=opts["seed"])
                                                 for b, s in scores.items()}
            for b, s in scores.items():
                for fig, values in s.items():
                    out.create_dataset(f"{classes[k]}/{b}/{fig}", data=values)
        self.baseline_curves: dict[tuple[int, str], dict[str, dict[str, np.ndarray]]] = {}

    def _lungs(self, block: dict[str, Any], k: int) -> np.ndarray:
        """The lung masks of a block, segmented from the image where a row has none."""
        lung = block["lung"] if block["lung"] is not None else np.zeros(block["images"].shape, bool)
        missing = np.flatnonzero(~block["has_lung"])
        if len(missing):
            lung = lung.copy()
            for i in missing:
                lung[i] = segment_lungs(block["images"][i])
            self.segmented.add(k)
        return lung

    def curves_of_baselines(self, model: Any, k: int, fill: str) -> dict[str, dict[str, np.ndarray]]:
        """Deletion/insertion curves of the uninformed orders on class ``k``'s sample (once)."""
        from ..analysis.faithfulness import perturbation_curves

        if (k, fill) not in self.baseline_curves:
            data, opts = self.data[k], self.opts
            pick = data["sample"]
            targets = data["targets"].take(pick)
            curves = {}
            for name in opts["faithfulness_baselines"]:
                maps = base.baseline_maps(name, targets.lung, self.priors.get(k), (self.size, self.size),
                                          len(pick), seed=opts["seed"])
                if maps is None:
                    continue
                maps = np.broadcast_to(maps, (len(pick), self.size, self.size)) if maps.ndim == 2 else maps
                curves[name] = perturbation_curves(model, data["images"][pick], np.ascontiguousarray(maps),
                                                   np.full(len(pick), k), fill=fill,
                                                   fractions=np.linspace(0, 1, opts["fractions"]), seed=opts["seed"])
                self.baseline_figures[self.classes[k]][name].setdefault("faithfulness", {})[fill] = {
                    "deletion_auc": bootstrap_mean(curves[name]["deletion_auc"], seed=opts["seed"]),
                    "insertion_auc": bootstrap_mean(curves[name]["insertion_auc"], seed=opts["seed"]),
                    "deletion_curve": np.nanmean(curves[name]["deletion"], axis=0).round(5).tolist(),
                    "insertion_curve": np.nanmean(curves[name]["insertion"], axis=0).round(5).tolist()}
            self.baseline_curves[(k, fill)] = curves
        return self.baseline_curves[(k, fill)]


def _class_priors(cache: ImageCache, n_classes: int, exclude: set[int]) -> dict[int, np.ndarray]:
    """The mean lesion mask of every class over training images that are not scored (a prior
    must not have seen the images it is scored on); where the training split is what is scored,
    over the other splits."""
    for splits in (("train",), tuple(s for s in SPLITS if s != "train")):
        rows = np.array([r for s in splits for r in cache.rows(s) if r not in exclude], dtype=np.int64)
        chunks = (rows[i:i + 256] for i in range(0, len(rows), 256))
        priors = base.class_priors(((cache.read(c)["lesion"], cache.labels[c]) for c in chunks), n_classes)
        if priors:
            return priors
    return {}


# --------------------------------------------------------------------------- figures


def _per_image(images: _ImageSet, store: HeatmapStore, opts: dict[str, Any], group: h5py.Group, *,
               own_baselines: bool) -> dict[str, Any]:
    out = {}
    seed = opts["seed"]
    for k, data in images.data.items():
        cls = images.classes[k]
        maps = store.read(data["rows"])
        degenerate = store.degenerate[data["rows"]]
        targets = data["targets"]
        scores = targets.scores(maps, degenerate)
        figures = class_figures(scores, targets, seed=seed)
        figures["n"] = int(len(data["rows"]))
        figures["n_degenerate"] = int(degenerate.sum())
        figures["n_other_target"] = images.other_target[k]
        figures["consistency"] = consistency(maps, seed=seed)
        figures["split_half"] = split_half(maps, partitions=opts["partitions"], seed=seed)
        skill = base.skill(figures, scores, images.baseline_figures[cls], images.baseline_scores[k], targets, seed=seed)
        if skill:
            figures["skill"] = skill
        if own_baselines:
            figures["baselines"] = images.baseline_figures[cls]
        figures["lung_source"] = "segmented (scikit-image)" if k in images.segmented else "mask"
        out[cls] = figures
        group.create_dataset(f"{cls}/ids", data=np.array([store.ids[r] for r in data["rows"]], dtype=object),
                             dtype=h5py.string_dtype())
        for fig, values in scores.items():
            group.create_dataset(f"{cls}/{fig}", data=values)
    for k, other in images.other_target.items():
        if k not in images.data and other:
            out[images.classes[k]] = {"n": 0, "n_other_target": other}
    return out


def _faithfulness(run: Run, images: _ImageSet, store: HeatmapStore, opts: dict[str, Any],
                  group: h5py.Group) -> dict[str, Any]:
    from ..analysis.faithfulness import perturbation_curves

    model, out = run.model(), {}
    total = sum(len(d["sample"]) for d in images.data.values()) * len(opts["fills"])
    with progress_bar("deletion/insertion", total) as advance:
        for k, data in images.data.items():
            cls, pick = images.classes[k], data["sample"]
            maps = store.read(data["rows"][pick])
            per_fill: dict[str, Any] = {}
            for fill in opts["fills"]:
                curves = perturbation_curves(model, data["images"][pick], maps, np.full(len(pick), k), fill=fill,
                                             fractions=np.linspace(0, 1, opts["fractions"]), seed=opts["seed"])
                per_fill[fill] = _curve_figures(curves, images.curves_of_baselines(model, k, fill), opts["seed"])
                for part in ("deletion", "insertion"):
                    group.create_dataset(f"{cls}/{fill}/{part}", data=curves[part].astype(np.float32))
                group.attrs["fractions"] = curves["fractions"]
                advance(len(pick))
            out[cls] = per_fill
    return out


def _curve_figures(curves: dict[str, np.ndarray], reference: dict[str, dict[str, np.ndarray]],
                   seed: int) -> dict[str, Any]:
    """AUCs with intervals, and the skill over the best uninformed order: for deletion the
    lowest baseline AUC minus the explainer's (a faithful map deletes the evidence first), for
    insertion the explainer's minus the highest baseline AUC."""
    out: dict[str, Any] = {"fractions": [round(float(f), 4) for f in curves["fractions"]],
                           "deletion_curve": np.nanmean(curves["deletion"], axis=0).round(5).tolist(),
                           "insertion_curve": np.nanmean(curves["insertion"], axis=0).round(5).tolist()}
    for part, better in (("deletion_auc", min), ("insertion_auc", max)):
        out[part] = bootstrap_mean(curves[part], seed=seed)
        if reference:
            means = {b: float(np.nanmean(c[part])) for b, c in reference.items()}
            best = better(means, key=means.get)
            diff = (paired_difference(reference[best][part], curves[part], seed=seed) if part == "deletion_auc"
                    else paired_difference(curves[part], reference[best][part], seed=seed))
            out[f"{part}_skill"] = {"baseline": best, **diff}
    return out


def _templates(run: Run, images: _ImageSet, opts: dict[str, Any], explainer: str,
               aggregator: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    loaded = read_template_file(run.dir.template(explainer, aggregator))
    if is_multi_component(loaded):
        return {cls: {"n": int(attrs.get("n", 0)),
                      "explained_variance_ratio": np.asarray(attrs.get("explained_variance_ratio", [])).tolist(),
                      "note": "components, not one map: no localisation figures"}
                for cls, (_, attrs) in loaded.items()}, None
    out: dict[str, Any] = {}
    for k, data in images.data.items():
        cls = images.classes[k]
        if cls not in loaded:
            continue
        template, attrs = loaded[cls]
        n = int(attrs.get("n", 0))
        if n == 0:
            out[cls] = {"n": 0, "note": "no heatmap of this class was aggregated"}
            continue
        figures = template_figures(template, data["targets"], n=n, seed=opts["seed"])
        if opts["faithfulness"] and np.ptp(template) > 0:
            figures["faithfulness"] = _template_faithfulness(run, data, k, template, opts)
        out[cls] = figures
    return out, distinctiveness({c: t for c, (t, _) in loaded.items()})


def _template_faithfulness(run: Run, data: dict[str, Any], k: int, template: np.ndarray,
                           opts: dict[str, Any]) -> dict[str, Any]:
    """Occluding the class template's top region in the class's images, against random lung
    regions of the same area: the drop of the template's own class probability."""
    from ..analysis.faithfulness import template_faithfulness

    pick, fill, seed = data["sample"], opts["fills"][0], opts["seed"]
    result = template_faithfulness(run.model(), data["images"][pick], np.full(len(pick), k), template,
                                   data["targets"].lung[pick], q=opts["template_q"], fill=fill,
                                   draws=opts["template_draws"], seed=seed)
    return {"q": opts["template_q"], "fill": fill,
            "template_drop": bootstrap_mean(result["template_drop"], seed=seed),
            "random_lung_region_drop": bootstrap_mean(result["random_drop"], seed=seed),
            "difference": paired_difference(result["template_drop"], result["random_drop"], seed=seed)}


def _randomisation(run: Run, store: HeatmapStore, cache: ImageCache, classes: list[str], opts: dict[str, Any],
                   spec: dict[str, Any]) -> dict[str, Any]:
    from ..analysis.randomisation import randomisation_test

    rng = np.random.default_rng(opts["seed"])
    per_class = max(1, opts["randomisation_images"] // max(len(classes), 1))
    rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(store.labels == k))[:per_class]
                                   for k in range(len(classes))])).astype(np.int64)
    images = cache.read(cache.rows_of([store.ids[r] for r in rows]))["images"][..., None]
    console.print(f"randomisation test: {spec['name']} on {len(rows)} images")
    explainer = build_plugin("explain", spec)
    if spec.get("target"):  # a class score (binary stores are not scored): the test's class indices mean it
        explainer.default_target = type(make_target(spec["target"], classes, {}))
    result = randomisation_test(run.model(), explainer, images, store.targets[rows],
                                store.labels[rows], classes, layer=store.layer,
                                train_seed=run.cfg["train"]["seed"], draw=opts["randomisation_draw"],
                                seed=opts["seed"])
    result["cascade"] = result.pop("steps")
    return result


def _sanity_line(result: dict[str, Any]) -> dict[str, Any]:
    index = result.get("explained_layer_step")
    step = result["cascade"][index] if index is not None else None
    ref = result["reference"]["spearman"]
    if step is None or step["spearman"]["value"] is None:
        summary = "no cascade step above the explained layer could be scored"
    else:
        summary = (f"{'passes' if result['passes'] else 'fails'}: after randomising every layer above "
                   f"{result.get('layer') or 'the input'}, maps keep Spearman {describe(step['spearman'])} with the "
                   f"trained ones, against {describe(ref)} between two different images' trained maps")
    return {"passes": bool(result["passes"]),
            "spearman_above_layer_randomised": step["spearman"] if step else None,
            "reference_spearman": ref, "random_logit_spearman": result["random_logit"]["spearman"],
            "mean_template_r": result.get("mean_template_r"), "layer": result.get("layer"), "summary": summary}


# --------------------------------------------------------------------------- counterfactual twins


def _reliance(run: Run, cache: ImageCache, classes: list[str], opts: dict[str, Any]) -> dict[str, Any] | None:
    """Counterfactual twins of the images of the explained splits (a study that chooses on the
    validation split must not read the test split), if the dataset plugin can make them."""
    dataset = build_plugin("dataset", run.cfg["dataset"])
    changes = ("lesion_removed", "lesion_in_mask_only")
    if not set(changes) <= set(getattr(dataset, "counterfactuals", ())):
        return None
    _, records, _ = run.dir.records()
    by_id = {r.id: r for r in records}
    splits = _explained_splits(run.cfg["explain"])
    rows = np.array([r for split in splits for r in cache.rows(split) if cache.ids[r] in by_id], dtype=np.int64)
    if not len(rows):
        return None
    train = run.dir.read_train_info()
    size, resize, mode = int(train["input_size"]), train["resize"], train.get("mode")
    model = run.model()

    def twin(job: tuple[str, str]) -> np.ndarray:
        image = dataset.counterfactual(by_id[job[0]], job[1], run.dir.data_dir)
        return fit_square(image, size, policy=resize, mode=mode).astype(np.float16).astype(np.float32)

    block = cache.read(rows)
    probs = {"original": predict_images(model, block["images"])}
    with ThreadPoolExecutor() as pool, progress_bar("counterfactual twins", len(rows) * len(changes)) as advance:
        for change in changes:
            images = []
            for image in pool.map(twin, [(cache.ids[r], change) for r in rows]):
                images.append(image)
                advance(1)
            probs[change] = predict_images(model, np.stack(images))
    lesion = block["lesion"]
    has_lesion = lesion.reshape(len(rows), -1).any(axis=1) if lesion is not None else np.zeros(len(rows), bool)
    figures = reliance_figures(cache.labels[rows], probs["original"], probs["lesion_removed"],
                               probs["lesion_in_mask_only"], classes, has_lesion, seed=opts["seed"])
    return {cls: {**f, "split": "+".join(splits)} for cls, f in figures.items()}


def _explained_splits(specs: list[dict[str, Any]]) -> list[str]:
    """The one split every ``[[explain]]`` table explains, else the test split: figures of
    different splits are never pooled, and a study that explains only the validation split never
    reads the test split."""
    splits = {spec["split"] for spec in specs}
    return [splits.pop()] if len(splits) == 1 and "all" not in splits else ["test"]
