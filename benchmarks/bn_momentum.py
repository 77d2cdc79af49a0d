"""Does a keras.applications backbone trained from scratch on a small set evaluate at chance
because of its BatchNorm momentum? (the reason for the backbones' ``bn_momentum`` option)

Trains the same backbone on the same images twice, with the family's own BatchNorm momentum
(0.99; 0.999 for MobileNetV3) and with ``--momentum`` (0.9, what ``vgg19`` uses), and prints
the training and validation accuracy after every epoch. The images are a run directory's image
cache (``cache/images-<size>.h5``, written by the dataset/train stages), with its split.

    .venv/bin/xaicxr run --out runs/demo --until train
    .venv/bin/python benchmarks/bn_momentum.py runs/demo --backbone mobilenetv3small

The last line printed is a JSON object with both histories.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def train(backbone: str, momentum: float, images: np.ndarray, labels: np.ndarray,
          splits: np.ndarray, classes: list[str], args: argparse.Namespace) -> dict[str, object]:
    import keras

    from xaicxr import plugins
    from xaicxr.io.imagecache import SPLITS

    train_rows, val_rows = splits == SPLITS.index("train"), splits == SPLITS.index("val")
    keras.utils.set_random_seed(args.seed)
    model = plugins.get("backbone", backbone)(
        weights="none", input_size=images.shape[1], dense=[64], dropout=0.2,
        bn_momentum=momentum).build(classes)
    steps = args.epochs * int(np.ceil(train_rows.sum() / args.batch))
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.lr, steps)),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(images[train_rows], labels[train_rows], batch_size=args.batch,
                        epochs=args.epochs, validation_data=(images[val_rows], labels[val_rows]),
                        verbose=2)
    return {"momentum": momentum or "family's own", "seconds": round(time.perf_counter() - start, 1),
            "steps": steps,
            "accuracy": [round(v, 4) for v in history.history["accuracy"]],
            "val_accuracy": [round(v, 4) for v in history.history["val_accuracy"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory with an image cache")
    parser.add_argument("--backbone", default="mobilenetv3small")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import h5py

    caches = sorted((args.run_dir / "cache").glob("images-*.h5"))
    if not caches:
        raise SystemExit(f"{args.run_dir} has no image cache: run `xaicxr run --until train` first")
    with h5py.File(caches[0], "r") as h5:
        images = h5["images"][:].astype(np.float32)[..., None]
        labels, splits = h5["labels"][:], h5["split"][:]
        classes = [str(c) for c in h5.attrs["classes"]]
    runs = [train(args.backbone, m, images, labels, splits, classes, args) for m in (0.0, args.momentum)]
    print(json.dumps({"backbone": args.backbone, "cache": str(caches[0]), "epochs": args.epochs,
                      "batch": args.batch, "lr": args.lr, "runs": runs}))


if __name__ == "__main__":
    main()
