"""How hard are the phantoms? Linear baselines on 16x16 pixels, and a small BatchNorm CNN.

A linear classifier on heavily downsampled pixels can only use *where* the image is brighter
on average; a CNN can use the texture of the lesion patterns. The default ("standard")
phantoms are meant to defeat the first (<= ~0.85 accuracy) and not the second (>= 0.95).

    python benchmarks/phantom_baselines.py --n-per-class 300 --size 64 --difficulty standard

The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from scipy.optimize import minimize

_RENDERER = Path(__file__).resolve().parents[1] / "plugins" / "xaicxr_builtins" / "datasets" / "phantom_render.py"


def load_renderer() -> ModuleType:
    """The renderer module, imported on its own: it needs numpy and scipy only, not the package."""
    spec = importlib.util.spec_from_file_location("phantom_render", _RENDERER)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("phantom_render", module)
    spec.loader.exec_module(module)
    return module


def render_set(n_per_class: int, size: int, difficulty: str, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Images (N, size, size), labels (N,) and the single-threaded rendering speed in images/s."""
    pr = load_renderer()
    images, labels = [], []
    start = time.perf_counter()
    for k, label in enumerate(pr.CLASSES):
        for i in range(n_per_class):
            images.append(pr.render_phantom(seed, label, i, size=size, difficulty=difficulty).image)
            labels.append(k)
    rate = len(images) / (time.perf_counter() - start)
    return np.stack(images), np.asarray(labels), rate


def split(n: int, labels: np.ndarray, seed: int, fractions: tuple[float, float] = (0.6, 0.2)) -> tuple[np.ndarray, ...]:
    """Stratified train / validation / test indices."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        a, b = int(len(idx) * fractions[0]), int(len(idx) * (fractions[0] + fractions[1]))
        for part, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:])):
            part.append(chunk)
    return tuple(np.concatenate(p) for p in parts)


def downsample(images: np.ndarray, grid: int = 16) -> np.ndarray:
    """Area-averaged (N, grid*grid) features."""
    n, h, w = images.shape
    return images.reshape(n, grid, h // grid, grid, w // grid).mean(axis=(2, 4)).reshape(n, -1)


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    return [(a - mean) / std for a in (train, *others)]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, n_classes: int) -> np.ndarray:
    """Multinomial logistic regression (L-BFGS on the exact gradient); returns (d+1, K) weights."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    onehot = np.eye(n_classes)[y]
    shape = (xb.shape[1], n_classes)

    def loss(w_flat: np.ndarray) -> tuple[float, np.ndarray]:
        w = w_flat.reshape(shape)
        z = xb @ w
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        reg = w[:-1]
        value = -(onehot * logp).sum() / len(x) + 0.5 * l2 * (reg * reg).sum()
        grad = xb.T @ (np.exp(logp) - onehot) / len(x)
        grad[:-1] += l2 * reg
        return value, grad.ravel()

    res = minimize(loss, np.zeros(shape).ravel(), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return res.x.reshape(shape)


def fit_ridge(x: np.ndarray, y: np.ndarray, l2: float, n_classes: int) -> np.ndarray:
    """One-vs-rest ridge regression onto +-1 targets, closed form."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    targets = 2.0 * np.eye(n_classes)[y] - 1.0
    reg = l2 * len(x) * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(xb.T @ xb + reg, xb.T @ targets)


def accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(((np.hstack([x, np.ones((len(x), 1))]) @ w).argmax(axis=1) == y).mean())


def linear_baselines(images: np.ndarray, labels: np.ndarray, seed: int, grid: int = 16) -> dict:
    """Both linear models, L2 tuned on the validation split, refit on train+val, scored on test."""
    tr, va, te = split(len(labels), labels, seed)
    feats = downsample(images, grid)
    n_classes = int(labels.max()) + 1
    out = {}
    for name, fit in (("logistic", fit_logistic), ("ridge", fit_ridge)):
        xtr, xva = standardise(feats[tr], feats[va])
        scores = {l2: accuracy(fit(xtr, labels[tr], l2, n_classes), xva, labels[va])
                  for l2 in np.logspace(-4, 1, 11)}
        best = max(scores, key=lambda k: (scores[k], k))
        trva = np.concatenate([tr, va])
        xtrva, xte = standardise(feats[trva], feats[te])
        out[name] = {"l2": float(best), "val_acc": scores[best],
                     "test_acc": accuracy(fit(xtrva, labels[trva], best, n_classes), xte, labels[te])}
    return out


def cnn_widths(size: int) -> tuple[int, ...]:
    """One block per halving down to 2-4 px: 5 blocks at 64 px, 6 at 128 px.

    At 128 px five blocks (final map 4x4) fit the training set as fast but generalise worse.
    """
    blocks = max(3, int(np.log2(size)) - 1)
    base = (16, 32, 48, 64, 64)
    return (8,) * (blocks - len(base)) + base if blocks > len(base) else base[-blocks:]


def small_cnn(size: int, n_classes: int, widths: tuple[int, ...] | None = None,
              bn_momentum: float = 0.9):
    """Conv3x3 (He init) + BatchNorm + ReLU + MaxPool blocks, global average pooling, softmax.

    BatchNorm's moving statistics use momentum 0.9 rather than Keras's 0.99: with a few hundred
    steps in all, 0.99 leaves them lagging the weights and validation accuracy jumps about.
    """
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1))
    x = inputs
    for width in widths or cnn_widths(size):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(x)
        x = layers.BatchNormalization(momentum=bn_momentum)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def cnn_baseline(images: np.ndarray, labels: np.ndarray, seed: int, epochs: int, batch: int = 32) -> dict:
    """Train on train, keep the best-validation epoch, score on test."""
    import keras

    keras.utils.set_random_seed(seed)
    tr, va, te = split(len(labels), labels, seed)
    x = (images[..., None] - 0.5).astype(np.float32)
    model = small_cnn(images.shape[1], int(labels.max()) + 1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=epochs, restore_best_weights=True)
    start = time.perf_counter()
    history = model.fit(x[tr], labels[tr], validation_data=(x[va], labels[va]), epochs=epochs,
                        batch_size=batch, callbacks=[stop], verbose=0)
    seconds = time.perf_counter() - start
    val = history.history["val_accuracy"]
    pred = model.predict(x[te], batch_size=256, verbose=0).argmax(axis=1)
    reached = next((i + 1 for i, a in enumerate(val) if round(a, 4) >= 0.95), None)
    return {"test_acc": float((pred == labels[te]).mean()), "best_val_acc": float(max(val)),
            "best_epoch": int(np.argmax(val)) + 1, "epochs": epochs, "train_s": round(seconds, 1),
            "first_epoch_val_ge_0.95": reached, "val_acc_by_epoch": [round(float(a), 3) for a in val]}


def save_figure(path: str, size: int = 128, difficulty: str = "standard", seed: int = 0, columns: int = 5) -> None:
    """A grid of phantoms, one row per class, the lesion mask outlined in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pr = load_renderer()
    fig, axes = plt.subplots(len(pr.CLASSES), columns, figsize=(2.4 * columns, 2.45 * len(pr.CLASSES)))
    for row, label in enumerate(pr.CLASSES):
        for col in range(columns):
            ph = pr.render_phantom(seed, label, col, size=size, difficulty=difficulty)
            ax = axes[row, col]
            ax.imshow(ph.image, cmap="gray", vmin=0, vmax=1)
            if ph.lesion.any():
                ax.contour(ph.lesion, levels=[0.5], colors="red", linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=13)
    fig.suptitle(f"phantoms: {difficulty}, {size} px, seed {seed}, indices 0-{columns - 1}; "
                 "red: lesion mask", fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-per-class", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--difficulty", default="standard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cnn", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--grid", type=int, default=16, help="side of the linear baselines' pixel grid")
    parser.add_argument("--figure", metavar="PNG", help="also save a picture grid of the phantoms here")
    args = parser.parse_args(argv)
    if args.figure:
        save_figure(args.figure, difficulty=args.difficulty, seed=args.seed)

    images, labels, rate = render_set(args.n_per_class, args.size, args.difficulty, args.seed)
    print(f"rendered {len(labels)} phantoms ({args.size} px, {args.difficulty}) at {rate:.0f} images/s")
    linear = linear_baselines(images, labels, args.seed, args.grid)
    for name, r in linear.items():
        print(f"linear {name:8s} {args.grid}x{args.grid}: test acc {r['test_acc']:.3f} "
              f"(val {r['val_acc']:.3f}, l2 {r['l2']:.2g})")
    result = {"n_per_class": args.n_per_class, "size": args.size, "difficulty": args.difficulty,
              "seed": args.seed, "render_img_per_s": round(rate, 1),
              "linear_acc": max(r["test_acc"] for r in linear.values()), "linear": linear}
    if args.cnn:
        cnn = cnn_baseline(images, labels, args.seed, args.epochs)
        print(f"small BN CNN: test acc {cnn['test_acc']:.3f} (best val {cnn['best_val_acc']:.3f} at epoch "
              f"{cnn['best_epoch']}/{cnn['epochs']}), {cnn['train_s']:.0f} s training; "
              f"val acc by epoch {cnn['val_acc_by_epoch']}")
        result.update(cnn_acc=cnn["test_acc"], cnn_train_s=cnn["train_s"], cnn=cnn)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
