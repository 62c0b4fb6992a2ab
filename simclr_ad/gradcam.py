"""Grad-CAM heatmaps, their localisation and faithfulness, with the grad-cam package.

Everything here runs through ``pytorch_grad_cam`` (GradCAM, its targets, its
metrics and ``show_cam_on_image``); nothing re-implements a CAM. The target layer
is ``models.target_layer`` (layer3 for ResNets: an 8x8 map at 128 px, not 4x4; a fine-tune
run's ``cam_layer`` picks another stage, e.g. layer2 for 8x8 at 64 px).

Our inputs are one-channel normalised tensors [B,1,H,W]; grad-cam handles them as
they are. Only the display path (``display_image``/``overlay``) un-normalises them
with ``augment.MEAN``/``STD`` and repeats the channel to RGB.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

from simclr_ad import augment, evaluate, models

# ROAD imputes the removed pixels with noisy linear interpolation (one sparse solve per
# image and percentile); four thresholds keep the cost a quarter of grad-cam's nine.
ROAD_PERCENTILES = (20, 40, 60, 80)


@contextlib.contextmanager
def _eval_fp32(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode and float32, outside any autocast; restores train mode after.

    A model with non-fp32 weights is copied rather than cast, so the caller's model is untouched.
    """
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()
    with evaluate.eval_mode(model), torch.autocast(next(model.parameters()).device.type, enabled=False):
        yield model


def _as_index_list(targets: Sequence[int] | np.ndarray | torch.Tensor, batch: int) -> list[int]:
    indices = [int(t) for t in (targets.tolist() if hasattr(targets, "tolist") else targets)]
    if len(indices) != batch:
        raise ValueError(f"got {len(indices)} targets for a batch of {batch} inputs")
    return indices


def _check_inputs(inputs: torch.Tensor) -> None:
    if inputs.ndim != 4:
        raise ValueError(f"inputs must be [B,C,H,W], got shape {tuple(inputs.shape)}")


def compute_cams(model: torch.nn.Module, arch: str, inputs: torch.Tensor,
                 targets: Sequence[int] | np.ndarray | torch.Tensor, layer: str = "auto") -> np.ndarray:
    """Grad-CAM of class ``targets[i]`` for each input.

    Args:
        model: a ``models.Classifier`` (uses ``model.backbone``).
        arch: its arch name, which picks the target layer.
        inputs: normalised float [B,1,H,W] (as from ``augment.prepare``).
        targets: class index per input [B] (usually the predicted class).
        layer: the backbone stage explained (``models.target_layer``; a run's ``cam_layer``).
    Returns:
        float32 [B,H,W] in [0,1] (grad-cam scales each map by its own max).
    """
    _check_inputs(inputs)
    classes = _as_index_list(targets, inputs.shape[0])
    with _eval_fp32(model) as net, torch.enable_grad():
        device = next(net.parameters()).device
        # A frozen (linear-probe) backbone yields no gradient at the target layer unless the
        # input itself requires one, so we always ask for it.
        x = inputs.detach().to(device, torch.float32).contiguous().requires_grad_(True)
        layer = models.target_layer(net.backbone, arch, layer)
        cams = None
        with GradCAM(model=net, target_layers=[layer]) as cam:
            cams = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    if cams is None:  # GradCAM.__exit__ swallows IndexError (e.g. a class index out of range)
        raise ValueError(f"Grad-CAM failed; are the targets {classes} valid class indices?")
    return np.asarray(cams, dtype=np.float32)


def localisation_score(cam: np.ndarray, mask: np.ndarray | torch.Tensor) -> float:
    """Fraction of the CAM's mass that falls inside the ground-truth ``mask``.

    ``sum(cam * mask) / sum(cam)`` with negative CAM values clipped to 0: 1.0 when all
    attribution is inside the mask (e.g. ``cam == mask``), 0.0 when none is. A uniform
    CAM scores the mask's area fraction, the chance level to compare against.
    Returns nan when it is undefined: an empty mask (no ground-truth region, e.g. a
    healthy phantom) or a CAM with no mass. Aggregate with ``np.nanmean``.

    Args:
        cam: [H,W] (or [1,H,W]).
        mask: bool/0-1 [H,W] (or [1,H,W]) of the same size.
    """
    cam = np.clip(np.squeeze(np.asarray(cam, dtype=np.float64)), 0, None)
    mask_arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    mask_arr = np.squeeze(mask_arr).astype(bool)
    if cam.shape != mask_arr.shape:
        raise ValueError(f"CAM shape {cam.shape} differs from mask shape {mask_arr.shape}")
    total = cam.sum()
    if not mask_arr.any() or total <= 0:
        return float("nan")
    return float(cam[mask_arr].sum() / total)


def faithfulness(model: torch.nn.Module, inputs: torch.Tensor,
                 targets: Sequence[int] | np.ndarray | torch.Tensor, cams: np.ndarray,
                 percentiles: Sequence[int] = ROAD_PERCENTILES, seed: int = 0) -> dict[str, float]:
    """Mean faithfulness of ``cams`` [B,H,W] for class ``targets`` [B], by grad-cam's metrics.

    All scores are changes in the softmax probability of the target class
    (``ClassifierOutputSoftmaxTarget``), so arms with different logit scales compare:
      road_combined: ROAD (Rong et al. 2022), (LeRF - MoRF)/2 averaged over ``percentiles``;
        removing the least relevant pixels should hurt less than removing the most
        relevant. Higher is more faithful; about 0 for an uninformative map.
      drop_in_confidence: drop in confidence when the input is multiplied by the CAM
        (0 if it rises). Lower is better.
      increase_in_confidence: fraction of images whose confidence rises under that product.
    ROAD's imputer adds noise; it is drawn under ``seed`` so scores are reproducible.
    """
    _check_inputs(inputs)
    classes = _as_index_list(targets, inputs.shape[0])
    cams = np.asarray(cams, dtype=np.float32)
    if cams.shape != (inputs.shape[0], *inputs.shape[-2:]):
        raise ValueError(f"cams shape {cams.shape} does not match inputs {tuple(inputs.shape)}")
    softmax_targets = [ClassifierOutputSoftmaxTarget(c) for c in classes]
    with _eval_fp32(model) as net, torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # grad-cam's ROAD imputer calls np.argwhere on tensors, which NumPy 2 deprecates noisily
        warnings.filterwarnings("ignore", message=".*__array_wrap__", category=DeprecationWarning)
        torch.manual_seed(seed)
        x = inputs.detach().to(next(net.parameters()).device, torch.float32)
        scores = {
            "road_combined": ROADCombined(percentiles=list(percentiles))(x, cams, softmax_targets, net),
            "drop_in_confidence": DropInConfidence()(x, cams, softmax_targets, net),
            "increase_in_confidence": IncreaseInConfidence()(x, cams, softmax_targets, net),
        }
    return {name: float(np.mean(values)) for name, values in scores.items()}


def display_image(inputs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Normalised input [1,H,W] or [B,1,H,W] -> float32 [H,W] or [B,H,W] in [0,1] (undoes MEAN/STD)."""
    x = inputs.detach().cpu().float().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs, np.float32)
    if x.ndim not in (3, 4) or x.shape[-3] != 1:
        raise ValueError(f"expected a one-channel [1,H,W] or [B,1,H,W] input, got shape {x.shape}")
    return np.clip(x[..., 0, :, :] * augment.STD + augment.MEAN, 0.0, 1.0).astype(np.float32)


def overlay(image01: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """CAM heatmap over a grayscale image, via grad-cam's ``show_cam_on_image``.

    Args:
        image01: float in [0,1], [H,W], [1,H,W], [H,W,1] or [H,W,3] (see ``display_image``).
        cam: [H,W] in [0,1].
    Returns:
        uint8 RGB [H,W,3].
    """
    image = np.squeeze(np.asarray(image01, dtype=np.float32))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)  # display only: the model saw one channel
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image01 must be grayscale or RGB, got shape {np.shape(image01)}")
    cam = np.squeeze(np.asarray(cam, dtype=np.float32))
    if cam.shape != image.shape[:2]:
        raise ValueError(f"CAM shape {cam.shape} differs from image shape {image.shape[:2]}")
    return show_cam_on_image(np.clip(image, 0, 1), np.clip(cam, 0, 1), use_rgb=True, image_weight=image_weight)
