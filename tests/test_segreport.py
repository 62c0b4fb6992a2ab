"""The segmentation report on a tiny sweep of both arms, with a detection table."""
import json

import pytest

from simclr_ad import segment, segreport
from tests.test_segment import ARGS, _encoder_file


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _fake_detection(root):
    run = root / "random-finetune" / "frac1" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("init: random\nlabel_frac: 1.0\n")
    (run / "metrics.json").write_text(json.dumps({"init": "random", "label_frac": 1.0, "seed": 0}))
    (run / "predictions.csv").write_text("path,group,true,pred,p_no_tumour,p_tumour\n"
                                         "a,g,no_tumour,no_tumour,0.9,0.1\nb,g,no_tumour,tumour,0.4,0.6\n"
                                         "c,g,tumour,tumour,0.3,0.7\nd,g,tumour,no_tumour,0.6,0.4\n"
                                         "e,g,tumour,tumour,0.1,0.9\n")


def test_report_of_both_arms_with_overlays_and_detection(tmp_path):
    encoder, _ = _encoder_file(tmp_path)
    sweep = segment.main(ARGS + ["--sweep", "--inits", "simclr", "random", "--fractions", "0.5", "--seeds", "0",
                                 "--encoder", str(encoder), "--out", str(tmp_path / "seg")])
    (sweep / "simclr" / "mask1" / "seed0").mkdir(parents=True)
    (sweep / "simclr" / "mask1" / "seed0" / "config.yaml").write_text("mask_frac: 1.0\n")  # an unfinished run
    _fake_detection(tmp_path / "det")
    out = segreport.main(["--runs", str(sweep), "--detection", str(tmp_path / "det"), "--out", str(tmp_path / "rep"),
                          "--overlays", "3", "--copy-runs"])
    text = (out / "segmentation.md").read_text()
    assert "| simclr | 50 % | 4 | 1 |" in text and "| random | 50 % | 4 | 1 |" in text
    assert "| random | 100 % | 1 | 0.833 | 0.667 | 0.500 |" in text  # hand-computed from the 5 rows above
    assert "mask1/seed0: no metrics.json" in text
    assert (out / "dice_vs_masks.png").stat().st_size > 1000 and (out / "overlays_mask0.5.png").is_file()
    assert (out / "seg_runs" / "random" / "mask0.5" / "seed0" / "metrics.json").is_file()
    assert not list((out / "seg_runs").rglob("*.pt"))
    copied = (out / "seg_runs" / "random" / "mask0.5" / "seed0" / "predictions.csv").read_text().splitlines()
    assert len(copied) > 1 and all(r.startswith("sha1:") and r.split(",")[1].startswith("sha1:") for r in copied[1:])
    # another machine: the copied records restore both cells of the same sweep, nothing is trained
    again = segment.main(ARGS + ["--sweep", "--inits", "simclr", "random", "--fractions", "0.5", "--seeds", "0",
                                 "--encoder", str(encoder), "--out", str(tmp_path / "seg2"),
                                 "--restore-from", str(out / "seg_runs")])
    for arm in ("simclr", "random"):
        cell = again / arm / "mask0.5" / "seed0"
        assert not (cell / "best.pt").exists()  # restored, not re-run
        assert (cell / "metrics.json").read_bytes() == (sweep / arm / "mask0.5" / "seed0" / "metrics.json").read_bytes()
    rows = segreport.summarise_segmentation(segreport.find_runs(sweep, "segment")[0])
    assert [r["subset_sha1s"] for r in rows] == [1, 1]
    simclr, random = (json.loads((sweep / arm / "mask0.5" / "seed0" / "metrics.json").read_text())
                      for arm in ("simclr", "random"))
    assert simclr["train_subset_sha1"] == random["train_subset_sha1"]  # both arms saw the same masked patients


def test_detection_is_the_fine_tune_stage_on_a_lesion_manifest(tmp_path):
    """The LGG layout's label column (tumour / no_tumour) is a two-class task for the existing fine-tune stage."""
    from simclr_ad import finetune, lesions
    from tests.conftest import TINY

    root = lesions.write_dataset(tmp_path / "lesions", n=96, size=32, slices_per_subject=8)
    run = finetune.main(["--config", TINY, "--data-dir", str(root), "--init", "random", "--epochs", "1",
                         "--num-threads", "1", "--out", str(tmp_path / "det" / "random-finetune" / "frac1" / "seed0")])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["no_tumour", "tumour"] and metrics["group_by"] == "subject"
    rows = segreport.detection_rows(segreport.find_runs(tmp_path / "det", None)[0])
    assert len(rows) == 1 and 0 <= rows[0]["auroc"] <= 1 and 0 <= rows[0]["sensitivity"] <= 1


def test_detection_uses_each_runs_validation_threshold(tmp_path):
    _fake_detection(tmp_path / "det")
    metrics = tmp_path / "det" / "random-finetune" / "frac1" / "seed0" / "metrics.json"
    runs = segreport.find_runs(tmp_path / "det", "finetune")[0]
    assert segreport.detection_rows(runs)[0]["specificity"] == pytest.approx(0.5)  # none recorded: p >= 0.5
    recorded = {**json.loads(metrics.read_text()), "classes": ["no_tumour", "tumour"], "threshold": 0.65}
    metrics.write_text(json.dumps(recorded))
    row = segreport.detection_rows(segreport.find_runs(tmp_path / "det", "finetune")[0])[0]
    assert (row["sensitivity"], row["specificity"]) == (pytest.approx(2 / 3), 1.0)  # 0.6 is now negative
