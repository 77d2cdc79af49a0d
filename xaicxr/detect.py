"""``xaicxr detect``: classify new images, explain them, and compare each heatmap with the run's
class templates (the paper's biomarker detection: which template does this image's evidence
look like?)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from skimage.metrics import structural_similarity

from . import figures, storage
from .errors import XaicxrError
from .explaining import make_explainer, target_layer
from .imaging import ImageDecodeError, fit_square, read_image
from .lungs import segment_lungs
from .quality import energy_share, pearson
from .templates import read_template_file


def _pick_spec(cfg: dict[str, Any], explainer: str | None) -> dict[str, Any]:
    specs = cfg["explain"]
    if explainer is None:
        return specs[0]
    for spec in specs:
        if spec["name"] == explainer:
            return spec
    return {"name": explainer, "layer": None, "targets": "true", "split": "test", "batch_size": 16}


def _templates(run_dir: Path, cfg: dict[str, Any], name: str) -> tuple[str, dict[str, np.ndarray]]:
    for agg in cfg["aggregate"]:
        path = run_dir / "templates" / f"{name}-{agg['name']}.h5"
        if path.exists():
            loaded = read_template_file(path)
            if next(iter(loaded.values()))[0].ndim == 2:
                return agg["name"], {c: t for c, (t, _) in loaded.items()}
    raise XaicxrError(f"no {name} templates in {run_dir / 'templates'}; run the templates stage first "
                      f"(xaicxr template {run_dir})")


def trained_resize_policy(run_dir: Path) -> str:
    """How the model's training images were resized (``train.json``), which is not necessarily
    what ``config.toml`` says now: a run interrupted after a config change rewrote the latter.
    Models trained before the policy was recorded were trained on padded images."""
    return storage.read_json(Path(run_dir) / "train.json").get("resize", "pad")


def detect(run_dir: Path, images: list[Path], *, explainer: str | None = None, out: Path | None = None,
           unsafe_load: bool = False) -> dict[str, Any]:
    from .models import load_model
    from .pipeline import run_config

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    metrics = storage.read_json(run_dir / "metrics.json")
    classes = metrics["classes"]
    model = load_model(run_dir / "model.keras", unsafe=unsafe_load)
    size = int(model.input_shape[1])
    resize = trained_resize_policy(run_dir)
    spec = _pick_spec(cfg, explainer)
    heatmap_store = run_dir / "heatmaps" / f"{spec['name']}.h5"
    layer = target_layer(spec, run_dir)
    if heatmap_store.exists():
        import h5py

        with h5py.File(heatmap_store, "r") as h5:
            layer = h5.attrs["layer"] or None
    aggregator, templates = _templates(run_dir, cfg, spec["name"])
    tool = make_explainer(spec)
    out = Path(out) if out else run_dir / "detect"
    results = []
    for path in images:
        try:
            raw, info = read_image(Path(path))
        except ImageDecodeError as exc:
            results.append({"path": str(path), "error": str(exc)})
            continue
        image = fit_square(raw, size, policy=resize)
        x = image[None, ..., None].astype(np.float32)
        probs = np.asarray(model(x, training=False))[0]
        pred = int(probs.argmax())
        heat = tool.explain(model, x, np.array([pred]), layer=layer)[0]
        lungs = segment_lungs(image)
        match = {c: {"pearson": pearson(heat, t),
                     "ssim": float(structural_similarity(heat, t.astype(np.float32), data_range=1.0))}
                 for c, t in templates.items()}
        finite = {c: m["pearson"] for c, m in match.items() if np.isfinite(m["pearson"])}
        best = max(finite, key=finite.get) if finite else None
        binary = {}
        for task, b in metrics.get("binary", {}).items():
            score = float(sum(probs[classes.index(c)] for c in b["positive"]))
            binary[task] = {"score": score, "threshold": b["threshold"], "positive": score >= b["threshold"]}
        name = f"{Path(path).stem}-{spec['name']}.png"
        picture = figures.overlay_grid(
            [("input", image, np.zeros_like(heat)),
             (f"{spec['name']}: {classes[pred]} ({probs[pred]:.2f})", image, heat)]
            + ([(f"best template: {best} (r={finite[best]:.2f})", image, templates[best])] if best else []),
            Path(path).name, out / name, columns=3)
        results.append({
            "path": str(path), "size": [info.width, info.height], "mode": info.mode, "format": info.format,
            "probabilities": {c: float(p) for c, p in zip(classes, probs)}, "prediction": classes[pred],
            "binary": binary, "explainer": spec["name"], "layer": layer, "template_aggregator": aggregator,
            "template_match": match, "best_template": best,
            "lung_energy": float(energy_share(heat[None], lungs[None])[0]) if lungs.any() else None,
            "overlay": str(out / picture)})
    return {"run_dir": str(run_dir), "resize": resize, "results": results}
