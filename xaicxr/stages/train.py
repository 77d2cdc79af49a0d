"""The train stage: decode the split into the image cache, build the backbone, train it (Adam,
class weights, early stopping with the best epoch kept, optional augmentation) and write
``model.keras`` and ``train.json``.

Cached features: the frozen part of the network runs once per image; its outputs are stored
in ``cache/features-<key>.h5`` where the key covers the frozen weights, the freeze point, the
preprocessing and the exact pixels. Only the layers after the freeze point train, on those
features: the same computation as a naive ``fit`` with a frozen base, without re-running the
frozen base every epoch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import keras
import numpy as np
from rich.markup import escape

from ..analysis.metrics import default_binary_tasks
from ..config import build_plugin
from ..errors import ConfigError, LayerNotFoundError, TrainingError
from ..interrupts import raise_if_interrupted
from ..io import atomic
from ..io.h5rows import create_rows, read_rows
from ..io.imagecache import ImageCache
from ..io.modelfile import save_model, weights_digest
from ..progress import console, progress_bar
from ..rundir import RunDir
from . import Run

NAME = "train"
TABLES = ("dataset.resize", "dataset.mode", "backbone", "train", "model.path", "model.sha256", "model.classes",
          "model.outputs", "model.input_size", "model.channels", "model.value_range", "model.mean", "model.std")


INVALIDATES_LATER = True
"""A ``model.keras`` other than the one trained (copied in from another run, say) is kept when it
is a usable model of this run's classes, but every stage after training runs again on it."""


def outputs(cfg: dict, rundir: RunDir) -> list[Path]:
    return [rundir.model, rundir.train_info]


def output_problem(path: Path, rundir: RunDir) -> str | None:
    """Why a changed ``model.keras`` cannot stand for this run's model (None: it can): it must
    load, take this run's input size and give one score per class."""
    if path != rundir.model:
        return None
    from ..errors import ModelFileError
    from ..io.modelfile import load_model

    try:
        model = load_model(path)
    except ModelFileError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001  (h5py, Keras: a damaged weights file says many things)
        return f"it does not load ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
    classes = rundir.read_split()["classes"] if rundir.split.exists() else None
    size = rundir.read_train_info().get("input_size") if rundir.train_info.exists() else None
    outputs = int(model.outputs[0].shape[-1])
    if classes is not None and outputs != len(classes):
        return f"it gives {outputs} scores, but this run has {len(classes)} classes"
    if size is not None and tuple(model.inputs[0].shape[1:3]) != (size, size):
        return f"it takes {tuple(model.inputs[0].shape[1:3])} images, but this run's are {size} px"
    return None


def run(run: Run) -> dict[str, Any]:
    if run.cfg.get("model", {}).get("path"):
        return import_user_model(run)
    classes = run.dir.records()[0]
    backbone = build_plugin("backbone", run.cfg["backbone"])
    dataset = run.cfg["dataset"]
    cache = cache_images(run, backbone.input_size)
    keras.utils.set_random_seed(run.cfg["train"]["seed"])
    strategy = distribution_strategy()
    with strategy.scope():
        model = backbone.build(list(classes))
    check_later_stages(run.cfg, model, list(classes), backbone.default_layer)
    preprocessing = json.dumps({"backbone": run.cfg["backbone"]["name"], "input_size": backbone.input_size,
                                "layer": _preprocess_config(model)}, sort_keys=True)
    result = fit(model, backbone.freeze_until, cache, run.dir, run.cfg["train"], preprocessing, strategy)
    save_model(model, run.dir.model)
    run.forget_model(replaced_by=model if single_device(strategy) else None)
    atomic.write_json(run.dir.train_info, {
        "backbone": run.cfg["backbone"], "train": run.cfg["train"],
        "freeze_until": backbone.freeze_until, "default_layer": backbone.default_layer,
        "input_size": backbone.input_size, "resize": dataset["resize"],
        "mode": dataset.get("mode"),
        "parameters": int(model.count_params()),
        "trainable_parameters": int(sum(int(np.prod(w.shape)) for w in model.trainable_weights)),
        **result.to_json()})
    return {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "best_val_loss": round(result.best_val_loss, 4), "timings_s": result.timings_s,
            "feature_cache_reused": result.feature_cache_reused}


def import_user_model(run: Run) -> dict[str, Any]:
    """``[model] path``: nothing is trained. The model is wrapped as every later stage expects
    (:mod:`xaicxr.usermodel`), checked against the explainers and targets, and written as
    ``model.keras``; ``train.json`` records the file, its sha256 and how its outputs are read."""
    from ..usermodel import import_model

    spec = run.cfg["model"]
    classes = run.dir.records()[0]
    imported = import_model(spec, list(classes), unsafe=run.unsafe_load)
    console.print(f"training skipped: the model is {escape(spec['path'])} (sha256 {spec['sha256'][:12]}…), "
                  f"scores: {imported.scores}", highlight=False)
    dataset = run.cfg["dataset"]
    cache_images(run, imported.input_size)
    check_later_stages(run.cfg, imported.model, list(classes), None)
    save_model(imported.model, run.dir.model)
    run.forget_model()
    atomic.write_json(run.dir.train_info, {
        "imported": imported.info, "train": run.cfg["train"], "default_layer": None,
        "input_size": imported.input_size, "resize": dataset["resize"], "mode": dataset.get("mode"),
        "parameters": int(imported.model.count_params()), "trainable_parameters": 0,
        "epochs_run": 0, "history": {}})
    return {"imported": spec["path"], "model_sha256": spec["sha256"], "outputs": imported.outputs,
            "epochs_run": 0}


def cache_images(run: Run, size: int) -> ImageCache:
    """The run's images decoded at ``size`` by the configured resize policy and mode; files that
    fail to decode are added to ``skipped.json``."""
    dataset = run.cfg["dataset"]
    cache, skipped = run.decode_images(size, dataset["resize"], dataset.get("mode"))
    if skipped:
        atomic.write_json(run.dir.skipped, atomic.read_json(run.dir.skipped) + [s.to_json() for s in skipped])
    return cache


def check_later_stages(cfg: dict[str, Any], model: keras.Model, classes: list[str],
                       default_layer: str | None) -> None:
    """What the stages after training would fail on, found before the training is spent: the
    ``[binary]`` classes against the dataset's, every ``[[explain]]`` target against the classes
    and tasks, every explainer and aggregator made with its options, and every explain layer
    looked up in the model about to be trained."""
    for task, spec in cfg["binary"].items():
        missing = [c for c in spec["positive"] if c not in classes]
        if missing:
            raise ConfigError(f"[binary] {task!r}: class {missing[0]!r} is not one of the dataset's "
                              f"classes {classes}")
    from .explain import ExplainJob

    tasks = cfg["binary"] or default_binary_tasks(classes)
    for spec in cfg["explain"]:
        try:
            job = ExplainJob.from_spec(spec, classes=classes, tasks=tasks, default_layer=default_layer)
            job.explainer.resolve_layer(model, job.layer)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[[explain]] {spec['name']!r}: {exc}") from None
        except LayerNotFoundError as exc:
            raise ConfigError(f"[[explain]] {spec['name']!r}: {exc}") from None
    for spec in cfg["aggregate"]:
        try:
            build_plugin("aggregate", spec)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[[aggregate]] {spec['name']!r}: {exc}") from None


def _preprocess_config(model: keras.Model) -> Any:
    try:
        return model.get_layer("preprocess").get_config()
    except ValueError:
        return None

@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    history: dict[str, list[float]]
    timings_s: dict[str, float]
    epoch_s: list[float]
    feature_cache: str | None
    feature_cache_reused: bool

    def to_json(self) -> dict[str, Any]:
        return self.__dict__


class KeepBest(keras.callbacks.Callback):
    """Remember the weights of the epoch with the lowest validation loss; restore them at the end."""

    def __init__(self, monitor: str = "val_loss") -> None:
        super().__init__()
        self.monitor = monitor
        self.best = np.inf
        self.best_epoch = 0
        self.weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            self.weights = self.model.get_weights()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.weights is not None:
            self.model.set_weights(self.weights)


class StopOnDivergence(keras.callbacks.Callback):
    """Raise :class:`~xaicxr.errors.TrainingError` at the first batch whose loss is not finite:
    a diverged model would otherwise be saved as trained, and every later stage fail on it."""

    def __init__(self, learning_rate: float) -> None:
        super().__init__()
        self.learning_rate = learning_rate
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(f"training diverged: the loss is {float(loss)} at epoch {self.epoch}, batch "
                                f"{batch + 1}; nothing was saved. Lower [train] learning_rate (now "
                                f"{self.learning_rate:g}) or check the images for extreme values")


class EpochProgress(keras.callbacks.Callback):
    """A rich progress bar over epochs on stderr, with the latest losses; records epoch times.
    Each batch's end is a safe point for a held Ctrl-C or SIGTERM (:mod:`xaicxr.interrupts`)."""

    def __init__(self, advance) -> None:
        super().__init__()
        self.advance = advance
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        raise_if_interrupted()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(round(time.perf_counter() - self._start, 4))
        logs = logs or {}
        shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k in
                          ("loss", "accuracy", "val_loss", "val_accuracy"))
        console.print(f"epoch {epoch + 1}: {shown}", highlight=False)
        self.advance(1)


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced weights n / (k * count_c); a class absent from training gets weight 1."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    total = counts.sum()
    return {c: float(total / (n_classes * counts[c])) if counts[c] else 1.0 for c in range(n_classes)}


def augmenter(seed: int) -> keras.Sequential:
    """Small rotation, shift, zoom and contrast changes. No horizontal flip: laterality is
    anatomy (heart on the patient's left), and a flipped chest is not a plausible radiograph."""
    return keras.Sequential([
        keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
        keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
        keras.layers.RandomContrast(0.1, seed=seed + 3),
    ], name="augment")


def cosine_schedule(learning_rate: float, epochs: int) -> keras.callbacks.Callback:
    """The learning rate decays from ``learning_rate`` to 0 over ``epochs`` along half a cosine
    (Loshchilov and Hutter 2017, without restarts). On 64 px phantoms it steadied the validation
    loss of a small BatchNorm network trained from scratch: test accuracy 0.81 after 20 epochs,
    against 0.76 with a reduction on plateau and 0.58 with a constant rate stopped early by a
    noisy validation loss (one run each, standard difficulty)."""
    import math

    return keras.callbacks.LearningRateScheduler(
        lambda epoch: learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1))))


def distribution_strategy():
    """``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` describes a cluster, ``MirroredStrategy``
    when several GPUs are visible, else TensorFlow's default (one device). Build and compile the
    model inside ``strategy.scope()``; see docs/scaling.md."""
    import tensorflow as tf

    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if sum(len(v) for v in cluster.values()) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def single_device(strategy) -> bool:
    """Whether a model built under ``strategy`` can be used as it is after training (the saved
    file has the same weights; reloading it cost 0.6 s for a small VGG19 and 3 s for a
    DenseNet121 on 2 cores). Mirrored variables are left to be loaded afresh from the file."""
    import tensorflow as tf

    return strategy is tf.distribute.get_strategy()


def compile_model(model: keras.Model, learning_rate: float) -> None:
    """Compile for training, with every variable of the optimizer and of the accuracy metric made
    here: variables made while the train step is first traced (Keras makes them lazily there
    when no distribution strategy is set) make TensorFlow trace it a second time, about 3 s of a
    small VGG19's 8 s of training on 2 cores; the weights and logs are the same either way."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.optimizer.build(model.trainable_variables)


def fit(model: keras.Model, freeze_until: str | None, cache: ImageCache, rundir: RunDir,
        opts: dict[str, Any], preprocessing: str, strategy: Any = None) -> TrainResult:
    """Train ``model`` in place on the train rows of ``cache``, validating on the val rows, under
    ``strategy``: the one the model was built under (a new ``MirroredStrategy`` is another
    strategy, and its scope cannot compile a model whose variables the first one made)."""
    strategy = strategy or distribution_strategy()
    keras.utils.set_random_seed(opts["seed"])
    train_rows, val_rows = cache.rows("train"), cache.rows("val")
    n_classes = model.output_shape[-1]
    weights = class_weights(cache.labels[train_rows], n_classes) if opts["class_weights"] else None
    timings: dict[str, float] = {}
    use_features = bool(opts["cache_features"] and freeze_until and not opts["augment"])
    feature_path, reused = None, False
    if use_features:
        start = time.perf_counter()
        feature_path, reused = build_feature_cache(model, freeze_until, cache, rundir, preprocessing,
                                                   opts["batch_size"])
        timings["feature_cache"] = round(time.perf_counter() - start, 3)
        with strategy.scope():
            trainable = keras.Model(model.get_layer(freeze_until).output, model.output)
        x_name, add_channel = "features", False
        source = feature_path
    else:
        trainable = model
        x_name, add_channel = "images", True
        source = cache.path
    with strategy.scope():
        compile_model(trainable, opts["learning_rate"])
    train = batches(source, x_name, train_rows, cache.labels[train_rows], opts["batch_size"],
                    shuffle=True, seed=opts["seed"], augment=opts["augment"], add_channel=add_channel)
    val = batches(source, x_name, val_rows, cache.labels[val_rows], opts["batch_size"],
                  add_channel=add_channel)
    keep = KeepBest()
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=opts["patience"])
    callbacks = [StopOnDivergence(opts["learning_rate"]), keep, stop]
    if opts["lr_schedule"] == "cosine":
        callbacks.append(cosine_schedule(opts["learning_rate"], opts["epochs"]))
    start = time.perf_counter()
    with progress_bar("training", opts["epochs"], unit="epoch") as advance:
        epochs = EpochProgress(advance)
        history = trainable.fit(train, validation_data=val if len(val_rows) else None,
                                epochs=opts["epochs"], class_weight=weights, verbose=0, shuffle=False,
                                callbacks=[*callbacks, epochs])
    timings["fit"] = round(time.perf_counter() - start, 3)
    for data in (train, val):
        if isinstance(data, H5Batches):
            data.close()
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    return TrainResult(epochs_run=len(hist.get("loss", [])), best_epoch=keep.best_epoch,
                       best_val_loss=float(keep.best), history=hist, timings_s=timings,
                       epoch_s=epochs.seconds,
                       feature_cache=str(feature_path) if feature_path else None,
                       feature_cache_reused=reused)


IN_MEMORY_BYTES = 2 << 30
"""Training data up to this size is read into memory and fed by ``tf.data``: Keras' PyDataset
cost about as much time per step as the demo model itself (19.5 against 10 s per epoch, measured
on the 2-core machine), so streaming from HDF5 is kept for sets that do not fit."""


def batches(source: Path, x_name: str, rows: np.ndarray, labels: np.ndarray, batch_size: int, *,
            shuffle: bool = False, seed: int = 0, augment: bool = False, add_channel: bool = False) -> Any:
    """Batches of ``(x[rows], labels)`` for ``fit``, reshuffled each epoch when ``shuffle``."""
    with h5py.File(source, "r") as h5:
        ds = h5[x_name]
        fits = len(rows) * int(np.prod(ds.shape[1:])) * 4 <= IN_MEMORY_BYTES
        x = read_rows(ds, rows).astype(np.float32) if fits else None
    if x is None:
        transform = _augment_fn(seed) if augment else None
        return H5Batches(source, x_name, rows, labels, batch_size, shuffle=shuffle, seed=seed,
                         transform=transform, add_channel=add_channel)
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((x[..., None] if add_channel else x, np.asarray(labels)))
    if shuffle:
        data = data.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size)
    if augment:
        layers = augmenter(seed)
        data = data.map(lambda a, b: (tf.clip_by_value(layers(a, training=True), 0.0, 1.0), b))
    return data.prefetch(2)


def _augment_fn(seed: int):
    layers = augmenter(seed)

    def transform(x: np.ndarray) -> np.ndarray:
        return np.clip(keras.ops.convert_to_numpy(layers(x, training=True)), 0.0, 1.0)

    return transform


def feature_key(model: keras.Model, freeze_until: str, cache: ImageCache, preprocessing: str) -> str:
    names = [layer.name for layer in model.layers]
    frozen = model.layers[: names.index(freeze_until) + 1]
    blob = json.dumps({"weights": weights_digest(frozen), "freeze_until": freeze_until,
                       "preprocessing": preprocessing, "pixels": cache.content_sha256,
                       "layers": [layer.get_config().get("name") for layer in frozen]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def build_feature_cache(model: keras.Model, freeze_until: str, cache: ImageCache, rundir: RunDir,
                        preprocessing: str, batch_size: int) -> tuple[Path, bool]:
    """Run the frozen part once over every cached image; reuse the file when its key matches."""
    key = feature_key(model, freeze_until, cache, preprocessing)
    path = rundir.feature_cache(key)
    if path.is_file():
        return path, True
    frozen = keras.Model(model.input, model.get_layer(freeze_until).output)
    shape = tuple(frozen.output_shape[1:])
    n = len(cache.ids)
    with atomic.atomic_path(path) as tmp, h5py.File(tmp, "w") as out, h5py.File(cache.path, "r") as src:
        feats = create_rows(out, "features", shape, n, "float32")
        images = src["images"]
        with progress_bar("caching frozen features", n) as advance:
            for start in range(0, n, batch_size):
                x = images[start:start + batch_size].astype(np.float32)[..., None]
                feats[start:start + len(x)] = keras.ops.convert_to_numpy(frozen(x, training=False))
                advance(len(x))
        out.attrs["key"] = key
        out.attrs["freeze_until"] = freeze_until
    return path, False


class H5Batches(keras.utils.PyDataset):
    """Batches ``(x[rows], y[rows])`` from an HDF5 file, reshuffled each epoch when ``shuffle``."""

    def __init__(self, path: str | Path, x_name: str, rows: Sequence[int], labels: np.ndarray,
                 batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 add_channel: bool = False) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.path = str(path)
        self.x_name = x_name
        self.rows = np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.transform = transform
        self.add_channel = add_channel
        self.order = np.arange(len(self.rows))
        self._h5: h5py.File | None = None
        if shuffle:
            self.rng.shuffle(self.order)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, i: int):
        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r")
        pick = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        x = read_rows(self._h5[self.x_name], self.rows[pick]).astype(np.float32)
        if self.add_channel:
            x = x[..., None]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[pick]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.rng.shuffle(self.order)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
