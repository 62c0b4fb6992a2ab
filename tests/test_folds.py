"""Grouped, class-stratified k-fold splits: disjoint tests covering every subject once."""
import json

import pytest

from simclr_ad import data_cli, folds, phantom_files, splits
from simclr_ad.data import DataError
from tests.test_splits import phantom_images


@pytest.fixture(scope="module")
def ph_folds():
    images, subjects = phantom_images(1280, seed=0)  # 40 subjects; the rare class has 2
    return images, folds.make_folds(images, 5, "subject", val_frac=0.1, seed=0)


def test_folds_are_disjoint_cover_every_subject_and_keep_subjects_whole(ph_folds):
    images, made = ph_folds
    tested = [{s["groups"][p] for p in s["test"]} for s in made]
    assert set().union(*tested) == set(images.subjects)
    assert sum(len(t) for t in tested) == len(set(images.subjects))  # each subject in exactly one test part
    for s in made:
        parts = {name: {s["groups"][p] for p in s[name]} for name in splits.SPLITS}
        assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])
        assert not (parts["val"] & parts["test"]) and parts["val"]
        assert sorted(s["train"] + s["val"] + s["test"]) == sorted(images.paths)
    assert folds.folds_summary(made)["each_subject_tested_once"]


def test_folds_stratify_by_class_and_name_the_rare_class(ph_folds):
    images, made = ph_folds
    for s in made:  # 8 subjects per fold, the common classes spread over all folds
        assert 6 <= sum(s["group_counts"]["test"].values()) <= 10
        assert all(s["group_counts"]["test"][c] >= 1 for c in ("Non_Demented", "Very_Mild_Demented"))
    assert [s["group_counts"]["test"]["Moderate_Demented"] for s in made].count(1) == 2
    notes = folds.folds_summary(made)["notes"]
    assert any("Moderate_Demented has 2 subject(s) for 5 folds" in n for n in notes)


def test_a_rare_class_keeps_its_only_untested_subject_in_train_at_any_val_share(ph_folds):
    images, _ = ph_folds
    for s in folds.make_folds(images, 5, "subject", val_frac=0.3, seed=0):
        rare_tested = s["group_counts"]["test"]["Moderate_Demented"]
        assert s["group_counts"]["train"]["Moderate_Demented"] >= 1  # so every subject budget can label it
        if rare_tested:
            assert s["group_counts"]["val"]["Moderate_Demented"] == 0
            assert any("Moderate_Demented is absent from val" in n for n in s["notes"])
        splits.label_subset(s, 0.01, "subject")  # no class without training images


def test_cli_writes_fold_files_every_stage_reads(tmp_path, capsys):
    root = phantom_files.write_dataset(tmp_path / "ph", n=320, seed=0, size=32)
    common = ["--data-dir", str(root), "--image-size", "32", "--cache-dir", str(tmp_path / "cache")]
    data_cli.main(["split", *common, "--folds", "3", "--out", str(tmp_path / "folds")])
    printed = capsys.readouterr().out
    assert "each tested exactly once: True" in printed
    for k in range(3):
        split = splits.read_splits(tmp_path / "folds" / f"fold{k}.json")
        assert (split["fold"], split["n_folds"], split["group_by"]) == (k, 3, "subject")
    assert json.loads((tmp_path / "folds" / "folds.json").read_text())["n_folds"] == 3
    with pytest.raises(DataError, match="a directory"):
        data_cli.main(["split", *common, "--folds", "3", "--out", str(tmp_path / "x.json")])
    with pytest.raises(DataError, match="at least 2 folds"):
        data_cli.main(["split", *common, "--folds", "1", "--out", str(tmp_path / "y")])
    with pytest.raises(DataError, match="--test-frac does not apply"):
        data_cli.main(["split", *common, "--folds", "3", "--test-frac", "0.3", "--out", str(tmp_path / "z")])
    (tmp_path / "folds" / "fold05.json").write_text("{}")  # not a fold file this command wrote: kept
    data_cli.main(["split", *common, "--folds", "2", "--out", str(tmp_path / "folds"), "--json"])  # fewer folds
    printed = capsys.readouterr()
    assert json.loads(printed.out)["n_folds"] == 2 and "removed" in printed.err and "fold2.json" in printed.err
    assert sorted(p.name for p in (tmp_path / "folds").glob("fold*.json")) == ["fold0.json", "fold05.json",
                                                                               "fold1.json", "folds.json"]
