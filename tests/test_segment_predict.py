"""Two-stage prediction: the detector's tumour slices are segmented, the others are not."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from simclr_ad import checkpoint, predict, segment
from simclr_ad.checkpoint import CheckpointError
from simclr_ad.models import build_classifier
from simclr_ad.config import SegmentConfig
from simclr_ad.unet import build_unet


def _detector(path, says_tumour: bool):
    model = build_classifier("resnet18", 2, 0.0)
    with torch.no_grad():
        model.head[1].weight.zero_()
        model.head[1].bias.copy_(torch.tensor([-5.0, 5.0] if says_tumour else [5.0, -5.0]))
    checkpoint.save(checkpoint.make(model, None, None, 1, 1, 0.5, {"dropout": 0.0}, "resnet18",
                                    {"classes": ["no_tumour", "tumour"], "image_size": 32, "task": "multiclass"}), path)
    return path


def _segmenter(path):
    torch.manual_seed(0)
    model = build_unet("resnet18")
    with torch.no_grad():  # a U-Net that marks everything: its masks are easy to check
        model.segmentation_head[0].weight.zero_()
        model.segmentation_head[0].bias.fill_(3.0)
    cfg = SegmentConfig(image_size=32)
    checkpoint.save(checkpoint.make(model, None, None, 1, 1, 0.5, {}, "resnet18", segment.model_info(cfg)), path)
    return path


@pytest.mark.parametrize("says_tumour", [True, False])
def test_two_stage_prediction_writes_masks_only_where_the_detector_says_tumour(tmp_path, capsys, says_tumour):
    images = []
    for k in range(2):
        images.append(tmp_path / f"slice_{k}.png")
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (48, 48), dtype=np.uint8)).save(images[-1])
    out = tmp_path / "seg"
    code = predict.main([*map(str, images), "--checkpoint", str(_detector(tmp_path / "det.pt", says_tumour)),
                         "--segment-checkpoint", str(_segmenter(tmp_path / "unet.pt")), "--segment-out", str(out),
                         "--json"])
    results = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["segmented"] for r in results] == [says_tumour] * 2
    if says_tumour:
        mask = np.asarray(Image.open(out / "slice_0_mask.png"))
        assert mask.shape == (32, 32) and set(np.unique(mask)) == {255}
        assert results[1]["tumour_pixels"] == 32 * 32 and (out / "slice_1_overlay.png").is_file()
    else:
        assert not out.exists() and "mask" not in results[0]


def test_a_classifier_is_not_a_segmenter(tmp_path):
    detector = str(_detector(tmp_path / "det.pt", True))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(CheckpointError, match="not a segmentation checkpoint"):
        predict.main([str(tmp_path / "a.png"), "--checkpoint", detector, "--segment-checkpoint", detector])
