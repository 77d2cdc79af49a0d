"""``xaicxr compare RUN_A RUN_B ...``: the templates of several runs, class by class.

For every ``templates/<explainer>-<aggregator>.h5`` found in at least two runs and every class
found in at least two of those, the templates of each pair of runs are compared (Pearson r,
SSIM: :mod:`xaicxr.analysis.template_similarity`) next to each run's own split-half band, and a
figure shows the templates side by side with their differences from the first run's.
Templates of different sizes are compared at the smallest size; templates or classes that only
one run has are listed, not compared; multi-component templates (``pca``) are skipped, since
components have no fixed sign or order to compare.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import plugins
from .analysis.template_similarity import (SSIM_DATA_RANGE, SSIM_WINDOW, common_shape, resample,
                                           similarity, split_half_band)
from .errors import ConfigError, StoreError, XaicxrError
from .io import atomic, figures
from .io.template_store import is_multi_component, read_template_file
from .progress import console
from .rundir import RunDir

Loaded = dict[str, tuple[np.ndarray, dict[str, Any]]]


def compare_runs(runs: Sequence[str | Path], out: str | Path, *, labels: Sequence[str] | None = None,
                 partitions: int = 10, seed: int = 0) -> dict[str, Any]:
    """Compare the templates of ``runs``; write ``compare.json`` and one PNG per template and
    class to ``out``; return what ``compare.json`` holds (schema: docs/cli.md)."""
    if len(runs) < 2:
        raise ConfigError("compare needs at least two run directories")
    if partitions < 1:
        raise ConfigError(f"--partitions must be at least 1, got {partitions}")
    dirs = [RunDir(r) for r in runs]
    roots = [d.root.resolve() for d in dirs]
    twice = next((r for r in roots if roots.count(r) > 1), None)
    if twice is not None:
        raise ConfigError(f"compare lists {twice} more than once; give each run directory once (a run's "
                          "agreement with itself is its self band, which every comparison shows)")
    names = list(labels) if labels is not None else _labels(dirs)
    if len(set(names)) != len(names):
        raise ConfigError(f"compare: two runs share a label ({', '.join(names)}); give each its own")
    found = {name: _templates_of(d) for name, d in zip(names, dirs)}
    out = Path(out)
    result: dict[str, Any] = {
        "runs": [{"name": n, "path": str(d.root)} for n, d in zip(names, dirs)],
        "partitions": partitions, "seed": seed,
        "ssim": {"data_range": SSIM_DATA_RANGE, "window": SSIM_WINDOW},
        "templates": {}, "not_compared": {}, "skipped": {}}
    keys = list(dict.fromkeys(k for per_run in found.values() for k in per_run))
    loaded: dict[str, dict[str, Loaded]] = {}
    for key in keys:
        having = [n for n in names if key in found[n]]
        if len(having) < 2:
            result["not_compared"][key] = having
            continue
        templates = {n: read_template_file(found[n][key]) for n in having}
        if any(is_multi_component(t) for t in templates.values()):
            result["skipped"][key] = "multi-component templates (components have no fixed sign or order)"
            continue
        loaded[key] = templates
    bands = _bands(dirs, names, found, loaded, partitions=partitions, seed=seed)
    for key, templates in loaded.items():
        result["templates"][key] = _compare_key(key, found, templates, bands, out)
    atomic.write_json(out / "compare.json", result)
    return {**result, "out": str(out)}


def _labels(dirs: list[RunDir]) -> list[str]:
    names = [d.root.name for d in dirs]
    return names if len(set(names)) == len(names) else [str(d.root) for d in dirs]


def _templates_of(rundir: RunDir) -> dict[str, Path]:
    if not rundir.root.is_dir():
        raise StoreError(f"{rundir.root} is not a run directory")
    files = rundir.template_files()
    if not files:
        raise StoreError(f"{rundir.root} has no templates/*.h5; run `xaicxr template {rundir.root}` first")
    return {path.stem: path for path in files}


def _split_key(key: str, loaded: Loaded) -> tuple[str, str]:
    """(explainer, aggregator) of a template file's stem, the aggregator read from the file."""
    first = next(iter(loaded.values()))[1]
    aggregator = str(first.get("aggregator", ""))
    suffix = f"-{aggregator}"
    return (key[:-len(suffix)], aggregator) if aggregator and key.endswith(suffix) else (key, aggregator)


def _compared_classes(templates: dict[str, Loaded]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Classes held by at least two runs ``{class: runs}``, and those held by one."""
    classes = list(dict.fromkeys(c for t in templates.values() for c in t))
    having = {c: [n for n, t in templates.items() if c in t] for c in classes}
    return ({c: h for c, h in having.items() if len(h) >= 2},
            {c: h for c, h in having.items() if len(h) < 2})


def _key_shape(templates: dict[str, Loaded]) -> tuple[int, int]:
    compared, _ = _compared_classes(templates)
    return common_shape([np.shape(templates[n][c][0]) for c, having in compared.items() for n in having])


def _bands(dirs: list[RunDir], names: list[str], found: dict[str, dict[str, Path]],
           loaded: dict[str, dict[str, Loaded]], *, partitions: int, seed: int
           ) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(run, key): {class: band}}``: each run's split-half band, one store read per
    explainer for all its aggregators; a band that cannot be made carries its reason."""
    bands: dict[tuple[str, str], dict[str, Any]] = {}
    for name, rundir in zip(names, dirs):
        by_store: dict[tuple[str, str, bool], list[str]] = {}
        for key, templates in loaded.items():
            if name not in templates:
                continue
            explainer, _ = _split_key(key, templates[name])
            attrs = next(iter(templates[name].values()))[1]
            by_store.setdefault((explainer, str(attrs.get("by", "true")),
                                 bool(attrs.get("correct_only", False))), []).append(key)
        for (explainer, by, correct_only), keys in by_store.items():
            console.print(f"self band: {name} {explainer} ({partitions} partitions)", highlight=False)
            try:
                aggregators = {key: _aggregator(found[name][key]) for key in keys}
                per_key = split_half_band(rundir.heatmaps(explainer), aggregators, by=by,
                                          correct_only=correct_only, partitions=partitions, seed=seed,
                                          shapes={key: _key_shape(loaded[key]) for key in keys})
            except XaicxrError as exc:
                per_key = {key: {"reason": str(exc)} for key in keys}
            for key in keys:
                bands[(name, key)] = per_key[key]
    return bands


def _aggregator(path: Path) -> Any:
    """The aggregator that wrote a template file, made with the options stored in it."""
    import h5py

    with h5py.File(path, "r") as f:
        name = str(f.attrs["aggregator"])
        options = json.loads(f.attrs.get("options", "{}"))
    return plugins.get("aggregator", name)(**options)


def _compare_key(key: str, found: dict[str, dict[str, Path]], templates: dict[str, Loaded],
                 bands: dict[tuple[str, str], dict[str, Any]], out: Path) -> dict[str, Any]:
    explainer, aggregator = _split_key(key, next(iter(templates.values())))
    shape = _key_shape(templates)
    compared, alone = _compared_classes(templates)
    entry: dict[str, Any] = {
        "explainer": explainer, "aggregator": aggregator, "shape": list(shape),
        "resampled_from": {n: list(np.shape(next(iter(t.values()))[0])) for n, t in templates.items()
                           if any(np.shape(v[0]) != shape for v in t.values())},
        "classes": {}, "not_compared": alone}
    for cls, having in compared.items():
        maps = {n: resample(templates[n][cls][0], shape) for n in having}
        selves = {n: bands.get((n, key), {}).get(cls, {"reason": "no band for this class in the heatmap store"})
                  for n in having}
        pairs = []
        for a, b in itertools.combinations(having, 2):
            pair = {"a": a, "b": b, **similarity(maps[a], maps[b])}
            pair["pearson_within_self_spread"] = _within(pair["pearson"], selves[a], selves[b])
            pairs.append(pair)
        figure = figures.template_comparison(maps, f"{key}: {cls} (at {shape[0]}x{shape[1]})",
                                             out / _figure_name(key, cls))
        entry["classes"][cls] = {"runs": having, "n": {n: int(templates[n][cls][1].get("n", 0)) for n in having},
                                 "pairs": pairs, "self": selves, "figure": figure}
    return entry


def _within(r: float, *selves: dict[str, Any]) -> bool | None:
    """Whether ``r`` reaches the lower end of the less stable run's full-size partition spread."""
    lows = [s.get("pearson_full_size", {}).get("partition_spread", [None])[0] for s in selves]
    if not np.isfinite(r) or any(lo is None for lo in lows):
        return None
    return bool(r >= min(lows))


def _figure_name(key: str, cls: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{key}-{cls}") + ".png"


def comparison_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per template, class and pair of runs: the pair's Pearson r and SSIM and
    both runs' split-half figures (full-size Pearson, SSIM: means over partitions)."""
    rows = []
    for key, entry in result["templates"].items():
        for cls, c in entry["classes"].items():
            for pair in c["pairs"]:
                row = {"template": key, "class": cls, "a": pair["a"], "b": pair["b"],
                       "pearson": pair["pearson"], "ssim": pair["ssim"],
                       "within_self_spread": pair["pearson_within_self_spread"], "figure": c["figure"]}
                for side in ("a", "b"):
                    band = c["self"][pair[side]]
                    row[f"self_pearson_{side}"] = band.get("pearson_full_size", {}).get("mean")
                    row[f"self_ssim_{side}"] = band.get("ssim", {}).get("mean")
                rows.append(row)
    return rows
