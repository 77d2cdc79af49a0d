"""The quality stage: can these heatmaps and templates be trusted? Every figure next to what a
map that knows nothing earns, with its 95 % interval.

For each explainer of the run, on the images it explained (grouped by true class):

- ``per_image``: localisation against the lesion masks (pointing game at tolerance 0 and at the
  default tolerance, lesion energy, lifts, Otsu mIoU), lung energy, consistency and split-half
  reliability, and the ``skill`` over the best uninformed baseline;
- ``baselines``: the same figures for maps that ignore the lesion (:mod:`~xaicxr.analysis.baselines`),
  computed in the same pass, plus their deletion/insertion AUCs;
- ``templates``: each aggregator's template scored as a map, and template faithfulness;
- ``faithfulness``: deletion and insertion AUCs with a blur and a ROAD imputation fill;
- ``randomisation``: the cascading model-parameter randomisation test, its reference level and
  the random-logit test; ``sanity``: its one-line summary;
- ``reliance`` (datasets that can make counterfactual twins): whether the model relies on the
  lesion at all, per class: where it does not, a localisation figure tests nothing.

Per-image scores and the deletion/insertion curves go to ``quality.h5`` for re-analysis.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..analysis import baselines as base
from ..analysis.intervals import bootstrap_mean, paired_difference
from ..analysis.localisation import Targets, class_figures, default_tolerance
from ..analysis.lungs import segment_lungs
from ..analysis.reliability import consistency, split_half
from ..analysis.reliance import reliance_figures
from ..analysis.template_quality import distinctiveness, template_figures
from ..config import build_plugin
from ..io import atomic
from ..io.heatmap_store import HeatmapStore
from ..io.imagecache import ImageCache
from ..io.resize import fit_square
from ..io.template_store import read_template_file
from ..progress import console, progress_bar
from ..rundir import RunDir
from . import Run

NAME = "quality"
TABLES = ("quality",)


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.quality]


def run(run: Run) -> dict[str, Any]:
    opts = run.cfg["quality"]
    cache = run.image_cache()
    split = run.dir.read_split()
    classes = split["classes"]
    priors = _class_priors(cache, len(classes))
    figures: dict[str, Any] = {"per_image": {}, "baselines": {}, "templates": {}, "faithfulness": {},
                               "randomisation": {}, "sanity": {}, "distinctiveness": {}}
    scored: dict[tuple[str, ...], dict[str, Any]] = {}
    with atomic.atomic_path(run.dir.quality) as tmp, h5py.File(tmp, "w") as out:
        for spec in run.cfg["explain"]:
            name = spec["name"]
            with HeatmapStore(run.dir.heatmaps(name)) as store:
                groups = _class_rows(store.labels, len(classes), opts["max_images"], opts["seed"])
                images = _ClassImages(store, cache, groups, opts, classes)
                key = tuple(store.ids)
                if key not in scored:
                    scored[key] = _baselines(images, priors, classes, opts, out.require_group(f"baselines/{name}"))
                    figures["baselines"] = scored[key]["figures"]
                figures["per_image"][name] = _per_image(images, scored[key], classes, opts, out.require_group(f"scores/{name}"))
                if opts["faithfulness"]:
                    figures["faithfulness"][name] = _faithfulness(run, images, classes, opts,
                                                                  scored[key], out.require_group(f"curves/{name}"))
                for agg in run.cfg["aggregate"]:
                    key_t = f"{name}-{agg['name']}"
                    figures["templates"][key_t], distinct = _templates(run, images, classes, opts, name, agg["name"])
                    if distinct is not None:
                        figures["distinctiveness"][key_t] = distinct
                if opts["randomisation"]:
                    result = _randomisation(run, store, cache, classes, opts, spec)
                    figures["randomisation"][name] = result
                    figures["sanity"][name] = _sanity_line(result)
        if opts["reliance"]:
            reliance = _reliance(run, cache, classes, opts)
            if reliance is not None:
                figures["reliance"] = reliance
        out.attrs["classes"] = list(classes)
    run.dir.update_metrics(figures)
    return {"explainers": list(figures["per_image"]),
            "sanity": {k: v["passes"] for k, v in figures["sanity"].items()},
            "reliance": {c: v["relies_on_lesion"] for c, v in figures.get("reliance", {}).items()}}


# --------------------------------------------------------------------------- images of a store


def _class_rows(labels: np.ndarray, n_classes: int, cap: int, seed: int) -> dict[int, np.ndarray]:
    """Store rows per true class, at most ``cap`` of each (a seeded sample, in row order)."""
    rng = np.random.default_rng(seed)
    groups = {}
    for k in range(n_classes):
        rows = np.flatnonzero(labels == k)
        if cap and len(rows) > cap:
            rows = np.sort(rng.choice(rows, cap, replace=False))
        if len(rows):
            groups[k] = rows
    return groups


class _ClassImages:
    """The explained images of one store, per class: maps, images, masks, scoring targets."""

    def __init__(self, store: HeatmapStore, cache: ImageCache, groups: dict[int, np.ndarray],
                 opts: dict[str, Any], classes: list[str]) -> None:
        self.store, self.groups, self.classes = store, groups, classes
        self.size = store.shape[1]
        self.tolerance = default_tolerance(self.size, opts["tolerance"])
        self.segmented = False
        self.data: dict[int, dict[str, Any]] = {}
        cache_rows = cache.rows_of(store.ids)
        for k, rows in groups.items():
            block = cache.read(cache_rows[rows])
            lung = block["lung"]
            if lung is None:
                lung = np.stack([segment_lungs(im) for im in block["images"]])
                self.segmented = True
            self.data[k] = {"rows": rows, "maps": store.read(rows), "images": block["images"],
                            "targets": Targets(block["lesion"], lung, self.tolerance),
                            "explained": store.targets[rows]}


# --------------------------------------------------------------------------- figures


def _baselines(images: _ClassImages, priors: dict[int, np.ndarray | None], classes: list[str],
               opts: dict[str, Any], out: h5py.Group) -> dict[str, Any]:
    scores, figures = {}, {}
    shape = (images.size, images.size)
    for k, data in images.data.items():
        scores[k] = base.baseline_scores(data["targets"], priors.get(k), shape, seed=opts["seed"] + k)
        figures[classes[k]] = {b: class_figures(s, data["targets"], seed=opts["seed"])
                               for b, s in scores[k].items()}
        for b, s in scores[k].items():
            for fig, values in s.items():
                out.create_dataset(f"{classes[k]}/{b}/{fig}", data=values)
    return {"scores": scores, "figures": figures, "priors": priors}


def _per_image(images: _ClassImages, baseline: dict[str, Any], classes: list[str], opts: dict[str, Any],
               group: h5py.Group) -> dict[str, Any]:
    out = {}
    for k, data in images.data.items():
        targets, seed = data["targets"], opts["seed"]
        scores = targets.scores(data["maps"])
        figures = class_figures(scores, targets, seed=seed)
        figures["n"] = int(len(data["rows"]))
        figures["consistency"] = consistency(data["maps"], seed=seed)
        figures["split_half"] = split_half(data["maps"], partitions=opts["partitions"], seed=seed)
        skill = base.skill(figures, scores, baseline["figures"][classes[k]], baseline["scores"][k], targets, seed=seed)
        if skill:
            figures["skill"] = skill
        figures["lung_source"] = "segmented (scikit-image)" if images.segmented else "mask"
        out[classes[k]] = figures
        group.create_dataset(f"{classes[k]}/rows", data=data["rows"])
        for fig, values in scores.items():
            group.create_dataset(f"{classes[k]}/{fig}", data=values)
    return out


def _sample(data: dict[str, Any], cap: int, seed: int) -> dict[str, Any]:
    """At most ``cap`` of a class's images (a seeded sample): the perturbation figures cost
    tens of forward passes per image."""
    n = len(data["rows"])
    if not cap or n <= cap:
        return data
    pick = np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
    targets = data["targets"]
    return {**data, "rows": data["rows"][pick], "maps": data["maps"][pick], "images": data["images"][pick],
            "explained": data["explained"][pick],
            "targets": Targets(None if targets.lesion is None else targets.lesion[pick],
                               None if targets.lung is None else targets.lung[pick], targets.tolerance)}


def _faithfulness(run: Run, images: _ClassImages, classes: list[str], opts: dict[str, Any],
                  baseline: dict[str, Any], group: h5py.Group) -> dict[str, Any]:
    from ..analysis.faithfulness import perturbation_curves

    model, out = run.model(), {}
    samples = {k: _sample(d, opts["faithfulness_images"], opts["seed"] + k) for k, d in images.data.items()}
    total = sum(len(d["rows"]) for d in samples.values()) * len(opts["fills"])
    with progress_bar("deletion/insertion", total) as advance:
        for k, data in samples.items():
            per_fill: dict[str, Any] = {}
            for fill in opts["fills"]:
                curves = perturbation_curves(model, data["images"], data["maps"], data["explained"], fill=fill,
                                             fractions=np.linspace(0, 1, opts["fractions"]), seed=opts["seed"])
                reference = baseline.setdefault("faithfulness", {}).setdefault(k, {}).get(fill)
                if reference is None:
                    reference = baseline["faithfulness"][k][fill] = _baseline_curves(
                        model, data, baseline["priors"].get(k), fill, opts)
                    for b, c in reference.items():
                        baseline["figures"][classes[k]][b].setdefault("faithfulness", {})[fill] = {
                            "deletion_auc": bootstrap_mean(c["deletion_auc"], seed=opts["seed"]),
                            "insertion_auc": bootstrap_mean(c["insertion_auc"], seed=opts["seed"]),
                            "deletion_curve": np.nanmean(c["deletion"], axis=0).round(5).tolist(),
                            "insertion_curve": np.nanmean(c["insertion"], axis=0).round(5).tolist()}
                per_fill[fill] = _curve_figures(curves, reference, opts["seed"])
                for part in ("deletion", "insertion"):
                    group.create_dataset(f"{classes[k]}/{fill}/{part}", data=curves[part].astype(np.float32))
                group.attrs["fractions"] = curves["fractions"]
                advance(len(data["rows"]))
            out[classes[k]] = per_fill
    return out


def _baseline_curves(model: Any, data: dict[str, Any], prior: np.ndarray | None, fill: str,
                     opts: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    from ..analysis.faithfulness import perturbation_curves

    shape = data["maps"].shape[1:]
    out = {}
    for name in opts["faithfulness_baselines"]:
        maps = base.baseline_maps(name, data["targets"].lung, prior, shape, len(data["rows"]), seed=opts["seed"])
        if maps is None:
            continue
        maps = np.broadcast_to(maps, data["maps"].shape) if maps.ndim == 2 else maps
        out[name] = perturbation_curves(model, data["images"], np.ascontiguousarray(maps), data["explained"],
                                        fill=fill, fractions=np.linspace(0, 1, opts["fractions"]),
                                        seed=opts["seed"])
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


def _templates(run: Run, images: _ClassImages, classes: list[str], opts: dict[str, Any], explainer: str,
               aggregator: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    loaded = read_template_file(run.dir.template(explainer, aggregator))
    first = next(iter(loaded.values()))[0]
    if first.ndim != 2:
        return {cls: {"n": int(attrs.get("n", 0)), "note": "components, not a map: scored through their "
                      "explained variance only"} for cls, (_, attrs) in loaded.items()}, None
    out: dict[str, Any] = {}
    for k, data in images.data.items():
        cls = classes[k]
        if cls not in loaded:
            continue
        template, attrs = loaded[cls]
        figures = template_figures(template, data["targets"], n=int(attrs.get("n", 0)), seed=opts["seed"])
        if opts["faithfulness"] and np.ptp(template) > 0:
            figures["faithfulness"] = _template_faithfulness(
                run, _sample(data, opts["faithfulness_images"], opts["seed"] + k), k, template, opts)
        out[cls] = figures
    return out, distinctiveness({c: t for c, (t, _) in loaded.items()})


def _template_faithfulness(run: Run, data: dict[str, Any], k: int, template: np.ndarray,
                           opts: dict[str, Any]) -> dict[str, Any]:
    """Occluding the class template's top region in the class's images, against random lung
    regions of the same area: the drop of the template's own class probability."""
    from ..analysis.faithfulness import template_faithfulness

    targets = np.full(len(data["rows"]), k)
    result = template_faithfulness(run.model(), data["images"], targets, template,
                                   data["targets"].lung, q=opts["template_q"], fill=opts["fills"][0],
                                   draws=opts["template_draws"], seed=opts["seed"])
    seed = opts["seed"]
    return {"q": opts["template_q"], "fill": opts["fills"][0],
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
    result = randomisation_test(run.model(), build_plugin("explain", spec), images, store.targets[rows],
                                store.labels[rows], classes, layer=store.layer,
                                train_seed=run.cfg["train"]["seed"], draw=opts["randomisation_draw"],
                                seed=opts["seed"])
    result["cascade"] = result.pop("steps")
    return result


def _sanity_line(result: dict[str, Any]) -> dict[str, Any]:
    step = result["cascade"][result["explained_layer_step"]] if result.get("explained_layer_step") is not None else None
    return {"passes": bool(result["passes"]),
            "spearman_above_layer_randomised": step["spearman"] if step else None,
            "reference_spearman": result["reference"]["spearman"],
            "random_logit_spearman": result["random_logit"]["spearman"],
            "mean_template_r": result.get("mean_template_r"), "layer": result.get("layer"),
            "summary": _summary(result, step)}


def _summary(result: dict[str, Any], step: dict[str, Any] | None) -> str:
    if step is None or step["spearman"]["value"] is None:
        return "no cascade step above the explained layer could be scored"
    ref = result["reference"]["spearman"]
    verdict = "passes" if result["passes"] else "fails"
    return (f"{verdict}: after randomising every layer above {result.get('layer') or 'the input'}, maps keep "
            f"Spearman {_fmt(step['spearman'])} with the trained ones, against {_fmt(ref)} between two "
            f"different images' trained maps")


def _fmt(est: dict[str, Any]) -> str:
    lo, hi = est["ci95"]
    if est["value"] is None:
        return "-"
    return f"{est['value']:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")


# --------------------------------------------------------------------------- the run's masks and twins


def _class_priors(cache: ImageCache, n_classes: int) -> dict[int, np.ndarray | None]:
    """The mean training lesion mask of every class (only from the train split: a prior must not
    have seen the images it is scored on)."""
    rows = cache.rows("train")
    sums: dict[int, np.ndarray] = {}
    counts = np.zeros(n_classes, int)
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        lesion = cache.read(chunk)["lesion"]
        if lesion is None:
            continue
        labels = cache.labels[chunk]
        has = lesion.reshape(len(chunk), -1).any(axis=1)
        for k in range(n_classes):
            pick = (labels == k) & has
            if pick.any():
                sums[k] = sums.get(k, 0) + lesion[pick].sum(axis=0, dtype=np.float64)
                counts[k] += int(pick.sum())
    return {k: (s / counts[k]).astype(np.float32) for k, s in sums.items()}


def _reliance(run: Run, cache: ImageCache, classes: list[str], opts: dict[str, Any]) -> dict[str, Any] | None:
    """Counterfactual twins of the test images, if the dataset plugin can make them."""
    dataset = build_plugin("dataset", run.cfg["dataset"])
    changes = ("lesion_removed", "lesion_in_mask_only")
    if not set(changes) <= set(getattr(dataset, "counterfactuals", ())):
        return None
    _, records, _ = run.dir.records()
    by_id = {r.id: r for r in records}
    rows = np.array([r for r in cache.rows("test") if cache.ids[r] in by_id], dtype=np.int64)
    if not len(rows):
        return None
    size = int(run.dir.read_train_info()["input_size"])
    resize = run.dir.read_train_info()["resize"]
    model = run.model()

    def twin(job: tuple[str, str]) -> np.ndarray:
        image = dataset.counterfactual(by_id[job[0]], job[1], run.dir.data_dir)
        return fit_square(image, size, policy=resize).astype(np.float16).astype(np.float32)

    block = cache.read(rows)
    probs = {"original": _predict(model, block["images"])}
    with ThreadPoolExecutor() as pool, progress_bar("counterfactual twins", len(rows) * len(changes)) as advance:
        for change in changes:
            images = []
            for image in pool.map(twin, [(cache.ids[r], change) for r in rows]):
                images.append(image)
                advance(1)
            probs[change] = _predict(model, np.stack(images))
    has_lesion = (block["lesion"].reshape(len(rows), -1).any(axis=1) if block["lesion"] is not None
                  else np.zeros(len(rows), bool))
    return reliance_figures(cache.labels[rows], probs["original"], probs["lesion_removed"],
                            probs["lesion_in_mask_only"], classes, has_lesion, seed=opts["seed"])


def _predict(model: Any, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    import keras

    return np.concatenate([keras.ops.convert_to_numpy(model(images[i:i + batch_size, ..., None], training=False))
                           for i in range(0, len(images), batch_size)])
