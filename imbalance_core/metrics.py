"""Metrics of one trained network on the balanced test set (STUDY.md, "Metrics").

  auc                   multi-class ROC AUC: one-vs-rest AUC per class (scikit-learn, trapezoid), macro mean, x100
  accuracy              argmax of the scores, x100
  accuracy_thresholded  argmax of score_i / prior_i with the pre-sampling training priors, x100
Thresholding rescales each class's column by a constant, so the per-class (ranking) AUC is unchanged.

Post-hoc corrections of every network (no retraining; STUDY.md, "Beyond the paper"), each an accuracy and a
per-class recall (names from `posthoc_name`; every name is defined in result.py):
  accuracy_posthoc_la_tau{T}       logit adjustment: argmax_c log p_c - T log pi_c, T in LA_TAUS. At T = 1
                                   this is exactly accuracy_thresholded (argmax p_c / pi_c).
  accuracy_posthoc_taunorm{T}      tau-normalised classifier (Kang et al. 2020): logits f . w_c / ||w_c||^T
                                   on the network's test features f, T in TAU_NORM_TAUS, the bias dropped as in
                                   the authors' notebook; only for networks whose features and linear head are
                                   at hand (LeNet-5 on in-memory arrays), absent otherwise.
  accuracy_posthoc_best            the best of the plain accuracy and the above, on the test set itself: an
                                   oracle choice of the correction, an upper bound, labelled so where shown.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from .result import (ACCURACY, ACCURACY_THRESHOLDED, AUC, BEST_POSTHOC, LA_TAUS, POSTHOC_PREFIX, RECALL,
                     RECALL_THRESHOLDED, TAU_NORM_TAUS, posthoc_name)


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


def _acc_recall(y: np.ndarray, pred: np.ndarray, C: int) -> tuple[float, list[float]]:
    cm = confusion_matrix(y, pred, labels=np.arange(C))
    return 100.0 * float((pred == y).mean()), (100.0 * np.diag(cm) / np.maximum(cm.sum(1), 1)).tolist()


def logit_adjusted(scores: np.ndarray, priors: np.ndarray, tau: float) -> np.ndarray:
    """Predictions argmax_c log p_c - tau log pi_c (softmax scores p: log p = z - logsumexp z, same argmax)."""
    priors = np.asarray(priors, dtype=np.float64)
    threshold(scores, priors)                                        # validates the priors
    with np.errstate(divide="ignore"):
        return (np.log(np.asarray(scores, dtype=np.float64)) - tau * np.log(priors)).argmax(1)


def tau_normalised(features: np.ndarray, weight: np.ndarray, tau: float) -> np.ndarray:
    """Predictions argmax_c f . w_c / ||w_c||^tau (Kang et al.'s pnorm; no bias)."""
    w = np.asarray(weight, dtype=np.float64)
    w = w / np.power(np.linalg.norm(w, axis=1, keepdims=True), tau)
    return (np.asarray(features, dtype=np.float64) @ w.T).argmax(1)


def posthoc(y: np.ndarray, scores: np.ndarray, priors: np.ndarray, features=None, weight=None) -> dict:
    """Every post-hoc metric of one network (see the module doc)."""
    y, C, out = np.asarray(y), scores.shape[1], {}
    plain = 100.0 * float((np.asarray(scores).argmax(1) == y).mean())
    for tau in LA_TAUS:
        acc, rec = _acc_recall(y, logit_adjusted(scores, priors, tau), C)
        out[posthoc_name("la", tau)], out[posthoc_name("la", tau, RECALL)] = acc, rec
    if features is not None and weight is not None:
        for tau in TAU_NORM_TAUS:
            acc, rec = _acc_recall(y, tau_normalised(features, weight, tau), C)
            out[posthoc_name("taunorm", tau)], out[posthoc_name("taunorm", tau, RECALL)] = acc, rec
    out[BEST_POSTHOC] = max([plain] + [v for k, v in out.items() if k.startswith(POSTHOC_PREFIX)])
    return out


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
        AUC: macro_auc(y, scores),
        ACCURACY: 100.0 * float((pred == y).mean()),
        ACCURACY_THRESHOLDED: 100.0 * float((pred_t == y).mean()),
        RECALL: (100.0 * np.diag(cm) / support).tolist(),
        RECALL_THRESHOLDED: (100.0 * np.diag(cm_t) / support).tolist(),
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_thresholded": cm_t.tolist(),
    }
