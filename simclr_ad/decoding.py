"""Image and mask bytes -> square arrays at the training size, with one geometry for both.

An image and its mask are opened the same way (grayscale, the same aspect-ratio guard), padded
square with background the same way, and then resized: bilinear for the image, nearest-neighbour
for the mask, so a mask pixel sits where its image pixel sits and stays binary.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

MAX_ASPECT = 10  # images are padded square before resizing: a 1x150000 strip would ask for 22.5 GB


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit 'L'. 16-bit and float images are rescaled by their own range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))  # MRI background is black
        img = Image.alpha_composite(background, img)
    return img.convert("L")


def _open_gray(data: bytes, what: str) -> tuple[Image.Image, tuple[int, int], str]:
    """Decoded grayscale, with the file's own (width, height) and PIL mode."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        if max(width, height) > MAX_ASPECT * max(1, min(width, height)):  # padding it square would be huge
            raise ValueError(f"aspect ratio {width}x{height} is beyond {MAX_ASPECT}:1, not {what}")
        img.load()
        return to_gray(img), img.size, img.mode


def _pad_square(gray: Image.Image) -> Image.Image:
    """Centred on a black square canvas as wide as its longer side."""
    width, height = gray.size
    if width == height:
        return gray
    side = max(width, height)
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(gray, ((side - width) // 2, (side - height) // 2))
    return canvas


def decode_image(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int], str]:
    """Image bytes -> (uint8 [size, size], original (width, height), original mode): gray, padded square, bilinear."""
    gray, original_size, mode = _open_gray(data, "an image slice")
    gray = _pad_square(gray)
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(gray, dtype=np.uint8), original_size, mode


def decode_mask(data: bytes, size: int) -> np.ndarray:
    """Mask bytes -> bool [size, size]: grayscale > 127, padded square like its image, nearest resize."""
    gray, _, _ = _open_gray(data, "a mask slice")
    binary = _pad_square(Image.fromarray((np.asarray(gray) > 127).astype(np.uint8) * 255, mode="L"))
    if binary.size != (size, size):
        binary = binary.resize((size, size), Image.NEAREST)
    return np.asarray(binary) > 127
