"""The metrics clinicians read, from stored class probabilities: AUROC, sensitivity and specificity at a
validation-chosen threshold, calibration (ECE, reliability bins), subject-level aggregation, and the
clinical order of the classes.

Pure functions of arrays: ``probabilities`` [N, C] (rows sum to 1), ``y_true`` [N] class indices.
scikit-learn computes ROC curves and confusion matrices. AUROC (by average ranks) and balanced accuracy
(by counting) are written here, equal to scikit-learn's but without its per-call checks, because the
subject bootstrap calls them thousands of times; so are the top-label ECE of Guo et al. (ICML 2017)
and the per-subject vote.

Subject level: a subject's probabilities are the mean of its slices' (``mean``, the default and
what the reports use), or the share of its slices predicting each class (``vote``, a majority vote
that one confidently wrong slice cannot swing). A subject's label is its slices' majority label.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve

from simclr_ad.imageset import class_key

# Non -> Very mild -> Mild -> Moderate: the order of the disease, not the alphabet's
CLINICAL_ORDER = ("Non_Demented", "Very_Mild_Demented", "Mild_Demented", "Moderate_Demented", "Demented")
AGGREGATIONS = ("mean", "vote")
ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017


def display_order(classes: Sequence[str], order: Sequence[str] = ()) -> list[int]:
    """Indices of ``classes`` in ``order`` (names compared normalised; default CLINICAL_ORDER), the
    classes it does not name after them in their own order."""
    keys = [class_key(name) for name in (order or CLINICAL_ORDER)]
    rank = {k: i for i, k in enumerate(keys)}
    return sorted(range(len(classes)), key=lambda i: (rank.get(class_key(classes[i]), len(keys)), i))


def reorder_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str],
                      order: Sequence[str] = ()) -> tuple[np.ndarray, list[str]]:
    """A confusion matrix (rows = true) and its class names permuted into ``display_order``."""
    index = display_order(classes, order)
    m = np.asarray(matrix)
    return m[np.ix_(index, index)], [classes[i] for i in index]


def _ranked_auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half: the Mann-Whitney form of the
    area under the ROC curve, equal to scikit-learn's ``roc_auc_score`` and without its per-call checks
    (a bootstrap calls this thousands of times)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average ranks: a tie counts one half
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Binary (C = 2): the AUROC of P(class 1). Multiclass: one-vs-rest, macro over the classes present
    in ``y_true`` (scikit-learn's ``multi_class='ovr'`` when all are present). nan with < 2 present."""
    y_true, probabilities = np.asarray(y_true), np.asarray(probabilities, dtype=np.float64)
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if probabilities.shape[1] == 2:
        return _ranked_auroc(y_true == 1, probabilities[:, 1])
    return float(np.mean([_ranked_auroc(y_true == c, probabilities[:, c]) for c in present]))


def youden_threshold(y_true: np.ndarray, p_positive: np.ndarray) -> float:
    """The threshold on P(positive) with the highest sensitivity + specificity (Youden's J), i.e. the
    best balanced accuracy; 0.5 when ``y_true`` holds one class only."""
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y_true, p_positive)
    best = int(np.argmax(tpr - fpr))
    # roc_curve's first threshold is inf (predict nothing positive); just above 1 says the same in JSON
    return float(thresholds[best]) if np.isfinite(thresholds[best]) else float(np.nextafter(1.0, 2.0))


def sensitivity_specificity(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """Recall of class 1 and of class 0 (nan when the class is absent)."""
    (tn, fp), (fn, tp) = confusion_matrix(y_true, y_pred, labels=[0, 1])
    return (tp / (tp + fn) if tp + fn else float("nan")), (tn / (tn + fp) if tn + fp else float("nan"))


def predict_at(probabilities: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class predictions: binary P(class 1) >= threshold when given, else the most probable class."""
    if threshold is None or probabilities.shape[1] != 2:
        return probabilities.argmax(axis=1)
    return (probabilities[:, 1] >= threshold).astype(np.int64)


def reliability_bins(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Top-label calibration per equal-width confidence bin (lower edge exclusive, (0, 1/n] first):
    mean confidence, accuracy and count of each non-empty bin."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        member = which == b
        if member.any():
            out["confidence"].append(float(confidence[member].mean()))
            out["accuracy"].append(float(correct[member].mean()))
            out["count"].append(int(member.sum()))
    return out


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over the reliability bins (nan for no rows)."""
    bins = reliability_bins(y_true, probabilities, n_bins)
    total = sum(bins["count"])
    if not total:
        return float("nan")
    return float(sum(n * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"])) / total)


def subject_probabilities(probabilities: np.ndarray, y_true: np.ndarray, groups: Sequence[str],
                          how: str = "mean") -> tuple[list[str], np.ndarray, np.ndarray]:
    """(subjects sorted, their majority labels, their aggregated probabilities [S, C]); see the module doc."""
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregation {how!r} must be one of {', '.join(AGGREGATIONS)}")
    groups = np.asarray([str(g) for g in groups])
    names = sorted(set(groups.tolist()))
    n_classes = probabilities.shape[1]
    truth, aggregated = [], []
    for name in names:
        member = groups == name
        truth.append(np.bincount(y_true[member]).argmax())
        rows = probabilities[member]
        aggregated.append(rows.mean(axis=0) if how == "mean"
                          else np.bincount(rows.argmax(axis=1), minlength=n_classes) / len(rows))
    return names, np.asarray(truth, dtype=np.int64), np.asarray(aggregated, dtype=np.float64).reshape(-1, n_classes)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's ``balanced_accuracy_score``,
    by counting: a bootstrap calls this thousands of times), nan for no rows."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        return float("nan")
    size = int(max(y_true.max(), y_pred.max())) + 1
    support = np.bincount(y_true, minlength=size)
    hits = np.bincount(y_true[y_true == y_pred], minlength=size)
    present = support > 0
    return float(np.mean(hits[present] / support[present]))


def clinical_metrics(probabilities: np.ndarray, y_true: np.ndarray, val_probabilities: np.ndarray | None = None,
                     val_true: np.ndarray | None = None) -> dict[str, float]:
    """AUROC and ECE; for two classes also the validation-chosen threshold and, at it, sensitivity,
    specificity and balanced accuracy (``threshold_*``). Without validation rows the threshold is 0.5."""
    out = {"auroc": auroc(y_true, probabilities), "ece": expected_calibration_error(y_true, probabilities)}
    if probabilities.shape[1] == 2:
        threshold = (youden_threshold(val_true, val_probabilities[:, 1])
                     if val_probabilities is not None and len(val_probabilities) else 0.5)
        pred = predict_at(probabilities, threshold)
        sensitivity, specificity = sensitivity_specificity(y_true, pred)
        out.update({"threshold": threshold, "sensitivity": sensitivity, "specificity": specificity,
                    "threshold_balanced_accuracy": balanced_accuracy(y_true, pred)})
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def subject_clinical_metrics(probabilities: np.ndarray, y_true: np.ndarray, groups: Sequence[str],
                             val: tuple[np.ndarray, np.ndarray, Sequence[str]] | None = None,
                             how: str = "mean") -> dict[str, float]:
    """``clinical_metrics`` of the subject-aggregated probabilities (the threshold chosen on validation
    subjects aggregated the same way), keys prefixed ``subject_``."""
    _, truth, aggregated = subject_probabilities(probabilities, y_true, groups, how)
    val_truth = val_aggregated = None
    if val is not None and len(val[0]):
        _, val_truth, val_aggregated = subject_probabilities(val[0], val[1], val[2], how)
    return {f"subject_{k}": v for k, v in clinical_metrics(aggregated, truth, val_aggregated, val_truth).items()}
