"""Segmentation and detection metrics as pure functions on NumPy arrays.

Conventions (each is tested against hand-computed cases in tests/test_segmetrics.py):
- **Dice** 2|P∩T| / (|P| + |T|) and **IoU** |P∩T| / |P∪T| of one slice. Both empty: 1.0 (the
  slice was rightly left empty); one empty: 0.0.
- **Hausdorff-95** of one slice, in pixels at the evaluated size: the 95th percentile of the
  pooled distances from each boundary pixel of P to the nearest boundary pixel of T and from
  each of T's to P's (as medpy's ``hd95``). Both empty: 0.0; one empty: undefined (NaN), and
  summaries count such slices instead of averaging them in.
- **Patient (3-D) Dice**: Dice over all of a patient's slices at once, 2 Σ|P∩T| / (Σ|P| + Σ|T|),
  with the same empty conventions; a patient's small false positives on many slices count.
- Published LGG U-Nets report mean Dice over *tumour* slices (non-empty truth), so
  ``summarise`` gives that too, beside the mean over all slices.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from simclr_ad import clinical


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks of any (same) shape; both empty: 1.0."""
    pred, truth = _as_bool(pred), _as_bool(truth)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two binary masks; both empty: 1.0."""
    pred, truth = _as_bool(pred), _as_bool(truth)
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """The pixels of a 2-D mask with a 4-neighbour outside it (the image border counts as outside)."""
    mask = _as_bool(mask)
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return mask & ~inner


def _distances_to(target: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Euclidean distance from each True pixel of ``points`` to the nearest True pixel of ``target``."""
    return ndimage.distance_transform_edt(~target)[points]


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """Symmetric 95th-percentile Hausdorff distance of two 2-D masks, in pixels; NaN if one is empty."""
    pred, truth = _as_bool(pred), _as_bool(truth)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float("nan")
    edge_p, edge_t = boundary(pred), boundary(truth)
    pooled = np.concatenate([_distances_to(edge_t, edge_p), _distances_to(edge_p, edge_t)])
    return float(np.percentile(pooled, 95))


def slice_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, IoU, HD95 and areas of one 2-D slice."""
    return {"dice": dice(pred, truth), "iou": iou(pred, truth), "hd95": hd95(pred, truth),
            "true_area": int(_as_bool(truth).sum()), "pred_area": int(_as_bool(pred).sum())}


def patient_dice(preds: np.ndarray, truths: np.ndarray, patients: Sequence[str]) -> dict[str, float]:
    """3-D Dice per patient over masks [N, H, W] with ``patients`` [N]; returns {patient: dice}."""
    preds, truths = _as_bool(preds), _as_bool(truths)
    names = np.asarray(patients)
    return {str(p): dice(preds[names == p], truths[names == p]) for p in dict.fromkeys(names.tolist())}


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(rows: Sequence[dict], patient: dict[str, float]) -> dict[str, float]:
    """Means of per-slice ``slice_metrics`` rows and of the per-patient 3-D Dice.

    ``dice``/``iou``: over all slices; ``dice_tumour``/``iou_tumour``/``hd95``: over slices whose
    truth is non-empty (HD95 also skipping slices it is undefined on, counted in ``hd95_undefined``);
    ``empty_slice_false_positive_rate``: share of empty-truth slices given a non-empty prediction.
    """
    tumour = [r for r in rows if r["true_area"] > 0]
    empty = [r for r in rows if r["true_area"] == 0]
    return {
        "dice": _mean([r["dice"] for r in rows]), "iou": _mean([r["iou"] for r in rows]),
        "dice_tumour": _mean([r["dice"] for r in tumour]), "iou_tumour": _mean([r["iou"] for r in tumour]),
        "hd95": _mean([r["hd95"] for r in tumour]),
        "hd95_undefined": int(sum(1 for r in tumour if not np.isfinite(r["hd95"]))),
        "empty_slice_false_positive_rate": (sum(1 for r in empty if r["pred_area"] > 0) / len(empty)
                                            if empty else float("nan")),
        "patient_dice": _mean(list(patient.values())),
        "n_slices": len(rows), "n_tumour_slices": len(tumour), "n_patients": len(patient),
    }


def detection_metrics(y_true: Sequence[int], score: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    """AUROC, sensitivity and specificity of a binary detector (positive = 1) at ``threshold``.

    AUROC is NaN when only one class is present; sensitivity (specificity) is NaN without positives
    (negatives).
    """
    truth, score = np.asarray(y_true).astype(int), np.asarray(score, dtype=float)
    positives, negatives = truth == 1, truth == 0
    if not len(truth):
        auroc = sensitivity = specificity = float("nan")
    else:  # the classifiers' definitions (clinical.py)
        auroc = clinical.auroc(truth, np.stack([1 - score, score], axis=1))
        sensitivity, specificity = clinical.sensitivity_specificity(truth, (score >= threshold).astype(int))
    return {
        "auroc": auroc, "sensitivity": float(sensitivity), "specificity": float(specificity),
        "n_positive": int(positives.sum()), "n_negative": int(negatives.sum()), "threshold": threshold,
    }
