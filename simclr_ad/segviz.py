"""Overlays of segmentations: image in gray, truth as a green contour, prediction in red."""
from __future__ import annotations

import numpy as np

from simclr_ad.segmetrics import boundary

TRUTH_RGB = (0, 255, 0)
PRED_RGB = (255, 40, 40)


def overlay(image: np.ndarray, pred: np.ndarray | None = None, truth: np.ndarray | None = None,
            alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB [H,W,3]: ``image`` (uint8 or [0,1] float [H,W]), ``pred`` filled red, ``truth`` contour green."""
    gray = np.asarray(image, dtype=np.float32)
    gray = gray * 255 if gray.max() <= 1.0 else gray
    rgb = np.repeat(np.clip(gray, 0, 255)[..., None], 3, axis=-1)
    if pred is not None and np.any(pred):
        where = np.asarray(pred, bool)
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.array(PRED_RGB, np.float32)
    if truth is not None and np.any(truth):
        rgb[boundary(np.asarray(truth, bool))] = TRUTH_RGB
    return rgb.round().astype(np.uint8)


def grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    """Tile equal-size RGB images [H,W,3] row by row (missing tiles black)."""
    if not tiles:
        return np.zeros((1, 1, 3), np.uint8)
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    canvas = np.zeros((rows * h, columns * w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return canvas
