import math

import numpy as np
import pytest
import torch

from simclr_ad import augment, gradcam
from simclr_ad.models import build_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SIZE = 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier("resnet18", 3)


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 1, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    return augment.prepare(images, SIZE)


def square_mask(top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_cams_of_one_channel_input_match_its_size(model, inputs):
    model.train()
    cams = gradcam.compute_cams(model, "resnet18", inputs, [0, 2])
    assert cams.shape == (2, SIZE, SIZE) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert model.training  # the caller's mode is restored


def test_cams_work_with_a_frozen_backbone(model, inputs):
    # Linear-probe runs freeze the backbone; the CAMs must not depend on that.
    trainable = [gradcam.compute_cams(model, "resnet18", inputs, [c, c]) for c in range(3)]
    model.backbone.requires_grad_(False)
    try:
        frozen = [gradcam.compute_cams(model, "resnet18", inputs, torch.tensor([c, c])) for c in range(3)]
    finally:
        model.backbone.requires_grad_(True)
    assert all(np.allclose(a, b) for a, b in zip(trainable, frozen))
    assert max(float(c.max()) for c in frozen) > 0


def test_cams_reject_a_wrong_number_of_targets(model, inputs):
    with pytest.raises(ValueError, match="targets"):
        gradcam.compute_cams(model, "resnet18", inputs, [0])


def test_localisation_score_inside_outside_and_chance():
    mask = square_mask(8, 8, 16)
    assert gradcam.localisation_score(mask.astype(np.float32), mask) == pytest.approx(1.0)
    assert gradcam.localisation_score(square_mask(40, 40, 16).astype(np.float32), mask) == pytest.approx(0.0)
    uniform = np.full((SIZE, SIZE), 0.3, dtype=np.float32)
    assert gradcam.localisation_score(uniform, torch.from_numpy(mask)[None]) == pytest.approx(mask.mean())
    half = mask.astype(np.float32) + square_mask(40, 40, 16)
    assert gradcam.localisation_score(half, mask) == pytest.approx(0.5)


def test_localisation_score_undefined_cases_are_nan():
    mask = square_mask(8, 8, 16)
    assert math.isnan(gradcam.localisation_score(np.ones((SIZE, SIZE)), np.zeros((SIZE, SIZE), bool)))
    assert math.isnan(gradcam.localisation_score(np.zeros((SIZE, SIZE)), mask))
    with pytest.raises(ValueError, match="shape"):
        gradcam.localisation_score(np.ones((32, 32)), mask)


def test_faithfulness_returns_finite_reproducible_scores(model, inputs):
    targets = [0, 1]
    cams = gradcam.compute_cams(model, "resnet18", inputs, targets)
    scores = gradcam.faithfulness(model, inputs, targets, cams, percentiles=(25, 75))
    assert set(scores) == {"road_combined", "drop_in_confidence", "increase_in_confidence"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
    assert scores["drop_in_confidence"] >= 0 and 0 <= scores["increase_in_confidence"] <= 1
    assert abs(scores["road_combined"]) <= 1  # a difference of softmax probabilities
    assert gradcam.faithfulness(model, inputs, targets, cams, percentiles=(25, 75)) == scores


def test_display_image_undoes_normalisation_and_overlay_is_rgb(inputs):
    raw = torch.full((1, 1, SIZE, SIZE), 200, dtype=torch.uint8)
    shown = gradcam.display_image(augment.prepare(raw, SIZE))
    assert shown.shape == (1, SIZE, SIZE) and np.allclose(shown, 200 / 255, atol=1e-5)
    picture = gradcam.display_image(inputs[0])
    assert picture.shape == (SIZE, SIZE) and 0 <= picture.min() and picture.max() <= 1
    rgb = gradcam.overlay(picture, square_mask(8, 8, 16).astype(np.float32))
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    with pytest.raises(ValueError, match="shape"):
        gradcam.overlay(picture, np.zeros((8, 8)))


def test_cam_layer_picks_the_stage_and_its_resolution(model, inputs):
    from simclr_ad import models

    assert models.target_layer(model.backbone, "resnet18") is model.backbone.layer3
    assert models.target_layer(model.backbone, "resnet18", "layer2") is model.backbone.layer2
    with pytest.raises(ValueError, match="layer2"):
        models.target_layer(model.backbone, "densenet121", "layer2")
    # At 64 px layer4 is a 2x2 map and layer2 an 8x8 one. A bilinearly upsampled k x k map turns
    # direction at most k - 1 times along a line, so the 2x2 map at most once.
    # An untrained network's CAM can be all zero for some classes: take every class.
    coarse = np.concatenate([gradcam.compute_cams(model, "resnet18", inputs, [c, c], "layer4") for c in range(3)])
    fine = np.concatenate([gradcam.compute_cams(model, "resnet18", inputs, [c, c], "layer2") for c in range(3)])
    assert coarse.shape == fine.shape == (6, SIZE, SIZE) and coarse.max() > 0

    def extrema(profile):
        steps = np.sign(np.diff(profile))
        return int(np.sum(steps[1:] * steps[:-1] < 0))
    assert max(extrema(c[:, column]) for c in coarse for column in range(SIZE)) <= 1
    assert not np.allclose(coarse, fine)
