"""Reference baselines (simclr_ad/baselines.py), chance levels and their place in the report."""
import csv
import json

import numpy as np
import pytest

from simclr_ad import baselines, grouping, report
from tests.conftest import TINY

# Two tight clusters on the unit circle: class 0 near (1, 0), class 1 near (0, 1).
TRAIN_X = np.array([[1.0, 0.05], [1.0, -0.05], [0.05, 1.0], [-0.05, 1.0], [0.9, 0.1]])
TRAIN_Y = np.array([0, 0, 1, 1, 0])
QUERY_X = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.72]])


def test_majority_predicts_the_largest_labelled_class_everywhere():
    predict = baselines.majority(TRAIN_X, TRAIN_Y, TRAIN_X[:0], TRAIN_Y[:0], n_classes=3)
    np.testing.assert_array_equal(predict(QUERY_X), [[1, 0, 0]] * 3)


def test_one_nn_by_cosine_takes_the_nearest_direction():
    predict = baselines.knn(1)(TRAIN_X, TRAIN_Y, TRAIN_X[:0], TRAIN_Y[:0], n_classes=2)
    # (0.7, 0.72): cosine 0.772 to (0.9, 0.1) (class 0) beats 0.751 to (0.05, 1.0) (class 1)
    np.testing.assert_array_equal(predict(QUERY_X).argmax(1), [0, 1, 0])


def test_knn_k_larger_than_the_subset_shrinks_and_votes_uniformly():
    predict = baselines.knn(20)(TRAIN_X, TRAIN_Y, TRAIN_X[:0], TRAIN_Y[:0], n_classes=3)
    np.testing.assert_allclose(predict(QUERY_X[:1]), [[3 / 5, 2 / 5, 0.0]])  # all 5 neighbours vote


def test_logreg_separates_separable_clusters_and_keeps_absent_classes_at_zero():
    predict = baselines.logreg(TRAIN_X, TRAIN_Y, QUERY_X[:2], np.array([0, 1]), n_classes=3)
    probabilities = predict(QUERY_X[:2])
    np.testing.assert_array_equal(probabilities.argmax(1), [0, 1])
    assert (probabilities[:, 2] == 0).all()


@pytest.fixture(scope="module")
def sweep_with_baselines(tmp_path_factory):
    from simclr_ad import finetune

    root = tmp_path_factory.mktemp("bl") / "sweep"
    finetune.main(["--config", TINY, "--sweep", "--inits", "random", "--fractions", "0.5", "1.0", "--seeds", "0",
                   "--out", str(root)])
    baselines.main(["--config", TINY, "--fractions", "0.5", "1.0", "--seeds", "0", "--out", str(root)])
    return root


def test_baselines_land_in_the_sweep_layout_on_the_sweeps_split(sweep_with_baselines):
    root = sweep_with_baselines
    names = {"majority", "pixel-1nn", "pixel-20nn", "pixel-logreg", "random-knn"}  # no encoder: no simclr ones
    assert {p.name for p in root.iterdir() if p.name.endswith("-reference")} == {f"{n}-reference" for n in names}
    finetuned = json.loads((root / "random-finetune" / "frac1" / "seed0" / "metrics.json").read_text())
    for name in names:
        run = root / f"{name}-reference" / "frac1" / "seed0"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["init"] == name and metrics["mode"] == "reference"
        # same split, same labelled subset, same test images as the fine-tune
        assert metrics["train_subset_sha1"] == finetuned["train_subset_sha1"]
        assert metrics["n_test"] == finetuned["n_test"]
        with open(run / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == metrics["n_test"]


def test_one_nn_on_the_training_images_is_perfect(tmp_path):
    """A sanity case with a known answer: test = train (every test image has itself as neighbour)."""
    from simclr_ad import data, splits
    from simclr_ad.config import FinetuneConfig

    cfg = FinetuneConfig(synth_n=64, image_size=32, progress=False)
    images = data.load_dataset(cfg)
    split = splits.splits_for(cfg, images)
    split = {**split, "test": split["train"]}  # a leak on purpose
    feats = grouping.thumbnail_features(images)
    metrics = baselines.score_one(cfg, "pixel-1nn", baselines.knn(1), feats, images, split, tmp_path / "run")
    assert metrics["accuracy"] == 1.0


def test_report_shows_best_reference_and_chance(sweep_with_baselines, tmp_path):
    out = report.main(["--runs", str(sweep_with_baselines), "--out", str(tmp_path / "rep"), "--no-gradcam"])
    text = (out / "report.md").read_text()
    assert "best reference" in text and "chance" in text and "Reference baselines" in text
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    trained = [r for r in rows if r["mode"] == "finetune"]
    assert trained and all(r["chance_balanced_accuracy"] not in ("", None) for r in trained)
    assert {r["init"] for r in rows if r["mode"] == "reference"} >= {"majority", "pixel-1nn"}
    # confusion figures are for trained arms only
    assert not any("reference" in p.name or "pixel" in p.name for p in out.glob("confusion_*.png"))
