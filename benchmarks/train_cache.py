"""Training on cached frozen features vs naive ``fit`` with a frozen base (VGG19 width 1.0, 224 px).

Same run, same images, same model code (``xaicxr.stages.train.fit``): seconds per epoch after the
first (the first includes tracing), at two freeze points, and the one-off cost of building the
feature cache. Targets: head only >= 50x, block5 trainable >= 3.5x (the FLOP bound is ~4.2x).

    .venv/bin/python benchmarks/train_cache.py --images 200 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from xaicxr import plugins  # noqa: E402
from xaicxr.stages.split import split_records  # noqa: E402
from xaicxr.io.imagecache import build_image_cache  # noqa: E402
from xaicxr.rundir import RunDir  # noqa: E402
from xaicxr.stages.train import fit  # noqa: E402

FREEZE_POINTS = {"head": "block5_pool", "block5": "block4_pool"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="total phantom images (4 classes)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="xaicxr-bench-train-"))
    scan = plugins.get("dataset", "phantom")(n_per_class=args.images // 4, size=args.size, seed=0,
                                             path=str(work / "phantom")).scan()
    split = split_records(scan.records, scan.classes, test=0.0, val=0.2, seed=0)
    cache, _ = build_image_cache(RunDir(work).image_cache(args.size), split, scan.records, scan.classes, args.size)
    opts = {"epochs": args.epochs, "batch_size": args.batch, "learning_rate": 1e-4, "augment": False,
            "patience": 100, "seed": 0, "class_weights": True}
    results = {}
    for label, freeze in FREEZE_POINTS.items():
        row = {}
        for mode in ("naive", "cached"):
            backbone = plugins.get("backbone", "vgg19")(weights="none", width=1.0, input_size=args.size,
                                                       freeze_until=freeze, dense=[256], dropout=0.5)
            keras.utils.set_random_seed(0)
            model = backbone.build(scan.classes)
            run_dir = work / f"{label}-{mode}"
            run_dir.mkdir(exist_ok=True)
            result = fit(model, freeze, cache, RunDir(run_dir), {**opts, "cache_features": mode == "cached"}, "bench")
            steady = result.epoch_s[1:] or result.epoch_s
            row[mode] = {"epoch_s": result.epoch_s, "steady_epoch_s": statistics.median(steady),
                         "cache_build_s": result.timings_s.get("feature_cache")}
            print(f"{label:7s} {mode:7s} epochs {result.epoch_s} s; cache build "
                  f"{result.timings_s.get('feature_cache', '-')} s", flush=True)
            keras.backend.clear_session()
        row["speedup"] = row["naive"]["steady_epoch_s"] / row["cached"]["steady_epoch_s"]
        results[label] = row
    train_n = len(split["train"])
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{train_n} training images at {args.size} px, batch {args.batch}")
    print(f"{'freeze':8s} {'naive s/epoch':>14s} {'cached s/epoch':>15s} {'speedup':>8s} {'cache build s':>14s}")
    for label, row in results.items():
        print(f"{label:8s} {row['naive']['steady_epoch_s']:14.2f} {row['cached']['steady_epoch_s']:15.3f} "
              f"{row['speedup']:8.1f} {row['cached']['cache_build_s']:14.1f}")
    print(json.dumps({"speedup_head": round(results["head"]["speedup"], 2),
                      "speedup_block5": round(results["block5"]["speedup"], 2),
                      "naive_head_s": results["head"]["naive"]["steady_epoch_s"],
                      "cached_head_s": results["head"]["cached"]["steady_epoch_s"],
                      "naive_block5_s": results["block5"]["naive"]["steady_epoch_s"],
                      "cached_block5_s": results["block5"]["cached"]["steady_epoch_s"],
                      "cache_build_head_s": results["head"]["cached"]["cache_build_s"],
                      "cache_build_block5_s": results["block5"]["cached"]["cache_build_s"],
                      "train_images": train_n, "size": args.size}))


if __name__ == "__main__":
    main()
