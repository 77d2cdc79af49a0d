"""Which explainer and target layer localise the planted lesions best? (a trained phantom run)

For every built-in explainer at each target layer, explain the run's test images and report the
pointing game, energy lift, Otsu mIoU, split-half reliability and lung energy per lesion class,
plus the model-randomisation similarity (how much of the mean map survives re-initialising the
layers above the target, averaged over ``--draws`` re-initialisations; lower is better).

    .venv/bin/python benchmarks/localisation.py runs/demo --layers block3_conv4 block4_conv4 block5_conv4
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from xaicxr import plugins  # noqa: E402
from xaicxr.analysis.quality import ClassQuality  # noqa: E402
from xaicxr.analysis.sanity import randomisation_seed, randomised_copy  # noqa: E402
from xaicxr.analysis.stats import pearson  # noqa: E402
from xaicxr.io.imagecache import open_image_cache  # noqa: E402
from xaicxr.io.modelfile import load_model  # noqa: E402
from xaicxr.rundir import RunDir  # noqa: E402

DEFAULT_EXPLAINERS = ("gradcam", "gradcam++", "layercam", "scorecam", "gradcam-tfkv")
LESION_CLASSES = ("bacteria", "virus", "covid")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--explainers", nargs="+", default=list(DEFAULT_EXPLAINERS))
    ap.add_argument("--layers", nargs="+", default=["block3_conv4", "block4_conv4", "block5_conv4"])
    ap.add_argument("--images", type=int, default=200, help="test images used (class-balanced order kept)")
    ap.add_argument("--draws", type=int, default=3, help="re-initialisations averaged for the sanity r")
    args = ap.parse_args()
    model = load_model(args.run_dir / "model.keras")
    size = int(model.input_shape[1])
    cache = open_image_cache(RunDir(args.run_dir).image_cache(size))
    rows = cache.rows("test")[: args.images]
    block = cache.read(rows)
    images, labels = block["images"][..., None], cache.labels[rows]
    classes = json.loads((args.run_dir / "split.json").read_text())["classes"]
    train_seed = json.loads((args.run_dir / "train.json").read_text())["train"]["seed"]
    table = []
    for layer in args.layers:
        random_models = [randomised_copy(model, layer, randomisation_seed(train_seed, d))[0]
                         for d in range(args.draws)]
        for name in args.explainers:
            explainer = plugins.get("explainer", name)()
            start = time.perf_counter()
            maps = np.concatenate([explainer.explain(model, images[i:i + 32], labels[i:i + 32], layer=layer)
                                   for i in range(0, len(images), 32)])
            seconds = time.perf_counter() - start
            sanity = float(np.mean([pearson(maps[:64].mean(axis=0),
                                            explainer.explain(m, images[:64], labels[:64], layer=layer).mean(axis=0))
                                    for m in random_models]))
            row = {"explainer": name, "layer": layer, "img_per_s": round(len(images) / seconds, 1),
                   "sanity_r": round(sanity, 3)}
            for k, cls in enumerate(classes):
                if cls not in LESION_CLASSES:
                    continue
                q = ClassQuality(maps.shape[1:], n_splits=10)
                pick = labels == k
                q.update(maps[pick], block["lesion"][pick] if block["lesion"] is not None else None,
                         block["lung"][pick] if block["lung"] is not None else None)
                r = q.result()
                row[cls] = {k2: round(r[k2], 3) for k2 in ("pointing_game", "energy_lift", "miou", "split_half", "lung_energy")
                            if r.get(k2) is not None}
            table.append(row)
            print(f"{layer:13s} {name:13s} " + "  ".join(
                f"{c}: PG {row[c].get('pointing_game', 0):.2f} lift {row[c].get('energy_lift', 0):.1f}"
                for c in LESION_CLASSES if c in row) + f"  sanity r {row['sanity_r']:.2f}  {row['img_per_s']} img/s",
                  flush=True)
    print(json.dumps(table))


if __name__ == "__main__":
    main()
