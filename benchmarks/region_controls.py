"""Does region reliance tell a model that reads the annotated region from one that reads something
else, on real films? Planted positive and negative controls on the JSRT set.

Real films have no counterfactual twins, so `region-reliance` (the annotated region filled
against same-area random lung regions) is the ground-truth check there. This benchmark gives it
two models whose evidence is known, trained on copies of `../shared/data/jsrt-nodules`:

- ``in_region``: every nodule film's nodule disk is brightened (+``--strength`` of the gray
  range, inside the expert's disk mask only): the evidence is the annotated region, so region
  reliance must say "relies";
- ``outside``: every nodule film gets the same bright square in its top-left corner, outside the
  lungs, and nothing else changes: the evidence is not the region, so region reliance must say
  "does not rely" (and the shortcut probe's corner features should flag it).

Each copy is run with `examples/jsrt-nodules.toml` (its dataset path replaced), and the script
prints, per control, the test accuracy, the region-reliance figures per fill, the verdict, and
each explainer's pointing game beside the class prior's.

    .venv/bin/python benchmarks/region_controls.py --out runs/region-controls
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from xaicxr.analysis.intervals import describe

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "jsrt-nodules"
EXAMPLE = REPO / "examples" / "jsrt-nodules.toml"


def planted_copy(target: Path, kind: str, strength: float) -> Path:
    """A copy of the JSRT set (images rewritten, annotations as they are) with the control's
    evidence planted into every nodule film."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(SOURCE, target)
    for film in sorted((target / "nodule").glob("*.png")):
        pixels = np.asarray(Image.open(film).convert("L"), np.float32) / 255.0
        if kind == "in_region":
            disk = np.asarray(Image.open(target / "masks" / "lesion" / film.name).convert("L")) > 0
            pixels[disk] = np.clip(pixels[disk] + strength, 0, 1)
        else:
            side = pixels.shape[0] // 12
            pixels[side:2 * side, side:2 * side] = np.clip(pixels[side:2 * side, side:2 * side] + strength, 0, 1)
        Image.fromarray(np.round(pixels * 255).astype(np.uint8), "L").save(film)
    return target


def run_control(out: Path, kind: str, strength: float) -> dict:
    data = planted_copy(out / f"data-{kind}", kind, strength)
    config = out / f"{kind}.toml"
    text = EXAMPLE.read_text().replace('path = "../../shared/data/jsrt-nodules"', f'path = "{data}"')
    if str(data) not in text:
        raise SystemExit(f"{EXAMPLE} no longer names ../../shared/data/jsrt-nodules")
    config.write_text(text)
    run = out / kind
    subprocess.run([str(Path(sys.executable).with_name("xaicxr")), "run", str(config), "--out", str(run)], check=True)
    return json.loads((run / "metrics.json").read_text())


def show(kind: str, metrics: dict) -> None:
    acc = {"value": metrics["accuracy"], "ci95": metrics["accuracy_ci95"], "n": metrics["n_test"]}
    print(f"\n## {kind}: test accuracy {describe(acc)} (largest class alone: {metrics.get('majority_accuracy', 0):.2f})")
    region = metrics["region_reliance"]["nodule"]
    for fill, f in region["fills"].items():
        print(f"  {fill}: p drop region {describe(f['drop_region'])}, random lung regions {describe(f['drop_random'])}, "
              f"difference {describe(f['difference'])}")
    print(f"  relies on region: {region['relies_on_region']} (n = {region['n']})")
    prior = metrics["baselines"]["nodule"]["class_prior"]["pointing_game"]
    for store, per in metrics["per_image"].items():
        q = per.get("nodule", {})
        if "pointing_game" in q:
            print(f"  {store}: pointing game {describe(q['pointing_game'])} vs class prior {describe(prior)}; "
                  f"sanity {'passes' if metrics['sanity'][store]['passes'] else 'fails'}")
    flagged = [f for f in metrics["probe"]["flagged"]]
    print(f"  shortcut probe: {', '.join(f['target'] + ' ' + f['feature'] for f in flagged) or 'nothing flagged'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "region-controls")
    parser.add_argument("--strength", type=float, default=0.25)
    parser.add_argument("--only", choices=("in_region", "outside"))
    args = parser.parse_args()
    if not SOURCE.is_dir():
        raise SystemExit(f"needs {SOURCE} (the shared data sets)")
    args.out.mkdir(parents=True, exist_ok=True)
    kinds = [args.only] if args.only else ["in_region", "outside"]
    results = {kind: run_control(args.out.resolve(), kind, args.strength) for kind in kinds}
    for kind, metrics in results.items():
        show(kind, metrics)


if __name__ == "__main__":
    main()
