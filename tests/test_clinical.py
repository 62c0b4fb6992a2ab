"""Clinical metrics against hand-computed values and against scikit-learn on hand-made cases."""
import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from simclr_ad import clinical


def test_binary_auroc_by_hand_and_by_sklearn():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    probabilities = np.stack([1 - p1, p1], axis=1)
    # positive-negative pairs ranked right: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4) -> 3/4
    assert clinical.auroc(y, probabilities) == pytest.approx(0.75)
    assert clinical.auroc(y, probabilities) == pytest.approx(roc_auc_score(y, p1))
    assert math.isnan(clinical.auroc(np.zeros(4, int), probabilities))  # one class: undefined


def test_multiclass_auroc_is_sklearn_ovr_macro_and_skips_absent_classes():
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    probabilities = rng.dirichlet(np.ones(3), size=len(y))
    expected = roc_auc_score(y, probabilities, multi_class="ovr", average="macro")
    assert clinical.auroc(y, probabilities) == pytest.approx(expected)
    present = y != 1  # class 1 absent: macro over classes 0 and 2 only
    by_hand = np.mean([roc_auc_score(y[present] == c, probabilities[present, c]) for c in (0, 2)])
    assert clinical.auroc(y[present], probabilities[present]) == pytest.approx(by_hand)


def test_counting_metrics_equal_sklearn_with_ties_and_absent_classes():
    # the bootstrap's fast forms: rank-based AUROC and counted recall, on coarse (tied) probabilities
    rng = np.random.default_rng(1)
    for n_classes in (2, 4):
        for _ in range(20):
            y = rng.integers(0, n_classes, 30)
            probabilities = np.round(rng.dirichlet(np.ones(n_classes), size=30), 1)  # many ties
            pred = rng.integers(0, n_classes, 30)
            if len(np.unique(y)) < 2:
                continue
            score = probabilities[:, 1] if n_classes == 2 else None
            expected = (roc_auc_score(y, score) if n_classes == 2 else
                        np.mean([roc_auc_score(y == c, probabilities[:, c]) for c in np.unique(y)]))
            assert clinical.auroc(y, probabilities) == pytest.approx(expected)
            assert clinical.balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))
    assert clinical.balanced_accuracy(np.array([0, 0, 2]), np.array([0, 1, 1])) == pytest.approx(0.25)  # (1/2 + 0)/2


def test_youden_threshold_sensitivity_specificity_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.8, 0.3, 0.7, 0.9])
    threshold = clinical.youden_threshold(y, p1)
    # cuts: 0.9 -> J 1/3, 0.8 -> 0, 0.7 -> 1/3, 0.3 -> sens 1, spec 2/3, J 2/3 (the best), 0.2 -> 1/3
    assert threshold == pytest.approx(0.3)
    pred = clinical.predict_at(np.stack([1 - p1, p1], 1), threshold)
    assert pred.tolist() == [0, 0, 1, 1, 1, 1]
    assert clinical.sensitivity_specificity(y, pred) == pytest.approx((1.0, 2 / 3))
    assert clinical.youden_threshold(np.ones(3, int), np.array([0.2, 0.5, 0.9])) == 0.5
    # every positive below every negative: the best J is "nothing positive", even at P = 1.0
    worst = clinical.youden_threshold(np.array([0, 0, 1, 1]), np.array([0.9, 1.0, 0.1, 0.2]))
    assert worst > 1.0 and not clinical.predict_at(np.array([[0.0, 1.0]]), worst).any()


def test_ece_and_reliability_bins_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    y = np.array([0, 1, 1, 1])
    bins = clinical.reliability_bins(y, probabilities, n_bins=2)  # (0, .5] empty; (.5, 1] all four
    assert bins["count"] == [4] and bins["accuracy"] == [0.75]
    assert bins["confidence"][0] == pytest.approx((0.9 + 0.8 + 0.7 + 0.55) / 4)
    assert clinical.expected_calibration_error(y, probabilities, n_bins=2) == pytest.approx(abs(0.75 - 0.7375))
    ten = clinical.reliability_bins(y, probabilities, n_bins=10)  # bins (.5,.6], (.6,.7], (.7,.8], (.8,.9]
    assert ten["count"] == [1, 1, 1, 1] and ten["accuracy"] == [1.0, 1.0, 0.0, 1.0]
    ece = (abs(1 - 0.55) + abs(1 - 0.7) + abs(0 - 0.8) + abs(1 - 0.9)) / 4
    assert clinical.expected_calibration_error(y, probabilities, n_bins=10) == pytest.approx(ece)


def test_subject_aggregation_mean_and_vote():
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55], [0.2, 0.8]])
    y = np.array([0, 0, 0, 1])
    names, truth, mean = clinical.subject_probabilities(probabilities, y, ["a", "a", "a", "b"])
    assert names == ["a", "b"] and truth.tolist() == [0, 1]
    assert mean[0] == pytest.approx([1.75 / 3, 1.25 / 3])  # the mean keeps subject a non-demented
    _, _, vote = clinical.subject_probabilities(probabilities, y, ["a", "a", "a", "b"], "vote")
    assert vote[0] == pytest.approx([1 / 3, 2 / 3]) and vote[1] == pytest.approx([0, 1])


def test_clinical_metrics_use_the_validation_threshold():
    val_p1 = np.array([0.2, 0.3, 0.35, 0.4])
    val = np.stack([1 - val_p1, val_p1], 1)
    out = clinical.clinical_metrics(np.array([[0.7, 0.3], [0.62, 0.38]]), np.array([0, 1]), val,
                                    np.array([0, 0, 1, 1]))
    assert out["threshold"] == pytest.approx(0.35)
    assert (out["sensitivity"], out["specificity"], out["threshold_balanced_accuracy"]) == (1.0, 1.0, 1.0)
    assert out["auroc"] == 1.0 and "threshold" not in clinical.clinical_metrics(np.eye(3), np.arange(3))


def test_display_order_is_clinical_not_alphabetical():
    classes = ["Mild_Demented", "Moderate_Demented", "Non_Demented", "Very_Mild_Demented"]
    matrix, names = clinical.reorder_confusion(np.arange(16).reshape(4, 4), classes)
    assert names == ["Non_Demented", "Very_Mild_Demented", "Mild_Demented", "Moderate_Demented"]
    assert matrix[0, 0] == 10 and matrix[0, 1] == 11 and matrix[3, 3] == 5  # Non row/col was index 2
    assert clinical.reorder_confusion(np.eye(3), ["b", "Non Demented", "a"], ("a",))[1] == ["a", "b", "Non Demented"]
