"""Pooling over folds, the clinical table and the paired comparison, on hand-made run dirs."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from simclr_ad import comparison, report
from simclr_ad.config import FinetuneConfig, write_config
from simclr_ad.finetune import write_predictions
from simclr_ad.runs import ReportError, find_runs, redact_paths

CLASSES = ["Non_Demented", "Demented"]


def make_fold_run(root: Path, init: str, fold: int, probabilities: np.ndarray, labels: np.ndarray,
                  groups: list[str], seed: int = 0) -> Path:
    run_dir = root / f"fold{fold}" / f"{init}-finetune" / "frac1" / f"seed{seed}"
    run_dir.mkdir(parents=True)
    write_config(FinetuneConfig(init=init, label_frac=1.0, seed=seed, arch="resnet18", task="binary"),
                 run_dir / "config.yaml")
    paths = [f"{g}/s{k}.png" for k, g in enumerate(groups)]
    write_predictions(run_dir / "predictions.csv", paths, groups, labels, probabilities, CLASSES)
    pred = probabilities.argmax(1)
    metrics = {"accuracy": float((pred == labels).mean()), "balanced_accuracy": 0.5, "macro_f1": 0.5,
               "init": init, "mode": "finetune", "label_frac": 1.0, "seed": seed, "fold": fold, "n_folds": 2,
               "group_by": "subject", "classes": CLASSES, "task": "binary", "threshold": 0.5,
               "subject_threshold": 0.5, "auroc": 0.6, "n_train": 40, "n_train_subjects": 4,
               "confusion_matrix": [[1, 1], [1, 1]]}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture
def fold_runs(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "runs"
    for fold in range(2):
        groups = [f"f{fold}s{k // 3}" for k in range(18)]  # 6 subjects of 3 slices per fold
        labels = np.array([k // 3 % 2 for k in range(18)])
        p1 = np.clip(labels * 0.3 + rng.uniform(0.2, 0.6, 18), 0, 1)
        make_fold_run(root, "random", fold, np.stack([1 - p1, p1], 1), labels, groups)
        make_fold_run(root, "simclr", fold, np.stack([1 - p1, p1], 1), labels, groups)  # the same predictions
    return root


def test_pooled_folds_test_every_subject_once_and_identical_arms_differ_by_zero(fold_runs):
    pooled, notes = comparison.pool(find_runs([fold_runs]))
    assert [(p.init, p.folds) for p in pooled] == [("simclr", [0, 1]), ("random", [0, 1])]
    subjects = pooled[0].levels["subject"].ids.tolist()
    assert len(subjects) == len(set(subjects)) == 12 and not notes
    headline = comparison.paired_rows(pooled, draws=200)
    assert [row[3] for row in headline] == ["slice", "subject"]
    for row in headline:  # identical arms: zero difference, zero-width interval
        assert row[4] == "+0.0 [+0.0, +0.0]" and row[6] == "+0.0 [+0.0, +0.0]"
        assert row[8] == 12 and row[9] == "1 × 2"


def test_report_leads_with_the_paired_table_and_writes_subjects_and_reliability(fold_runs, tmp_path):
    out = report.run(runs=[str(fold_runs)], out=tmp_path / "rep", no_gradcam=True)
    text = (out / "report.md").read_text()
    assert text.index("Headline: paired difference") < text.index("## Results")
    assert "sensitivity" in text and "AUROC pooled" in text and "reliability_1.png" in text
    assert (out / "reliability_1.png").is_file()
    lines = (out / "subjects.csv").read_text().splitlines()
    assert lines[0].startswith("protocol,init,mode,label_frac,seed,fold,subject,true,pred,correct,p_Non_Demented")
    assert len(lines) == 1 + 2 * 12  # two arms x 12 subjects, each once
    assert "4 subj. / 40 slices" in text


def test_clinical_table_columns_follow_the_task_and_image_units_are_named(fold_runs):
    from simclr_ad.document import Document

    study = comparison.clinical_study(find_runs([fold_runs]), draws=20)
    assert study.binary and {len(row) for row in study.table} == {12}
    doc = Document({})
    comparison.clinical_part(doc, study)
    assert "| sensitivity | specificity |" in doc.markdown() and "Protocol image" not in doc.markdown()
    multiclass = comparison.ClinicalStudy(table=[[*row[:2], "image", *row[3:9], "–", "–", row[11]]
                                                 for row in study.table], binary=False)
    doc = Document({})
    comparison.clinical_part(doc, multiclass)
    text = doc.markdown()
    assert "sensitivity" not in text and "Protocol image has no subjects" in text
    assert all(line.count("|") == 11 for line in text.splitlines() if line.startswith("| "))  # 10 columns



def test_class_coverage_names_a_class_missing_from_pooled_folds_not_folds_not_yet_run(tmp_path):
    root = tmp_path / "runs"
    for fold in range(2):
        groups = [f"f{fold}s{k // 3}" for k in range(12)]
        labels = np.array([k // 3 % 2 for k in range(12)]) if fold == 0 else np.zeros(12, dtype=int)
        p1 = np.full(12, 0.4)
        for init in ("simclr", "random"):
            make_fold_run(root, init, fold, np.stack([1 - p1, p1], 1), labels, groups)
    pooled, _ = comparison.pool(find_runs([root]))
    notes = comparison.class_coverage(pooled)
    assert [n for n in notes if "only" in n] == [
        "group_by=subject: class Demented has 2 test subject(s): it is tested in 1 of the 2 pooled fold(s) only; "
        "its numbers rest on those subjects"]
    only_fold0 = [p for p in pooled if p.folds == [0, 1]]
    for p in only_fold0:  # as if fold 1 had not run yet (n_folds stays 2): no class is blamed for it
        p.levels = {k: v.take(np.flatnonzero(v.fold == 0)) for k, v in p.levels.items()}
        p.folds = [0]
    assert not [n for n in comparison.class_coverage(pooled) if "only" in n]


def test_redact_paths_keys_each_path_and_changes_nothing_else():
    original = b"path,group,true,pred,p_a,p_b\nNon_Demented/nonDem12.jpg,g1,a,a,0.9,0.1\n"
    redacted = redact_paths(original)
    assert redacted == b"path,group,true,pred,p_a,p_b\nsha1:62affa5e00cf3261,g1,a,a,0.9,0.1\n"  # sha1 by hand
    assert redact_paths(redacted) == redacted  # a key stays a key
    assert redact_paths(original, groups=True) == (b"path,group,true,pred,p_a,p_b\n"  # real patient ids keyed too
                                                   b"sha1:62affa5e00cf3261,sha1:a46e558d11cb2400,a,a,0.9,0.1\n")
    with pytest.raises(ReportError, match="path column"):
        redact_paths(b"group,true\ng1,a\n")


def test_redacted_records_name_no_file_and_pool_to_the_same_paired_result(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "runs"
    for fold in range(2):
        groups = [f"f{fold}s{k // 3}" for k in range(18)]
        labels = np.array([k // 3 % 2 for k in range(18)])
        for init, shift in (("random", 0.0), ("simclr", 0.25)):  # arms that differ, so pairing matters
            p1 = np.clip(labels * shift + rng.uniform(0.2, 0.6, 18), 0, 1)
            run = make_fold_run(root, init, fold, np.stack([1 - p1, p1], 1), labels, groups)
            (run / "val_predictions.csv").write_bytes((run / "predictions.csv").read_bytes())
    out = report.run(runs=[str(root)], out=tmp_path / "rep", no_gradcam=True, copy_runs=True, redact_paths=True)
    copies = sorted((out / "runs").rglob("*predictions.csv"))
    assert [p.name for p in copies] == ["predictions.csv"] * 4  # test predictions only, of the 4 trained runs
    assert not any(".png" in p.read_text() for p in copies)
    headline = comparison.paired_rows(comparison.pool(find_runs([root]))[0], draws=200)
    assert comparison.paired_rows(comparison.pool(find_runs([out / "runs"]))[0], draws=200) == headline
    assert headline[0][4] != "+0.0 [+0.0, +0.0]"
    rows = [row for p in copies for row in p.read_text().splitlines()[1:]]
    assert all(row.split(",")[1].startswith("sha1:") for row in rows)  # group_by subject: real ids, keyed
    for raw in root.rglob("predictions.csv"):  # one arm restored (keyed), the other re-run (raw): still paired
        if "simclr" in str(raw.relative_to(root)):
            (out / "runs" / raw.relative_to(root)).write_bytes(raw.read_bytes())
    assert comparison.paired_rows(comparison.pool(find_runs([out / "runs"]))[0], draws=200) == headline
    with pytest.raises(ReportError, match="--copy-runs"):
        report.run(runs=[str(root)], out=tmp_path / "rep2", no_gradcam=True, redact_paths=True)


def test_committed_real_data_predictions_name_no_file():
    """Real-data predictions are committed only redacted (report --redact-paths); .gitignore lets them in."""
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files", "results/alzheimer_*", "results/lgg*"], cwd=root, capture_output=True,
                             text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    for name in tracked.stdout.split():
        if not name.endswith("predictions.csv"):
            continue
        path = root / name
        rows = path.read_text().splitlines()[1:]
        assert all(row.startswith("sha1:") for row in rows), f"{path} names files: redact it"
        if name.startswith("results/lgg"):  # real patient ids
            assert all(row.split(",")[1].startswith("sha1:") for row in rows), f"{path} names patients"
