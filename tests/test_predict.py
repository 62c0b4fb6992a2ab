import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from simclr_ad import checkpoint, predict
from simclr_ad.checkpoint import CheckpointError
from simclr_ad.errors import UserError
from simclr_ad.config import FinetuneConfig, config_to_dict
from simclr_ad.models import build_classifier
from tests.conftest import write_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CLASSES = ["Mild_Demented", "Non_Demented", "Very_Mild_Demented"]


@pytest.fixture(scope="module")
def best_pt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_classifier("resnet18", len(CLASSES))
    cfg = config_to_dict(FinetuneConfig(arch="resnet18", image_size=32, epochs=1))
    path = tmp_path_factory.mktemp("run") / "best.pt"
    checkpoint.save(checkpoint.make(model, None, None, 1, 1, 0.5, cfg, "resnet18",
                                    {"classes": CLASSES, "image_size": 32, "task": "multiclass"}), path)
    return path


@pytest.fixture
def images(tmp_path) -> list[str]:
    good = [write_png(tmp_path / "a.png", seed=1), write_png(tmp_path / "b.png", size=(50, 36), mode="RGB")]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    return [str(good[0]), str(broken), str(good[1])]


def test_json_predicts_readable_images_and_names_the_broken_one(best_pt, images, capsys):
    code = predict.main([*images, "--checkpoint", str(best_pt), "--json"])
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert code == 1  # one image failed
    assert [r["path"] for r in results] == images  # input order, nothing dropped
    assert "error" in results[1] and "predicted" not in results[1]
    assert "broken.png" in captured.err
    for result in (results[0], results[2]):
        assert result["predicted"] in CLASSES
        assert list(result["probabilities"]) == CLASSES
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["predicted"] == max(result["probabilities"], key=result["probabilities"].get)


def test_gradcam_overlays_and_text_output(best_pt, images, tmp_path, capsys):
    out = tmp_path / "cams"
    code = predict.main([images[0], images[2], "--checkpoint", str(best_pt), "--gradcam", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "a.png" in text and "b.png" in text and any(c in text for c in CLASSES)
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["a_gradcam.png", "b_gradcam.png"]
    with Image.open(out / "a_gradcam.png") as overlay:
        assert overlay.size == (32, 32) and overlay.mode == "RGB"


def test_a_state_dict_is_not_a_classifier_checkpoint(tmp_path, images):
    path = tmp_path / "encoder.pt"
    checkpoint.save(build_classifier("resnet18", 3).backbone.state_dict(), path)
    with pytest.raises(CheckpointError, match="not a fine-tuned classifier"):
        predict.main([images[0], "--checkpoint", str(path)])


def test_a_truncated_checkpoint_is_one_clear_error(tmp_path, images):
    path = tmp_path / "best.pt"
    path.write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        predict.main([images[0], "--checkpoint", str(path)])


# ----------------------------------------------------------------------------- issue 18


def test_gradcam_pointing_at_a_file_is_one_clear_error(best_pt, images, tmp_path):
    from simclr_ad.errors import UserError

    (tmp_path / "taken").write_text("x")
    with pytest.raises(UserError, match="--gradcam .*taken is a file"):
        predict.main([images[0], "--checkpoint", str(best_pt), "--gradcam", str(tmp_path / "taken")])


def test_a_gif_is_refused_by_name_as_training_skips_it(best_pt, tmp_path, capsys):
    gif = tmp_path / "scan.gif"
    Image.new("L", (32, 32), 128).save(gif)
    assert predict.main([str(gif), "--checkpoint", str(best_pt), "--json"]) == 1
    (result,) = json.loads(capsys.readouterr().out)
    assert result["error"].startswith("not an image extension")


def test_last_pt_is_refused_with_the_way_to_best_pt(tmp_path, images):
    model = build_classifier("resnet18", len(CLASSES))
    cfg = config_to_dict(FinetuneConfig(arch="resnet18", image_size=32, epochs=1))
    path = tmp_path / "last.pt"
    checkpoint.save(checkpoint.make(model, None, None, 1, 1, 0.5, cfg, "resnet18",
                                    {"best_metric": 0.5, "best_val_loss": 1.0, "best_epoch": 1, "stale_epochs": 0}),
                    path)
    with pytest.raises(CheckpointError, match=r"training checkpoint \(last.pt\).*predict with .*best.pt"):
        predict.main([images[0], "--checkpoint", str(path)])


# ----------------------------------------------------------------------------- issue 20: folders, manifests, CSV


def test_folder_and_manifest_inputs_write_a_csv_with_subject_means(best_pt, tmp_path, capsys):
    import csv

    import numpy as np

    folder = tmp_path / "scans"
    for name in ("OAS1_0001_s01.png", "OAS1_0001_s02.png", "OAS1_0002_s01.png"):
        write_png(folder / "sub" / name, seed=len(name) + ord(name[8]))
    manifest = tmp_path / "m.csv"
    write_png(tmp_path / "extra" / "x1.png", seed=7)
    manifest.write_text("path,subject,label\nextra/x1.png,P9,Mild_Demented\n")
    out = tmp_path / "pred.csv"
    code = predict.main([str(folder), str(manifest), "--checkpoint", str(best_pt), "--csv", str(out),
                         "--subject-pattern", r"^(OAS1_\d+)"])
    assert code == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = [r for r in rows if r["level"] == "image"]
    subjects = {r["subject"]: r for r in rows if r["level"] == "subject"}
    assert len(images) == 4 and set(subjects) == {"OAS1_0001", "OAS1_0002", "P9"}
    assert subjects["P9"]["label"] == "Mild_Demented"
    first = [r for r in images if r["subject"] == "OAS1_0001"]
    for c in CLASSES:  # a subject's probabilities are its images' mean
        mean = np.mean([float(r[f"p_{c}"]) for r in first])
        assert float(subjects["OAS1_0001"][f"p_{c}"]) == pytest.approx(mean, abs=2e-6)
    with pytest.raises(Exception, match="no images found"):
        (tmp_path / "empty").mkdir()
        predict.main([str(tmp_path / "empty"), "--checkpoint", str(best_pt)])


def test_binary_predictions_use_the_runs_validation_thresholds(tmp_path, capsys):
    import csv

    torch.manual_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    cfg = config_to_dict(FinetuneConfig(arch="resnet18", image_size=32, epochs=1, task="binary"))
    checkpoint.save(checkpoint.make(build_classifier("resnet18", 2), None, None, 1, 1, 0.5, cfg, "resnet18",
                                    {"classes": ["Non", "Dem"], "image_size": 32, "task": "binary"}), run / "best.pt")
    scans = [str(write_png(tmp_path / f"S1_{k}.png", seed=k)) for k in range(3)]

    def predicted(*extra) -> tuple[list[str], str]:
        out = tmp_path / "p.csv"
        assert predict.main([*scans, "--checkpoint", str(run / "best.pt"), "--csv", str(out),
                             "--subject-pattern", r"^(S\d)", *extra]) == 0
        rows = list(csv.DictReader(open(out, newline="")))
        return [r["predicted"] for r in rows if r["level"] == "image"], rows[-1]["predicted"]

    assert predict.main([*scans, "--checkpoint", str(run / "best.pt"), "--json"]) == 0
    p_dem = [float(r["probabilities"]["Dem"]) for r in json.loads(capsys.readouterr().out)]
    argmax = ["Dem" if p > 0.5 else "Non" for p in p_dem]  # no metrics.json: the most probable class
    assert predicted()[0] == argmax
    middle = sorted(p_dem)[1]  # a cut-off between the images' probabilities: exactly 2 are positive
    metrics = {"classes": ["Non", "Dem"], "threshold": middle, "subject_threshold": 0.0}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert predicted() == (["Dem" if p >= middle else "Non" for p in p_dem], "Dem")  # each level its own
    (run / "metrics.json").write_text(json.dumps({**metrics, "threshold": 1.5, "subject_threshold": 1.5}))
    assert predicted() == (["Non"] * 3, "Non")
    assert predicted("--threshold", "0") == (["Dem"] * 3, "Dem")  # the flag overrides both
    assert "P(Dem) >= 0 per image, >= 0 per subject, --threshold" in capsys.readouterr().err
    (run / "metrics.json").write_text(json.dumps({**metrics, "classes": ["A", "B"]}))  # another run's file
    assert predicted()[0] == argmax
    with pytest.raises(UserError, match="in \\[0, 1\\]"):
        predict.main([*scans, "--checkpoint", str(run / "best.pt"), "--threshold", "2"])


def test_threshold_on_a_multiclass_checkpoint_is_refused(best_pt, images):
    with pytest.raises(UserError, match="3 classes"):
        predict.main([images[0], "--checkpoint", str(best_pt), "--threshold", "0.3"])
