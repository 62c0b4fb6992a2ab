"""evaluate.py: metrics by hand and against sklearn."""
import numpy as np
import torch
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score

from simclr_ad import evaluate


def test_metrics_match_sklearn_on_planted_predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, 200))
    got = evaluate.classification_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert got["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert got["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()


def test_subject_level_averages_slice_probabilities():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
    truth, pred = evaluate.subject_level(probabilities, np.array([0, 0, 1, 1]), ["s1", "s1", "s2", "s2"])
    assert truth.tolist() == [0, 1] and pred.tolist() == [0, 1]  # s1: mean [0.55, 0.45] -> 0


def test_chance_levels_by_hand():
    # test split: 6 of class 0, 3 of class 1, 0 of class 2 (absent), 1 of class 3
    confusion = [[6, 0, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    chance = evaluate.chance_levels(confusion)
    assert chance["balanced_accuracy"] == pytest.approx(1 / 3)  # 3 classes present, not 4
    assert chance["accuracy"] == pytest.approx(0.6)
    assert chance["macro_f1"] == pytest.approx((2 * 0.6 / 1.6) / 3)  # F1 of "always class 0" = 0.75


def test_chance_levels_agree_with_a_constant_predictor():
    y_true = np.array([0, 0, 0, 0, 1, 1, 3])
    scored = evaluate.classification_metrics(y_true, np.zeros_like(y_true), ["a", "b", "c", "d"])
    chance = evaluate.chance_levels(scored["confusion_matrix"])
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert chance[key] == pytest.approx(scored[key])


def test_recalibrate_batchnorm_sets_the_statistics_of_the_images():
    """Precise BN: running mean/var become the images' own (as prepared for evaluation), whatever they were;
    batches never leave one image alone (train-mode BN raises on a batch of 1 at 1x1)."""
    from simclr_ad import augment, runtime

    rt = runtime.Runtime(device=torch.device("cpu"), dtype=None, channels_last=False)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.BatchNorm2d(1))
    model[0].running_mean.fill_(5.0), model[0].running_var.fill_(9.0)
    images = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model.eval()
    evaluate.recalibrate_batchnorm(model, images, 8, rt, batch_size=3)  # 3 + 2 + 2, not 3 + 3 + 1
    assert not model.training and model[0].momentum == 0.1  # mode and momentum restored
    evaluate.recalibrate_batchnorm(model, images[:6], 8, rt, batch_size=3)  # equal chunks: the exact mean
    x = augment.prepare(images[:6], 8)
    assert model[0].running_mean.item() == pytest.approx(x.mean().item(), abs=1e-5)
    assert model[0].running_var.item() == pytest.approx(x.var().item(), rel=0.05)  # a mean of batch variances
