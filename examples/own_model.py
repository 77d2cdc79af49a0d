"""Train a small Keras classifier the way a researcher would, outside xaicxr, then audit it.

    python examples/own_model.py                         # trains, writes runs/own-model/
    xaicxr run examples/own-model.toml --out runs/own-model/run

The data are the paper's pediatric classes (../shared/data/kermany3-real: normal, bacteria,
virus; 600 films). Patients, not films, are held out: 30 % of each class's patients are copied
to ``runs/own-model/data/test`` and never seen in training; the rest go to ``data/train``.
examples/own-model.toml gives xaicxr the trained file (``[model] path``) and the held-out
patients as its external test set (``[dataset] test_path``), so every test figure is of films
the model did not learn from. (xaicxr's validation rows, which set the binary thresholds, are
training films here: the thresholds are optimistic, the test figures are not.)

The preprocessing is plain Pillow: 8-bit gray, padded to a square with black, 128 px, scaled
to [0, 1]: what the config declares (``resize = "pad"``, ``mode = "L"``, ``value_range``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "kermany3-real"
CLASSES = ["normal", "bacteria", "virus"]
SIZE = 128


def held_out_split(manifest: list[dict], fraction: float, seed: int) -> dict[str, str]:
    """file -> "train" or "test", whole patients per class."""
    rng = np.random.default_rng(seed)
    side = {}
    for cls in CLASSES:
        patients = sorted({m["patient"] for m in manifest if m["label"] == cls})
        rng.shuffle(patients)
        test = set(patients[:round(fraction * len(patients))])
        side.update({m["file"]: "test" if m["patient"] in test else "train"
                     for m in manifest if m["label"] == cls})
    return side


def load(path: Path) -> np.ndarray:
    image = ImageOps.pad(Image.open(path).convert("L"), (SIZE, SIZE), color=0)
    return np.asarray(image, dtype=np.float32) / 255.0


def build_model():
    import keras

    L = keras.layers
    return keras.Sequential([
        keras.Input((SIZE, SIZE, 1)),
        L.Conv2D(16, 3, padding="same", activation="relu", name="conv1"), L.MaxPooling2D(),
        L.Conv2D(32, 3, padding="same", activation="relu", name="conv2"), L.MaxPooling2D(),
        L.Conv2D(64, 3, padding="same", activation="relu", name="conv3"), L.MaxPooling2D(),
        L.Conv2D(64, 3, padding="same", activation="relu", name="conv4"),
        L.GlobalAveragePooling2D(), L.Dropout(0.3),
        L.Dense(len(CLASSES), activation="softmax", name="diagnosis"),
    ], name="pediatric_cnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "runs" / "own-model")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import keras

    manifest = json.loads((DATA / "manifest.json").read_text())
    side = held_out_split(manifest, 0.3, args.seed)
    for folder in ("train", "test"):
        shutil.rmtree(args.out / "data" / folder, ignore_errors=True)
    for m in manifest:
        target = args.out / "data" / side[m["file"]] / m["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(DATA / m["file"], target)
    train = [m for m in manifest if side[m["file"]] == "train"]
    x = np.stack([load(DATA / m["file"]) for m in train])[..., None]
    y = np.array([CLASSES.index(m["label"]) for m in train])
    keras.utils.set_random_seed(args.seed)
    model = build_model()
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(x, y, epochs=args.epochs, batch_size=32, shuffle=True, verbose=2)
    model.save(args.out / "my.keras")
    print(f"trained on {len(train)} films of {len({m['patient'] for m in train})} patients in "
          f"{time.perf_counter() - start:.0f} s (training accuracy {history.history['accuracy'][-1]:.2f}); "
          f"held out {len(manifest) - len(train)} films: {args.out / 'data' / 'test'}; model: {args.out / 'my.keras'}")


if __name__ == "__main__":
    main()
