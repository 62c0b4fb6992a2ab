"""Find labelled images on disk, decode them once into a uint8 tensor cache.

Three layouts are accepted with no code changes:
  class-folders  ROOT/<class>/*.jpg                 (the Kaggle layout)
  pre-split      ROOT/{train,val,test}/<class>/...  (val optional)
  manifest       ROOT/manifest.csv or any .csv with columns path,label[,subject][,mask]
With no data dir, the embedded synthetic phantom dataset is generated into the cache.

``python -m simclr_ad.data {inspect,synth,split,audit}`` is the command-line face.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from simclr_ad.errors import DECODE_ERRORS, UserError
from simclr_ad.fileio import atomic_write_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
CACHE_FORMAT = 1
MAX_ASPECT = 10  # images are padded square before resizing: a 1x150000 strip would ask for 22.5 GB


class DataError(UserError):
    pass


def class_key(name: str) -> str:
    """Normalise a class name: 'Mild_Demented', 'MildDemented', 'mild demented' -> 'milddemented'."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def default_cache_dir() -> Path:
    return Path(os.environ.get("SIMCLR_AD_CACHE", Path.home() / ".cache" / "simclr_ad"))


# --------------------------------------------------------------------------- scanning

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


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def shown(path: str | Path) -> str:
    """A path as text that can always be printed and written (non-UTF-8 bytes escaped)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _not_a_usable_file(path: Path, root: Path) -> str | None:
    """Why a class-folder entry cannot be an image (named in the skipped list), or None."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (rename the file)"
    if path.is_symlink() and not path.exists():
        return "broken symlink"
    if not path.is_file():
        return "not a regular file (a FIFO, socket or device)"
    if root not in path.resolve().parents:  # a symlink, or a file under a symlinked folder
        return f"symlink to {shown(path.resolve())}, outside the data root"
    return None


def _files_under(folder: Path, root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    files, skipped = [], []
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or path.is_dir():
            continue
        reason = _not_a_usable_file(path, root.resolve())
        if reason is None and not _is_image_name(path):
            reason = "not an image extension"
        if reason is None:
            files.append(path)
        else:
            skipped.append((shown(path), reason))
    return files, skipped


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name.lower() != "masks")


def _merge_class_names(names: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """Stable class order (sorted by normalised key); first spelling wins as display name."""
    by_key: dict[str, str] = {}
    for name in sorted(names):
        by_key.setdefault(class_key(name), name)
    keys = sorted(by_key)
    return [by_key[k] for k in keys], {k: i for i, k in enumerate(keys)}


def _scan_class_folders(root: Path, split_dirs: dict[str, Path] | None) -> ImageSet:
    groups = split_dirs or {"": root}
    per_split: dict[str, dict[str, list[Path]]] = {}
    skipped: list[tuple[str, str]] = []
    for split, folder in groups.items():
        per_split[split] = {}
        for class_dir in _class_dirs(folder):
            files, bad = _files_under(class_dir, root)
            skipped += bad
            if not files:
                raise DataError(f"No images found under {class_dir} "
                                f"(expected {'/'.join(IMAGE_EXTENSIONS)} files); remove the empty folder")
            per_split[split].setdefault(class_key(class_dir.name), []).extend(files)
        per_split[split]["__names__"] = [d.name for d in _class_dirs(folder)]  # type: ignore[assignment]
    names = [n for s in per_split.values() for n in s.pop("__names__")]  # type: ignore[arg-type]
    classes, key_to_idx = _merge_class_names(names)
    if split_dirs:
        sets = {s: set(v) for s, v in per_split.items()}
        all_keys = set(key_to_idx)
        for split, keys in sets.items():
            if keys != all_keys:
                missing = sorted(classes[key_to_idx[k]] for k in all_keys - keys)
                raise DataError(f"classes differ between splits: {root / split} lacks {', '.join(missing)}")
    paths, labels, presplit = [], [], []
    for split, by_class in per_split.items():
        for key, files in sorted(by_class.items()):
            for path in files:
                paths.append(path.relative_to(root).as_posix())
                labels.append(key_to_idx[key])
                presplit.append(split)
    layout = "pre-split" if split_dirs else "class-folders"
    return ImageSet(root=root, layout=layout, classes=classes, paths=paths,
                    labels=np.array(labels, dtype=np.int64),
                    presplit=presplit if split_dirs else None, skipped=skipped)


def _confined(csv_path: Path, root: Path, line: int, value: str, allow_absolute: bool) -> Path:
    """The file a manifest cell names, refused when it leaves the data root (unless allowed)."""
    path = Path(value)
    if path.is_absolute() and not allow_absolute:
        raise DataError(f"manifest {csv_path} line {line}: absolute path {value!r} "
                        "(only paths inside the data root are allowed)")
    full = (root / path).resolve()
    if not allow_absolute and root not in full.parents:
        raise DataError(f"manifest {csv_path} line {line}: {value!r} points outside {root}")
    return full


def _read_manifest(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:  # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except UnicodeDecodeError as err:
        raise DataError(f"manifest {csv_path} is not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}); "
                        "save it as UTF-8 (Excel: CSV UTF-8)") from None
    return columns, rows


def _scan_manifest(csv_path: Path, allow_absolute: bool) -> ImageSet:
    root = csv_path.parent.resolve()
    columns, rows = _read_manifest(csv_path)
    if "path" not in columns or "label" not in columns:
        raise DataError(f"manifest {csv_path} needs columns 'path' and 'label' (found: {', '.join(columns)})")
    if not rows:
        raise DataError(f"manifest {csv_path} lists no images")
    skipped, kept, first_line = [], [], {}
    for line, row in enumerate(rows, start=2):
        if not row["label"]:
            raise DataError(f"manifest {csv_path} line {line}: empty label for {row['path']!r}")
        full = _confined(csv_path, root, line, row["path"], allow_absolute)
        if full in first_line:  # one image twice: in train and test at once, or in two classes
            raise DataError(f"manifest {csv_path} line {line}: {row['path']!r} is already listed on line "
                            f"{first_line[full]}; list every image once")
        first_line[full] = line
        if row.get("mask"):
            _confined(csv_path, root, line, row["mask"], allow_absolute)
        if not full.is_file():
            skipped.append((row["path"], "listed in the manifest but missing"))
            continue
        kept.append(row)
    if not kept:
        raise DataError(f"none of the images listed in {csv_path} exist")
    classes, key_to_idx = _merge_class_names([r["label"] for r in kept])
    has_subject = "subject" in columns and all(r.get("subject") for r in kept)
    has_mask = "mask" in columns and all(r.get("mask") for r in kept)
    return ImageSet(
        root=root, layout="manifest", classes=classes,
        paths=[Path(r["path"]).as_posix() for r in kept],
        labels=np.array([key_to_idx[class_key(r["label"])] for r in kept], dtype=np.int64),
        subjects=[r["subject"] for r in kept] if has_subject else None,
        mask_paths=[r["mask"] for r in kept] if has_mask else None,
        skipped=skipped,
    )


def scan(data_dir: str | Path, allow_absolute: bool = False, slicing=None) -> ImageSet:
    """Detect the layout of ``data_dir`` and list its images (nothing is decoded yet).

    Volumes (NIfTI, DICOM) are listed slice by slice by ``volume_data.scan``, cut as ``slicing`` says.
    """
    root = Path(data_dir).expanduser()
    from simclr_ad import volume_data

    if volume_data.is_volume_data(root):
        return volume_data.scan(root, slicing, allow_absolute)
    if root.is_file() and root.suffix.lower() == ".csv":
        return _scan_manifest(root, allow_absolute)
    if not root.is_dir():
        raise DataError(f"data dir not found: {root}")
    if (root / "manifest.csv").is_file():
        return _scan_manifest(root / "manifest.csv", allow_absolute)
    subdirs = _class_dirs(root)
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_NAMES}
    if split_dirs:
        if "train" not in split_dirs or "test" not in split_dirs:
            raise DataError(f"{root} looks pre-split but needs both train/ and test/ folders "
                            f"(found: {', '.join(sorted(split_dirs))})")
        return _scan_class_folders(root, split_dirs)
    direct_images = [p for p in root.iterdir() if p.is_file() and _is_image_name(p)]
    if len(subdirs) == 1 and not direct_images and _class_dirs(subdirs[0]):
        return scan(subdirs[0], allow_absolute)  # e.g. the Kaggle zip's single "Dataset/" folder
    if not subdirs:
        raise DataError(f"No images found under {root}: expected class folders ({root}/<class>/*.jpg), "
                        f"{root}/{{train,test}}/<class>/..., or a manifest.csv with columns path,label")
    found = _scan_class_folders(root, None)
    if len(found.classes) < 2:
        raise DataError(f"only one class ({found.classes[0]}) found under {root}; "
                        "a classifier needs at least two class folders")
    return found


# --------------------------------------------------------------------------- decoding

def _to_gray(img: Image.Image) -> Image.Image:
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


def decode_image(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int], str]:
    """Decode image bytes to uint8 [size, size]: grayscale, padded to square with black, resized."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        if max(width, height) > MAX_ASPECT * max(1, min(width, height)):  # padding it square would be huge
            raise ValueError(f"aspect ratio {width}x{height} is beyond {MAX_ASPECT}:1, not an image slice")
        img.load()
        original = (img.size, img.mode)
        gray = _to_gray(img)
    width, height = gray.size
    if width != height:
        side = max(width, height)
        canvas = Image.new("L", (side, side), 0)
        canvas.paste(gray, ((side - width) // 2, (side - height) // 2))
        gray = canvas
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(gray, dtype=np.uint8), original[0], original[1]


def _read_bytes(root: Path, rel: str) -> bytes:
    return (Path(rel) if Path(rel).is_absolute() else root / rel).read_bytes()


def decode(images: ImageSet, size: int, cache_dir: str | Path | None = None, strict: bool = False,
           progress: bool = False) -> ImageSet:
    """Fill ``images.images`` (uint8 [N,1,S,S]); unreadable files are skipped by name (or raise if strict).

    Decoded arrays are cached on disk under a key made of the files' content hashes and ``size``.
    """
    from tqdm import tqdm

    if images.slicing is not None:
        from simclr_ad import volume_data
        return volume_data.decode(images, size, cache_dir, strict, progress)
    blobs, digests = [], []
    for rel in images.paths:
        try:
            data: bytes | OSError = _read_bytes(images.root, rel)
        except OSError as err:  # e.g. no read permission: skipped by name like an undecodable file
            data = err
        blobs.append(data)
        digests.append(hashlib.sha1(data).hexdigest() if isinstance(data, bytes) else f"unread:{data.errno}")
    key = hashlib.sha256(f"{CACHE_FORMAT}:{size}:{','.join(digests)}".encode()).hexdigest()[:24]
    cache_file = Path(cache_dir or default_cache_dir()) / "decoded" / f"{key}-{size}.npz"
    cached = _load_cache(cache_file, len(blobs), size)
    if cached is not None:
        arrays, ok, reasons, info = cached
    else:
        arrays = np.zeros((len(blobs), size, size), dtype=np.uint8)
        ok = np.zeros(len(blobs), dtype=bool)
        reasons, info = [], []
        bar = tqdm(blobs, desc="decoding images", unit="img", disable=not progress, leave=False)
        for i, data in enumerate(bar):
            try:
                if isinstance(data, OSError):
                    raise data
                arrays[i], wh, mode = decode_image(data, size)
                ok[i] = True
                reasons.append("")
                info.append((wh, mode))
            except DECODE_ERRORS as err:
                reasons.append(f"unreadable: {type(err).__name__}: {str(err)[:120] or 'empty file'}")
                info.append(((0, 0), ""))
        _save_cache(cache_file, arrays, ok, reasons, info)
    bad = [(images.paths[i], reasons[i]) for i in np.flatnonzero(~ok)]
    if bad and strict:
        raise DataError(f"{len(bad)} unreadable image(s) (--strict): "
                        + "; ".join(f"{p} ({r})" for p, r in bad[:5]))
    if bad:
        warnings.warn(f"skipping {len(bad)} unreadable image(s): "
                      + ", ".join(p for p, _ in bad[:10]) + (" ..." if len(bad) > 10 else ""), stacklevel=2)
    keep = np.flatnonzero(ok)
    out = replace(images, info=info, skipped=images.skipped + bad).subset(keep)
    out.images = torch.from_numpy(np.ascontiguousarray(arrays[keep])).unsqueeze(1)
    if out.mask_paths is not None:  # nearest-neighbour, cached beside the images (masks.py)
        from simclr_ad.masks import load_masks
        out.masks = load_masks(out.root, out.mask_paths, out.paths, size, cache_dir)
    if len(out) == 0:
        raise DataError(f"no readable images under {images.root}")
    return out


def _load_cache(path: Path, n: int, size: int):
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


def _save_cache(path: Path, arrays, ok, reasons, info) -> None:

    buffer = io.BytesIO()
    np.savez(buffer, images=arrays, ok=ok, reasons=np.array(reasons, dtype=str),
             sizes=np.array([s for s, _ in info], dtype=np.int64).reshape(-1, 2),
             modes=np.array([m for _, m in info], dtype=str))
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:  # a read-only cache must not stop training
        warnings.warn(f"could not write image cache {path}: {err}", stacklevel=2)


# --------------------------------------------------------------------------- entry point for stages

def phantom_dir(n: int, seed: int, cache_dir: str | Path | None = None, slices_per_subject: int = 32,
                min_subjects_per_class: int = 2) -> Path:
    """The embedded synthetic dataset, generated on first use into the cache."""
    from simclr_ad import phantom

    shape = ("" if slices_per_subject == 32 else f"-s{slices_per_subject}") + \
        ("" if min_subjects_per_class == 2 else f"-m{min_subjects_per_class}")
    root = Path(cache_dir or default_cache_dir()) / f"phantom-v{phantom.PHANTOM_VERSION}-n{n}{shape}-seed{seed}"
    return phantom.write_dataset(root, n=n, seed=seed, slices_per_subject=slices_per_subject,
                                 min_subjects_per_class=min_subjects_per_class)


def phantom_dir_of(cfg) -> Path:
    """``phantom_dir`` for a stage config's ``synth_*`` keys (the shape keys default as before they existed)."""
    return phantom_dir(cfg.synth_n, cfg.synth_seed, cfg.cache_dir, getattr(cfg, "synth_slices", 32),
                       getattr(cfg, "synth_min_subjects", 2))


def load_dataset(cfg) -> ImageSet:
    """Scan and decode the dataset a stage config points at (``data_dir`` None: phantoms)."""
    if cfg.data_dir is None:
        root = phantom_dir_of(cfg)
        found = replace(scan(root), layout="synthetic")
    else:
        from simclr_ad.volume_data import slicing_of
        found = scan(cfg.data_dir, allow_absolute=cfg.allow_absolute_paths, slicing=slicing_of(cfg))
    return decode(found, cfg.image_size, cfg.cache_dir, strict=cfg.strict, progress=cfg.progress)


# --------------------------------------------------------------------------- facts

def describe(found: ImageSet) -> dict:
    """The facts ``inspect`` prints, as one JSON-able dict."""
    classes = Counter(found.classes[i] for i in found.labels)
    report = {
        "root": str(found.root),
        "layout": found.layout,
        "classes": {c: classes.get(c, 0) for c in found.classes},
        "n_images": len(found),
        "subjects_known": found.subjects is not None,
        "n_subjects": len(set(found.subjects)) if found.subjects else None,
        "image_sizes": {f"{w}x{h}": n for (w, h), n in Counter(s for s, _ in found.info).most_common()},
        "image_modes": dict(Counter(m for _, m in found.info).most_common()),
        "unreadable": [p for p, _ in found.skipped],
        "unreadable_reasons": {p: r for p, r in found.skipped},
    }
    if found.slicing is not None:
        from simclr_ad import volume_data
        report["volumes"] = volume_data.summary(found)
    if found.presplit is not None:
        report["splits"] = {
            split: {c: int(sum(1 for s, y in zip(found.presplit, found.labels) if s == split and found.classes[y] == c))
                    for c in found.classes}
            for split in sorted(set(found.presplit))
        }
    return report


if __name__ == "__main__":  # the command line lives in data_cli.py
    from simclr_ad.data_cli import main

    main()
