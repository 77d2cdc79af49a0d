"""Classification figures: accuracy, per-class precision/recall/F1, confusion, and the binary
tasks derived from the softmax (ROC AUC, Youden threshold chosen on validation, bootstrap CIs).
ROC, AUC, confusion and per-class scores are scikit-learn's (``sklearn.metrics``); the Youden
threshold, the bootstrap and the binary tasks built from them are ours."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as skm

from .intervals import resampled_aucs, wilson


def confusion(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return skm.confusion_matrix(labels, predictions, labels=np.arange(n_classes)).astype(np.int64)


def classification_report(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy (beside ``majority_accuracy``, what always answering the largest class earns),
    per-class precision/recall/F1 (0 where undefined; the recall, a class's accuracy, with its
    Wilson interval) and the macro F1 over the classes present in ``labels``."""
    labels = np.asarray(labels)
    pred = np.asarray(probs).argmax(axis=1)
    index = np.arange(len(classes))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, pred, labels=index, zero_division=0.0) if len(labels) else [np.zeros(len(classes))] * 4
    per_class = {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                     "support": int(support[i]),
                     "recall_ci95": wilson(float(np.sum((labels == i) & (pred == i))), int(support[i]))["ci95"]}
                 for i, c in enumerate(classes)}
    present = [c for c in classes if per_class[c]["support"] > 0]
    majority = max((per_class[c]["support"] for c in classes), default=0)
    return {"accuracy": float(skm.accuracy_score(labels, pred)) if len(labels) else 0.0,
            "majority_accuracy": majority / len(labels) if len(labels) else 0.0,
            "per_class": per_class, "confusion": confusion(labels, pred, len(classes)).tolist(),
            "macro_f1": float(np.mean([per_class[c]["f1"] for c in present])) if present else 0.0}


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return float("nan")
    return float(skm.roc_auc_score(y, score))


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds descending from +inf; a
    score >= threshold is positive. With one class only, its rate is all zeros."""
    y = np.asarray(y, bool)
    score = np.asarray(score, dtype=np.float64)
    if y.any() and (~y).any():
        fpr, tpr, thresholds = skm.roc_curve(y, score, drop_intermediate=False)
        return fpr, tpr, thresholds
    thresholds = np.concatenate([[np.inf], np.unique(score)[::-1]])
    return _rate(score[~y], thresholds), _rate(score[y], thresholds), thresholds


def _rate(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return np.array([(scores >= t).mean() if len(scores) else 0.0 for t in thresholds])


def youden_threshold(y: np.ndarray, score: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (a score >= threshold is positive)."""
    fpr, tpr, thresholds = roc_curve(y, score)
    finite = np.isfinite(thresholds)
    j = (tpr - fpr)[finite]
    return float(thresholds[finite][int(np.argmax(j))]) if finite.any() else 0.5


def sens_spec(y: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    y = np.asarray(y, bool)
    hit = score >= threshold
    sens = float(hit[y].mean()) if y.any() else float("nan")
    spec = float((~hit[~y]).mean()) if (~y).any() else float("nan")
    return sens, spec


def bootstrap_ci(y: np.ndarray, score: np.ndarray, n: int = 1000, seed: int = 0) -> list[float]:
    """Percentile 95 % interval of the AUC over resampled test sets (sensitivity and specificity
    at a fixed threshold are proportions: :func:`binary_task` gives them Wilson intervals)."""
    aucs = resampled_aucs(y, score, n_boot=n, seed=seed)
    return [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))] if len(aucs) else [float("nan")] * 2


def default_binary_tasks(classes: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """``covid-vs-rest`` and ``abnormal-vs-normal`` where those classes exist."""
    lower = {c.lower(): c for c in classes}
    tasks = {}
    covid = [c for c in classes if "covid" in c.lower()]
    if covid:
        tasks["covid-vs-rest"] = {"positive": covid}
    normal = [lower[n] for n in ("normal", "no_findings", "no findings", "healthy") if n in lower]
    if normal:
        tasks["abnormal-vs-normal"] = {"positive": [c for c in classes if c not in normal]}
    return tasks


def binary_task(positive: Sequence[str], classes: Sequence[str], val_labels: np.ndarray,
                val_probs: np.ndarray, test_labels: np.ndarray, test_probs: np.ndarray,
                *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Score = summed softmax of the positive classes; threshold by Youden on validation."""
    pos_idx = [classes.index(c) for c in positive]
    score_val = val_probs[:, pos_idx].sum(axis=1)
    score_test = test_probs[:, pos_idx].sum(axis=1)
    y_val = np.isin(val_labels, pos_idx)
    y_test = np.isin(test_labels, pos_idx)
    threshold = youden_threshold(y_val, score_val) if y_val.any() and (~y_val).any() else 0.5
    sens, spec = sens_spec(y_test, score_test, threshold)
    fpr, tpr, _ = roc_curve(y_test, score_test)
    # At a threshold fixed on validation, sensitivity and specificity are binomial proportions:
    # Wilson intervals, which stay honest at 0 or 1 where a percentile bootstrap collapses.
    hits = score_test >= threshold
    ci95 = {"auc": bootstrap_ci(y_test, score_test, n=n_boot, seed=seed),
            "sensitivity": wilson(int(hits[y_test].sum()), int(y_test.sum()))["ci95"],
            "specificity": wilson(int((~hits[~y_test]).sum()), int((~y_test).sum()))["ci95"]}
    return {"positive": list(positive), "auc": roc_auc(y_test, score_test), "sensitivity": sens,
            "specificity": spec, "threshold": threshold,
            "threshold_from": "validation (Youden)" if y_val.any() and (~y_val).any() else "default 0.5",
            "ci95": ci95, "n_positive": int(y_test.sum()), "n_negative": int((~y_test).sum()),
            "roc": {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()}}
