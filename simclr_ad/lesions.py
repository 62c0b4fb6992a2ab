"""Phantom subjects with a bright focal lesion: a tumour-segmentation set that needs no download.

It mimics the layout of the LGG FLAIR set (``../shared/data/lgg_flair_256``): one folder per
subject holding ``<subject>_<slice>.png`` and ``<subject>_<slice>_mask.png``, and a
``manifest.csv`` with ``path,mask,subject,slice,label`` where label is ``tumour`` when the
mask is non-empty, else ``no_tumour``. The anatomy comes from ``phantom.generate`` (unchanged,
so its versioned cache and output stay as they are); on top, every subject gets one
ellipsoidal lesion spanning a run of consecutive slices, hyperintense as on FLAIR, with a
soft edge whose half-way level is the mask boundary. Like LGG, every subject has lesion
slices and lesion-free slices, so a split by subject holds both in every part.

    python -m simclr_ad.lesions --out DIR [--n 512] [--size 64] [--seed 0] [--slices 16]
"""
from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simclr_ad import fileio, phantom
from simclr_ad.errors import friendly_errors

LESION_VERSION = 1  # bump when the same arguments give other images: it keys the on-disk cache
LABELS = ("no_tumour", "tumour")


@dataclass(frozen=True)
class LesionSet:
    """Phantom slices with lesions, in generation order."""

    images: np.ndarray  # uint8 [N, H, W]
    masks: np.ndarray  # bool [N, H, W], the lesion
    subjects: list[str]
    slice_index: np.ndarray  # int64 [N]


def _paint_subject(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Add one lesion to a subject's slices uint8 [S, H, W]; returns (images, masks)."""
    n_slices, size = images.shape[0], images.shape[-1]
    extent = max(1.0, rng.uniform(0.2, 0.3) * n_slices)  # half-length in slices: 40-60 % of them show it
    centre_slice = rng.uniform(extent * 0.5, n_slices - 1 - extent * 0.5) if n_slices > extent else n_slices / 2
    radius = rng.uniform(0.10, 0.20)  # half-image units at the lesion's widest slice
    aspect = rng.uniform(0.7, 1.3)
    angle = rng.uniform(0, np.pi)
    distance, direction = rng.uniform(0.05, 0.35), rng.uniform(0, 2 * np.pi)
    cx, cy = distance * np.cos(direction), distance * np.sin(direction)
    brightness = rng.uniform(0.75, 0.95) * 255
    edge = 2.0 / size * 2  # soft edge of about two pixels, in half-image units
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = axis[None, :] - cx, axis[:, None] - cy
    u = np.cos(angle) * x + np.sin(angle) * y
    v = (-np.sin(angle) * x + np.cos(angle) * y) / aspect
    rho = np.hypot(u, v)
    texture = rng.normal(0, 0.06, size=(size, size))
    out, masks = images.astype(np.float32), np.zeros(images.shape, dtype=bool)
    for k in range(n_slices):
        along = (k - centre_slice) / extent
        if abs(along) >= 1:
            continue
        r = radius * np.sqrt(1 - along * along)
        alpha = np.clip((r - rho) / edge + 0.5, 0, 1)
        out[k] = out[k] * (1 - alpha) + alpha * brightness * (1 + texture)
        masks[k] = alpha >= 0.5
    return np.clip(out, 0, 255).round().astype(np.uint8), masks


def generate(n: int, seed: int = 0, size: int = 64, slices_per_subject: int = 16) -> LesionSet:
    """``n`` phantom slices with lesions; deterministic in all four arguments."""
    base = phantom.generate(n, seed=seed, size=size, slices_per_subject=slices_per_subject)
    rng = np.random.default_rng([seed, 24])
    images, masks = base.images.copy(), np.zeros(base.masks.shape, dtype=bool)
    subjects = np.array(base.subjects)
    for subject in dict.fromkeys(base.subjects):
        rows = np.flatnonzero(subjects == subject)
        images[rows], masks[rows] = _paint_subject(base.images[rows], rng)
    return LesionSet(images=images, masks=masks, subjects=list(base.subjects), slice_index=base.slice_index)


def write_dataset(out_dir: str | Path, n: int, seed: int = 0, size: int = 64, slices_per_subject: int = 16) -> Path:
    """Write the LGG-like layout with ``manifest.csv``; a finished one (with its manifest) is reused."""
    from PIL import Image

    out_dir = Path(out_dir)
    partial = fileio.begin_staged_dir(out_dir, "manifest.csv", "lesion phantom set")
    if partial is None:
        return out_dir
    found = generate(n, seed=seed, size=size, slices_per_subject=slices_per_subject)
    rows = []
    for image, mask, subject, index in zip(found.images, found.masks, found.subjects, found.slice_index):
        (partial / subject).mkdir(parents=True, exist_ok=True)
        stem = f"{subject}/{subject}_{int(index) + 1}"
        Image.fromarray(image).save(partial / f"{stem}.png", compress_level=1)
        Image.fromarray(mask.astype(np.uint8) * 255).save(partial / f"{stem}_mask.png", compress_level=1)
        rows.append((f"{stem}.png", f"{stem}_mask.png", subject, int(index) + 1, LABELS[int(mask.any())]))
    with open(partial / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "mask", "subject", "slice", "label"))
        writer.writerows(rows)
    return fileio.finish_staged_dir(partial, out_dir, "manifest.csv")


def lesion_dir(n: int, seed: int, size: int, slices_per_subject: int, cache_dir: str | Path | None = None) -> Path:
    """The lesion phantom set for these arguments, generated on first use into the cache."""
    from simclr_ad.data import default_cache_dir

    name = f"lesions-v{LESION_VERSION}-p{phantom.PHANTOM_VERSION}-n{n}-z{size}-s{slices_per_subject}-seed{seed}"
    return write_dataset(Path(cache_dir or default_cache_dir()) / name, n, seed, size, slices_per_subject)


@friendly_errors
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m simclr_ad.lesions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="write the dataset here (subject folders + manifest.csv)")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=16, help="slices per subject")
    args = parser.parse_args(argv)
    out = write_dataset(args.out, args.n, args.seed, args.size, args.slices)
    print(f"wrote {args.n} lesion phantom slices to {out} (manifest: {out / 'manifest.csv'})")
    return out


if __name__ == "__main__":
    main()
