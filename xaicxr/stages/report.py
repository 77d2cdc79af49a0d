"""The report stage: ``report/index.html``, one page (plus its PNG figures) that opens offline.

It follows the questions a reader asks, in order: how good is the classifier; does it rely on
the lesion at all (counterfactual twins, where the data allow); where do the heatmaps point,
next to what maps that know nothing earn; are the templates where the lesions are; do the maps
pick the pixels the model needs (deletion, insertion); and do they change when what the model
learned is destroyed (cascading randomisation). Every estimate is shown with its 95 % interval.
An explained binary score (``target = "binary:<task>"``) gets its templates per side (positive,
negative, with their classes) and the reason its maps are not scored.
"""

from __future__ import annotations

import html
from urllib.parse import quote
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..analysis.intervals import describe, estimate
from ..config import store_name
from ..io import atomic, figures
from ..io.heatmap_store import HeatmapStore
from ..io.imagecache import ImageCache
from ..io.template_store import is_multi_component, read_template_file
from ..plugins.targets import binary_sides, side_names
from ..rundir import RunDir
from . import Run

NAME = "report"
TABLES = ()
EXAMPLES = 6


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.report]


def run(run: Run) -> dict[str, Any]:
    return {"report": str(write_report(run.dir, run.cfg, run.image_cache()))}


# --------------------------------------------------------------------------- html pieces


class _Raw(str):
    """A cell that is already HTML (an estimate with its interval)."""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, dict) and "value" in value:
        return describe(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(name: str, alt: str) -> str:
    src = html.escape(quote(name))
    return f'<figure><img src="{src}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


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


def _examples(store: HeatmapStore, cache: ImageCache, classes: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
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
    positive = [classes.index(c) for c in store.target_positive or []]
    for image, heat, r in zip(images, maps, picks):
        ok = "correct" if store.labels[r] == store.predictions[r] else "WRONG"
        score = f"; score {store.probs[r, positive].sum():.2f}" if positive else ""
        out.append((f"{ok}: true {classes[store.labels[r]]}\npred {classes[store.predictions[r]]} "
                    f"({store.probs[r].max():.2f}{score})", image, heat))
    return out


# --------------------------------------------------------------------------- sections


def _accuracy(metrics: dict[str, Any]) -> str:
    """With its Wilson interval (run directories written before it was stored have none)."""
    bounds = metrics.get("accuracy_ci95")
    if not bounds or None in bounds:
        return _fmt(metrics["accuracy"])
    return describe(estimate(metrics["accuracy"], *bounds, metrics.get("n_test", 0))) + " (95 % Wilson)"


def _classification(metrics: dict[str, Any], classes: list[str], out: Path) -> list[str]:
    parts = ["<h2>Classification</h2>",
             f"<p>Accuracy <b>{_accuracy(metrics)}</b>, macro F1 {_fmt(metrics.get('macro_f1'))}.</p>",
             _table(["class", "precision", "recall", "F1", "support"],
                    [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in metrics["per_class"].items()]),
             '<div class="row">' + _img(figures.confusion_figure(metrics["confusion"], classes, out / "confusion.png"),
                                        "confusion matrix (test)")]
    if metrics.get("binary"):
        parts.append(_img(figures.roc_figure(metrics["binary"], out / "roc.png"), "ROC curves of the binary tasks") + "</div>")
        parts.append(_table(["task", "positive", "AUC", "AUC 95 % CI", "sensitivity", "specificity", "threshold"],
                            [[t, ", ".join(b["positive"]), b["auc"], f"[{_fmt(b['ci95']['auc'][0])}, {_fmt(b['ci95']['auc'][1])}]",
                              b["sensitivity"], b["specificity"], b["threshold"]] for t, b in metrics["binary"].items()]))
    else:
        parts.append("</div>")
    return parts


def _probe(metrics: dict[str, Any]) -> list[str]:
    """The shortcut probe: what features that are not disease predict, per class and binary task."""
    probe = metrics.get("probe")
    if not probe or "targets" not in probe:
        return []
    rows = []
    for target, t in probe["targets"].items():
        if "features" not in t:
            rows.append([target, t.get("note"), None, None, None, None])
            continue
        best = max(t["features"], key=lambda f: t["features"][f]["value"] or 0.0)
        rows.append([target, best, t["features"][best], t["all"]["logistic"], t["all"]["forest"],
                     t.get("input", {}).get("forest")])
    flagged = probe["flagged"]
    grouped = "grouped by patient" if probe["grouped"] else "not grouped (no patient ids)"
    return ["<h2>Shortcut probe: what non-disease features alone predict</h2>",
            _note(f"Cross-validated AUC ({grouped}) of image size, aspect, format, mode, bit depth, "
                  "border fraction, intensity and corner-patch statistics of each file (input_*: of the "
                  f"model's input after resizing); {probe['method']['interval']}. "
                  f"AUC >= {probe['flag']} is flagged as a likely shortcut."),
            _table(["target", "best single feature", "its AUC", "all features (logistic)", "all features (forest)",
                    "model input only (forest)"], rows),
            _table(["flagged target", "feature", "AUC"], [[f["target"], f["feature"],
                                                         {"value": f["auc"], "ci95": f["ci95"]}] for f in flagged])
            if flagged else "<p>No feature reaches the flag.</p>"]


def _reliance(metrics: dict[str, Any]) -> list[str]:
    reliance = metrics.get("reliance")
    if not reliance:
        return []
    rows = [[c, r["n"], r["accuracy"], r["accuracy_lesion_removed"], r["accuracy_lesion_in_mask_only"],
             r["probability_drop"], r["probability_drop_mask_only"], r["relies_on_lesion"] if r["has_lesion"] else None]
            for c, r in reliance.items()]
    return ["<h2>Does the model rely on the lesion? (counterfactual twins)</h2>",
            _note("Each test image re-made from its seeds with the lesion removed, and with the lesion kept only "
                  "inside its mask. Where removing the lesion collapses the answer, the lesion is the model's evidence "
                  "and a heatmap that points elsewhere is the explainer failing; where it does not, localisation "
                  "figures of that class do not test the explainer."),
            _table(["class", "n", "accuracy", "lesion removed", "lesion only in mask", "p drop (removed)",
                    "p drop (mask only)", "relies on lesion"], rows)]


def _baselines(metrics: dict[str, Any]) -> list[str]:
    baselines = metrics.get("baselines", {})
    rows = []
    for cls, per in baselines.items():
        for name, f in per.items():
            if "pointing_game" in f or "lung_energy" in f:
                rows.append([cls, name, f.get("pointing_game"), f.get("pointing_game_tolerance"), f.get("energy_lift"),
                             f.get("energy_lift_lungs"), f.get("miou"), f.get("lung_energy")])
    if not rows:
        return []
    return ["<h2>What maps that know nothing about the lesion score</h2>",
            _note("uniform: flat over the image; lungs: flat in the image's own lungs; lungs_blurred: that mask blurred; "
                  "class_prior: the mean training lesion mask of the class; random: noise. Same images, same pass as "
                  "the explainers below."),
            _table(["class", "baseline", "pointing game", "pointing (tolerance)", "energy lift", "lung lift", "mIoU",
                    "lung energy"], rows)]


def _localisation(name: str, metrics: dict[str, Any]) -> list[str]:
    per_class = metrics.get("per_image", {}).get(name)
    if not per_class:
        return []
    reliance = metrics.get("reliance", {})
    rows = []
    for cls, q in per_class.items():
        skill = q.get("skill", {})
        pg_skill = skill.get("pointing_game")
        lift_skill = skill.get("energy_lift")
        rows.append([cls, q.get("n"), q.get("pointing_game"), q.get("pointing_game_tolerance"),
                     _versus(pg_skill), q.get("energy_lift"), _versus(lift_skill),
                     q.get("energy_lift_lungs"), q.get("miou"), q.get("lung_energy"), q.get("consistency"),
                     q.get("split_half")])
    parts = ["<h3>Where the maps point (per image)</h3>",
             _table(["class", "n", "pointing game", "pointing (tolerance)", "skill over best baseline (pointing)",
                     "energy lift", "skill (lift)", "lung lift", "mIoU (Otsu)", "lung energy", "consistency",
                     "split-half (Spearman-Brown)"], rows)]
    unreliable = [c for c, r in reliance.items() if r["has_lesion"] and not r["relies_on_lesion"]]
    if unreliable:
        parts.append(_note(f"The model does not rely on the lesion for {', '.join(unreliable)}: localisation figures "
                           "there do not test the explainer."))
    tolerance = next((q.get("tolerance_px") for q in per_class.values() if q.get("tolerance_px") is not None), None)
    parts.append(_note("Pointing game: share of maps whose maximum is in the lesion (Zhang et al. 2018; ties shared); "
                       f"with tolerance: within {tolerance} px. Skill: the figure minus the best uninformed baseline on "
                       "the same images, paired 95 % interval (above 0: better than knowing nothing). Lung lift 1 = a "
                       "map spread evenly over the lungs. Split-half: Spearman-Brown corrected, interval by bootstrap "
                       "over images."))
    return parts


def _versus(skill: dict[str, Any] | None) -> _Raw | None:
    """``class_prior: 0.12 [0.02, 0.22]``: a skill and the baseline it is measured against."""
    return _Raw(f"{html.escape(skill['baseline'])}: {describe(skill)}") if skill else None


def _templates_quality(name: str, metrics: dict[str, Any], aggregators: list[str]) -> list[str]:
    rows, fills = [], set()
    for agg in aggregators:
        for cls, t in metrics.get("templates", {}).get(f"{name}-{agg}", {}).items():
            fixed = t.get("as_fixed_map", {})
            faith = t.get("faithfulness", {})
            fills.add(faith.get("fill"))
            rows.append([agg, cls, t.get("n"), t.get("lesion_frequency_r"), t.get("peak_in_lungs"),
                         fixed.get("pointing_game"), fixed.get("energy_lift"), faith.get("template_drop"),
                         faith.get("random_lung_region_drop"), faith.get("difference")])
    if not rows:
        return []
    return ["<h3>The templates as maps</h3>",
            _table(["aggregator", "class", "n", "r with lesion frequency", "peak in lungs", "pointing (as fixed map)",
                    "lift (as fixed map)", "p drop: template region", "p drop: random lung region", "difference"], rows),
            _note("Each template scored on its class's images as if it were every image's map; template faithfulness: "
                  "the class probability drop when the template's top region is occluded (filled by "
                  f"{' / '.join(sorted(f for f in fills if f)) or '-'}), against random lung regions of the same area.")]


def _faithfulness(name: str, metrics: dict[str, Any], out: Path) -> list[str]:
    per_class = metrics.get("faithfulness", {}).get(name)
    if not per_class:
        return []
    rows = []
    for cls, fills in per_class.items():
        for fill, f in fills.items():
            rows.append([cls, fill, f["deletion_auc"], _versus(f.get("deletion_auc_skill")),
                         f["insertion_auc"], _versus(f.get("insertion_auc_skill"))])
    baselines = metrics.get("baselines", {})
    orders = sorted({b for per in baselines.values() for b, f in per.items() if "faithfulness" in f})
    fig = figures.perturbation_figure(per_class, baselines, name, out / f"faithfulness-{name}.png")
    return ["<h3>Deletion and insertion</h3>",
            _table(["class", "fill", "deletion AUC (lower = better)", "skill over best baseline order",
                    "insertion AUC (higher = better)", "skill over best baseline order"], rows),
            _img(fig, f"{name}: mean deletion and insertion curves"),
            _note("Pixels removed most relevant first (deletion) or kept most relevant first (insertion), filled by "
                  "ROAD's noisy linear imputation (Rong et al. 2022) or a blur; the class probability along the way. "
                  f"Uninformed orders compared: {', '.join(orders) or 'none'} (uniform = random order).")]


def _randomisation(name: str, metrics: dict[str, Any], out: Path) -> list[str]:
    result = metrics.get("randomisation", {}).get(name)
    if not result:
        return []
    sanity = metrics.get("sanity", {}).get(name, {})
    fig = figures.cascade_figure(result, name, out / f"cascade-{name}.png")
    rl = result["random_logit"]
    return ["<h3>Cascading randomisation (Adebayo et al. 2018)</h3>",
            f"<p><b>{html.escape(sanity.get('summary', ''))}</b></p>",
            _img(fig, f"{name}: similarity to the trained maps as layers are randomised from the top"),
            f"<p>Random-logit test (Sixt et al. 2020): maps for a random other class keep Spearman {describe(rl['spearman'])}, "
            f"SSIM {describe(rl['ssim'])} with the maps of the explained class.</p>",
            _note("Per image, Spearman rank correlation and SSIM between the trained model's map and the map after "
                  "randomising every weighted layer from the top down to the named one; the grey band is the "
                  "similarity of two different images' trained maps (what the shared layout alone gives).")]


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
                parts.append(_img(fig, f"{agg['name']} components of {cls}"))
            continue
        if groups is not None:
            loaded = {shown: loaded[side] for side, shown in zip(side_names(store.target), groups) if side in loaded}
        fig = figures.template_panel({c: t for c, (t, _) in loaded.items()}, means,
                                     {c: int(a.get("n", 0)) for c, (_, a) in loaded.items()},
                                     f"{name}: {agg['name']} {what} over its mean image",
                                     out / f"templates-{name}-{agg['name']}.png")
        parts.append(_img(fig, f"{agg['name']} templates ({name})"))
    return parts


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
    parts += [f'<p style="color:#b00"><b>Warning:</b> {html.escape(w)}</p>'
              for w in rundir.read_split().get("warnings", [])]
    parts += _classification(metrics, classes, out)
    parts += _probe(metrics)
    parts += _reliance(metrics)
    parts += _baselines(metrics)
    aggregators = [a["name"] for a in cfg.get("aggregate", [])]
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
                parts.append(_note(f"One map per image, of the task's score: the summed probability of "
                                   f"{', '.join(store.target_positive or [])} (threshold {store.target_threshold:.3f}, "
                                   "from validation). Templates per side."))
            parts += _templates_pictures(name, store, cfg, rundir, cache, classes, out)
            skipped = metrics.get("quality_skipped", {}).get(name)
            if skipped:
                parts.append(_note(f"Quality figures: {skipped['reason']}"))
            parts += _localisation(name, metrics)
            parts += _templates_quality(name, metrics, aggregators)
            parts += _faithfulness(name, metrics, out)
            parts += _randomisation(name, metrics, out)
            key = f"{name}-{aggregators[0]}" if aggregators else None
            dist = metrics.get("distinctiveness", {}).get(key) if key else None
            if dist:
                parts.append("<h3>Distinctiveness (Pearson r between class templates)</h3>")
                parts.append(_table([""] + list(dist), [[a] + [dist[a][b] for b in dist] for a in dist]))
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
