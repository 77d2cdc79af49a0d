"""The shortcut probe: how well features that are not disease predict each class.

Every feature comes from the image as a file or as pixels, never from anatomy: the original
width, height and aspect ratio, file format, image mode and bit depth, the fraction of the image
taken by uniform borders (padding, scanner frames), the global mean and spread of intensity, and
statistics of the four corner patches where burnt-in text and markers sit. With a run's image
cache the same pixel statistics of the model's input (after the resize policy) are added as
``input_*`` features, so a resize ablation shows which cues survive it.

For each class (one against the rest) and each binary task, simple classifiers are
cross-validated on these features, grouped by patient where patients are known (a patient's
images never sit on both sides of a fold): a depth-3 decision tree per feature alone (it can
follow a cue that is not monotone, such as an aspect ratio at both ends), and on all features
together (``all``), and on the ``input_*`` features together (``input``: what the model's input
still carries), a logistic regression on standardised features and a small random forest (30
trees of depth 6). A task whose positives are a class's images, or all but them, is fitted once. The AUC of the
out-of-fold scores gets a 95 % percentile bootstrap interval over images (the folds' models are
fixed; the interval is that of the AUC over the evaluated images). An AUC at or above ``flag``
(0.8) is flagged as a likely shortcut.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import numpy as np

from .intervals import estimate, resampled_aucs
from .metrics import roc_auc

FILE_FEATURES = ("width", "height", "aspect", "format", "mode", "bit_depth")
PIXEL_FEATURES = ("border", "mean", "std", "corner_mean", "corner_std", "corner_bright")
CATEGORICAL = ("format", "mode")
FLAG = 0.8
BORDER_TOLERANCE = 0.02
"""A row or column whose intensity spread is below this is uniform (padding, a frame)."""
BRIGHT = 0.9
N_BOOT = 1000


def pixel_features(gray: np.ndarray) -> dict[str, float]:
    """Border fraction, mean, spread and corner statistics of a 2-D image in [0, 1]."""
    a = np.asarray(gray, dtype=np.float32)
    h, w = a.shape
    rows, cols = a.std(axis=1) < BORDER_TOLERANCE, a.std(axis=0) < BORDER_TOLERANCE
    top, bottom = _run(rows), _run(rows[::-1])
    left, right = _run(cols), _run(cols[::-1])
    inner = max(h - top - bottom, 0) * max(w - left - right, 0)
    side = max(1, min(h, w) // 8)
    corners = [a[:side, :side], a[:side, -side:], a[-side:, :side], a[-side:, -side:]]
    return {"border": float(1.0 - inner / (h * w)), "mean": float(a.mean()), "std": float(a.std()),
            "corner_mean": float(np.mean([c.mean() for c in corners])),
            "corner_std": float(max(c.std() for c in corners)),
            "corner_bright": float(max((c > BRIGHT).mean() for c in corners))}


def _run(flags: np.ndarray) -> int:
    """How many leading entries are True."""
    return int(len(flags) if flags.all() else np.argmin(flags))


def file_features(gray: np.ndarray, fmt: str, mode: str, width: int, height: int) -> dict[str, Any]:
    """Every probe feature of one decoded file (its :class:`~xaicxr.io.imaging.ImageInfo` fields)."""
    return {"width": int(width), "height": int(height), "aspect": float(width / height),
            "format": fmt, "mode": mode, "bit_depth": bit_depth(mode), **pixel_features(gray)}


def bit_depth(mode: str) -> int:
    """Bits per sample of a PIL mode, or of a DICOM ``'<photometric>/<bits stored>'`` mode."""
    if "/" in mode:
        tail = mode.rsplit("/", 1)[1]
        return int(tail) if tail.isdigit() else 0
    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in ("I", "F"):
        return 32
    return 8


def probe(features: Sequence[dict[str, Any]], labels: Sequence[str], groups: Sequence[str | None],
          classes: Sequence[str], binary: dict[str, dict[str, list[str]]], *, folds: int = 5,
          seed: int = 0, flag: float = FLAG, n_boot: int = N_BOOT) -> dict[str, Any]:
    """Cross-validated AUCs of the non-disease ``features`` (one dict per image) for each class
    one-vs-rest and each binary task (``{name: {"positive": [classes]}}``). ``groups`` are patient
    ids (None: the image is its own group)."""
    start = time.perf_counter()
    names = [n for n in (*FILE_FEATURES, *PIXEL_FEATURES, *(f"input_{p}" for p in PIXEL_FEATURES))
             if features and n in features[0]]
    columns = {n: _column(features, n) for n in names}
    groups_of_features = {"all": names, "input": [n for n in names if n.startswith("input_")]}
    together = {g: np.concatenate([columns[n] for n in members], axis=1)
                for g, members in groups_of_features.items() if members}
    labels = np.asarray(labels)
    group_ids = np.array([g if g is not None else f"image:{i}" for i, g in enumerate(groups)])
    targets = {**{f"class:{c}": [c] for c in classes},
               **{f"binary:{t}": list(spec["positive"]) for t, spec in binary.items()}}
    out: dict[str, Any] = {"features": names, "flag": flag, "n_images": len(labels),
                           "grouped": any(g is not None for g in groups),
                           "method": {"single": "depth-3 decision tree", "together": ["logistic", "forest"],
                                      "interval": f"percentile bootstrap of the out-of-fold AUC over images ({n_boot})"},
                           "targets": {}, "flagged": []}
    done: dict[bytes, dict[str, Any]] = {}
    for target, positive in targets.items():
        y = np.isin(labels, positive)
        key = (y if len(y) and not y[0] else ~y).tobytes()  # a task and its complement: one problem, one fit
        if key not in done:
            done[key] = _target(columns, together, y, group_ids, folds, seed, n_boot)
        result = {**done[key], "positive": positive,
                  "n_positive": int(y.sum()), "n_negative": int((~y).sum())}
        out["targets"][target] = result
        together_estimates = [(f"{g} ({k})", v) for g in together for k, v in result.get(g, {}).items()]
        for name, e in [*result.get("features", {}).items(), *together_estimates]:
            if e["value"] is not None and e["value"] >= flag:
                out["flagged"].append({"target": target, "feature": name, "auc": e["value"], "ci95": e["ci95"]})
    out["flagged"].sort(key=lambda f: -f["auc"])
    out["seconds"] = round(time.perf_counter() - start, 3)
    return out


def _column(features: Sequence[dict[str, Any]], name: str) -> np.ndarray:
    """One numeric column, or one column per category (one-hot) for a categorical feature."""
    values = [f[name] for f in features]
    if name in CATEGORICAL:
        levels = sorted(set(map(str, values)))
        return np.array([[str(v) == level for level in levels] for v in values], dtype=np.float64)
    return np.array(values, dtype=np.float64)[:, None]


def _target(columns: dict[str, np.ndarray], together: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray,
            folds: int, seed: int, n_boot: int) -> dict[str, Any]:
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    k = min(folds, len(set(groups[y])), len(set(groups[~y])))
    result: dict[str, Any] = {"n_positive": n_pos, "n_negative": n_neg, "folds": k}
    if k < 2:
        result["note"] = "fewer than two patients on one side: no cross-validation possible"
        return result
    splits = _folds(y, groups, k, seed)
    result["features"] = {name: _auc(_out_of_fold(_tree(seed), x, y, splits), y, n_boot, seed)
                          for name, x in columns.items()}
    for group, x in together.items():
        result[group] = {name: _auc(_out_of_fold(model, x, y, splits), y, n_boot, seed)
                         for name, model in (("logistic", _logistic()), ("forest", _forest(seed)))}
    return result


def _folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has fewer members"
        return list(StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(
            np.zeros(len(y)), y, groups))


def _out_of_fold(model: Any, x: np.ndarray, y: np.ndarray,
                 splits: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    from sklearn.base import clone

    scores = np.full(len(y), 0.5)
    for train, test in splits:
        if len(set(y[train])) < 2:
            continue
        fitted = clone(model).fit(x[train], y[train])
        scores[test] = fitted.predict_proba(x[test])[:, 1]
    return scores


def _auc(scores: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    value = roc_auc(y, scores)
    aucs = resampled_aucs(y, scores, n_boot=n_boot, seed=seed)
    lo, hi = (np.percentile(aucs, [2.5, 97.5]) if len(aucs) else (None, None))
    return estimate(value, lo, hi, len(y))


def _tree(seed: int) -> Any:
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=3, min_samples_leaf=5, random_state=seed)


def _logistic() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(solver="liblinear", max_iter=1000))


def _forest(seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=30, max_depth=6, min_samples_leaf=3, random_state=seed, n_jobs=1)
