"""Dice, IoU, HD95, patient Dice and detection metrics against hand-computed cases."""
import math

import numpy as np
import pytest

from simclr_ad import segmetrics as sm


def _mask(shape=(10, 10), *boxes):
    m = np.zeros(shape, bool)
    for r0, r1, c0, c1 in boxes:
        m[r0:r1, c0:c1] = True
    return m


def test_dice_and_iou_by_hand():
    truth = _mask((6, 6), (1, 3, 1, 3))  # 4 pixels
    pred = _mask((6, 6), (1, 2, 1, 3))  # 2 of them
    assert sm.dice(pred, truth) == pytest.approx(2 * 2 / (2 + 4))  # 0.667
    assert sm.iou(pred, truth) == pytest.approx(2 / 4)
    shifted = _mask((6, 6), (1, 3, 2, 4))  # overlaps 2 of 4, union 6
    assert sm.dice(shifted, truth) == pytest.approx(0.5) and sm.iou(shifted, truth) == pytest.approx(2 / 6)


def test_empty_conventions():
    empty, some = np.zeros((5, 5), bool), _mask((5, 5), (0, 1, 0, 1))
    assert sm.dice(empty, empty) == 1.0 and sm.iou(empty, empty) == 1.0 and sm.hd95(empty, empty) == 0.0
    assert sm.dice(some, empty) == 0.0 and sm.dice(empty, some) == 0.0 and sm.iou(empty, some) == 0.0
    assert math.isnan(sm.hd95(some, empty)) and math.isnan(sm.hd95(empty, some))


def test_hd95_by_hand():
    a, b = _mask((9, 9), (4, 5, 1, 2)), _mask((9, 9), (4, 5, 4, 5))  # one pixel each, 3 apart
    assert sm.hd95(a, b) == pytest.approx(3.0)
    assert sm.hd95(a, a) == 0.0
    square = _mask((12, 12), (2, 6, 2, 6))
    moved = _mask((12, 12), (2, 6, 4, 8))  # the same square, 2 px right: boundary distances 0-2, the far 5 % at 2
    assert sm.hd95(square, moved) == pytest.approx(2.0)
    assert sm.hd95(square, moved) == sm.hd95(moved, square)


def test_boundary_of_a_square_is_its_rim():
    rim = sm.boundary(_mask((6, 6), (1, 5, 1, 5)))
    assert rim.sum() == 12 and not rim[2:4, 2:4].any()


def test_patient_dice_pools_slices():
    truth = np.stack([_mask((4, 4), (0, 2, 0, 2)), np.zeros((4, 4), bool), _mask((4, 4), (0, 1, 0, 1))])
    pred = np.stack([_mask((4, 4), (0, 2, 0, 2)), _mask((4, 4), (3, 4, 3, 4)), np.zeros((4, 4), bool)])
    per = sm.patient_dice(np.concatenate([pred, pred]), np.concatenate([truth, truth]), ["a"] * 3 + ["b"] * 3)
    # intersections 4; |P| = 4 + 1, |T| = 4 + 1: 2*4 / 10
    assert per == {"a": pytest.approx(0.8), "b": pytest.approx(0.8)}
    rows = [sm.slice_metrics(p, t) for p, t in zip(pred, truth)]
    assert [r["dice"] for r in rows] == [1.0, 0.0, 0.0]
    summary = sm.summarise(rows, per)
    assert summary["dice"] == pytest.approx(1 / 3) and summary["dice_tumour"] == pytest.approx(0.5)
    assert summary["hd95"] == pytest.approx(0.0) and summary["hd95_undefined"] == 1
    assert summary["empty_slice_false_positive_rate"] == 1.0 and summary["patient_dice"] == pytest.approx(0.8)


def test_detection_metrics_by_hand():
    out = sm.detection_metrics([0, 0, 1, 1, 1], [0.1, 0.6, 0.7, 0.4, 0.9])
    assert out["sensitivity"] == pytest.approx(2 / 3) and out["specificity"] == pytest.approx(0.5)
    assert out["auroc"] == pytest.approx(5 / 6)  # 5 of the 6 (positive, negative) pairs ranked right
    assert math.isnan(sm.detection_metrics([1, 1], [0.2, 0.8])["auroc"])
    assert math.isnan(sm.detection_metrics([], [])["sensitivity"])  # empty: NaN, not an error
