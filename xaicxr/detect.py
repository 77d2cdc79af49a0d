"""``xaicxr detect``: classify new images, explain them, and compare each heatmap with the run's
class templates (the paper's biomarker detection: which template does this image's evidence
look like?). Every explained binary score of the run (``target = "binary:<task>"``) is
explained too: its heatmap, overlay and match against the task's side templates go with the
task's score under ``binary``."""

from __future__ import annotations

import dataclasses

from pathlib import Path
from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

from .analysis.lungs import segment_lungs
from .analysis.localisation import energy_share
from .analysis.stats import pearson
from .config import resolve_entry, store_name
from .errors import DataError, XaicxrError
from .io import figures
from .io.heatmap_store import HeatmapStore
from .io.imaging import ImageDecodeError, read_image
from .io.modelfile import load_model
from .io.resize import fit_square
from .io.template_store import is_multi_component, read_template_file
from .plugins.targets import BINARY_PREFIX, side_names
from .rundir import RunDir
from .stages.explain import ExplainJob


def _is_binary(spec: dict[str, Any]) -> bool:
    return spec.get("target", "").startswith(BINARY_PREFIX)


def _job(rundir: RunDir, cfg: dict[str, Any], explainer: str | None) -> ExplainJob:
    """The run's ``[[explain]]`` entry for ``explainer`` (a store name, or an explainer's first
    class-score entry; default: the first class-score entry), at the layer its heatmap store
    was made with; an explainer the run does not list gets the default entry."""
    by_store = {store_name(spec): spec for spec in cfg["explain"]}
    classwise = [spec for spec in cfg["explain"] if not _is_binary(spec)]
    if explainer is None:
        spec = classwise[0] if classwise else None
    else:
        spec = by_store.get(explainer) or next((s for s in classwise if s["name"] == explainer), None)
    spec = spec or resolve_entry("explain", {"name": explainer or "gradcam"}, "xaicxr detect --explainer")
    return _at_store_layer(rundir, ExplainJob.from_spec(spec, rundir))


def _at_store_layer(rundir: RunDir, job: ExplainJob) -> ExplainJob:
    store = rundir.heatmaps(job.store)
    if store.exists():
        with HeatmapStore(store) as s:
            return dataclasses.replace(job, layer=s.layer or None)
    return job


def _templates(rundir: RunDir, cfg: dict[str, Any], explainer: str,
               names: tuple[str, ...] | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """The first aggregator's per-class (H, W) templates of the store ``explainer`` (only
    ``names``, such as a binary task's sides, where given)."""
    for agg in cfg["aggregate"]:
        path = rundir.template(explainer, agg["name"])
        if path.exists():
            loaded = read_template_file(path)
            if loaded and not is_multi_component(loaded):
                return agg["name"], {c: t for c, (t, _) in loaded.items() if names is None or c in names}
    raise XaicxrError(f"no {explainer} templates in {rundir / 'templates'}; run the templates stage "
                      f"first (xaicxr template {rundir.root})")


def detect(run_dir: Path, images: list[Path], *, explainer: str | None = None, out: Path | None = None,
           unsafe_load: bool = False) -> dict[str, Any]:
    rundir = RunDir(run_dir)
    cfg = rundir.load_config()
    metrics = rundir.read_metrics()
    classes = metrics["classes"]
    model = load_model(rundir.model, unsafe=unsafe_load)
    size = int(model.input_shape[1])
    train_info = rundir.read_train_info()
    resize, mode = train_info["resize"], train_info.get("mode")
    job = _job(rundir, cfg, explainer)
    aggregator, templates = _templates(rundir, cfg, job.store)
    binary_jobs = [_at_store_layer(rundir, ExplainJob.from_spec(spec, rundir))
                   for spec in cfg["explain"] if _is_binary(spec)]
    binary_jobs = [(j, *_templates(rundir, cfg, j.store, side_names(j.target.label))) for j in binary_jobs]
    out = Path(out) if out else rundir / "detect"
    names = overlay_names(images)
    results = []
    for path, stem in zip(images, names):
        try:
            raw, info = read_image(Path(path))
        except ImageDecodeError as exc:
            results.append({"path": str(path), "error": str(exc)})
            continue
        image = fit_square(raw, size, policy=resize, mode=mode)
        x = image[None, ..., None].astype(np.float32)
        probs = np.asarray(model(x, training=False))[0]
        pred = int(probs.argmax())
        heats, degenerate = job.explainer.explain_with_info(model, x, job.explained(np.array([pred])), layer=job.layer)
        heat = heats[0]
        lungs = segment_lungs(image)
        match, best = _match(heat, templates)
        binary = {}
        for task, b in metrics.get("binary", {}).items():
            score = float(sum(probs[classes.index(c)] for c in b["positive"]))
            binary[task] = {"score": score, "threshold": b["threshold"], "positive": score >= b["threshold"]}
        picture = _overlay(image, heat, job.store, f"{classes[pred]} ({probs[pred]:.2f})", templates, match,
                           best, Path(path), stem, out)
        for bjob, side_aggregator, sides in binary_jobs:
            bheat = bjob.explainer.explain_with_info(model, x, bjob.target, layer=bjob.layer)[0][0]
            side_match, side = _match(bheat, sides)
            score = binary[bjob.target.task]["score"]
            binary[bjob.target.task].setdefault("explained", {})[bjob.store] = {
                "explainer": bjob.name, "layer": bjob.layer, "template_aggregator": side_aggregator,
                "template_match": side_match, "best_template": side,
                "lung_energy": float(energy_share(bheat[None], lungs[None])[0]) if lungs.any() else None,
                "overlay": str(out / _overlay(image, bheat, bjob.store, f"score {score:.2f}", sides,
                                              side_match, side, Path(path), stem, out))}
        results.append({
            "path": str(path), "size": [info.width, info.height], "mode": info.mode, "format": info.format,
            "degenerate": bool(degenerate[0]),
            "probabilities": {c: float(p) for c, p in zip(classes, probs)}, "prediction": classes[pred],
            "binary": binary, "explainer": job.name, "layer": job.layer, "template_aggregator": aggregator,
            "template_match": match, "best_template": best,
            "lung_energy": float(energy_share(heat[None], lungs[None])[0]) if lungs.any() else None,
            "overlay": str(out / picture)})
    if results and all("error" in r for r in results):
        listed = "; ".join(f"{r['path']}: {r['error']}" for r in results[:3])
        raise DataError(f"none of the {len(results)} images could be read ({listed}"
                        f"{'; ...' if len(results) > 3 else ''})")
    return {"run_dir": str(rundir.root), "resize": resize, "results": results}


def _match(heat: np.ndarray, templates: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, float]], str | None]:
    """Pearson r and SSIM of ``heat`` with each template, and the template of highest r."""
    match = {c: {"pearson": pearson(heat, t),
                 "ssim": float(structural_similarity(heat, t.astype(np.float32), data_range=1.0))}
             for c, t in templates.items()}
    finite = {c: m["pearson"] for c, m in match.items() if np.isfinite(m["pearson"])}
    return match, max(finite, key=finite.get) if finite else None


def _overlay(image: np.ndarray, heat: np.ndarray, store: str, title: str, templates: dict[str, np.ndarray],
             match: dict[str, dict[str, float]], best: str | None, path: Path, stem: str,
             out: Path) -> str:
    """``<stem>-<store>.png`` (``stem``: :func:`overlay_names`): the input, the heatmap and the
    best-matching template."""
    return figures.overlay_grid(
        [("input", image, np.zeros_like(heat)), (f"{store}: {title}", image, heat)]
        + ([(f"best template: {best} (r={match[best]['pearson']:.2f})", image, templates[best])] if best else []),
        path.name, out / f"{stem}-{store}.png", columns=3)


def overlay_names(images: list[Path]) -> list[str]:
    """One overlay name per image: its stem, made unique with ``-2``, ``-3`` ... in input order
    (``d1/x.png`` and ``d2/x.png`` must not overwrite each other)."""
    taken: set[str] = set()
    names = []
    for path in images:
        stem, name, n = Path(path).stem, Path(path).stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        taken.add(name)
        names.append(name)
    return names
