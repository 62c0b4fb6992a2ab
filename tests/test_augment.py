import dataclasses

import pytest
import torch

from simclr_ad import augment
from simclr_ad.config import AugmentConfig, FinetuneConfig, PretrainConfig

IDENTITY = AugmentConfig(aug_crop_scale_min=1.0, aug_crop_scale_max=1.0, aug_flip_prob=0.0, aug_rotate_deg=0.0,
                         aug_translate=0.0, aug_brightness=0.0, aug_contrast=0.0, aug_gamma=0.0,
                         aug_blur_prob=0.0, aug_noise_std=0.0)


def _batch(n=6, size=32, seed=0):
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_identity_settings_only_normalise():
    x = _batch()
    out = augment.augment(x, 32, IDENTITY, torch.Generator().manual_seed(0))
    assert torch.allclose(out, augment.normalize(x), atol=1e-5)


def test_normalize_by_hand():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert augment.normalize(x).flatten().tolist() == pytest.approx([-0.449 / 0.226, (1 - 0.449) / 0.226])


def test_flip_only_mirrors():
    cfg = dataclasses.replace(IDENTITY, aug_flip_prob=1.0)
    x = _batch(2)
    out = augment.augment(x, 32, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(out, augment.normalize(x.flip(-1)), atol=1e-5)


def test_deterministic_per_seed_and_different_per_sample():
    x = _batch(4)
    x[:] = x[0]  # four identical images
    cfg = PretrainConfig()
    a = augment.augment(x, 32, cfg, torch.Generator().manual_seed(1))
    b = augment.augment(x, 32, cfg, torch.Generator().manual_seed(1))
    c = augment.augment(x, 32, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert all(not torch.allclose(a[0], a[i]) for i in range(1, 4))  # random per sample


def test_output_shape_range_and_resize():
    out = augment.augment(_batch(3, 64), 32, PretrainConfig(), torch.Generator().manual_seed(0))
    assert out.shape == (3, 1, 32, 32) and out.dtype == torch.float32
    lo, hi = augment.normalize(torch.tensor([0.0])), augment.normalize(torch.tensor([1.0]))
    assert out.min() >= lo - 1e-5 and out.max() <= hi + 1e-5


def test_finetune_augmentation_is_lighter():
    x = _batch(32, 32)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    clean = augment.normalize(x)
    heavy = (augment.augment(x, 32, PretrainConfig(), g()) - clean).abs().mean()
    light = (augment.augment(x, 32, FinetuneConfig(), g()) - clean).abs().mean()
    assert light < heavy


def test_blur_by_hand():
    x = torch.zeros(2, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    out = augment.blur(x, torch.tensor([1.0, 0.0]))
    assert torch.equal(out[1], x[1])  # sigma 0 leaves the sample as is
    kernel = augment.gaussian_kernels(torch.tensor([1.0]), 3)[0]
    assert out[0, 0, 4, 4].item() == pytest.approx(float(kernel[3] ** 2), rel=1e-5)
    assert out[0].sum().item() == pytest.approx(1.0, rel=1e-5)


def test_two_views_differ():
    x = _batch(4)
    v0, v1 = augment.two_views(x, 32, PretrainConfig(), torch.Generator().manual_seed(0))
    assert not torch.allclose(v0, v1)
