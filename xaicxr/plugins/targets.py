"""Explained targets: which score of the model's outputs an explanation explains, one per image.

A target is a :class:`Target`: a named score computed, as TensorFlow ops, from the model's
``logits`` (N, C) (the ``logits`` layer; a model without one: its output as it is). The
probabilities are ``tf.nn.softmax(logits)``, exactly the model's ``probs`` layer, so a target
needs nothing else. Built in:

* ``logit`` (:class:`ClassLogit`): the logit of each image's class; what int class indices mean;
* ``probability`` (:class:`ClassProbability`): the softmax probability of each image's class;
* ``binary:<task>`` (:class:`BinaryScore`): a binary task's score as ``analysis.metrics``
  defines it: the summed probabilities of the task's positive classes (covid-vs-rest =
  p(covid), abnormal-vs-normal = 1 - p(normal)). One score per image, whatever its class.

In the Python API ``Explainer.explain(model, images, targets)`` takes, besides (N,) class
indices and ``"all"``, a :class:`Target` (``ClassProbability([2, 0, 1])``,
``BinaryScore([0], "covid-vs-rest")``) or any callable ``logits -> (N,) score`` (TF ops).
Every explainer method is handed the target and reads the score through it (:meth:`Target.score`,
:meth:`Target.class_scores`).

``targets`` in ``[[explain]]`` still chooses each image's class (the label or the prediction);
a binary target ignores it. :func:`binary_sides` gives the two sides of a binary task (positive,
negative) by the true label or by the prediction at the task's threshold.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar, Hashable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, ExplainerInputError

CLASS_TARGETS = ("logit", "probability")
BINARY_PREFIX = "binary:"
SIDES = ("positive", "negative")
"""The two sides of a binary task, in this order (side 0 is the positive one)."""


class Target:
    """A score of the model's outputs, one per image (subclasses give :meth:`score`).

    A *classwise* target is one of C per-class scores, picked per image by ``classes`` (N,)
    class indices, ``"all"`` (every class: all-class mode), or None (not yet bound to images:
    :meth:`bind`); it also gives :meth:`class_scores`. Compiled functions are keyed by
    :attr:`key`, so a target must not change after it is made."""

    name: ClassVar[str] = ""
    classwise: ClassVar[bool] = False

    def __init__(self, classes: Any = None) -> None:
        self.classes = classes

    def score(self, logits: Any, classes: Any) -> Any:
        """(N,) scores from (N, C) logits and (N,) int32 class indices (TF ops)."""
        return _pick(self.class_scores(logits), classes)

    def class_scores(self, logits: Any) -> Any:
        """(N, C): every class's score (classwise targets only)."""
        raise ExplainerInputError(f"target {self.label!r} has one score per image, not one per class; "
                                  "all-class mode (targets = \"all\") needs a class logit or probability")

    def score_of_probabilities(self, probs: Any, classes: Any) -> Any:
        """(N,) scores from softmax probabilities (N, C): for libraries that hand a score
        function probabilities (tf-keras-vis's Score-CAM); a target of the logits raises."""
        raise ExplainerInputError(f"target {self.label!r} is a function of the logits, which the "
                                  "probabilities do not give back; use \"probability\" or a binary task")

    @property
    def label(self) -> str:
        return self.name

    @property
    def key(self) -> Hashable:
        """What compiled functions are keyed by: the score's definition, not the images' classes."""
        return (type(self),)

    @property
    def every_class(self) -> bool:
        return isinstance(self.classes, str) and self.classes == "all"

    def bind(self, classes: Any) -> "Target":
        """This target for images of ``classes`` (N,) (or ``"all"``)."""
        bound = copy.copy(self)
        bound.classes = classes
        return bound

    def indices(self, n: int, n_classes: int) -> np.ndarray:
        """The (N,) int64 class indices fed to :meth:`score` (zeros where the score ignores them)."""
        if not self.classwise:
            return np.zeros(n, np.int64)
        if self.classes is None:
            raise ExplainerInputError(f"target {self.label!r} is not bound to class indices; "
                                      f"use {type(self).__name__}(classes) with one index per image")
        return check_targets(self.classes, n, n_classes)

    def check(self, n_classes: int) -> None:
        """Raise if the target cannot score a model of ``n_classes`` classes."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"


class ClassLogit(Target):
    """The class logit (the default: what int class indices mean)."""

    name = "logit"
    classwise = True

    def class_scores(self, logits: Any) -> Any:
        return logits


class ClassProbability(Target):
    """The class's softmax probability (RISE's own score, as in its paper)."""

    name = "probability"
    classwise = True

    def class_scores(self, logits: Any) -> Any:
        import tensorflow as tf

        return tf.nn.softmax(logits, axis=-1)

    def score_of_probabilities(self, probs: Any, classes: Any) -> Any:
        return _pick(probs, classes)


class BinaryScore(Target):
    """A binary task's score: the summed softmax probabilities of the ``positive`` class indices
    (``analysis.metrics.binary_task``'s score), for every image."""

    def __init__(self, positive: Sequence[int], task: str = "", positive_names: Sequence[str] = ()) -> None:
        super().__init__(None)
        self.positive = tuple(int(p) for p in positive)
        if not self.positive:
            raise ExplainerInputError("a binary target needs at least one positive class")
        self.task = task or "+".join(map(str, self.positive))
        self.positive_names = list(positive_names)

    @property
    def label(self) -> str:
        return BINARY_PREFIX + self.task

    @property
    def key(self) -> Hashable:
        return (type(self), self.positive)

    def score(self, logits: Any, classes: Any) -> Any:
        import tensorflow as tf

        return self.score_of_probabilities(tf.nn.softmax(logits, axis=-1), classes)

    def score_of_probabilities(self, probs: Any, classes: Any) -> Any:
        import tensorflow as tf

        return tf.reduce_sum(tf.gather(probs, list(self.positive), axis=1), axis=1)

    def check(self, n_classes: int) -> None:
        if max(self.positive) >= n_classes or min(self.positive) < 0:
            raise ExplainerInputError(f"binary target {self.label!r}: positive classes {list(self.positive)} "
                                      f"are not all in [0, {n_classes})")


class ScoreFunction(Target):
    """Any callable ``logits (N, C) -> (N,)`` of TF ops, as a target. Compiled functions are
    keyed by the callable object: pass the same one again to reuse them."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        super().__init__(None)
        self.fn = fn

    @property
    def label(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)

    @property
    def key(self) -> Hashable:
        return (type(self), self.fn)

    def score(self, logits: Any, classes: Any) -> Any:
        return self.fn(logits)


def check_targets(targets: Any, n: int, n_classes: int) -> np.ndarray:
    """``targets`` as int (N,) class indices in [0, n_classes)."""
    targets = np.asarray(targets)
    if targets.ndim == 0:
        targets = np.full(n, targets)
    if targets.shape != (n,) or (n and not np.issubdtype(targets.dtype, np.integer)):
        raise ExplainerInputError(f"targets must be {n} class indices (one per image), got "
                                  f"shape {targets.shape} dtype {targets.dtype}")
    if n and (targets.min() < 0 or targets.max() >= n_classes):
        raise ExplainerInputError(f"targets must be class indices in [0, {n_classes}), got "
                                  f"{targets.min()}..{targets.max()}")
    return targets.astype(np.int64)


def _pick(table: Any, classes: Any) -> Any:
    import tensorflow as tf

    return tf.gather(table, tf.cast(classes, tf.int32), axis=1, batch_dims=1)


def as_target(targets: Any, default: type[Target]) -> Target:
    """``targets`` of ``explain`` as a bound :class:`Target`: a target as it is, a callable as
    :class:`ScoreFunction`, class indices (or ``"all"``) as ``default`` bound to them."""
    if isinstance(targets, Target):
        return targets
    if callable(targets):
        return ScoreFunction(targets)
    return default(targets)


def explained(target: Target | None, classes: Any) -> Any:
    """What ``explain`` is given for a configured ``target`` (None: the explainer's default)
    and the rows' class indices: the indices alone, the target bound to them (a class score),
    or the target itself (one score per image, whatever the class)."""
    if target is None:
        return classes
    return target.bind(classes) if target.classwise else target


# --------------------------------------------------------------------------- configuration


def parse_target(text: str, known_tasks: Sequence[str], where: str) -> str:
    """Check a configured ``target``: ``logit``, ``probability`` or ``binary:<task>`` with a
    task of ``known_tasks``; returns it unchanged."""
    if text in CLASS_TARGETS:
        return text
    if text.startswith(BINARY_PREFIX):
        task = text[len(BINARY_PREFIX):]
        if task in known_tasks:
            return text
        raise ConfigError(f"'target' in {where}: no binary task {task!r}; known tasks: "
                          + (", ".join(known_tasks) or "none (add a [binary] table)"))
    raise ConfigError(f"'target' in {where} is {text!r}; expected \"logit\", \"probability\" or "
                      f"\"binary:<task>\" with a task of: {', '.join(known_tasks) or 'none'}")


def make_target(text: str, classes: Sequence[str], tasks: Mapping[str, Mapping[str, Any]]) -> Target:
    """The (unbound) target a configured name means for a model of ``classes``; ``tasks`` are
    the run's binary tasks (``[binary]``, else the defaults for the classes)."""
    if text == "logit":
        return ClassLogit()
    if text == "probability":
        return ClassProbability()
    task = text[len(BINARY_PREFIX):]
    if not text.startswith(BINARY_PREFIX) or task not in tasks:
        raise ConfigError(f"target {text!r}: binary tasks for the classes {list(classes)}: "
                          + (", ".join(tasks) or "none"))
    positive = list(tasks[task]["positive"])
    missing = [c for c in positive if c not in classes]
    if missing:
        raise ConfigError(f"target {text!r}: class {missing[0]!r} is not one of {list(classes)}")
    return BinaryScore([list(classes).index(c) for c in positive], task, positive)


def side_names(target: str) -> tuple[str, str]:
    """The template names of a binary target's sides: ``covid-vs-rest:positive``, ``...:negative``
    (a class name does not clash with them)."""
    task = target[len(BINARY_PREFIX):] if target.startswith(BINARY_PREFIX) else target
    return tuple(f"{task}:{side}" for side in SIDES)  # type: ignore[return-value]


def binary_sides(labels: np.ndarray, probs: np.ndarray, positive: Sequence[int], threshold: float,
                 by: str) -> np.ndarray:
    """(N,) side of each image: 0 positive, 1 negative (:data:`SIDES`); ``by = "true"``: the
    label's side, ``"predicted"``: the task's score (summed positive probabilities, as
    ``metrics.json`` computes it) at or above ``threshold``."""
    positive = list(positive)
    if by == "true":
        is_positive = np.isin(labels, positive)
    else:
        is_positive = np.asarray(probs)[:, positive].sum(axis=1) >= threshold
    return np.where(is_positive, 0, 1).astype(np.int64)
