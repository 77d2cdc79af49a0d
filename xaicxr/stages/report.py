"""The report stage: ``report/index.html``, one page (plus its PNG figures) that opens offline.

It opens with the verdict per class (:mod:`xaicxr.analysis.verdict`), then follows the
questions a reader asks, in order: how good is the classifier; does it rely on
the lesion at all (counterfactual twins, where the data allow); where do the heatmaps point,
next to what maps that know nothing earn; are the templates where the lesions are; do the maps
pick the pixels the model needs (deletion, insertion); and do they change when what the model
learned is destroyed (cascading randomisation). Every estimate is shown with its 95 % interval.
An explained binary score (``target = "binary:<task>"``) gets its templates per side (positive,
negative, with their classes) and the reason its maps are not scored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..analysis.intervals import describe, estimate
from ..analysis.verdict import DOES_NOT_RELY, NOT_MEASURABLE, RELIES, verdicts
from ..config import chosen_metrics, make_metric, store_name
from ..errors import PluginError
from ..io import atomic, figures, html
from ..io.heatmap_store import HeatmapStore
from ..io.imagecache import ImageCache
from ..io.template_store import is_multi_component, read_template_file
from ..plugins.metric import Metric, ReportPart
from ..plugins.targets import binary_sides, side_names
from ..rundir import RunDir
from . import Run

NAME = "report"
TABLES = ()
EXAMPLES_PER_CLASS = 4
"""Example overlays per class: up to half of them wrongly classified, the rest correct."""


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.report]


def run(run: Run) -> dict[str, Any]:
    return {"report": str(write_report(run.dir, run.cfg, run.image_cache()))}


# --------------------------------------------------------------------------- html pieces


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


def side_labels(store: HeatmapStore, classes: list[str], by: str = "true") -> tuple[list[str], np.ndarray]:
    """A binary store's side names with their classes (``covid-vs-rest:positive`` over
    ``covid``), and each row's side."""
    positive = [classes.index(c) for c in store.target_positive or []]
    members = [[classes[k] for k in positive], [c for k, c in enumerate(classes) if k not in positive]]
    names = [f"{side}\n{', '.join(m)}" for side, m in zip(side_names(store.target), members)]
    return names, binary_sides(store.labels, store.probs, positive, store.target_threshold or 0.5, by)


def _example_rows(store: HeatmapStore, classes: list[str]) -> list[list[int]]:
    """Per true class: up to :data:`EXAMPLES_PER_CLASS` rows, half of them wrongly classified
    where there are enough (more where there are few correct ones), correct first."""
    rng = np.random.default_rng(0)
    picks = []
    for k in range(len(classes)):
        of_class = store.labels == k
        correct = rng.permutation(np.flatnonzero(of_class & (store.labels == store.predictions)))
        wrong = rng.permutation(np.flatnonzero(of_class & (store.labels != store.predictions)))
        n_wrong = min(len(wrong), EXAMPLES_PER_CLASS - min(len(correct), EXAMPLES_PER_CLASS // 2))
        n_correct = min(len(correct), EXAMPLES_PER_CLASS - n_wrong)
        picks.append([int(r) for r in (*correct[:n_correct], *wrong[:n_wrong])])
    return picks


def _examples(store: HeatmapStore, cache: ImageCache, classes: list[str]) -> list[tuple | None]:
    """One line of :data:`EXAMPLES_PER_CLASS` panels per class that has images: (caption,
    image, heatmap, lesion outline or None), None for an empty place."""
    per_class = [rows for rows in _example_rows(store, classes) if rows]
    picks = np.array([r for rows in per_class for r in rows], dtype=np.int64)
    if not len(picks):
        return []
    read = cache.read(cache.rows_of([store.ids[r] for r in picks]))
    lesions = read["lesion"] if read["lesion"] is not None else [None] * len(picks)
    maps = store.read(picks)
    positive = [classes.index(c) for c in store.target_positive or []]
    panels = {}
    for image, heat, lesion, outlined, r in zip(read["images"], maps, lesions, read["has_lesion"], picks):
        ok = "correct" if store.labels[r] == store.predictions[r] else "WRONG"
        score = f"; score {store.probs[r, positive].sum():.2f}" if positive else ""
        panels[int(r)] = (f"{ok}: true {classes[store.labels[r]]}\npred {classes[store.predictions[r]]} "
                          f"({store.probs[r].max():.2f}{score})", image, heat, lesion if outlined else None)
    return [panels[rows[k]] if k < len(rows) else None for rows in per_class for k in range(EXAMPLES_PER_CLASS)]


# --------------------------------------------------------------------------- sections


def _verdict(metrics: dict[str, Any]) -> list[str]:
    """The panel the report opens with: per class, does the model rely on the lesion, which
    explainer setting shows it better than a map that knows nothing, do those settings pass the
    randomisation test, does the shortcut probe flag the class (:mod:`xaicxr.analysis.verdict`)."""
    said = verdicts(metrics)
    if not said:
        return []
    rows = [[cls, _reliance_cell(v), _explainer_cell(v["explainers"], v["sanity"]),
             _sanity_cell(v["sanity"], v["explainers"]["beating"]), _shortcut_cell(v["shortcut"])]
            for cls, v in said.items()]
    regions = any(v["reliance_source"] == "region_reliance" for v in said.values())
    relies = "model relies on the lesion" + (" or annotated region" if regions else "")
    return ["<h2>Verdict</h2>",
            html.note("Read left to right. A heatmap can show the model's evidence only where the model relies on "
                      "the lesion. An explainer shows it when it points there more than the best map that knows "
                      "nothing about the image (lower 95 % bound above 0) and passes the randomisation test. A "
                      "flagged shortcut: features that are not disease already predict the class."),
            html.table(["class", relies, "explainer better than a map that knows nothing",
                        "randomisation test", "shortcut probe"], rows, css="verdict")]


def _mark(text: str, tone: str, why: str = "") -> html.Raw:
    """``text`` coloured by ``tone`` (good, bad, none), with a one-line reason under it."""
    unbroken = re.sub(r"(\[[^\]]*\])", r'<span style="white-space: nowrap">\1</span>', html.escape(why))
    detail = f"<br><small>{unbroken}</small>" if why else ""
    return html.Raw(f'<span class="{tone}">{html.escape(text)}</span>{detail}')


def _reliance_cell(verdict: dict[str, Any]) -> html.Raw:
    if verdict["reliance"] == RELIES:
        return _mark("yes", "good", verdict["reliance_why"])
    if verdict["reliance"] == DOES_NOT_RELY:
        return _mark("no", "bad", verdict["reliance_why"])
    return _mark(NOT_MEASURABLE, "none", verdict["reliance_why"])


def _explainer_cell(explainers: dict[str, Any], sanity: dict[str, Any]) -> html.Raw:
    """Green only for a setting that beats the uninformed maps *and* passes the randomisation
    test: a map that survives the randomisation of the model does not show the model's evidence,
    however well it points."""
    if explainers["figure"] is None:
        return _mark("not measured", "none", explainers["why"])
    if explainers["best"] is None:
        return _mark("none", "bad" if explainers["tests_explainer"] else "none", explainers["why"])
    also = explainers["beating"][1:]
    name = explainers["best"] + (f" (also {', '.join(also)})" if also else "")
    passing = [s for s in explainers["beating"] if (sanity.get(s) or {}).get("passes")]
    if not passing and sanity:
        return _mark(name + ", but it fails the randomisation test", "none", explainers["why"])
    return _mark(name, "good" if explainers["tests_explainer"] else "none", explainers["why"])


def _sanity_cell(sanity: dict[str, dict[str, Any]], stores: list[str]) -> html.Raw:
    """The randomisation test of the settings that beat the uninformed maps (of every setting
    when none does)."""
    shown = [s for s in stores if s in sanity] or list(sanity)
    if not shown:
        return _mark("not run", "none")
    marks = []
    for store in shown:
        passes = sanity[store]["passes"]
        tone, said = ("none", "not decided") if passes is None else ("good", "passes") if passes else ("bad", "fails")
        marks.append(f'{html.escape(store)} <span class="{tone}">{said}</span>')
    return html.Raw("<br>".join(marks))


def _shortcut_cell(shortcut: dict[str, Any]) -> html.Raw:
    if shortcut["flagged"] is None:
        return _mark("not run", "none")
    if shortcut["flagged"]:
        return _mark("flagged", "bad", shortcut["why"])
    return _mark("not flagged", "good")


def _accuracy(metrics: dict[str, Any]) -> str:
    """With its Wilson interval (run directories written before it was stored have none)."""
    bounds = metrics.get("accuracy_ci95")
    if not bounds or None in bounds:
        return html.fmt(metrics["accuracy"])
    return describe(estimate(metrics["accuracy"], *bounds, metrics.get("n_test", 0))) + " (95 % Wilson)"


def _majority(metrics: dict[str, Any]) -> str:
    majority = metrics.get("majority_accuracy")
    return "" if majority is None else f" (always answering the largest class: {html.fmt(majority)})"


def _recall(per_class: dict[str, Any]) -> Any:
    bounds = per_class.get("recall_ci95")
    if not bounds or None in bounds:
        return per_class["recall"]
    return estimate(per_class["recall"], *bounds, per_class["support"])


def _classification(metrics: dict[str, Any], classes: list[str], out: Path) -> list[str]:
    parts = ["<h2>Classification</h2>",
             f"<p>Accuracy <b>{_accuracy(metrics)}</b>{_majority(metrics)}, macro F1 "
             f"{html.fmt(metrics.get('macro_f1'))}.</p>",
             html.table(["class", "precision", "recall (the class's accuracy, 95 % Wilson)", "F1", "support"],
                    [[c, v["precision"], _recall(v), v["f1"], v["support"]] for c, v in metrics["per_class"].items()]),
             '<div class="row">' + html.figure(figures.confusion_figure(metrics["confusion"], classes, out / "confusion.png"),
                                        "confusion matrix (test)")]
    if metrics.get("binary"):
        parts.append(html.figure(figures.roc_figure(metrics["binary"], out / "roc.png"), "ROC curves of the binary tasks") + "</div>")
        parts.append(html.table(["task", "positive", "AUC", "AUC 95 % CI", "sensitivity", "specificity", "threshold"],
                            [[t, ", ".join(b["positive"]), b["auc"], f"[{html.fmt(b['ci95']['auc'][0])}, {html.fmt(b['ci95']['auc'][1])}]",
                              b["sensitivity"], b["specificity"], b["threshold"]] for t, b in metrics["binary"].items()]))
    else:
        parts.append("</div>")
    return parts


def _probe(metrics: dict[str, Any]) -> list[str]:
    """The shortcut probe: what features that are not disease predict, one row per problem (a
    class and the binary task with the same or the complementary positive classes are one
    problem, fitted once), with the features that reach the flag."""
    probe = metrics.get("probe")
    if not probe or "targets" not in probe:
        return []
    flagged: dict[str, list[dict[str, Any]]] = {}
    for f in probe["flagged"]:
        flagged.setdefault(f["target"], []).append(f)
    problems: dict[frozenset, list[str]] = {}
    for target, t in probe["targets"].items():
        problems.setdefault(_problem(t.get("positive"), metrics["classes"]) or frozenset([target]), []).append(target)
    rows = []
    for targets in problems.values():
        t = probe["targets"][targets[0]]
        name = " = ".join(targets)
        if "features" not in t:
            rows.append([name, t.get("note"), None, None, None, None, None])
            continue
        best = max(t["features"], key=lambda f: t["features"][f]["value"] or 0.0)
        hits = sorted({f["feature"]: f for target in targets for f in flagged.get(target, [])}.values(),
                      key=lambda f: -f["auc"])
        rows.append([name, best, t["features"][best], t["all"]["logistic"], t["all"]["forest"],
                     t.get("input", {}).get("forest"),
                     ", ".join(f"{f['feature']} {f['auc']:.2f}" for f in hits) or None])
    grouped = "grouped by patient" if probe["grouped"] else "not grouped (no patient ids)"
    return ["<h2>Shortcut probe: what non-disease features alone predict</h2>",
            html.note(f"Cross-validated AUC ({grouped}) of image size, aspect, format, mode, bit depth, "
                      "border fraction, intensity and corner-patch statistics of each file (input_*: of the "
                      f"model's input after resizing); {probe['method']['interval']}. "
                      f"AUC >= {probe['flag']} is flagged as a likely shortcut. A class and the binary task that "
                      "separates the same images share a row."),
            html.table(["target", "best single feature", "its AUC", "all features (logistic)", "all features (forest)",
                        "model input only (forest)", f"flagged (AUC >= {probe['flag']})"], rows),
            "" if flagged else "<p>No feature reaches the flag.</p>"]


def _problem(positive: list[str] | None, classes: list[str]) -> frozenset | None:
    """A probe target's classification problem: the unordered pair of its positive classes and
    the others (None when the positives are not known)."""
    if not positive:
        return None
    return frozenset({frozenset(positive), frozenset(classes) - frozenset(positive)})


def _templates_pictures(name: str, store: HeatmapStore, cfg: dict[str, Any], rundir: RunDir, cache: ImageCache,
                        classes: list[str], out: Path) -> list[str]:
    parts = []
    if store.is_binary:
        by = cfg.get("templates", {}).get("by", "true")
        groups, rows_group = side_labels(store, classes, by)
        means = class_means(cache, store.ids, rows_group, groups)
        what = f"template per side of {store.target} (by {'the true label' if by == 'true' else 'the prediction'})"
    else:
        groups = None
        means = class_means(cache, store.ids, store.labels, classes)
        what = "template per class"
    for agg in cfg.get("aggregate", []):
        tpath = rundir.template(name, agg["name"])
        if not tpath.exists():
            continue
        loaded = read_template_file(tpath)
        if is_multi_component(loaded):
            for cls, (comps, attrs) in loaded.items():
                explained = attrs.get("explained_variance_ratio")
                fig = figures.components_panel(comps, None if explained is None else list(explained), cls,
                                               f"{name} eigen-heatmaps: {cls} (n={attrs.get('n')})",
                                               out / f"pca-{name}-{agg['name']}-{cls}.png")
                parts.append(html.figure(fig, f"{agg['name']} components of {cls}"))
            continue
        if groups is not None:
            loaded = {shown: loaded[side] for side, shown in zip(side_names(store.target), groups) if side in loaded}
        fig = figures.template_panel({c: t for c, (t, _) in loaded.items()}, means,
                                     {c: int(a.get("n", 0)) for c, (_, a) in loaded.items()},
                                     f"{name}: {agg['name']} {what} over its mean image",
                                     out / f"templates-{name}-{agg['name']}.png")
        parts.append(html.figure(fig, f"{agg['name']} templates ({name})"))
    return parts


def _metrics(cfg: dict[str, Any]) -> tuple[list[Metric], list[str]]:
    """The run's chosen metrics, made with its options, and the names of those not installed."""
    chosen, unavailable = [], []
    for name in chosen_metrics(cfg["quality"]):
        try:
            chosen.append(make_metric(name, cfg["quality"]))
        except PluginError:
            unavailable.append(name)
    return chosen, unavailable


def _store_figures(metric: Metric, metrics: dict[str, Any], store: str, aggregators: list[str]) -> Any:
    """A metric's figures of one store: ``{aggregator: ...}`` for the template scopes."""
    figures = metrics.get(metric.key, {})
    if metric.scope in ("template", "templates"):
        return {agg: figures[f"{store}-{agg}"] for agg in aggregators if f"{store}-{agg}" in figures}
    return figures.get(store)


def _model_setting(cfg: dict[str, Any], rundir: RunDir) -> str:
    """The model in one line: the backbone trained here, or the file imported with its sha256."""
    model = cfg.get("model", {})
    if model.get("path"):
        info = rundir.read_train_info().get("imported", {})
        return (f"model <b>{html.escape(model['path'])}</b> (sha256 <code>{html.escape(model['sha256'])}</code>; "
                f"trained elsewhere, not by xaicxr; {html.escape(info.get('type', 'Keras'))} model "
                f"{html.escape(info.get('name', ''))}, input {info.get('input_size')} px x {info.get('channels')} "
                f"channel(s), outputs {html.escape(str(info.get('outputs')))}; explained scores: "
                f"{html.escape(str(info.get('scores')))})")
    backbone = cfg["backbone"]
    setting = (f"backbone <b>{html.escape(backbone['name'])}</b> (weights {html.escape(str(backbone.get('weights', 'imagenet')))}"
               f", width {backbone.get('width', 1.0)}, input {backbone.get('input_size', 224)} px)")
    if backbone.get("weights", "imagenet") == "none":
        setting += " &mdash; trained from scratch: <b>not</b> the paper's ImageNet transfer setting"
    return setting


def write_report(rundir: RunDir, cfg: dict[str, Any], cache: ImageCache) -> Path:
    out = rundir.report_dir
    out.mkdir(parents=True, exist_ok=True)
    metrics = rundir.read_metrics()
    classes = metrics["classes"]
    parts: list[str] = []
    setting = f"dataset <b>{html.escape(cfg['dataset']['name'])}</b>, " + _model_setting(cfg, rundir)
    parts.append(f"<p>{setting}. Test set: {html.escape(metrics.get('test_set', ''))}, n = {metrics.get('n_test')}.</p>")
    parts += _verdict(metrics)
    parts += [f'<p style="color:#b00"><b>Warning:</b> {html.escape(w)}</p>'
              for w in rundir.read_split().get("warnings", [])]
    parts += _classification(metrics, classes, out)
    parts += _probe(metrics)
    aggregators = [a["name"] for a in cfg.get("aggregate", [])]
    chosen, unavailable = _metrics(cfg)
    for metric in chosen:
        parts += metric.section(ReportPart(metrics.get(metric.key), metrics, classes, out, None, aggregators))
    parts += [html.note(f"Metric {name!r} is not installed here: its figures are in metrics.json, not shown.")
              for name in unavailable]
    parts += [html.note(f"Not measured: {name}: {why}") for name, why in metrics.get("not_measured", {}).items()]
    for spec in cfg.get("explain", []):
        name = store_name(spec)
        path = rundir.heatmaps(name)
        if not path.exists():
            continue
        with HeatmapStore(path) as store:
            target = f", explaining <b>{html.escape(store.target)}</b>" if store.target else ""
            parts.append(f"<h2>{html.escape(name)} at layer <code>{html.escape(store.layer or 'input')}</code>"
                         f"{target}</h2>")
            if store.is_binary:
                parts.append(html.note(f"One map per image, of the task's score: the summed probability of "
                                   f"{', '.join(store.target_positive or [])} (threshold {store.target_threshold:.3f}, "
                                   "from validation). Templates per side."))
            flags = store.degenerate
            if flags.any():
                share = float(flags.mean())
                colour = "#b00" if share > 0.5 else "#a60"
                parts.append(f'<p style="color:{colour}"><b>Degenerate maps:</b> {int(flags.sum())} of {len(flags)} '
                             f"({share:.0%}): no signal (all zero, constant or non-finite), kept as zeros and "
                             "counted as misses.</p>")
            parts += _templates_pictures(name, store, cfg, rundir, cache, classes, out)
            skipped = metrics.get("quality_skipped", {}).get(name)
            if skipped:
                parts.append(html.note(f"Quality figures: {skipped['reason']}"))
            for metric in chosen:
                parts += metric.section(ReportPart(_store_figures(metric, metrics, name, aggregators), metrics,
                                                   classes, out, name, aggregators))
            examples = _examples(store, cache, classes)
            if examples:
                grid = figures.overlay_grid(examples, f"{name}: examples per true class (correct, then wrong)",
                                            out / f"examples-{name}.png", columns=EXAMPLES_PER_CLASS)
                parts.append(html.figure(grid, f"example overlays ({name})"))
    timings = [[stage, seconds] for stage, seconds in (metrics.get("timings_s") or {}).items() if seconds is not None]
    if timings:
        parts.append("<h2>Timings</h2>" + html.table(["stage", "seconds"], timings))
    skipped = atomic.read_json(rundir.skipped) if rundir.skipped.exists() else []
    parts.append(f"<p>Files skipped while reading the data: {len(skipped)} (listed with reasons in "
                 f"<code>skipped.json</code>).</p>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>xaicxr report: {html.escape(rundir.root.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: .8em 0; }} td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: right; }}
th {{ background: #f2f2f2; }} td:first-child, th:first-child {{ text-align: left; }} img {{ max-width: 100%; }}
table.verdict td, table.verdict th {{ text-align: left; vertical-align: top; max-width: 22em; }}
.good {{ color: #176317; font-weight: 600; }} .bad {{ color: #b00; font-weight: 600; }} .none {{ color: #666; font-weight: 600; }}
figure {{ margin: .5em 0; }} figcaption {{ font-size: .85em; color: #555; }} .row {{ display: flex; gap: 1em; flex-wrap: wrap; }}
.note {{ font-size: .85em; color: #555; }} code {{ background: #f5f5f5; padding: 0 .2em; }} small {{ color: #666; }}
</style></head><body>
<h1>xaicxr report: {html.escape(rundir.root.name)}</h1>
<p class="note">xaicxr {__version__}; configuration in <code>config.toml</code>, figures in <code>metrics.json</code>,
per-image scores and curves in <code>quality.h5</code>. Bracketed figures are 95 % intervals.</p>
{''.join(parts)}
</body></html>
"""
    atomic.write_text(rundir.report, page)
    return rundir.report
