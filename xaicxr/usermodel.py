"""A model trained elsewhere (``[model] path``) made into a run's model.

Every stage after training reads one kind of model: gray images (N, S, S, 1) in [0, 1] in,
a ``logits`` layer and a softmax ``probs`` layer over the dataset's classes out
(:class:`~xaicxr.plugins.backbone.Backbone`). :func:`import_model` wraps the user's model so:

* **Input.** :class:`~xaicxr.io.layers.ScaleToModel` maps gray [0, 1] to what the model was
  trained on: ``value_range`` (the values of black and white: ``[0, 255]`` for a model that
  normalises itself), then per-channel ``mean``/``std``, gray repeated to ``channels``.
* **The model itself**, nested under its own name, so its layers are found by their names
  (:mod:`xaicxr.kerasgraph`; Sequential and functional models alike).
* **Scores.** Gradient explainers differentiate logits: a softmax's gradients vanish where the
  model is sure (at p = 1 in float32 they are exactly zero). When the model's last layer applies
  its softmax or sigmoid (a ``Dense(..., activation="softmax")``, an ``Activation`` or
  ``Softmax`` layer), the wrapper reads the tensor before that activation: the logits exactly
  (a Dense layer is re-applied with the same weights and no activation). Otherwise the outputs
  are turned back into scores: ``log p`` for a softmax (the logits up to a per-image constant),
  ``log p / (1 - p)`` for sigmoids (exactly their logits), as declared in ``outputs``.
* **Classes.** ``classes`` names the outputs in output order; the dataset's classes pick theirs
  (a multi-label model may have more findings than the dataset: each explained class is that
  finding's score). ``probs`` is the softmax over the picked scores: for a softmax model the
  probabilities renormalised over the dataset's classes, for sigmoids a choice among them.

A TensorFlow SavedModel (a folder) is called through ``keras.layers.TFSMLayer``: it has no
layers to look into, so only the explainers that need forward passes alone (RISE, occlusion)
can explain it; the others are refused by name before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelFileError
from .kerasgraph import LOGITS, PROBS, output_layer, parent_inputs

ACTIVATIONS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class ImportedModel:
    """The run's model and what ``train.json`` records about where it came from."""

    model: Any
    input_size: int
    outputs: str
    scores: str
    info: dict[str, Any]


def load_user_model(path: str | Path, *, unsafe: bool = False) -> Any:
    """The model at ``path``: a ``.keras`` archive, a legacy ``.h5`` file, or a SavedModel folder
    (wrapped as a one-layer functional model around a ``TFSMLayer``)."""
    import keras

    path = Path(path)
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelFileError(f"{path} is a folder but not a TensorFlow SavedModel (no saved_model.pb)")
        return _saved_model(path)
    if path.suffix in (".h5", ".hdf5"):
        try:
            return keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
        except Exception as exc:  # h5py and Keras raise many kinds for a file that is not a model
            raise ModelFileError(f"{path} cannot be loaded as a Keras model: {_first_line(exc)}") from None
    from .io.modelfile import load_model

    return load_model(path, unsafe=unsafe)


def _saved_model(path: Path) -> Any:
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except (KeyError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read its serving_default signature: {_first_line(exc)}") from None
    specs = list(signature.structured_input_signature[1].values())
    if len(specs) != 1:
        raise ModelFileError(f"{path}: the SavedModel takes {len(specs)} inputs; xaicxr explains models of one image input")
    shape = tuple(specs[0].shape)
    from .io.layers import SavedModelLayer

    layer = SavedModelLayer(str(path), call_endpoint="serving_default", name="saved_model")
    image = keras.Input(batch_shape=(None, *shape[1:]), name="input")
    out = layer(image)
    if isinstance(out, dict):
        out = out[sorted(out)[0]]
    return keras.Model(image, out, name=path.name.replace(".", "_") or "saved_model")


def import_model(spec: dict[str, Any], dataset_classes: list[str], *, unsafe: bool = False) -> ImportedModel:
    """The run's model for a resolved ``[model]`` table and the dataset's classes; refuses what
    cannot be explained as declared (an input that is not one image, outputs that do not match
    ``classes``, a dataset class the model has no output for) with the reason."""
    import keras

    from .io.layers import ModelScores, ScaleToModel

    path = Path(spec["path"])
    user = load_user_model(path, unsafe=unsafe)
    size, channels = _input_spec(user, spec, path)
    names = list(spec["classes"])
    width = _output_width(user, path)
    if width != len(names):
        raise ConfigError(f"[model] classes lists {len(names)} outputs ({', '.join(names)}), but {path} "
                          f"has {width}; list one class name per output, in output order")
    missing = [c for c in dataset_classes if c not in names]
    if missing:
        raise ConfigError(f"the dataset's class {missing[0]!r} is not one of the model's outputs "
                          f"([model] classes = {names}); name the outputs as the dataset's class folders")
    picked = [names.index(c) for c in dataset_classes]
    body, head, found = _split_activation(user)
    outputs = spec.get("outputs", "auto")
    if outputs == "auto":
        if found is None and not isinstance(output_layer(user), keras.layers.Dense):
            raise ConfigError(f"{path}: cannot tell whether the outputs are softmax probabilities, logits "
                              "or sigmoids; set [model] outputs = \"softmax\", \"logits\" or \"sigmoid\"")
        outputs = found or "logits"
    elif found is not None and found != outputs:
        raise ConfigError(f"[model] outputs = {outputs!r}, but the last layer of {path} applies {found}")
    transform = "none" if found is not None or outputs == "logits" else ("log" if outputs == "softmax" else "logit")
    image = keras.Input((size, size, 1), name="image")
    x = ScaleToModel(channels=channels, value_range=list(spec.get("value_range", [0.0, 1.0])),
                     mean=spec.get("mean"), std=spec.get("std"), name="preprocess")(image)
    z = body(x)
    if head is not None:
        z = head(z)
    logits = ModelScores(picked, transform, name=LOGITS)(z)
    probs = keras.layers.Activation("softmax", name=PROBS)(logits)
    model = keras.Model(image, probs, name=f"xaicxr_{user.name}")
    scores = {"none": "the model's logits" if outputs != "sigmoid" else "the sigmoids' logits (log-odds)",
              "log": "log-probabilities (the logits up to a per-image constant; the softmax is not a "
                     "separate layer)",
              "logit": "the sigmoids' log-odds, recovered from their outputs"}[transform]
    info = {"path": str(path), "sha256": spec.get("sha256"), "name": user.name, "type": type(user).__name__,
            "outputs": outputs, "scores": scores, "classes": names, "picked": picked,
            "input_size": size, "channels": channels, "value_range": list(spec.get("value_range", [0.0, 1.0])),
            **({"mean": spec["mean"]} if spec.get("mean") else {}), **({"std": spec["std"]} if spec.get("std") else {})}
    return ImportedModel(model, size, outputs, scores, info)


def _input_spec(user: Any, spec: dict[str, Any], path: Path) -> tuple[int, int]:
    if len(user.inputs) != 1:
        raise ConfigError(f"{path} takes {len(user.inputs)} inputs; xaicxr explains models of one image input")
    shape = tuple(user.inputs[0].shape)
    if len(shape) != 4:
        raise ConfigError(f"{path} takes inputs of shape {shape}: rank {len(shape)}, not an image batch "
                          "(N, height, width, channels)")
    _, height, width, channels = shape
    if height is not None and width is not None and height != width:
        raise ConfigError(f"{path} takes {height}x{width} images; xaicxr sizes images square "
                          "(resize = pad, crop or stretch): use a model with a square input")
    size = spec.get("input_size") or height or width
    if size is None:
        raise ConfigError(f"{path} takes images of any size; set [model] input_size")
    if height is not None and spec.get("input_size") not in (None, height):
        raise ConfigError(f"[model] input_size = {spec['input_size']}, but {path} takes {height}x{width} images")
    if channels not in (1, 3):
        raise ConfigError(f"{path} takes {channels} channels; xaicxr feeds gray images as 1 or 3 channels")
    if spec.get("channels") not in (None, channels):
        raise ConfigError(f"[model] channels = {spec['channels']}, but {path} takes {channels}")
    for key in ("mean", "std"):
        if spec.get(key) and len(spec[key]) not in (1, channels):
            raise ConfigError(f"[model] {key} has {len(spec[key])} values; {path} takes {channels} channels")
    return int(size), int(channels)


def _output_width(user: Any, path: Path) -> int:
    if len(user.outputs) != 1:
        raise ConfigError(f"{path} has {len(user.outputs)} outputs; xaicxr explains a model with one "
                          "output of class scores (N, classes)")
    shape = tuple(user.outputs[0].shape)
    if len(shape) != 2 or shape[-1] is None:
        raise ConfigError(f"{path} outputs shape {shape}; expected class scores (N, classes)")
    return int(shape[-1])


def _split_activation(user: Any) -> tuple[Any, Any, str | None]:
    """``(body, head, activation)``: the model cut before the softmax or sigmoid its last layer
    applies, and what recovers the scores from there (a Dense re-applied without activation, or
    nothing); ``(user, None, None)`` when the last layer applies neither."""
    import keras

    last = output_layer(user)
    activation = _activation_name(last)
    if activation not in ACTIVATIONS:
        return user, None, None
    inputs = parent_inputs(last)
    if inputs is None:
        return user, None, None
    body = keras.Model(user.inputs, inputs, name=user.name)
    if isinstance(last, (keras.layers.Activation, keras.layers.Softmax)):
        return body, None, activation
    head = type(last).from_config({**last.get_config(), "activation": "linear", "name": f"{last.name}_scores"})
    head.build(tuple(inputs.shape))
    head.set_weights(last.get_weights())
    return body, head, activation


def _activation_name(layer: Any) -> str | None:
    import keras

    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    fn = getattr(layer, "activation", None)
    if fn is None or not (isinstance(layer, (keras.layers.Activation, keras.layers.Dense))):
        return None
    name = getattr(fn, "__name__", "")
    return name if name in ACTIVATIONS else None


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]
