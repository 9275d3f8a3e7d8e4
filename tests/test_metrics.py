"""imbalance_core.metrics on hand-made scores (expected values worked out by hand in the comments)
and against scikit-learn's multi-class AUC."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from imbalance_core.metrics import evaluate, macro_auc, threshold

# y = 0 0 1 1 2 2; argmax of the raw scores: 0 1 1 1 2 0
Y = np.array([0, 0, 1, 1, 2, 2])
SCORES = np.array([
    [0.7, 0.2, 0.1],   # -> 0  right
    [0.3, 0.6, 0.1],   # -> 1  wrong (true 0)
    [0.1, 0.8, 0.1],   # -> 1  right
    [0.1, 0.8, 0.1],   # -> 1  right
    [0.1, 0.2, 0.7],   # -> 2  right
    [0.5, 0.1, 0.4],   # -> 0  wrong (true 2)
])
# training counts 600 / 300 / 100 -> priors 0.6 / 0.3 / 0.1; scores / priors:
#   [1.167 0.667 1.0] -> 0 | [0.5 2.0 1.0] -> 1 | [0.167 2.667 1.0] -> 1 | same -> 1 | [0.167 0.667 7.0] -> 2
#   [0.833 0.333 4.0] -> 2   (the last row flips from a wrong 0 to the right 2)
PRIORS = np.array([600, 300, 100]) / 1000


def test_threshold_flips_a_prediction_two_classes():
    # 0.6 / 0.8 = 0.75 < 0.4 / 0.2 = 2.0: thresholding turns a class-0 prediction into class 1
    s = np.array([[0.6, 0.4], [0.9, 0.1]])      # second row: 1.125 > 0.5 stays class 0
    t = threshold(s, np.array([0.8, 0.2]))
    np.testing.assert_allclose(t, [[0.75, 2.0], [1.125, 0.5]])
    assert s.argmax(1).tolist() == [0, 0] and t.argmax(1).tolist() == [1, 0]
    m = evaluate(np.array([1, 0]), s, np.array([0.8, 0.2]))
    assert m["accuracy"] == 50.0 and m["accuracy_thresholded"] == 100.0


def test_accuracy_recall_confusion_by_hand():
    m = evaluate(Y, SCORES, PRIORS)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]          # rows true, columns predicted
    assert m["accuracy"] == pytest.approx(100 * 4 / 6)
    assert m["recall"] == pytest.approx([50.0, 100.0, 50.0])
    assert m["confusion_matrix_thresholded"] == [[1, 1, 0], [0, 2, 0], [0, 0, 2]]
    assert m["accuracy_thresholded"] == pytest.approx(100 * 5 / 6)
    assert m["recall_thresholded"] == pytest.approx([50.0, 100.0, 100.0])
    # AUC does not depend on the priors
    assert m["auc"] == pytest.approx(macro_auc(Y, SCORES))
    assert evaluate(Y, SCORES, np.ones(3) / 3)["auc"] == m["auc"]


def test_auc_by_hand():
    # class 1 positives score 0.35, 0.8; negatives 0.1, 0.4: 3 of 4 pairs ranked right -> 0.75;
    # class 0's scores are 1 - class 1's with the labels swapped -> also 0.75
    y = np.array([0, 0, 1, 1])
    s1 = np.array([0.1, 0.4, 0.35, 0.8])
    s = np.stack([1 - s1, s1], axis=1)
    assert macro_auc(y, s) == pytest.approx(75.0)
    # ties count one half: positive 0.4 vs negative 0.4
    s1 = np.array([0.1, 0.4, 0.4, 0.8])
    assert macro_auc(y, np.stack([1 - s1, s1], axis=1)) == pytest.approx(100 * 3.5 / 4)


def random_softmax(N=600, C=7, seed=0, signal=1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, N)
    logits = rng.normal(size=(N, C))
    logits[np.arange(N), y] += signal * rng.random(N)       # informative but imperfect
    p = np.exp(logits - logits.max(1, keepdims=True))
    return y, p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_sklearn_ovr_macro(seed):
    y, p = random_softmax(seed=seed)
    ref = 100 * roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert macro_auc(y, p) == pytest.approx(ref, abs=1e-10)
    assert 50 < ref < 100
    assert evaluate(y, p, np.full(p.shape[1], 1 / p.shape[1]))["auc"] == pytest.approx(ref, abs=1e-10)


def test_thresholding_keeps_per_class_auc():
    y, p = random_softmax(seed=3)
    priors = np.array([0.5, 0.2, 0.1, 0.08, 0.06, 0.04, 0.02])
    t = threshold(p, priors)
    for c in range(p.shape[1]):
        assert roc_auc_score(y == c, t[:, c]) == pytest.approx(roc_auc_score(y == c, p[:, c]), abs=1e-12)
    assert macro_auc(y, t) == pytest.approx(macro_auc(y, p), abs=1e-10)
    m = evaluate(y, p, priors)
    # ... while the argmax (and so the accuracy) does change with such skewed priors
    assert not np.array_equal(t.argmax(1), p.argmax(1))
    assert m["accuracy_thresholded"] == pytest.approx(100 * np.mean(t.argmax(1) == y))
    assert m["accuracy"] == pytest.approx(100 * np.mean(p.argmax(1) == y))


@pytest.mark.parametrize("priors", [[0.5, 0.5, 0.0], [0.6, 0.6, -0.2], [0.5, 0.5], [0.5, 0.5, float("nan")],
                                    [0.5, 0.5, float("inf")]])
def test_bad_priors_raise(priors):
    with pytest.raises(ValueError, match="priors"):
        threshold(SCORES, np.array(priors))
    with pytest.raises(ValueError, match="priors"):
        evaluate(Y, SCORES, np.array(priors))
