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
import os
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from simclr_ad import volume_data
from simclr_ad.decoding import decode_image
from simclr_ad.errors import DECODE_ERRORS
from simclr_ad.imageset import (CACHE_FORMAT, IMAGE_EXTENSIONS, SPLIT_NAMES, DataError, ImageSet,  # noqa: F401
                                class_dirs, class_key, default_cache_dir, load_cache, merge_class_names, save_cache)

# --------------------------------------------------------------------------- scanning

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


def _scan_class_folders(root: Path, split_dirs: dict[str, Path] | None) -> ImageSet:
    groups = split_dirs or {"": root}
    per_split: dict[str, dict[str, list[Path]]] = {}
    skipped: list[tuple[str, str]] = []
    for split, folder in groups.items():
        per_split[split] = {}
        for class_dir in class_dirs(folder):
            files, bad = _files_under(class_dir, root)
            skipped += bad
            if not files:
                raise DataError(f"No images found under {class_dir} "
                                f"(expected {'/'.join(IMAGE_EXTENSIONS)} files); remove the empty folder")
            per_split[split].setdefault(class_key(class_dir.name), []).extend(files)
        per_split[split]["__names__"] = [d.name for d in class_dirs(folder)]  # type: ignore[assignment]
    names = [n for s in per_split.values() for n in s.pop("__names__")]  # type: ignore[arg-type]
    classes, key_to_idx = merge_class_names(names)
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
    classes, key_to_idx = merge_class_names([r["label"] for r in kept])
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
    if volume_data.is_volume_data(root):
        return volume_data.scan(root, slicing, allow_absolute)
    if root.is_file() and root.suffix.lower() == ".csv":
        return _scan_manifest(root, allow_absolute)
    if not root.is_dir():
        raise DataError(f"data dir not found: {root}")
    if (root / "manifest.csv").is_file():
        return _scan_manifest(root / "manifest.csv", allow_absolute)
    subdirs = class_dirs(root)
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_NAMES}
    if split_dirs:
        if "train" not in split_dirs or "test" not in split_dirs:
            raise DataError(f"{root} looks pre-split but needs both train/ and test/ folders "
                            f"(found: {', '.join(sorted(split_dirs))})")
        return _scan_class_folders(root, split_dirs)
    direct_images = [p for p in root.iterdir() if p.is_file() and _is_image_name(p)]
    if len(subdirs) == 1 and not direct_images and class_dirs(subdirs[0]):
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

def _read_bytes(root: Path, rel: str) -> bytes:
    return (Path(rel) if Path(rel).is_absolute() else root / rel).read_bytes()


def decode(images: ImageSet, size: int, cache_dir: str | Path | None = None, strict: bool = False,
           progress: bool = False) -> ImageSet:
    """Fill ``images.images`` (uint8 [N,1,S,S]); unreadable files are skipped by name (or raise if strict).

    Decoded arrays are cached on disk under a key made of the files' content hashes and ``size``.
    """
    from tqdm import tqdm

    if images.slicing is not None:
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
    cached = load_cache(cache_file, len(blobs), size)
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
        save_cache(cache_file, arrays, ok, reasons, info)
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


# --------------------------------------------------------------------------- entry point for stages

def phantom_dir(n: int, seed: int, cache_dir: str | Path | None = None, slices_per_subject: int = 32,
                min_subjects_per_class: int = 2) -> Path:
    """The embedded synthetic dataset, generated on first use into the cache."""
    from simclr_ad import phantom, phantom_files

    shape = ("" if slices_per_subject == 32 else f"-s{slices_per_subject}") + \
        ("" if min_subjects_per_class == 2 else f"-m{min_subjects_per_class}")
    root = Path(cache_dir or default_cache_dir()) / f"phantom-v{phantom.PHANTOM_VERSION}-n{n}{shape}-seed{seed}"
    return phantom_files.write_dataset(root, n=n, seed=seed, slices_per_subject=slices_per_subject,
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
        found = scan(cfg.data_dir, allow_absolute=cfg.allow_absolute_paths, slicing=volume_data.slicing_of(cfg))
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
