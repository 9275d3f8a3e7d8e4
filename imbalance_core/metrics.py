"""Metrics of one trained network on the balanced test set (STUDY.md, "Metrics").

  auc                   multi-class ROC AUC: one-vs-rest AUC per class (scikit-learn, trapezoid), macro mean, x100
  accuracy              argmax of the scores, x100
  accuracy_thresholded  argmax of score_i / prior_i with the pre-sampling training priors, x100
Thresholding rescales each class's column by a constant, so the per-class (ranking) AUC is unchanged.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score


def threshold(scores: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """Scores divided by the class priors p(i) = |i| / sum_k |k| (zero priors are not allowed)."""
    priors = np.asarray(priors, dtype=np.float64)
    if priors.shape != (scores.shape[1],) or not np.all(np.isfinite(priors) & (priors > 0)):
        raise ValueError(f"priors {priors!r} must be {scores.shape[1]} positive class frequencies")
    return scores / priors


def macro_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Mean over classes of the one-vs-rest ROC AUC, x100."""
    aucs = [roc_auc_score(y == c, scores[:, c]) for c in range(scores.shape[1])]
    return 100.0 * float(np.mean(aucs))


def evaluate(y: np.ndarray, scores: np.ndarray, priors: np.ndarray) -> dict:
    """All metrics of one network: its test scores (N, C) against labels (N,)."""
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    C = scores.shape[1]
    pred = scores.argmax(1)
    pred_t = threshold(scores, priors).argmax(1)
    cm = confusion_matrix(y, pred, labels=np.arange(C))
    cm_t = confusion_matrix(y, pred_t, labels=np.arange(C))
    support = np.maximum(cm.sum(1), 1)
    return {
        "auc": macro_auc(y, scores),
        "accuracy": 100.0 * float((pred == y).mean()),
        "accuracy_thresholded": 100.0 * float((pred_t == y).mean()),
        "recall": (100.0 * np.diag(cm) / support).tolist(),
        "recall_thresholded": (100.0 * np.diag(cm_t) / support).tolist(),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_thresholded": cm_t.tolist(),
    }
