"""Segmentation masks beside their images: decoding, caching, and paired augmentation.

A manifest's ``mask`` column names one binary mask per image (a pixel above 127 of its
grayscale is foreground). Masks follow their image's geometry exactly:
padded square like it, then resized with nearest-neighbour, so they stay binary and a mask
pixel sits where its image pixel sits. Decoded masks are cached on disk like the images
(``decoded/`` under the cache dir, keyed by the mask files' content hashes and the size).

``augment_pair`` draws one geometry per sample and applies it to image and mask alike; the
intensity changes (gamma, contrast, brightness, blur, noise) touch the image only.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import UnidentifiedImageError

from simclr_ad import augment
from simclr_ad.config import AugmentConfig
from simclr_ad.decoding import decode_mask
from simclr_ad.errors import DECODE_ERRORS

MASK_CACHE_FORMAT = 1


def _read(root: Path, mask: str, image: str) -> bytes:
    from simclr_ad.imageset import DataError

    try:
        return (Path(mask) if Path(mask).is_absolute() else root / mask).read_bytes()
    except FileNotFoundError:
        raise DataError(f"mask {mask!r} of {image!r} does not exist under {root}") from None


def load_masks(root: Path, mask_paths: Sequence[str], image_paths: Sequence[str], size: int,
               cache_dir: str | Path | None = None) -> torch.Tensor:
    """bool [N, 1, size, size] for ``mask_paths`` (relative to ``root``); cached by content and size.

    A missing or unreadable mask is a DataError naming the mask and its image: a segmentation
    set with a silently empty mask would teach "no tumour" where there is one.
    """
    from simclr_ad.imageset import DataError, default_cache_dir

    blobs = [_read(root, m, p) for m, p in zip(mask_paths, image_paths)]
    digest = hashlib.sha256(f"masks:{MASK_CACHE_FORMAT}:{size}:".encode())
    for blob in blobs:
        digest.update(hashlib.sha1(blob).digest())
    cache_file = Path(cache_dir or default_cache_dir()) / "decoded" / f"masks-{digest.hexdigest()[:24]}-{size}.npz"
    cached = _load_cache(cache_file, len(blobs), size)
    if cached is None:
        cached = np.zeros((len(blobs), size, size), dtype=bool)
        for i, (blob, mask, image) in enumerate(zip(blobs, mask_paths, image_paths)):
            try:
                cached[i] = decode_mask(blob, size)
            except DECODE_ERRORS as err:
                reason = "not a readable image" if isinstance(err, UnidentifiedImageError) else \
                    f"{type(err).__name__}: {err}"
                raise DataError(f"mask {mask!r} of {image!r} cannot be read ({reason[:120]})") from None
        _save_cache(cache_file, cached)
    return torch.from_numpy(cached).unsqueeze(1)


def _load_cache(path: Path, n: int, size: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            packed, shape = cached["packed"], tuple(int(v) for v in cached["shape"])
        if shape != (n, size, size):
            raise ValueError("unexpected shape")
        return np.unpackbits(packed, count=n * size * size).astype(bool).reshape(shape)
    except Exception as err:  # noqa: BLE001 - a cache is only a cache: decode again
        warnings.warn(f"mask cache {path} is corrupt ({type(err).__name__}); rebuilding it", stacklevel=3)
        return None


def _save_cache(path: Path, masks: np.ndarray) -> None:
    from simclr_ad.checkpoint import CheckpointError
    from simclr_ad.fileio import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez(buffer, packed=np.packbits(masks.reshape(-1)), shape=np.array(masks.shape, dtype=np.int64))
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except (OSError, CheckpointError) as err:  # a read-only cache must not stop training
        warnings.warn(f"could not write mask cache {path}: {err}", stacklevel=2)


# --------------------------------------------------------------------------- paired augmentation

def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """bool [B,1,H,W] -> bool [B,1,size,size] with nearest-neighbour (the eval geometry of ``augment.prepare``)."""
    if masks.shape[-1] == size and masks.shape[-2] == size:
        return masks.bool()
    return F.interpolate(masks.float(), size=(size, size), mode="nearest-exact") > 0.5


def augment_pair(images: torch.Tensor, masks: torch.Tensor, size: int, cfg: AugmentConfig,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random view per sample, the same geometry for image and mask.

    Args:
        images: uint8 [B,1,H,W] on any device.
        masks: bool (or 0/1) [B,1,H,W], same device.
        size: output side S.
        cfg: augmentation strengths; geometry (crop, flip, rotation, shift) applies to both,
            intensity (gamma, contrast, brightness, blur, noise) to the image only.
        generator: CPU generator; the draws are the same as ``augment.augment``'s.
    Returns:
        (float32 [B,1,S,S] normalised image, float32 [B,1,S,S] mask in {0, 1}).
    """
    batch, device = images.shape[0], images.device
    theta = augment.affine_params(batch, cfg, generator).to(device)
    grid = F.affine_grid(theta, [batch, 1, size, size], align_corners=False)
    x = F.grid_sample(images.float() / 255.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(masks.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return augment.intensity(x, size, cfg, generator), mask
