"""The report stage: ``report/index.html``, one page (plus its PNG figures) that opens offline."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..io import atomic, figures
from ..io.heatmap_store import HeatmapStore
from ..io.imagecache import ImageCache
from ..io.template_store import read_template_file
from ..rundir import RunDir
from . import Run

NAME = "report"
TABLES = ()
EXAMPLES = 6


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.report]


def run(run: Run) -> dict[str, Any]:
    return {"report": str(write_report(run.dir, run.cfg, run.image_cache()))}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(name: str, alt: str) -> str:
    return f'<figure><img src="{html.escape(name)}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def class_means(cache: ImageCache, ids: list[str], labels: np.ndarray, classes: list[str]) -> dict[str, np.ndarray | None]:
    rows = cache.rows_of(ids)
    sums: dict[str, np.ndarray | None] = {c: None for c in classes}
    counts = {c: 0 for c in classes}
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        images = cache.read(chunk)["images"]
        for k, c in enumerate(classes):
            pick = labels[start:start + 256] == k
            if pick.any():
                total = images[pick].sum(axis=0, dtype=np.float64)
                sums[c] = total if sums[c] is None else sums[c] + total
                counts[c] += int(pick.sum())
    return {c: (sums[c] / counts[c]).astype(np.float32) if counts[c] else None for c in classes}


def _quality_rows(quality: dict[str, dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for cls, q in quality.items():
        ci = q.get("split_half_ci95")
        rows.append([cls, q.get("n"), q.get("consistency"),
                     f"{_fmt(q.get('split_half'))} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "–",
                     q.get("pointing_game"), q.get("lesion_energy"), q.get("energy_lift"),
                     q.get("miou"), q.get("lung_energy")])
    return rows


def _examples(store, cache: ImageCache, classes: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    correct = np.flatnonzero(store.labels == store.predictions)
    wrong = np.flatnonzero(store.labels != store.predictions)
    rng = np.random.default_rng(0)
    picks = list(rng.permutation(correct)[:EXAMPLES]) + list(rng.permutation(wrong)[:EXAMPLES])
    if not picks:
        return []
    picks = np.array(picks)
    images = cache.read(cache.rows_of([store.ids[r] for r in picks]))["images"]
    maps = store.read(picks)
    out = []
    for image, heat, r in zip(images, maps, picks):
        ok = "correct" if store.labels[r] == store.predictions[r] else "WRONG"
        out.append((f"{ok}: true {classes[store.labels[r]]}\npred {classes[store.predictions[r]]} "
                    f"({store.probs[r].max():.2f})", image, heat))
    return out


def write_report(rundir: RunDir, cfg: dict[str, Any], cache: ImageCache) -> Path:
    out = rundir.report_dir
    out.mkdir(parents=True, exist_ok=True)
    metrics = rundir.read_metrics()
    classes = metrics["classes"]
    parts: list[str] = []
    setting = (f"dataset <b>{html.escape(cfg['dataset']['name'])}</b>, backbone "
               f"<b>{html.escape(cfg['backbone']['name'])}</b> (weights {html.escape(str(cfg['backbone'].get('weights', 'imagenet')))}"
               f", width {cfg['backbone'].get('width', 1.0)}, input {cfg['backbone'].get('input_size', 224)} px)")
    if cfg["backbone"].get("weights", "imagenet") == "none":
        setting += " &mdash; trained from scratch: <b>not</b> the paper's ImageNet transfer setting"
    parts.append(f"<p>{setting}. Test set: {html.escape(metrics.get('test_set', ''))}, n = {metrics.get('n_test')}.</p>")

    parts.append("<h2>Classification</h2>")
    parts.append(f"<p>Accuracy <b>{_fmt(metrics['accuracy'])}</b>, macro F1 {_fmt(metrics.get('macro_f1'))}.</p>")
    parts.append(_table(["class", "precision", "recall", "F1", "support"],
                        [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in metrics["per_class"].items()]))
    parts.append('<div class="row">' + _img(figures.confusion_figure(metrics["confusion"], classes, out / "confusion.png"), "confusion matrix (test)"))
    if metrics.get("binary"):
        parts.append(_img(figures.roc_figure(metrics["binary"], out / "roc.png"), "ROC curves of the binary tasks") + "</div>")
        parts.append(_table(["task", "positive", "AUC", "AUC 95 % CI", "sensitivity", "specificity", "threshold"],
                            [[t, ", ".join(b["positive"]), b["auc"], f"[{_fmt(b['ci95']['auc'][0])}, {_fmt(b['ci95']['auc'][1])}]",
                              b["sensitivity"], b["specificity"], b["threshold"]] for t, b in metrics["binary"].items()]))
    else:
        parts.append("</div>")

    for spec in cfg.get("explain", []):
        name = spec["name"]
        path = rundir.heatmaps(name)
        if not path.exists():
            continue
        with HeatmapStore(path) as store:
            means = class_means(cache, store.ids, store.labels, classes)
            parts.append(f"<h2>Templates: {html.escape(name)} at layer <code>{html.escape(store.layer or 'input')}</code></h2>")
            for agg in cfg.get("aggregate", []):
                tpath = rundir.template(name, agg["name"])
                if not tpath.exists():
                    continue
                loaded = read_template_file(tpath)
                first = next(iter(loaded.values()))[0]
                if first.ndim == 3:
                    for cls, (comps, attrs) in loaded.items():
                        explained = attrs.get("explained_variance_ratio")
                        fig = figures.components_panel(comps, None if explained is None else list(explained), cls,
                                                       f"{name} eigen-heatmaps: {cls} (n={attrs.get('n')})",
                                                       out / f"pca-{name}-{agg['name']}-{cls}.png")
                        parts.append(_img(fig, f"{agg['name']} components of {cls}"))
                    continue
                fig = figures.template_panel({c: t for c, (t, _) in loaded.items()}, means,
                                             {c: int(a.get("n", 0)) for c, (_, a) in loaded.items()},
                                             f"{name}: {agg['name']} template per class over the class's mean image",
                                             out / f"templates-{name}-{agg['name']}.png")
                parts.append(_img(fig, f"{agg['name']} templates ({name})"))
            key = f"{name}-{cfg['aggregate'][0]['name']}" if cfg.get("aggregate") else None
            quality = metrics.get("templates", {}).get(key) if key else None
            if quality:
                parts.append("<h3>Template quality</h3>")
                parts.append(_table(["class", "n", "consistency", "split-half [95 %]", "pointing game",
                                     "lesion energy", "energy lift", "mIoU (Otsu)", "lung energy"],
                                    _quality_rows(quality)))
                parts.append("<p class='note'>Consistency: mean pairwise Pearson r of the class's heatmaps. "
                             "Split-half: r between templates of random halves. Pointing game: share of maps whose maximum "
                             "lies in the lesion. Energy lift: lesion energy share / lesion area share (1 = chance). "
                             "Lung energy: share of heatmap mass in the lung fields (low = evidence outside the lungs).</p>")
            dist = metrics.get("distinctiveness", {}).get(key) if key else None
            if dist:
                parts.append("<h3>Distinctiveness (Pearson r between class templates)</h3>")
                parts.append(_table([""] + list(dist), [[a] + [dist[a][b] for b in dist] for a in dist]))
            sanity = metrics.get("sanity", {}).get(name)
            if sanity and sanity.get("n"):
                parts.append("<h3>Sanity check: model randomisation</h3>")
                parts.append(f"<p>{html.escape(sanity['method'])}; re-initialised: {html.escape(', '.join(sanity['randomised_layers']) or 'none')}; "
                             f"{sanity['n']} images. Mean template r {_fmt(sanity.get('mean_template_r'))}, "
                             f"mean per-map Spearman {_fmt(sanity.get('map_spearman'))}. {html.escape(sanity['reading'])}.</p>")
                parts.append(_table(["class", "template r (trained vs randomised)"], [[c, r] for c, r in sanity["template_r"].items()]))
            examples = _examples(store, cache, classes)
            if examples:
                parts.append(_img(figures.overlay_grid(examples, f"{name}: examples (correct, then wrong)",
                                                       out / f"examples-{name}.png"), f"example overlays ({name})"))
    timings = metrics.get("timings_s", {})
    parts.append("<h2>Timings</h2>" + _table(["stage", "seconds"], [[k, v] for k, v in timings.items()]))
    skipped = atomic.read_json(rundir.skipped) if rundir.skipped.exists() else []
    parts.append(f"<p>Files skipped while reading the data: {len(skipped)} (listed with reasons in "
                 f"<code>skipped.json</code>).</p>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>xaicxr report: {html.escape(rundir.root.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: .8em 0; }} td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: right; }}
th {{ background: #f2f2f2; }} td:first-child {{ text-align: left; }} img {{ max-width: 100%; }}
figure {{ margin: .5em 0; }} figcaption {{ font-size: .85em; color: #555; }} .row {{ display: flex; gap: 1em; flex-wrap: wrap; }}
.note {{ font-size: .85em; color: #555; }} code {{ background: #f5f5f5; padding: 0 .2em; }}
</style></head><body>
<h1>xaicxr report: {html.escape(rundir.root.name)}</h1>
<p class="note">xaicxr {__version__}; configuration in <code>config.toml</code>, figures in <code>metrics.json</code>.</p>
{''.join(parts)}
</body></html>
"""
    atomic.write_text(rundir.report, page)
    return rundir.report
