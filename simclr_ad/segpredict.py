"""Two-stage prediction: the detector's tumour slices go through the U-Net (``predict --segment-checkpoint``).

For every image the detector (a fine-tuned classifier's best.pt) calls tumour, the segmenter
(a segment run's best.pt) predicts a mask; ``<stem>_mask.png`` (0/255, at the segmenter's
image_size) and ``<stem>_overlay.png`` (image, prediction in red) are written to the output dir.
Images the detector calls tumour-free get no mask: an empty mask is implied, not written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from simclr_ad import augment, checkpoint, data
from simclr_ad.checkpoint import CheckpointError
from simclr_ad.errors import UserError

POSITIVE_NAMES = ("tumour", "tumor", "lesion")


def load_segmenter(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A segment run's best.pt as an eval-mode U-Net on the CPU, with {arch, image_size, threshold}."""
    from simclr_ad.unet import build_unet

    ckpt = checkpoint.load(path)
    extra = ckpt.get("extra") or {}
    if extra.get("task") != "segment" or "model" not in ckpt:
        hint = " (a segment run's last.pt? use its best.pt)" if "stale_epochs" in extra else ""
        raise CheckpointError(f"{path} is not a segmentation checkpoint{hint}; pass RUN_DIR/best.pt of a segment run")
    model = build_unet(ckpt["arch"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit a {ckpt['arch']} U-Net: {str(err).splitlines()[0][:200]}") from None
    return model.eval(), {"arch": ckpt["arch"], "image_size": int(extra["image_size"]),
                          "threshold": float(extra.get("threshold", 0.5))}


def positive_class(classes: Sequence[str]) -> int:
    """Index of the detector's tumour class: one named tumour/tumor/lesion, else the 2nd of two."""
    keys = [data.class_key(c) for c in classes]
    for name in POSITIVE_NAMES:
        if name in keys:
            return keys.index(name)
    if len(classes) == 2:
        return 1
    raise UserError(f"--segment-checkpoint needs a tumour detector; this classifier's classes are "
                    f"{', '.join(classes)} (none is named tumour)")


@torch.no_grad()
def predict_masks(model: torch.nn.Module, images: np.ndarray, size: int, threshold: float) -> np.ndarray:
    """bool [N, size, size] masks of uint8 images [N, size, size]."""
    if len(images) == 0:
        return np.zeros((0, size, size), bool)
    x = augment.prepare(torch.from_numpy(np.ascontiguousarray(images))[:, None], size)
    return (torch.sigmoid(model(x).float())[:, 0] >= threshold).numpy()


def segment_detected(paths: Sequence[str], detected: Sequence[bool], checkpoint_path: str, out_dir: str | Path,
                     results: list[dict[str, Any]]) -> None:
    """Segment the ``detected`` images of ``paths``; adds mask/overlay paths and pixel counts to ``results``."""
    from simclr_ad.segviz import overlay

    model, info = load_segmenter(checkpoint_path)
    size, out = info["image_size"], Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--segment-out {out} is a file; give a directory for the mask PNGs")
    chosen = [i for i, hit in enumerate(detected) if hit]
    for i, hit in enumerate(detected):
        results[i]["segmented"] = bool(hit)
    if not chosen:
        return
    out.mkdir(parents=True, exist_ok=True)
    images = np.stack([data.decode_image(Path(paths[i]).read_bytes(), size)[0] for i in chosen])
    stems = [Path(p).stem for p in paths]
    for row, (i, mask) in enumerate(zip(chosen, predict_masks(model, images, size, info["threshold"]))):
        stem = stems[i] if stems.count(stems[i]) == 1 else f"{stems[i]}_{i}"
        mask_file, overlay_file = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_file)
        Image.fromarray(overlay(images[row], mask)).save(overlay_file)
        results[i].update({"mask": str(mask_file), "overlay": str(overlay_file), "tumour_pixels": int(mask.sum())})
