"""Read 3-D MRI volumes (NIfTI, DICOM series) and cut them into 2-D slices for the slice models.

A volume is reoriented to the closest canonical frame (RAS+, nibabel's
``as_closest_canonical``), normalised once per volume (percentile clip, then
scale to 0..1: never per slice, which would erase the contrast between slices),
and cut along ``slice_axis``. The kept slices are chosen by ``slices``:

  all          every slice
  A:B          slice indices A..B-1 in the canonical frame (Python range; negatives count from the end)
  central:N    the N slices around the middle of the volume
  brain:X      slices whose foreground covers at least X % of the largest slice's foreground

Each slice is resized to ``size`` x ``size`` keeping the physical aspect ratio of
its voxel spacing (padded with black), in the display orientation: axial and
coronal slices have the patient's left on the image's left and anterior/superior up.

nibabel and pydicom are imported on first use (the ``[medical]`` extra).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from simclr_ad.imageset import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
NOT_DICOM = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".csv", ".txt", ".json", ".gz", ".nii")  # no magic check
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # index of the slice axis in the canonical RAS frame
FOREGROUND = 0.1  # normalised intensity above which a voxel is foreground (head), for brain:X
DEFAULT_PERCENTILES = (0.5, 99.5)


class VolumeError(DataError):
    """A volume that cannot be used; its message names the file and the reason."""


@dataclass(frozen=True)
class Volume:
    """One volume in the canonical RAS+ frame."""

    data: np.ndarray  # float32 [X, Y, Z], scanner units (DICOM rescale applied)
    spacing: tuple[float, float, float]  # mm per voxel along X, Y, Z
    affine: np.ndarray  # float64 [4, 4], canonical voxel index -> RAS mm
    subject: str  # file stem, or DICOM PatientID / StudyInstanceUID / folder name
    dtype: str  # stored data type, e.g. "int16"


@dataclass(frozen=True)
class SliceSpec:
    """A parsed ``slices`` value (see the module docstring)."""

    kind: str  # all | range | central | brain
    start: int = 0
    stop: int | None = None
    count: int = 0
    percent: float = 0.0


# --------------------------------------------------------------------------- names and options

def is_nifti_name(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``."""
    name = Path(path).name
    return re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)


def is_dicom_file(path: Path) -> bool:
    """A DICOM file by extension or by the ``DICM`` magic at byte 128."""
    if path.name.startswith(".") or path.suffix.lower() in NOT_DICOM or not path.is_file():
        return False
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder: Path) -> list[Path]:
    """DICOM files directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_dicom_file(p))


def is_volume_path(path: str | Path) -> bool:
    """A NIfTI file, a DICOM file, or a folder holding DICOM files (checked on the first few)."""
    path = Path(path)
    if path.is_dir():
        return any(is_dicom_file(p) for p in path.iterdir())
    return is_nifti_name(path) or (path.suffix.lower() in DICOM_SUFFIXES)


def parse_slices(text: str) -> SliceSpec:
    """Parse ``all``, ``A:B``, ``central:N`` or ``brain:X``; ValueError with the accepted forms."""
    value = text.strip().lower()
    forms = "expected all, A:B (a slice range), central:N or brain:X (percent)"
    if value == "all":
        return SliceSpec("all")
    kind, _, arg = value.partition(":")
    try:
        if kind == "central" and int(arg) >= 1:
            return SliceSpec("central", count=int(arg))
        if kind == "brain" and 0 <= float(arg) <= 100:
            return SliceSpec("brain", percent=float(arg))
        if re.fullmatch(r"-?\d*:-?\d*", value):
            return SliceSpec("range", start=int(kind) if kind else 0, stop=int(arg) if arg else None)
    except ValueError:
        pass
    raise ValueError(f"slices {text!r}: {forms}")


# --------------------------------------------------------------------------- reading

def _medical_import(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise DataError(f"reading volumes needs {name}: pip install 'simclr_ad[medical]' "
                        f"(or pip install nibabel pydicom)") from None


def _from_image(image, subject: str, dtype: str, where: str) -> Volume:
    nib = _medical_import("nibabel")
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        image = image.slicer[..., 0]
        shape = image.shape
    if len(shape) != 3:
        extra = f"{len(shape)}-D volume (shape {'x'.join(map(str, shape))})"
        raise VolumeError(f"{where}: {extra}; expected one 3-D scan per file "
                          "(split a time series first, e.g. fslsplit)")
    if min(shape) < 1 or int(np.prod(shape)) == 0:
        raise VolumeError(f"{where}: empty volume (shape {'x'.join(map(str, shape))})")
    canonical = nib.as_closest_canonical(image)
    data = np.asarray(canonical.get_fdata(dtype=np.float32))
    zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    spacing = tuple(z if np.isfinite(z) and z > 0 else 1.0 for z in zooms)
    affine = np.asarray(canonical.affine, dtype=np.float64)
    return Volume(data, spacing, affine, subject, dtype)  # type: ignore[arg-type]


def read_nifti(path: str | Path) -> Volume:
    """A ``.nii``/``.nii.gz`` file as a canonical Volume; VolumeError names the file and the problem."""
    nib = _medical_import("nibabel")
    path = Path(path)
    try:
        image = nib.load(str(path))
        dtype = str(image.get_data_dtype())
        return _from_image(image, volume_stem(path), dtype, str(path))
    except VolumeError:
        raise
    except FileNotFoundError:
        raise VolumeError(f"{path}: file not found") from None
    except Exception as err:  # nibabel, gzip and zlib raise many types on damaged files
        detail = str(err)[:160] or "empty file"
        raise VolumeError(f"{path}: unreadable NIfTI ({type(err).__name__}: {detail})") from None


def _dicom_geometry(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(row cosine, column cosine, position) of one slice, or None when the tags are missing."""
    try:
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None
    if orientation.shape != (6,) or position.shape != (3,):
        return None
    return orientation[:3], orientation[3:], position


def read_dicom_series(files: Sequence[Path], name: str) -> Volume:
    """DICOM files of one series as a canonical Volume (rescale slope/intercept applied).

    ``name`` (the folder) labels errors and is the subject id when PatientID and
    StudyInstanceUID are both missing. Files of more than one series are an error.
    """
    pydicom = _medical_import("pydicom")
    nib = _medical_import("nibabel")
    if not files:
        raise VolumeError(f"{name}: no DICOM files")
    datasets = []
    for path in files:
        try:
            datasets.append(pydicom.dcmread(str(path)))
        except Exception as err:
            raise VolumeError(f"{name}: unreadable DICOM file {path.name} "
                              f"({type(err).__name__}: {str(err)[:120]})") from None
    kept = [(p, ds) for p, ds in zip(files, datasets) if "PixelData" in ds]  # not DICOMDIR, reports, ...
    if not kept:
        raise VolumeError(f"{name}: no DICOM file with pixel data")
    files, datasets = [p for p, _ in kept], [ds for _, ds in kept]
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series) > 1:
        raise VolumeError(f"{name}: holds {len(series)} DICOM series (SeriesInstanceUID {', '.join(series[:3])}); "
                          "put one series per folder")
    pixels, geometry = [], []
    for path, ds in zip(files, datasets):
        try:
            array = np.asarray(ds.pixel_array, dtype=np.float32)
        except Exception as err:
            raise VolumeError(f"{name}: no readable pixel data in {path.name} ({type(err).__name__}: "
                              f"{str(err)[:120]})") from None
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise VolumeError(f"{name}: {path.name} is a colour image, not an MR slice")
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        array = array * np.float32(slope) + np.float32(intercept)
        frames = array if array.ndim == 3 else array[None]
        pixels += list(frames)
        geometry += [_dicom_geometry(ds)] * len(frames)
    if len({p.shape for p in pixels}) > 1:
        raise VolumeError(f"{name}: slices of different sizes ({', '.join(sorted({str(p.shape) for p in pixels}))})")
    first = datasets[0]
    try:
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        row_spacing = col_spacing = 1.0
    known = all(g is not None for g in geometry) and len(pixels) == len(datasets)
    if known:
        row_cos, col_cos, _ = geometry[0]  # type: ignore[misc]
        normal = np.cross(row_cos, col_cos)
        order = np.argsort([float(np.dot(g[2], normal)) for g in geometry], kind="stable")  # type: ignore[index]
        origin = geometry[order[0]][2]  # type: ignore[index]
        if len(order) > 1:
            step = (geometry[order[-1]][2] - origin) / (len(order) - 1)  # type: ignore[index]
        else:
            step = normal * float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
    else:  # no geometry: stack by instance number, 1 mm apart, in an identity frame
        numbers = [int(ds.get("InstanceNumber", i) or i) for i, ds in enumerate(datasets)]
        order = np.argsort(numbers, kind="stable") if len(pixels) == len(datasets) else np.arange(len(pixels))
        row_cos, col_cos, origin = np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.zeros(3)
        step = np.array([0, 0, float(first.get("SliceThickness", 1.0) or 1.0)])
    if not np.any(step):
        raise VolumeError(f"{name}: all slices share one position (duplicated files?)")
    # voxel [column, row, slice] -> patient LPS mm, then LPS -> RAS (nibabel's frame)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_cos * col_spacing, col_cos * row_spacing, step, origin
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    volume = np.stack([pixels[i] for i in order], axis=-1).transpose(1, 0, 2)  # [columns, rows, slices]
    subject = str(first.get("PatientID", "") or first.get("StudyInstanceUID", "") or Path(name).name)
    dtype = f"int{int(first.get('BitsAllocated', 16))}"
    return _from_image(nib.Nifti1Image(volume, affine), subject, dtype, name)


def group_dicom_series(files: Sequence[Path]) -> dict[str, list[Path]]:
    """DICOM files by SeriesInstanceUID (headers only); unreadable files go under ``""``."""
    pydicom = _medical_import("pydicom")
    groups: dict[str, list[Path]] = {}
    for path in files:
        try:
            uid = str(pydicom.dcmread(str(path), stop_before_pixels=True).get("SeriesInstanceUID", "") or "?")
        except Exception:
            uid = ""
        groups.setdefault(uid, []).append(path)
    return groups


def read_volume(path: str | Path) -> Volume:
    """A NIfTI file, one DICOM file, or a folder holding one DICOM series."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(dicom_files(path), str(path))
    if not path.exists():
        raise VolumeError(f"{path}: file not found")
    if is_nifti_name(path):
        return read_nifti(path)
    return read_dicom_series([path], str(path))


# --------------------------------------------------------------------------- intensity and slices

def normalise(volume: Volume, percentiles: Sequence[float] = DEFAULT_PERCENTILES, where: str = "") -> np.ndarray:
    """Per-volume robust scaling, float32 [X, Y, Z] in 0..1: clip at the two percentiles, then scale.

    One scale for the whole volume keeps the contrast between slices (16-bit and float data
    alike). NaN or infinite voxels and constant (empty) volumes are a VolumeError.
    """
    data = volume.data
    finite = np.isfinite(data)
    if not finite.all():
        raise VolumeError(f"{where or volume.subject}: {int((~finite).sum())} of {data.size} voxels are NaN "
                          "or infinite; fix or mask the volume first")
    lo, hi = (float(v) for v in np.percentile(data, list(percentiles)))
    if not hi > lo:
        lo, hi = float(data.min()), float(data.max())
    if not hi > lo:
        raise VolumeError(f"{where or volume.subject}: empty volume (every voxel is {lo:g})")
    return np.clip((data - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)


def select_slices(norm: np.ndarray, axis: str, spec: SliceSpec) -> np.ndarray:
    """Indices (sorted, int64) of the kept slices of a normalised volume along ``axis``."""
    n = norm.shape[AXES[axis]]
    if spec.kind == "all":
        return np.arange(n)
    if spec.kind == "range":
        return np.arange(n)[slice(spec.start, spec.stop)]
    if spec.kind == "central":
        count = min(spec.count, n)
        start = (n - count) // 2
        return np.arange(start, start + count)
    area = foreground_area(norm, axis)
    if area.max() == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(area >= max(1, spec.percent / 100.0 * area.max())).astype(np.int64)


def foreground_area(norm: np.ndarray, axis: str) -> np.ndarray:
    """Foreground voxels per slice along ``axis``, int64 [n]."""
    other = tuple(a for a in range(3) if a != AXES[axis])
    return (norm > FOREGROUND).sum(axis=other).astype(np.int64)


def slice_plane(norm: np.ndarray, axis: str, index: int) -> np.ndarray:
    """One slice [rows, columns] in display orientation (anterior or superior up)."""
    return np.take(norm, index, axis=AXES[axis]).T[::-1]


def slice_spacing(spacing: Sequence[float], axis: str) -> tuple[float, float]:
    """(row, column) pixel spacing in mm of the slices along ``axis``."""
    first, second = (spacing[a] for a in range(3) if a != AXES[axis])
    return float(second), float(first)


def slice_image(norm: np.ndarray, axis: str, index: int, spacing: Sequence[float], size: int) -> np.ndarray:
    """A slice as uint8 [size, size]: physical aspect ratio kept, centred on black, antialiased resize."""
    from PIL import Image

    plane = slice_plane(norm, axis, index)
    row_mm, col_mm = slice_spacing(spacing, axis)
    height, width = plane.shape[0] * row_mm, plane.shape[1] * col_mm
    scale = size / max(height, width)
    rows, cols = max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))
    resized = Image.fromarray(np.ascontiguousarray(plane * 255.0, dtype=np.float32), mode="F")
    resized = np.asarray(resized.resize((cols, rows), Image.BILINEAR), dtype=np.float32)
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - rows) // 2, (size - cols) // 2
    canvas[top:top + rows, left:left + cols] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return canvas


def slice_positions(affine: np.ndarray, axis: str, indices: Sequence[int]) -> np.ndarray:
    """World position (mm, RAS) along ``axis`` of the slices ``indices``, float64 [n]."""
    voxel = np.zeros((len(indices), 4))
    voxel[:, AXES[axis]] = np.asarray(indices, dtype=np.float64)
    voxel[:, 3] = 1.0
    return (voxel @ np.asarray(affine).T)[:, AXES[axis]]
