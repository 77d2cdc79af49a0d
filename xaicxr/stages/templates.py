"""The templates stage: per-class templates for every explainer x aggregator, their quality
figures against the masks, and the model-randomisation sanity check; also the sharded variant
(``template --shard K/N``, then ``--merge-shards``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..analysis.aggregation import build_templates, merge_states
from ..analysis.lungs import segment_lungs
from ..analysis.quality import ClassQuality, distinctiveness
from ..analysis.sanity import balanced_rows, sanity_check
from ..config import build_plugin
from ..io.heatmap_store import HeatmapStore
from ..io.imagecache import ImageCache
from ..io.template_store import (Grouping, TemplateStates, load_states, save_states,
                                 write_template_file)
from ..plugins import Aggregator
from ..rundir import RunDir, Shard
from . import Run

NAME = "templates"
TABLES = ("aggregate", "templates")
QUALITY_CHUNK = 256


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.template(e["name"], a["name"]) for e in cfg["explain"] for a in cfg["aggregate"]]


def run(run: Run) -> dict[str, Any]:
    """Templates, quality and sanity for every explainer of the run; the figures go into
    ``metrics.json`` (``templates``, ``distinctiveness``, ``sanity``)."""
    opts = run.cfg["templates"]
    aggregators = make_aggregators(run.cfg["aggregate"])
    cache = run.image_cache()
    figures: dict[str, Any] = {"templates": {}, "distinctiveness": {}, "sanity": {}}
    for spec in run.cfg["explain"]:
        path = run.dir.heatmaps(spec["name"])
        states = build_templates(path, aggregators, by=opts["by"], correct_only=opts["correct_only"],
                                 progress=True)
        finished = write_templates(run.dir, spec["name"], states, aggregators, by=opts["by"],
                                   correct_only=opts["correct_only"])
        with HeatmapStore(path) as store:
            quality = quality_figures(store, cache, opts["by"], opts["correct_only"], opts["quality_splits"])
            for name, agg in aggregators.items():
                key = f"{spec['name']}-{name}"
                figures["templates"][key] = quality
                if not getattr(agg, "components", False):
                    figures["distinctiveness"][key] = distinctiveness(finished[name])
            if opts["sanity"]:
                figures["sanity"][spec["name"]] = _sanity(run, store, cache, build_plugin("explain", spec))
    run.dir.update_metrics(figures)
    return {"templates": sorted(figures["templates"]),
            "sanity_mean_template_r": {k: v.get("mean_template_r") for k, v in figures["sanity"].items()}}


def make_aggregators(specs: list[dict[str, Any]]) -> dict[str, Aggregator]:
    return {s["name"]: build_plugin("aggregate", s) for s in specs}


def write_templates(rundir: RunDir, explainer: str, states: TemplateStates,
                    aggregators: Mapping[str, Aggregator], *, by: Grouping,
                    correct_only: bool) -> dict[str, dict[str, np.ndarray]]:
    """Finalize ``states``, write ``templates/<explainer>-<aggregator>.h5`` for each aggregator,
    and return the templates."""
    finished = {}
    for name, per_class in states.items():
        agg = aggregators[name]
        finished[name] = {cls: agg.finalize(state) for cls, state in per_class.items()}
        write_template_file(
            rundir.template(explainer, name), finished[name], aggregator=name, by=by,
            correct_only=correct_only, counts={cls: agg.count(state) for cls, state in per_class.items()},
            extra={cls: agg.info(state) for cls, state in per_class.items()},
            attrs={"options": json.dumps(agg.options(), sort_keys=True)})
    return finished


def quality_figures(store: HeatmapStore, cache: ImageCache, by: str, correct_only: bool, n_splits: int,
                    seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per-class figures of the store's heatmaps; masks come from the image cache, and where a
    row has no lung mask the lung fields are segmented from the image."""
    shape = store.shape[1:]
    classes = store.classes
    quality = {c: ClassQuality(shape, n_splits=n_splits, seed=seed + i) for i, c in enumerate(classes)}
    cache_rows = cache.rows_of(store.ids)
    group = store.labels if by == "true" else store.predictions
    keep = store.labels == store.predictions if correct_only else np.ones(len(store), bool)
    segmented = 0
    for rows, maps in store.batches(QUALITY_CHUNK):
        block = cache.read(cache_rows[rows])
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


def _sanity(run: Run, store: HeatmapStore, cache: ImageCache, explainer: Any) -> dict[str, Any]:
    opts = run.cfg["templates"]
    seed = run.cfg["train"]["seed"]
    rows = balanced_rows(store.labels, len(store.classes), opts["sanity_images"], seed)
    images = cache.read(cache.rows_of([store.ids[r] for r in rows]))["images"][..., None]
    return sanity_check(run.model(), explainer, images, store.targets[rows], store.labels[rows],
                        store.classes, store.read(rows), store.layer, seed=seed,
                        draws=opts["sanity_draws"])


def build_shard_states(rundir: RunDir, cfg: dict[str, Any], shard: Shard) -> list[Path]:
    """Aggregator states of one contiguous part of every heatmap store (``template --shard K/N``)."""
    opts = cfg["templates"]
    aggregators = make_aggregators(cfg["aggregate"])
    written = []
    for spec in cfg["explain"]:
        store = rundir.heatmaps(spec["name"])
        with HeatmapStore(store) as s:
            span = shard.bounds(len(s))
        states = build_templates(store, aggregators, by=opts["by"], correct_only=opts["correct_only"],
                                 span=span, progress=True)
        path = rundir.template_states(spec["name"], shard)
        save_states(path, states, aggregators, by=opts["by"], correct_only=opts["correct_only"],
                    shard=[shard.k, shard.n])
        written.append(path)
    return written


def merge_shard_states(rundir: RunDir, cfg: dict[str, Any]) -> dict[str, list[str]]:
    """Merge every explainer's shard states (all N must exist) and write its template files:
    exactly the templates of an unsharded pass for mean, std, median and trimmed-mean."""
    opts = cfg["templates"]
    aggregators = make_aggregators(cfg["aggregate"])
    merged = {}
    for spec in cfg["explain"]:
        paths = rundir.template_state_shards(spec["name"])
        states = merge_states((load_states(p, aggregators)[0] for p in paths), aggregators)
        write_templates(rundir, spec["name"], states, aggregators, by=opts["by"],
                        correct_only=opts["correct_only"])
        merged[spec["name"]] = [str(rundir.template(spec["name"], name)) for name in aggregators]
    return merged
