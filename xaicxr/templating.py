"""The templates stage: per-class templates for every explainer x aggregator, their quality
figures against the masks, and the model-randomisation sanity check.

Consistency and split-half reliability say nothing on their own (an untrained network's
Grad-CAM templates can be perfectly "reliable"); they are always reported together with the
sanity check (Adebayo et al. 2018): the layers above the explained layer are re-initialised,
the same images are explained again, and the similarity of the resulting templates to the
real ones is reported. High similarity means the heatmaps do not depend on what was learned.
"""

from __future__ import annotations

import hashlib

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from . import plugins
from .config import plugin_options
from .imagecache import ImageCache, read_block
from .lungs import segment_lungs
from .quality import ClassQuality, distinctiveness, pearson
from .templates import build_templates, finalize_templates, write_templates

QUALITY_CHUNK = 256


def make_aggregators(specs: list[dict[str, Any]]) -> dict[str, Any]:
    return {s["name"]: plugins.get("aggregator", s["name"])(**plugin_options(s, "aggregate")) for s in specs}


def selected_rows(labels: np.ndarray, predictions: np.ndarray, by: str, correct_only: bool) -> tuple[np.ndarray, np.ndarray]:
    group = labels if by == "true" else predictions
    keep = np.ones(len(labels), bool) if not correct_only else labels == predictions
    return group, keep


def quality_figures(store, cache: ImageCache, by: str, correct_only: bool, n_splits: int,
                    seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per-class figures of the store's heatmaps; masks come from the image cache, and where a
    row has no lung mask the lung fields are segmented from the image."""
    shape = store.shape[1:]
    classes = store.classes
    quality = {c: ClassQuality(shape, n_splits=n_splits, seed=seed + i) for i, c in enumerate(classes)}
    row_of = {i: r for r, i in enumerate(cache.ids)}
    cache_rows = np.array([row_of[i] for i in store.ids], dtype=np.int64)
    group, keep = selected_rows(store.labels, store.predictions, by, correct_only)
    segmented = 0
    for rows, maps in store.batches(QUALITY_CHUNK):
        block = read_block(cache, cache_rows[rows])
        lung = block["lung"]
        if lung is None:
            lung = np.stack([segment_lungs(im) for im in block["images"]])
            segmented += len(rows)
        for k, cls in enumerate(classes):
            pick = keep[rows] & (group[rows] == k)
            if pick.any():
                lesion = block["lesion"][pick] if block["lesion"] is not None else None
                quality[cls].update(maps[pick], lesion, lung[pick])
    out = {c: q.result() for c, q in quality.items()}
    for figures in out.values():
        figures["lung_source"] = "segmented (scikit-image)" if segmented else "mask"
    return out


def randomisation_seed(train_seed: int, draw: int) -> int:
    """The seed of the ``draw``-th re-initialisation for a model trained with ``train_seed``.

    Re-initialising with the training seed itself would re-draw the very weights training started
    from; a head that moved little from them (early stopping after two epochs, say) then makes the
    maps "survive" randomisation (r 0.97 against about 0.2 with any other draw, measured on
    cxr3-real). A hash keeps the draws apart from the training stream and reproducible."""
    digest = hashlib.sha256(f"xaicxr-sanity/{train_seed}/{draw}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def randomised_copy(model, layer_path: str, seed: int):
    """A copy of ``model`` whose weighted layers above ``layer_path`` are re-initialised with
    ``seed`` (take it from :func:`randomisation_seed`, never the training seed)."""
    import keras

    keras.utils.set_random_seed(seed)
    clone = keras.models.clone_model(model)
    top = layer_path.split("/")[0]
    names = [layer.name for layer in model.layers]
    cut = names.index(top) if top in names else len(names) - 1
    randomised = []
    for i, (src, dst) in enumerate(zip(model.layers, clone.layers)):
        if i <= cut or not src.weights:
            dst.set_weights(src.get_weights())
        else:
            randomised.append(src.name)
    return clone, randomised


def sanity_check(store, cache: ImageCache, model, explainer, n_images: int, seed: int = 0,
                 draws: int = 3) -> dict[str, Any]:
    """Explain a class-balanced sample again with the top layers re-initialised, ``draws`` times.

    ``seed`` is the training seed. One draw is a noisy estimate when only a small head is
    re-initialised (r from -0.2 to 0.2 between draws for Grad-CAM at block5 on cxr3-real), so
    the figures are means over the draws and each draw's mean is kept."""
    rng = np.random.default_rng(seed)
    per_class = max(1, n_images // max(len(store.classes), 1))
    rows = np.sort(np.concatenate([
        rng.permutation(np.flatnonzero(store.labels == k))[:per_class] for k in range(len(store.classes))]))
    if len(rows) == 0:
        return {"n": 0}
    row_of = {i: r for r, i in enumerate(cache.ids)}
    images = read_block(cache, np.array([row_of[store.ids[r]] for r in rows]))["images"][..., None]
    layer = store.layer or None
    original = store.read(rows)
    per_draw: list[dict[str, float]] = []
    rank_r: list[float] = []
    for draw in range(max(1, draws)):
        random_model, randomised = randomised_copy(model, layer or "", randomisation_seed(seed, draw))
        shuffled = explainer.explain(random_model, images, store.targets[rows], layer=layer)
        del random_model
        per_draw.append({cls: pearson(original[store.labels[rows] == k].mean(axis=0),
                                      shuffled[store.labels[rows] == k].mean(axis=0))
                         for k, cls in enumerate(store.classes) if (store.labels[rows] == k).any()})
        rank_r += [spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(original, shuffled)
                   if np.ptp(a) > 0 and np.ptp(b) > 0]
    template_r = {cls: _finite_mean([d[cls] for d in per_draw]) for cls in per_draw[0]}
    draw_means = [_finite_mean(list(d.values())) for d in per_draw]
    finite = [v for v in template_r.values() if v is not None]
    return {"method": "re-initialise the layers above the explained layer, explain again (Adebayo et al. 2018)",
            "layer": store.layer, "randomised_layers": randomised, "n": int(len(rows)),
            "draws": len(per_draw), "template_r": template_r,
            "mean_template_r": float(np.mean(finite)) if finite else None,
            "mean_template_r_per_draw": draw_means,
            "map_spearman": float(np.nanmean(rank_r)) if rank_r else None,
            "reading": "similarity near 1 means the heatmaps ignore what the model learned; "
                       "near 0 means they depend on it (as they should)"}


def _finite_mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def build_all(run_dir: Path, cfg: dict[str, Any], cache: ImageCache, model_loader) -> dict[str, Any]:
    """Templates, quality and sanity for every explainer of the run; returns metrics keys."""
    from .explaining import make_explainer
    from .heatmaps import read_store, store_path

    opts = cfg["templates"]
    aggregators = make_aggregators(cfg["aggregate"])
    figures: dict[str, Any] = {"templates": {}, "distinctiveness": {}, "sanity": {}}
    model = None
    for spec in cfg["explain"]:
        path = store_path(run_dir, spec["name"])
        states = build_templates(path, aggregators, by=opts["by"], correct_only=opts["correct_only"],
                                 progress=True)
        write_templates(run_dir, spec["name"], states, aggregators, by=opts["by"],
                        correct_only=opts["correct_only"])
        finished = finalize_templates(states, aggregators)
        with read_store(path) as store:
            quality = quality_figures(store, cache, opts["by"], opts["correct_only"], opts["quality_splits"])
            for name, agg in aggregators.items():
                key = f"{spec['name']}-{name}"
                figures["templates"][key] = quality
                if not getattr(agg, "components", False):
                    figures["distinctiveness"][key] = distinctiveness(finished[name])
            if opts["sanity"]:
                model = model if model is not None else model_loader()
                figures["sanity"][spec["name"]] = sanity_check(
                    store, cache, model, make_explainer(spec), opts["sanity_images"],
                    seed=cfg["train"]["seed"], draws=opts["sanity_draws"])
    return figures


def states_path(run_dir: Path, explainer: str, shard: tuple[int, int]) -> Path:
    return Path(run_dir) / "shards" / f"{explainer}.states-{shard[0]}-of-{shard[1]}.h5"


def build_shard_states(run_dir: Path, cfg: dict[str, Any], shard: tuple[int, int]) -> list[Path]:
    """Aggregator states of one contiguous part of every heatmap store (``template --shard K/N``)."""
    from .heatmaps import store_path
    from .templates import save_states

    opts = cfg["templates"]
    aggregators = make_aggregators(cfg["aggregate"])
    written = []
    for spec in cfg["explain"]:
        states = build_templates(store_path(run_dir, spec["name"]), aggregators, by=opts["by"],
                                 correct_only=opts["correct_only"], shard=shard, progress=True)
        path = states_path(run_dir, spec["name"], shard)
        save_states(path, states, aggregators, by=opts["by"], correct_only=opts["correct_only"],
                    shard=list(shard))
        written.append(path)
    return written


def merge_shard_states(run_dir: Path, cfg: dict[str, Any]) -> dict[str, list[str]]:
    """Merge every explainer's shard states (all N must exist) and write its template files:
    exactly the templates of an unsharded pass for mean, std, median and trimmed-mean."""
    from .errors import XaicxrError
    from .templates import load_states, merge_states

    opts = cfg["templates"]
    aggregators = make_aggregators(cfg["aggregate"])
    merged = {}
    for spec in cfg["explain"]:
        found = sorted(Path(run_dir, "shards").glob(f"{spec['name']}.states-*-of-*.h5"))
        if not found:
            raise XaicxrError(f"no shard states for {spec['name']}; run `xaicxr template RUN_DIR --shard K/N` first")
        total = {int(p.stem.rsplit("-of-", 1)[1]) for p in found}
        if len(total) != 1:
            raise XaicxrError(f"shard states of {spec['name']} disagree on N: {sorted(total)}")
        n = total.pop()
        paths = [states_path(run_dir, spec["name"], (k, n)) for k in range(n)]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise XaicxrError(f"missing shard states: {', '.join(missing)}")
        states = merge_states((load_states(p, aggregators)[0] for p in paths), aggregators)
        written = write_templates(run_dir, spec["name"], states, aggregators, by=opts["by"],
                                  correct_only=opts["correct_only"])
        merged[spec["name"]] = [str(p) for p in written.values()]
    return merged
