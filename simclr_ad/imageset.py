"""The dataset record every loader fills, and the decoded-image cache they share.

``data`` (2-D images and manifests) and ``volume_data`` (NIfTI/DICOM slices) both build an
``ImageSet`` and cache its decoded uint8 arrays in the same ``.npz`` format; this module is the
base they share, so that ``data`` can dispatch to ``volume_data`` without an import circle.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from simclr_ad.errors import UserError
from simclr_ad.fileio import atomic_write_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
CACHE_FORMAT = 1


class DataError(UserError):
    pass


def class_key(name: str) -> str:
    """Normalise a class name: 'Mild_Demented', 'MildDemented', 'mild demented' -> 'milddemented'."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def default_cache_dir() -> Path:
    return Path(os.environ.get("SIMCLR_AD_CACHE", Path.home() / ".cache" / "simclr_ad"))


@dataclass
class ImageSet:
    """Images of one dataset with their metadata; ``images`` is filled by ``decode``."""

    root: Path
    layout: str  # class-folders | pre-split | manifest | synthetic
    classes: list[str]
    paths: list[str]  # POSIX, relative to root (or absolute when the manifest allowed it)
    labels: np.ndarray  # int64 [N], index into classes
    subjects: Optional[list[str]] = None  # known subject ids (manifest column / phantoms)
    presplit: Optional[list[str]] = None  # train|val|test per image for the pre-split layout
    mask_paths: Optional[list[str]] = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    images: Optional[torch.Tensor] = None  # uint8 [N, 1, S, S]
    masks: Optional[torch.Tensor] = None  # bool [N, 1, S, S]
    info: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # (size, mode) per image
    positions: Optional[np.ndarray] = None  # volumes: float [N] slice position along the slice axis, mm
    slicing: Optional[object] = None  # volumes: the volume_data.Slicing the slices were cut with

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: Sequence[int] | np.ndarray) -> "ImageSet":
        idx = np.asarray(index, dtype=np.int64)
        pick = lambda seq: None if seq is None else [seq[i] for i in idx]  # noqa: E731
        return replace(
            self, paths=pick(self.paths), labels=self.labels[idx], subjects=pick(self.subjects),
            presplit=pick(self.presplit), mask_paths=pick(self.mask_paths),
            images=None if self.images is None else self.images[torch.from_numpy(idx)],
            masks=None if self.masks is None else self.masks[torch.from_numpy(idx)],
            info=pick(self.info) if self.info else [],
            positions=None if self.positions is None else self.positions[idx],
        )

    def indices_of(self, paths: Sequence[str]) -> np.ndarray:
        """Positions of ``paths``; a path that is not in the dataset is an error naming it."""
        where = {p: i for i, p in enumerate(self.paths)}
        missing = [p for p in paths if p not in where]
        if missing:
            raise DataError(f"{len(missing)} path(s) of the split file are not in the dataset under "
                            f"{self.root}, e.g. {missing[0]!r} (was the split made for other data?)")
        return np.array([where[p] for p in paths], dtype=np.int64)


def class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name.lower() != "masks")


def merge_class_names(names: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Stable class order (sorted by normalised key); first spelling wins as display name."""
    by_key: dict[str, str] = {}
    for name in sorted(names):
        by_key.setdefault(class_key(name), name)
    keys = sorted(by_key)
    return [by_key[k] for k in keys], {k: i for i, k in enumerate(keys)}


def load_cache(path: Path, n: int, size: int):
    """The cached decode (arrays, ok, reasons, info), or None to decode afresh; a corrupt file is rebuilt."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            arrays, ok = cached["images"], cached["ok"]
            reasons = [str(r) for r in cached["reasons"]]
            info = [((int(w), int(h)), str(m)) for (w, h), m in zip(cached["sizes"], cached["modes"])]
        if arrays.shape != (n, size, size) or ok.shape != (n,) or len(reasons) != n or len(info) != n:
            raise ValueError("unexpected shapes")
    except Exception as err:  # noqa: BLE001 - any unreadable cache is only a cache: decode again
        warnings.warn(f"image cache {path} is corrupt ({type(err).__name__}); rebuilding it", stacklevel=3)
        return None
    return arrays, ok, reasons, info


def save_cache(path: Path, arrays, ok, reasons, info) -> None:

    buffer = io.BytesIO()
    np.savez(buffer, images=arrays, ok=ok, reasons=np.array(reasons, dtype=str),
             sizes=np.array([s for s, _ in info], dtype=np.int64).reshape(-1, 2),
             modes=np.array([m for _, m in info], dtype=str))
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:  # a read-only cache must not stop training
        warnings.warn(f"could not write image cache {path}: {err}", stacklevel=2)
