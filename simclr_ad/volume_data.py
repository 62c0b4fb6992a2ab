"""Datasets of 3-D volumes: find them on disk, cut them into slices, cache the slices like images.

Layouts (each entry is a NIfTI file, a folder holding one DICOM series, or loose
DICOM files grouped by SeriesInstanceUID):
  volume-folders    ROOT/<class>/<entry>
  volume-pre-split  ROOT/{train,val,test}/<class>/<entry>   (val optional)
  volume-csv        ROOT/<entry> ... plus a CSV with columns subject,label[,path]
                    (ROOT/manifest.csv, the only .csv in ROOT, or the CSV itself as data_dir);
                    without a path column a row names its volumes by subject id

A volume is a subject: its id (file stem, or DICOM PatientID / StudyInstanceUID,
or the CSV's subject column) is every slice's subject, so splits group by it with
no inference. A slice's path is ``<entry>#<axis>=<index>`` (index in the canonical
frame), its position along the axis in mm is kept in ``ImageSet.positions``.
Unusable volumes (unreadable, 4-D, mixed series, NaNs, empty) are skipped by name.
"""
from __future__ import annotations

import csv
import hashlib
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from simclr_ad import volumes
from simclr_ad.imageset import (CACHE_FORMAT, IMAGE_EXTENSIONS, SPLIT_NAMES, DataError, ImageSet, class_dirs,
                                class_key, default_cache_dir, merge_class_names, save_cache)
from simclr_ad.volumes import VolumeError

UNUSABLE = "unusable volume: "  # prefix of the skip reasons that --strict turns into an error


@dataclass(frozen=True)
class Slicing:
    """How volumes are cut into slices (the config keys slice_axis, slices, intensity_percentiles)."""

    axis: str = "axial"
    slices: str = "brain:20"
    percentiles: tuple[float, float] = volumes.DEFAULT_PERCENTILES

    def __post_init__(self) -> None:
        if self.axis not in volumes.AXES:
            raise DataError(f"slice_axis {self.axis!r} must be one of {', '.join(volumes.AXES)}")
        try:
            volumes.parse_slices(self.slices)
        except ValueError as err:
            raise DataError(str(err)) from None
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise DataError(f"intensity_percentiles {self.percentiles} must be two percentiles, low < high")


def slicing_of(options: Any) -> Slicing:
    """The Slicing of a stage config (or argparse namespace); missing keys take the defaults."""
    default = Slicing()
    percentiles = tuple(getattr(options, "intensity_percentiles", None) or default.percentiles)
    if len(percentiles) != 2:
        raise DataError(f"intensity_percentiles needs two values (low high), got {list(percentiles)}")
    return Slicing(getattr(options, "slice_axis", None) or default.axis,
                   getattr(options, "slices", None) or default.slices, (float(percentiles[0]), float(percentiles[1])))


def add_cli_args(parser, preview: bool = True) -> None:
    """The slicing flags of ``data inspect`` (with ``--preview``), ``split`` and ``audit``."""
    parser.add_argument("--slice-axis", default=None, choices=tuple(volumes.AXES), help="volumes: (default axial)")
    parser.add_argument("--slices", default=None, help="volumes: all | A:B | central:N | brain:X (default brain:20)")
    if preview:
        parser.add_argument("--preview", default=None, metavar="PNG",
                            help="volumes: save a figure of which slices of the first volume are kept")


# --------------------------------------------------------------------------- finding entries

def _is_entry(path: Path) -> bool:
    if path.name.startswith(".") or path.suffix.lower() in IMAGE_EXTENSIONS:  # no magic check on a Kaggle folder
        return False
    if path.is_file():
        return volumes.is_nifti_name(path) or volumes.is_dicom_file(path)
    return path.is_dir() and volumes.is_volume_path(path)


def is_volume_data(root: Path) -> bool:
    """Does ``root`` (a folder or a CSV) hold volumes rather than 2-D images?"""
    if root.is_file():
        return root.suffix.lower() == ".csv" and _csv_names_volumes(root)
    if not root.is_dir():
        return False
    if (root / "manifest.csv").is_file():
        return _csv_names_volumes(root / "manifest.csv")
    if any(_is_entry(p) for p in root.iterdir()):
        return True
    folders = class_dirs(root)
    for folder in folders:
        inner = class_dirs(folder) if folder.name.lower() in SPLIT_NAMES else [folder]
        if any(_is_entry(p) for d in inner for p in d.iterdir()):
            return True
    return False


def _csv_names_volumes(path: Path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip().lower() for c in (reader.fieldnames or [])]
            first = next(reader, None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    if "subject" not in columns or "label" not in columns:
        return False
    if "path" not in columns:
        return True  # an image manifest needs a path column
    value = next((v for k, v in (first or {}).items() if k and k.strip().lower() == "path"), "") or ""
    return volumes.is_nifti_name(value.strip()) or volumes.is_volume_path(path.parent / value.strip())


def _entries(folder: Path, root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Entry sources (POSIX, relative to root) directly inside ``folder``, and skipped files."""
    sources, skipped, loose = [], [], []
    for child in sorted(folder.iterdir()):
        rel = child.relative_to(root).as_posix()
        if child.name.startswith(".") or child.suffix.lower() == ".csv":
            continue
        if child.is_file() and volumes.is_nifti_name(child):
            sources.append(rel)
        elif child.is_file() and volumes.is_dicom_file(child):
            loose.append(child)
        elif child.is_dir() and volumes.dicom_files(child):
            sources.append(rel)
        elif child.is_dir() and child.name.lower() != "masks":
            skipped.append((rel + "/", "folder without DICOM files"))
        elif child.is_file():
            skipped.append((rel, "not a volume (expected .nii, .nii.gz or DICOM)"))
    base = folder.relative_to(root).as_posix()
    for uid, files in sorted(volumes.group_dicom_series(loose).items()):
        if not uid:
            skipped += [(p.relative_to(root).as_posix(), UNUSABLE + "unreadable DICOM header") for p in files]
        else:
            sources.append(f"{base}/@{uid}" if base != "." else f"@{uid}")
    return sources, skipped


def _source_path(root: Path, source: str) -> tuple[Path, str | None]:
    """(file or folder, SeriesInstanceUID when the source is one series among loose files)."""
    head, _, uid = source.rpartition("@") if Path(source).name.startswith("@") else (source, "", "")
    return (root / head.rstrip("/")) if head else root, (uid or None)


def _source_files(root: Path, source: str) -> list[Path]:
    path, uid = _source_path(root, source)
    if uid is not None:
        return volumes.group_dicom_series(volumes.dicom_files(path)).get(uid, [])
    return volumes.dicom_files(path) if path.is_dir() else [path]


def read_source(root: Path, source: str) -> volumes.Volume:
    """The Volume of one entry (see ``_entries``)."""
    path, uid = _source_path(root, source)
    if uid is not None:
        return volumes.read_dicom_series(_source_files(root, source), source)
    return volumes.read_volume(path)


def _source_subject(root: Path, source: str) -> str:
    """The id a CSV without a path column names an entry by (headers only)."""
    path, uid = _source_path(root, source)
    if uid is None and volumes.is_nifti_name(path):
        return volumes.volume_stem(path)
    pydicom = volumes._medical_import("pydicom")
    try:
        ds = pydicom.dcmread(str(_source_files(root, source)[0]), stop_before_pixels=True)
        return str(ds.get("PatientID", "") or ds.get("StudyInstanceUID", "") or path.name)
    except Exception:
        return path.name


# --------------------------------------------------------------------------- layouts

Item = tuple[str, str, Optional[str], Optional[str]]  # (source, label, split, subject from a CSV)


def _folder_items(root: Path) -> tuple[str, list[Item], list[tuple[str, str]]]:
    subdirs = class_dirs(root)
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_NAMES}
    if split_dirs and ("train" not in split_dirs or "test" not in split_dirs):
        raise DataError(f"{root} looks pre-split but needs both train/ and test/ folders "
                        f"(found: {', '.join(sorted(split_dirs))})")
    groups = split_dirs or {None: root}
    items: list[Item] = []
    skipped: list[tuple[str, str]] = []
    classes_per_split = {}
    for split, folder in groups.items():
        classes_per_split[split] = {class_key(d.name) for d in class_dirs(folder)}
        for class_dir in class_dirs(folder):
            sources, bad = _entries(class_dir, root)
            skipped += bad
            if not sources:
                raise DataError(f"No volumes found under {class_dir} (expected .nii/.nii.gz files or "
                                "DICOM series folders); remove the empty folder")
            items += [(s, class_dir.name, split, None) for s in sources]
    if len(set().union(*classes_per_split.values())) < 2:
        raise DataError(f"only one class found under {root}; a classifier needs at least two class folders")
    if split_dirs and len({frozenset(v) for v in classes_per_split.values()}) > 1:
        raise DataError(f"classes differ between splits under {root}: "
                        + "; ".join(f"{s}: {', '.join(sorted(v))}" for s, v in classes_per_split.items()))
    return ("volume-pre-split" if split_dirs else "volume-folders"), items, skipped


def _find_csv(root: Path) -> Path | None:
    found = sorted(p for p in root.glob("*.csv") if p.is_file())
    if len(found) > 1:
        raise DataError(f"{root} holds several CSV files ({', '.join(p.name for p in found)}); "
                        "pass the one with columns subject,label[,path] as --data-dir")
    return found[0] if found else None


def _csv_items(csv_path: Path, allow_absolute: bool) -> tuple[list[Item], list[tuple[str, str]]]:
    root = csv_path.parent.resolve()
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in (reader.fieldnames or [])]
        rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if "subject" not in columns or "label" not in columns:
        raise DataError(f"{csv_path} needs columns subject,label[,path] (found: {', '.join(columns)})")
    items: list[Item] = []
    skipped: list[tuple[str, str]] = []
    by_subject: dict[str, list[str]] | None = None
    for line, row in enumerate(rows, start=2):
        subject, label, rel = row.get("subject", ""), row.get("label", ""), row.get("path", "")
        if not subject or not label:
            raise DataError(f"{csv_path} line {line}: empty subject or label")
        if rel:
            full = (root / rel).resolve()
            if not allow_absolute and (Path(rel).is_absolute() or root not in full.parents):
                raise DataError(f"{csv_path} line {line}: {rel!r} points outside {root} "
                                "(only paths inside the data root are allowed)")
            if not full.exists():
                skipped.append((rel, "listed in the CSV but missing"))
                continue
            items.append((Path(rel).as_posix(), label, None, subject))
            continue
        if by_subject is None:
            sources, bad = _entries(root, root)
            skipped += bad
            by_subject = {}
            for source in sources:
                by_subject.setdefault(_source_subject(root, source), []).append(source)
        if subject not in by_subject:
            skipped.append((subject, f"listed in the CSV but no volume found ({subject}.nii[.gz] "
                                     "or a DICOM series with that PatientID)"))
            continue
        items += [(s, label, None, subject) for s in by_subject[subject]]
    if by_subject is not None:
        listed = {source for source, *_ in items}
        skipped += [(s, "not listed in the CSV (no label)") for group in by_subject.values() for s in group
                    if s not in listed]
    if not items:
        raise DataError(f"none of the volumes listed in {csv_path} exist")
    return items, skipped


def scan(root: Path, slicing: Slicing | None = None, allow_absolute: bool = False) -> ImageSet:
    """List the kept slices of every volume under ``root`` (volumes are read to choose slices)."""
    slicing = slicing or Slicing()
    has_entries = root.is_dir() and any(_is_entry(p) for p in root.iterdir())
    csv_path = root if root.is_file() else (root / "manifest.csv") if (root / "manifest.csv").is_file() \
        else _find_csv(root) if has_entries else None
    if csv_path is not None:
        layout, (items, skipped) = "volume-csv", _csv_items(csv_path, allow_absolute)
        base = csv_path.parent.resolve()
    elif has_entries:
        raise DataError(f"volumes under {root} need labels: class folders ({root}/<class>/<volume>) "
                        "or a CSV with columns subject,label[,path]")
    else:
        (layout, items, skipped), base = _folder_items(root), root
    spec = volumes.parse_slices(slicing.slices)
    paths, labels, subjects, splits, positions = [], [], [], [], []
    for source, label, split, subject in items:
        try:
            volume = read_source(base, source)
            kept = volumes.select_slices(volumes.normalise(volume, slicing.percentiles), slicing.axis, spec)
        except VolumeError as err:
            skipped.append((source, UNUSABLE + _reason(err, base, source)))
            continue
        if len(kept) == 0:
            skipped.append((source, f"no slice kept by slices={slicing.slices}"))
            continue
        paths += [f"{source}#{slicing.axis}={i}" for i in kept]
        labels += [label] * len(kept)
        subjects += [subject or volume.subject] * len(kept)
        splits += [split] * len(kept)
        positions.append(volumes.slice_positions(volume.affine, slicing.axis, kept))
    bad = [p for p, r in skipped if r.startswith(UNUSABLE)]
    if bad:
        warnings.warn(f"skipping {len(bad)} unusable volume(s): " + ", ".join(bad[:10]), stacklevel=2)
    if not paths:
        raise DataError(f"no usable volumes under {root}: "
                        + "; ".join(f"{p} ({r})" for p, r in skipped[:3]))
    classes, key_to_idx = merge_class_names(labels)
    if len(classes) < 2:
        raise DataError(f"only one class ({classes[0]}) among the usable volumes under {root}; "
                        "a classifier needs at least two")
    return ImageSet(root=base, layout=layout, classes=classes, paths=paths,
                    labels=np.array([key_to_idx[class_key(n)] for n in labels], dtype=np.int64),
                    subjects=subjects, presplit=list(splits) if layout == "volume-pre-split" else None,
                    skipped=skipped, positions=np.concatenate(positions), slicing=slicing)


def _reason(err: Exception, base: Path, source: str) -> str:
    text = str(err)
    for prefix in (str(base / source), source, str(_source_path(base, source)[0])):
        if text.startswith(prefix + ": "):
            return text[len(prefix) + 2:]
    return text


# --------------------------------------------------------------------------- decoding

def source_of(path: str) -> tuple[str, int]:
    """``AD/s1.nii.gz#axial=12`` -> (``AD/s1.nii.gz``, 12)."""
    source, _, where = path.rpartition("#")
    return source, int(where.partition("=")[2])


def _digest(root: Path, source: str) -> str:
    sha = hashlib.sha1()
    for path in _source_files(root, source):
        sha.update(path.read_bytes())
    return sha.hexdigest()


def decode(images: ImageSet, size: int, cache_dir: str | Path | None = None, strict: bool = False,
           progress: bool = False) -> ImageSet:
    """``data.decode`` for volume slices: the same uint8 cache, keyed by the volumes' content."""
    from tqdm import tqdm

    slicing = images.slicing or Slicing()
    unusable = [(p, r) for p, r in images.skipped if r.startswith(UNUSABLE)]
    if unusable and strict:
        raise DataError(f"{len(unusable)} unusable volume(s) (--strict): "
                        + "; ".join(f"{p} ({r[len(UNUSABLE):]})" for p, r in unusable[:5]))
    sources = list(dict.fromkeys(source_of(p)[0] for p in images.paths))
    digests = {s: _digest(images.root, s) for s in sources}
    key_text = f"{CACHE_FORMAT}:volumes:{size}:{slicing.percentiles}:{','.join(images.paths)}:" + \
        ",".join(digests[s] for s in sources)
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    cache_file = Path(cache_dir or default_cache_dir()) / "decoded" / f"{key}-{size}.npz"
    if cache_file.is_file():
        cached = np.load(cache_file, allow_pickle=False)
        arrays, ok, reasons = cached["images"], cached["ok"], [str(r) for r in cached["reasons"]]
        info = [((int(w), int(h)), str(m)) for (w, h), m in zip(cached["sizes"], cached["modes"])]
    else:
        arrays = np.zeros((len(images), size, size), dtype=np.uint8)
        ok = np.zeros(len(images), dtype=bool)
        reasons, info = [""] * len(images), [((0, 0), "")] * len(images)
        rows: dict[str, list[int]] = {}
        for row, path in enumerate(images.paths):
            rows.setdefault(source_of(path)[0], []).append(row)
        for source in tqdm(sources, desc="slicing volumes", unit="vol", disable=not progress, leave=False):
            try:
                volume = read_source(images.root, source)
                norm = volumes.normalise(volume, slicing.percentiles)
            except VolumeError as err:
                for row in rows[source]:
                    reasons[row] = UNUSABLE + _reason(err, images.root, source)
                continue
            for row in rows[source]:
                axis, index = images.paths[row].rpartition("#")[2].partition("=")[0], source_of(images.paths[row])[1]
                arrays[row] = volumes.slice_image(norm, axis, index, volume.spacing, size)
                plane = volumes.slice_plane(norm, axis, index)
                ok[row], info[row] = True, ((plane.shape[1], plane.shape[0]), volume.dtype)
        save_cache(cache_file, arrays, ok, reasons, info)
    bad = [(images.paths[i], reasons[i]) for i in np.flatnonzero(~ok)]
    if bad and strict:
        raise DataError(f"{len(bad)} unreadable slice(s) (--strict): " + "; ".join(f"{p} ({r})" for p, r in bad[:5]))
    if bad:
        warnings.warn(f"skipping {len(bad)} slice(s) of volumes that changed or broke since the scan: "
                      + ", ".join(p for p, _ in bad[:10]), stacklevel=2)
    keep = np.flatnonzero(ok)
    out = replace(images, info=info, skipped=images.skipped + bad).subset(keep)
    out.images = torch.from_numpy(np.ascontiguousarray(arrays[keep])).unsqueeze(1)
    if len(out) == 0:
        raise DataError(f"no readable slices under {images.root}")
    return out


def cut(volume: volumes.Volume, slicing: Slicing, size: int,
        where: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kept slices of one volume: (uint8 [K, size, size], canonical indices [K], positions in mm [K])."""
    norm = volumes.normalise(volume, slicing.percentiles, where=where)
    kept = volumes.select_slices(norm, slicing.axis, volumes.parse_slices(slicing.slices))
    if len(kept) == 0:
        raise VolumeError(f"{where or volume.subject}: no slice kept by slices={slicing.slices}")
    pixels = np.stack([volumes.slice_image(norm, slicing.axis, int(i), volume.spacing, size) for i in kept])
    return pixels, kept, volumes.slice_positions(volume.affine, slicing.axis, kept)


# --------------------------------------------------------------------------- describe and preview

def summary(found: ImageSet) -> dict:
    """The volume facts ``inspect`` adds: volumes, slices per volume, slicing."""
    per_volume = Counter(source_of(p)[0] for p in found.paths)
    counts = sorted(per_volume.values()) or [0]
    slicing = found.slicing or Slicing()
    return {"n_volumes": len(per_volume), "slices_per_volume": {"min": counts[0], "median": statistics.median(counts),
                                                                 "max": counts[-1]},
            "slice_axis": slicing.axis, "slices": slicing.slices, "intensity_percentiles": list(slicing.percentiles)}


def preview(found: ImageSet, out_png: str | Path, source: str | None = None) -> Path:
    """A figure of one volume (the first): which slices were kept, on a side view, per slice, and as thumbnails."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if found.slicing is None:
        raise DataError("--preview shows the slice selection of a volume dataset; this one holds 2-D images")
    source = source or source_of(found.paths[0])[0]
    slicing = found.slicing
    volume = read_source(found.root, source)
    norm = volumes.normalise(volume, slicing.percentiles)
    kept = {source_of(p)[1] for p in found.paths if source_of(p)[0] == source}
    n = norm.shape[volumes.AXES[slicing.axis]]
    def spread(indices: list[int], count: int) -> set[int]:
        return {indices[round(k)] for k in np.linspace(0, len(indices) - 1, min(count, len(indices)))}

    shown = np.array(sorted(spread(list(range(n)), 24) | spread(sorted(kept), 24)))  # all kept ones when few
    cols = min(12, len(shown))
    grid_rows = -(-len(shown) // cols)
    fig = Figure(figsize=(1.2 * cols, 1.25 * grid_rows + 2.6), dpi=100, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.4, 1.25 * grid_rows])
    side, bars = top.subplots(1, 2, width_ratios=[1, 3])
    # side view: the mid-plane across the slice axis, a green line per kept slice
    across = "coronal" if slicing.axis == "sagittal" else "sagittal"
    plane = volumes.slice_plane(norm, across, norm.shape[volumes.AXES[across]] // 2)
    row_mm, col_mm = volumes.slice_spacing(volume.spacing, across)
    side.imshow(plane, cmap="gray", vmin=0, vmax=1, aspect=row_mm / col_mm)
    for index in sorted(kept):
        if slicing.axis == "axial":  # rows run superior (top) to inferior
            side.axhline(plane.shape[0] - 1 - index, color="limegreen", lw=0.8, alpha=0.6)
        else:
            side.axvline(index, color="limegreen", lw=0.8, alpha=0.6)
    side.set_title(f"mid-{across} view", fontsize=8)
    side.set_axis_off()
    area = volumes.foreground_area(norm, slicing.axis)
    bars.bar(np.arange(n), area, color=["limegreen" if i in kept else "lightgrey" for i in range(n)], width=1.0)
    spec = volumes.parse_slices(slicing.slices)
    if spec.kind == "brain":
        bars.axhline(spec.percent / 100 * area.max(), color="black", ls="--", lw=1, label=f"{spec.percent:g} % of max")
        bars.legend(fontsize=7, loc="lower center")
    bars.set_xlabel(f"{slicing.axis} slice index (canonical frame)", fontsize=8)
    bars.set_ylabel("foreground voxels", fontsize=8)
    bars.set_xlim(-0.5, n - 0.5)
    thumbs = bottom.subplots(grid_rows, cols, squeeze=False)
    for ax in thumbs.ravel():
        ax.set_axis_off()
    for k, index in enumerate(shown):
        ax = thumbs[k // cols][k % cols]
        keep = int(index) in kept
        image = volumes.slice_image(norm, slicing.axis, int(index), volume.spacing, 64)
        ax.imshow(image if keep else image // 3, cmap="gray", vmin=0, vmax=255)
        ax.add_patch(Rectangle((0, 0), 63, 63, fill=False, lw=2.5, edgecolor="limegreen" if keep else "red"))
        ax.set_title(f"{index}", fontsize=7, color="black" if keep else "grey")
    fig.suptitle(f"{source}: {len(kept)} of {n} {slicing.axis} slices kept (slices={slicing.slices}); "
                 "green: kept, red: dropped", fontsize=9)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return out_png
