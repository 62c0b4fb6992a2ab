"""Phantoms on disk: class folders of PNGs with their masks, NIfTI volumes, and the README figure.

``phantom.generate`` makes the slices in memory; this module writes them the ways the stages read
data (``data.py`` for PNG folders, ``volume_data.py`` for volumes), each through a staged directory so a
finished set is reused and an interrupted one redone.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from simclr_ad import fileio
from simclr_ad.phantom import CLASSES, generate


def write_dataset(out_dir: str | Path, n: int, seed: int = 0, size: int = 128,
                  slices_per_subject: int = 32, min_subjects_per_class: int = 2) -> Path:
    """Write phantoms as class folders plus ``masks/`` and ``manifest.csv``; reuse a finished one.

    Everything is written to a per-process ``<out_dir>.partial-<pid>`` and renamed at the
    end, so a directory with a manifest is always complete, an interrupted run is redone,
    and two processes (e.g. torchrun ranks) generating the same set do not collide.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    partial = fileio.begin_staged_dir(out_dir, "manifest.csv", "phantom dataset")
    if partial is None:
        return out_dir
    data = generate(n, seed=seed, size=size, slices_per_subject=slices_per_subject,
                    min_subjects_per_class=min_subjects_per_class)
    for name in CLASSES:
        (partial / name).mkdir(parents=True)
        (partial / "masks" / name).mkdir(parents=True)
    rows = []
    for image, mask, label, subject, index in zip(data.images, data.masks, data.labels,
                                                  data.subjects, data.slice_index):
        relative = f"{CLASSES[label]}/{subject}_s{index:02d}.png"
        # 2-D uint8 arrays save as mode L. Fast compression halves the write time for +8 % size.
        Image.fromarray(image).save(partial / relative, compress_level=1)
        Image.fromarray(mask.astype(np.uint8) * 255).save(partial / "masks" / relative, compress_level=1)
        rows.append((relative, CLASSES[label], subject, f"masks/{relative}"))
    with open(partial / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "subject", "mask"))
        writer.writerows(rows)
    return fileio.finish_staged_dir(partial, out_dir, "manifest.csv")


def preview(out_png: str | Path, seed: int = 0, size: int = 128) -> Path:
    """Save a README figure: per grade, a row of 6 slices and a row with the mask in red."""
    data = generate(640, seed=seed, size=size)  # 20 subjects: every grade is present
    rows = []
    for grade in range(len(CLASSES)):
        subjects = list(dict.fromkeys(s for s, g in zip(data.subjects, data.labels) if g == grade))
        picks = [data.subjects.index(subjects[k % len(subjects)]) + int(level)
                 for k, level in enumerate(np.linspace(4, 26, 6))]
        gray = np.repeat(data.images[picks][..., None], 3, axis=-1).astype(np.float32)
        overlay = gray.copy()
        overlay[data.masks[picks]] = 0.4 * overlay[data.masks[picks]] + 0.6 * np.array([255, 0, 0])
        rows += [np.concatenate(list(gray), axis=1), np.concatenate(list(overlay), axis=1)]
    canvas = np.concatenate(rows, axis=0).astype(np.uint8)
    out_png = Path(out_png)
    try:
        from matplotlib.figure import Figure  # no pyplot: the caller's backend stays untouched
    except ImportError:
        from PIL import Image, ImageDraw
        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        for grade, name in enumerate(CLASSES):
            draw.text((3, 2 * grade * size + 2), name, fill=(255, 255, 0))
        image.save(out_png)
        return out_png
    label_width = 200  # pixels left of the grid for the class names
    height, width = canvas.shape[:2]
    fig = Figure(figsize=((width + label_width) / 100, height / 100), dpi=100)
    ax = fig.add_axes((label_width / (width + label_width), 0, width / (width + label_width), 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([(2 * g + 1) * size for g in range(len(CLASSES))], CLASSES)
    fig.savefig(out_png)
    return out_png


VOLUME_SLICE_MM = 3.0  # phantom slice spacing; in-plane spacing is a 180 mm field of view over ``size`` pixels
VOLUME_SCALE = 16  # stored int16 = grey value x 16, undone by the NIfTI scl_slope on reading


def write_volumes(out_dir: str | Path, n: int, seed: int = 0, size: int = 128,
                  slices_per_subject: int = 32) -> Path:
    """Write phantoms as one NIfTI volume per subject, ``<class>/<subject>.nii.gz``; reuse a finished set.

    The axial slices are stacked inferior to superior, stored as int16 in the LAS orientation
    (x flipped, as FSL writes radiological data) with a real spacing and affine, so a reader
    has to reorient to canonical and apply the scale slope to get ``generate``'s slices back.
    ``phantom_volumes.json`` marks a finished set; the write goes through a partial directory.
    """
    import nibabel as nib

    out_dir = Path(out_dir)
    marker = out_dir / "phantom_volumes.json"
    partial = fileio.begin_staged_dir(out_dir, marker.name, "phantom volume set")
    if partial is None:
        return out_dir
    data = generate(n, seed=seed, size=size, slices_per_subject=slices_per_subject)
    pixel_mm = 180.0 / size
    affine = np.diag([-pixel_mm, pixel_mm, VOLUME_SLICE_MM, 1.0])
    affine[:3, 3] = [(size - 1) * pixel_mm / 2, -(size - 1) * pixel_mm / 2, 0.0]
    subjects = list(dict.fromkeys(data.subjects))
    for name in CLASSES:
        (partial / name).mkdir(parents=True)
    for subject in subjects:
        rows = [i for i, s in enumerate(data.subjects) if s == subject]
        # canonical[x, y, z] = slice_z[H-1-y, x] (anterior up); LAS stores x reversed
        canonical = data.images[rows][:, ::-1, :].transpose(2, 1, 0)
        stored = (canonical[::-1].astype(np.int16) * VOLUME_SCALE)
        image = nib.Nifti1Image(np.ascontiguousarray(stored), affine)
        image.header.set_xyzt_units("mm")
        image.header.set_slope_inter(1.0 / VOLUME_SCALE, 0.0)
        nib.save(image, str(partial / CLASSES[data.labels[rows[0]]] / f"{subject}.nii.gz"))
    (partial / marker.name).write_text(json.dumps({"n": n, "seed": seed, "size": size,
                                                   "slices_per_subject": slices_per_subject}) + "\n")
    return fileio.finish_staged_dir(partial, out_dir, marker.name)
