"""The templates stage: per-class templates (per side for a binary task's store) for every
explainer x aggregator, built by streaming each heatmap store once; also the sharded variant (``template --shard K/N``, then
``--merge-shards``). How good the templates are is the quality stage's question.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..analysis.aggregation import build_templates, group_attrs, merge_states
from ..config import build_plugin, store_name
from ..executors import Executor
from ..io.heatmap_store import HeatmapStore
from ..io.template_store import (Grouping, TemplateStates, load_states, save_states,
                                 write_template_file)
from ..plugins import Aggregator
from ..progress import console
from ..rundir import RunDir, Shard
from . import Run

NAME = "templates"
TABLES = ("aggregate", "templates")


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.template(store_name(e), a["name"]) for e in cfg["explain"] for a in cfg["aggregate"]]


def run(run: Run) -> dict[str, Any]:
    opts = run.cfg["templates"]
    aggregators = make_aggregators(run.cfg["aggregate"])
    written = []
    for store in map(store_name, run.cfg["explain"]):
        states = reduce_states(run.dir.heatmaps(store), run.cfg, aggregators, run.executor())
        write_templates(run.dir, store, states, aggregators, by=opts["by"],
                        correct_only=opts["correct_only"])
        written += [f"{store}-{name}" for name in aggregators]
    return {"templates": written}


def make_aggregators(specs: list[dict[str, Any]]) -> dict[str, Aggregator]:
    return {s["name"]: build_plugin("aggregate", s) for s in specs}


def reduce_states(store: Path, cfg: dict[str, Any], aggregators: Mapping[str, Aggregator],
                  executor: Executor) -> TemplateStates:
    """The aggregator states of a whole heatmap store: one streaming pass here, or, on a
    cluster, one task per ``executor.partition_rows`` rows, merged on the workers in a fixed
    tree. The partitions depend on the store alone, not on the number of workers, so the result
    is deterministic; it equals the one-pass states exactly where ``merge`` is exact (``mean``,
    ``median``, ``trimmed-mean``)."""
    opts = cfg["templates"]
    if executor.partition_rows is None:
        return build_templates(store, aggregators, by=opts["by"], correct_only=opts["correct_only"],
                               progress=True)
    with HeatmapStore(store) as s:
        total = len(s)
    step = executor.partition_rows
    spans = [(lo, min(lo + step, total)) for lo in range(0, total, step)] or [(0, 0)]
    console.print(f"templates {store.stem}: {len(spans)} partitions of up to {step} rows on the cluster",
                  highlight=False)
    return executor.reduce(PartitionStates(str(store), cfg["aggregate"], opts["by"], opts["correct_only"]),
                           spans, MergeStates(cfg["aggregate"]))


@dataclass(frozen=True)
class PartitionStates:
    """The aggregator states of rows [start, stop) of a heatmap store, on a cluster worker."""

    store: str
    aggregate: list[dict[str, Any]]
    by: Grouping
    correct_only: bool

    def __call__(self, span: tuple[int, int]) -> TemplateStates:
        return build_templates(self.store, make_aggregators(self.aggregate), by=self.by,
                               correct_only=self.correct_only, span=span)


@dataclass(frozen=True)
class MergeStates:
    """Two partitions' states merged into the first (on a cluster worker)."""

    aggregate: list[dict[str, Any]]

    def __call__(self, a: TemplateStates, b: TemplateStates) -> TemplateStates:
        return merge_states([a, b], make_aggregators(self.aggregate))


def write_templates(rundir: RunDir, explainer: str, states: TemplateStates,
                    aggregators: Mapping[str, Aggregator], *, by: Grouping,
                    correct_only: bool) -> dict[str, dict[str, np.ndarray]]:
    """Finalize ``states``, write ``templates/<explainer>-<aggregator>.h5`` for each aggregator
    (``explainer``: the store's name; its target and sides recorded where the run directory
    holds the store), and return the templates."""
    finished = {}
    store = rundir.heatmaps(explainer)
    root, per_group = group_attrs(store) if store.is_file() else ({}, {})
    for name, per_class in states.items():
        agg = aggregators[name]
        finished[name] = {cls: agg.finalize(state) for cls, state in per_class.items()}
        write_template_file(
            rundir.template(explainer, name), finished[name], aggregator=name, by=by,
            correct_only=correct_only, counts={cls: agg.count(state) for cls, state in per_class.items()},
            extra={cls: {**agg.info(state), **per_group.get(cls, {})} for cls, state in per_class.items()},
            attrs={"options": json.dumps(agg.options(), sort_keys=True), **root})
    return finished


def build_shard_states(rundir: RunDir, cfg: dict[str, Any], shard: Shard) -> list[Path]:
    """Aggregator states of one contiguous part of every heatmap store (``template --shard K/N``)."""
    opts = cfg["templates"]
    aggregators = make_aggregators(cfg["aggregate"])
    written = []
    for name in map(store_name, cfg["explain"]):
        store = rundir.heatmaps(name)
        with HeatmapStore(store) as s:
            span = shard.bounds(len(s))
        states = build_templates(store, aggregators, by=opts["by"], correct_only=opts["correct_only"],
                                 span=span, progress=True)
        path = rundir.template_states(name, shard)
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
    for store in map(store_name, cfg["explain"]):
        paths = rundir.template_state_shards(store)
        states = merge_states((load_states(p, aggregators)[0] for p in paths), aggregators)
        write_templates(rundir, store, states, aggregators, by=opts["by"],
                        correct_only=opts["correct_only"])
        merged[store] = [str(rundir.template(store, name)) for name in aggregators]
    return merged
