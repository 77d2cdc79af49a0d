"""Can a map that never looks at the image find the phantom's lesion? (the class prior)

The class prior is the mean lesion mask of a class's training images: it knows where the class's
lesions usually lie and nothing about the image at hand. Used as a fixed heatmap, its pointing
game on the class's held-out images is the score an explainer must beat before its pointing
game says anything about the image; when lesions always lie in the same place, no explainer can.

For each lesion class this reports the prior's pointing game at tolerance 0 (its argmax pixel
inside the lesion mask; tied maxima share the hit) and at 15 px scaled from 224 px to the image
size (the mask within that distance of the argmax), each with its Wilson 95 % interval, and how
much of the lesion the masks hold: the share of the lesion's added density inside the mask (mean
and minimum over images) and the mask's share of the image.

    .venv/bin/python benchmarks/phantom_prior.py --n-per-class 250 --size 128

The last line printed is a JSON object with the figures. ``--renderer`` measures another version
of the renderer module (e.g. the one at ``git show HEAD:...``); the lesion share needs a renderer
that returns the lesion density (``Phantom.lesion_density``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from scipy import ndimage

from xaicxr.analysis.intervals import wilson

_RENDERER = Path(__file__).resolve().parents[1] / "plugins" / "xaicxr_builtins" / "datasets" / "phantom_render.py"
LESION_CLASSES = ("bacteria", "virus", "covid")
TOLERANCE_AT_224 = 15.0


def load_renderer(path: Path = _RENDERER) -> ModuleType:
    """The renderer module, imported on its own: it needs numpy and scipy only, not the package."""
    spec = importlib.util.spec_from_file_location("phantom_render_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["phantom_render_under_test"] = module
    spec.loader.exec_module(module)
    return module


def prior_hits(prior: np.ndarray, masks: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Per image, the pointing-game hit of the fixed map ``prior``: the share of its tied argmax
    pixels that lie within ``tolerance_px`` of the image's lesion mask (0 = inside it)."""
    peaks = prior == prior.max()
    hits = np.empty(len(masks))
    for k, mask in enumerate(masks):
        if tolerance_px <= 0:
            near = mask
        else:
            near = ndimage.distance_transform_edt(~mask) <= tolerance_px if mask.any() else mask
        hits[k] = near[peaks].mean()
    return hits


def lesion_share(phantom: object) -> float | None:
    """The share of the lesion's added density that its mask holds, when the renderer says."""
    density = getattr(phantom, "lesion_density", None)
    if density is None or density.sum() <= 0:
        return None
    return float(density[phantom.lesion].sum() / density.sum())


def measure_class(pr: ModuleType, label: str, n: int, size: int, seed: int, difficulty: str,
                  train_fraction: float) -> dict:
    masks, shares = [], []
    for i in range(n):
        ph = pr.render_phantom(seed, label, i, size=size, difficulty=difficulty)
        masks.append(ph.lesion)
        shares.append(lesion_share(ph))
    masks_arr = np.stack(masks)
    n_train = int(round(train_fraction * n))
    prior = masks_arr[:n_train].mean(axis=0)
    held_out = masks_arr[n_train:]
    tolerance = TOLERANCE_AT_224 * size / 224.0
    result = {"n_train": n_train, "n_test": len(held_out),
              "pointing_tol0": wilson(float(prior_hits(prior, held_out, 0).sum()), len(held_out)),
              "pointing_tol15": wilson(float(prior_hits(prior, held_out, tolerance).sum()), len(held_out)),
              "tolerance_px": round(tolerance, 3),
              "prior_peak": round(float(prior.max()), 4),
              "lesion_fraction": round(float(masks_arr.mean()), 5)}
    if all(s is not None for s in shares):
        result.update(lesion_share_mean=round(float(np.mean(shares)), 4),
                      lesion_share_min=round(float(np.min(shares)), 4))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=250)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", default="standard")
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--renderer", type=Path, default=_RENDERER, help="renderer module to measure")
    args = parser.parse_args(argv)
    pr = load_renderer(args.renderer)
    classes = {label: measure_class(pr, label, args.n_per_class, args.size, args.seed, args.difficulty,
                                    args.train_fraction) for label in LESION_CLASSES}

    def fmt(est: dict) -> str:
        lo, hi = est["ci95"]
        return f"{est['value']:.3f} [{lo:.3f}, {hi:.3f}]"

    print(f"class prior pointing game: {args.size} px, {args.difficulty}, seed {args.seed}, "
          f"{args.n_per_class} per class, prior from the first {args.train_fraction:.0%}")
    print(f"{'class':9s} {'n':>4s}  {'tol 0':22s} {'tol ' + str(classes['virus']['tolerance_px']) + ' px':22s}"
          f" {'share mean':>10s} {'share min':>9s} {'area':>7s}")
    for label, r in classes.items():
        share = (f"{r['lesion_share_mean']:10.3f} {r['lesion_share_min']:9.3f}" if "lesion_share_mean" in r
                 else f"{'-':>10s} {'-':>9s}")
        print(f"{label:9s} {r['n_test']:4d}  {fmt(r['pointing_tol0']):22s} {fmt(r['pointing_tol15']):22s}"
              f" {share} {r['lesion_fraction']:7.4f}")
    result = {"n_per_class": args.n_per_class, "size": args.size, "seed": args.seed,
              "difficulty": args.difficulty, "train_fraction": args.train_fraction, "classes": classes}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
