"""Batched grayscale-MRI augmentations on uint8 tensors; random per sample, seeded by a Generator.

Colour jitter and hue do nothing on one channel, so SimCLR's views here come from
geometry (resized crop, flip, rotation, shift) and MR-like intensity changes
(brightness, contrast, gamma, blur, noise). Everything runs on whole batches, on
whatever device the batch lives on; the random draws come from an explicit CPU
``torch.Generator`` so a seed reproduces a run on any device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from simclr_ad.config import AugmentConfig

# Grayscale version of ImageNet's statistics, so a folded ImageNet stem sees familiar inputs.
MEAN = 0.449
STD = 0.226


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0,1] float [B,1,H,W] -> float32 model input, (x - MEAN) / STD."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return (x - MEAN) / STD


def prepare(images: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic eval transform: uint8 [B,1,H,W] -> normalised float [B,1,size,size]."""
    x = images.float() / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x)


def _uniform(generator: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def affine_params(n: int, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Per-sample affine matrices [n,2,3] (output -> input coords in [-1,1]): crop, flip, rotate, shift.

    The crop keeps a square-ish window of area ``scale`` in [aug_crop_scale_min, max]
    with aspect ratio in [3/4, 4/3], placed uniformly inside the image.
    """
    scale = _uniform(generator, n, cfg.aug_crop_scale_min, cfg.aug_crop_scale_max)
    log_ratio = _uniform(generator, n, math.log(3 / 4), math.log(4 / 3)) if cfg.aug_crop_scale_min < 1 else torch.zeros(n)
    ratio = log_ratio.exp()
    width = (scale * ratio).sqrt().clamp(max=1.0)
    height = (scale / ratio).sqrt().clamp(max=1.0)
    centre_x = _uniform(generator, n, -1, 1) * (1 - width)
    centre_y = _uniform(generator, n, -1, 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator) < cfg.aug_flip_prob, -1.0, 1.0)
    angle = _uniform(generator, n, -1, 1) * math.radians(cfg.aug_rotate_deg)
    shift = _uniform(generator, 2 * n, -1, 1).view(n, 2) * 2 * cfg.aug_translate
    cos, sin = angle.cos(), angle.sin()
    theta = torch.zeros(n, 2, 3)
    # input = R @ diag(flip * width, height) @ output + centre + shift
    theta[:, 0, 0] = cos * flip * width
    theta[:, 0, 1] = -sin * height
    theta[:, 1, 0] = sin * flip * width
    theta[:, 1, 1] = cos * height
    theta[:, 0, 2] = centre_x + shift[:, 0]
    theta[:, 1, 2] = centre_y + shift[:, 1]
    return theta


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels [B, 2*radius+1], one per sigma [B]."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None].clamp(min=1e-3)) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of [B,1,H,W] with a per-sample sigma [B] (0 leaves a sample as is)."""
    batch = x.shape[0]
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    kernels = gaussian_kernels(sigma, radius).to(x.device, x.dtype)
    kernels = torch.where((sigma > 0)[:, None].to(x.device), kernels,
                          F.one_hot(torch.tensor(radius), 2 * radius + 1).to(x.device, x.dtype))
    flat = x.reshape(1, batch, *x.shape[-2:])
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernels.view(batch, 1, -1, 1), groups=batch)
    flat = F.conv2d(flat, kernels.view(batch, 1, 1, -1), groups=batch)
    return flat.view_as(x)


def augment(images: torch.Tensor, size: int, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One random view per sample.

    Args:
        images: uint8 [B,1,H,W] on any device.
        size: output side length S.
        cfg: augmentation strengths (``aug_*`` keys).
        generator: CPU generator; the only source of randomness.
    Returns:
        float32 [B,1,S,S], normalised with MEAN/STD.
    """
    batch, device = images.shape[0], images.device
    x = images.float() / 255.0
    theta = affine_params(batch, cfg, generator).to(device)
    grid = F.affine_grid(theta, [batch, 1, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return intensity(x, size, cfg, generator)


def intensity(x: torch.Tensor, size: int, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """The intensity part of ``augment``: float [B,1,S,S] in [0,1] -> normalised float [B,1,S,S].

    Gamma, contrast, brightness, blur and noise; drawn after the geometry, so ``augment`` and
    ``masks.augment_pair`` (which warps a mask with the same geometry) draw the same numbers.
    """
    batch, device = x.shape[0], x.device
    gamma = torch.exp(_uniform(generator, batch, -cfg.aug_gamma, cfg.aug_gamma)).to(device)
    contrast = _uniform(generator, batch, 1 - cfg.aug_contrast, 1 + cfg.aug_contrast).to(device)
    brightness = _uniform(generator, batch, 1 - cfg.aug_brightness, 1 + cfg.aug_brightness).to(device)
    x = x.clamp(0, 1).pow(gamma.view(-1, 1, 1, 1))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast.view(-1, 1, 1, 1) + mean) * brightness.view(-1, 1, 1, 1)

    do_blur = torch.rand(batch, generator=generator) < cfg.aug_blur_prob
    sigma = _uniform(generator, batch, 0.1, max(0.1, cfg.aug_blur_sigma * size / 128)) * do_blur
    if bool(do_blur.any()):
        x = blur(x, sigma)

    noise_std = _uniform(generator, batch, 0, cfg.aug_noise_std)
    if cfg.aug_noise_std > 0:
        noise = torch.randn(batch, 1, size, size, generator=generator)
        x = x + (noise * noise_std.view(-1, 1, 1, 1)).to(device)
    return normalize(x.clamp(0, 1))


def two_views(images: torch.Tensor, size: int, cfg: AugmentConfig, generator: torch.Generator,
              partners: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The positive pair: two independent views of each image, or of each image and its partner.

    ``partners`` (uint8, same shape as ``images``) is the second view's source, e.g. another
    slice of the same subject; None means the image itself, as in SimCLR.
    """
    second = images if partners is None else partners
    return augment(images, size, cfg, generator), augment(second, size, cfg, generator)
