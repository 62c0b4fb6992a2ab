"""Volumes in (NIfTI, DICOM): layouts, slicing, intensity, subjects, cache, bad input, predict, end to end."""
import copy
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from simclr_ad import data, data_cli, phantom, phantom_files, splits, volume_data, volumes  # noqa: E402
from simclr_ad.data import DataError  # noqa: E402
from simclr_ad.volume_data import Slicing  # noqa: E402
from tests.conftest import ROOT, TINY  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
REAL_NIFTI = NIBABEL_DATA / "anatomical.nii"  # a real 2 mm T1 brain volume shipped with nibabel


def _real_dicom() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("MR_small.dcm"))  # a real 64x64 MR slice shipped with pydicom


@pytest.fixture(scope="module")
def phantom_volumes(tmp_path_factory) -> Path:
    """8 phantom subjects x 8 axial slices at 32 px, one .nii.gz per subject in class folders."""
    return phantom_files.write_volumes(tmp_path_factory.mktemp("vol") / "phantoms", n=64, seed=0, size=SIZE)


def _save_nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def write_dicom_series(folder: Path, slices: np.ndarray, patient: str, series_uid: str,
                       pixel_mm=(1.0, 1.0), slice_mm=3.0, slopes=None) -> Path:
    """Slices [K, rows, cols] as one DICOM series, cloned from pydicom's real MR_small.dcm.

    ``slopes[k]`` stores slice k as value / slope with RescaleSlope = slope (as some scanners do).
    """
    template = pydicom.dcmread(str(_real_dicom()))
    folder.mkdir(parents=True, exist_ok=True)
    for k, pixels in enumerate(slices):
        slope = 1.0 if slopes is None else slopes[k]
        ds = copy.deepcopy(template)
        ds.PatientID, ds.SeriesInstanceUID = patient, series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [pixel_mm[0], pixel_mm[1]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, k * slice_mm]
        ds.InstanceNumber = k + 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
        ds.PixelData = np.rint(pixels / slope).astype(np.int16).tobytes()
        ds.save_as(str(folder / f"im{k:03d}.dcm"))
    return folder


def _decode(root, size=SIZE, **slicing):
    return data.decode(data.scan(root, slicing=Slicing(**slicing) if slicing else None), size)


# --------------------------------------------------------------------------- slicing and intensity

def test_parse_slices_forms_and_errors():
    assert volumes.parse_slices("all").kind == "all"
    assert volumes.parse_slices("3:10") == volumes.SliceSpec("range", start=3, stop=10)
    assert volumes.parse_slices(":-2").stop == -2
    assert volumes.parse_slices("central:5").count == 5
    assert volumes.parse_slices("brain:25").percent == 25.0
    for bad in ("brain:x", "central:0", "middle", "brain:150", "1:2:3"):
        with pytest.raises(ValueError, match="expected all"):
            volumes.parse_slices(bad)


def test_select_slices_range_central_and_brain():
    norm = np.zeros((10, 10, 12), dtype=np.float32)
    for k, half in enumerate([0, 0, 1, 2, 3, 4, 4, 4, 3, 2, 1, 0]):  # foreground grows then shrinks
        norm[5 - half:5 + half, 5 - half:5 + half, k] = 1.0
    assert volumes.select_slices(norm, "axial", volumes.parse_slices("2:5")).tolist() == [2, 3, 4]
    assert volumes.select_slices(norm, "axial", volumes.parse_slices("central:4")).tolist() == [4, 5, 6, 7]
    assert volumes.select_slices(norm, "axial", volumes.parse_slices("all")).tolist() == list(range(12))
    # largest foreground 8x8 = 64 voxels; 50 % keeps the slices with >= 32, i.e. 6x6 and 8x8
    assert volumes.select_slices(norm, "axial", volumes.parse_slices("brain:50")).tolist() == [4, 5, 6, 7, 8]
    assert volumes.select_slices(norm, "sagittal", volumes.parse_slices("all")).tolist() == list(range(10))


def test_normalisation_is_per_volume_not_per_slice(tmp_path):
    """A dim slice stays dim: one percentile scale per volume keeps the contrast between slices (16-bit)."""
    rng = np.random.default_rng(0)
    array = np.zeros((20, 20, 2), dtype=np.int16)
    array[4:16, 4:16, 0] = 1000 + rng.integers(0, 50, (12, 12))
    array[4:16, 4:16, 1] = 4000 + rng.integers(0, 50, (12, 12))
    _save_nifti(tmp_path / "A" / "a.nii.gz", array)
    _save_nifti(tmp_path / "B" / "b.nii.gz", array * 3)
    found = _decode(tmp_path, slices="all")
    dim, bright = (found.images[i, 0].float()[12:20, 12:20].mean().item() for i in (0, 1))
    assert bright > 200 and dim < 0.4 * bright  # per-slice min-max would make both ~255
    assert found.info[0][1] == "int16"


def test_float_volume_with_outliers_is_clipped_at_percentiles(tmp_path):
    array = np.full((16, 16, 3), 0.0, dtype=np.float32)
    array[2:14, 2:14] = np.linspace(0.1, 0.3, 144 * 3).reshape(12, 12, 3)
    array[0, 0, 1] = 1e6  # one hot voxel would flatten everything under min-max
    norm = volumes.normalise(volumes.Volume(array, (1, 1, 1), np.eye(4), "s", "float32"), (0.5, 99.5))
    assert norm.max() == pytest.approx(1.0) and norm[2:14, 2:14].mean() > 0.3


def test_anisotropic_spacing_keeps_the_physical_aspect_ratio():
    """A 40 x 20 voxel square of 1 x 2 mm voxels is a square in mm: it must decode square."""
    norm = np.zeros((60, 30, 1), dtype=np.float32)
    norm[10:50, 5:25, 0] = 1.0
    image = volumes.slice_image(norm, "axial", 0, (1.0, 2.0, 3.0), 60)
    rows, cols = np.flatnonzero(image.max(axis=1) > 127), np.flatnonzero(image.max(axis=0) > 127)
    assert abs(len(rows) - len(cols)) <= 1 and len(cols) == 40


def test_reorientation_to_canonical(tmp_path):
    """The same anatomy stored RAS or LAS (x flipped) decodes to the same slice, with left on the left."""
    ras = np.zeros((16, 16, 4), dtype=np.int16)
    ras[2:5, 6:10, :] = 500  # a block at small x: the patient's right
    ras[8:14, 3:13, :] = 200
    las_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    _save_nifti(tmp_path / "A" / "ras.nii.gz", ras)
    _save_nifti(tmp_path / "B" / "las.nii.gz", np.ascontiguousarray(ras[::-1]), las_affine)
    found = _decode(tmp_path, size=16, slices="all")
    first = {Path(p).name.split("#")[0]: found.images[i, 0].numpy() for i, p in enumerate(found.paths)}
    np.testing.assert_array_equal(first["ras.nii.gz"], first["las.nii.gz"])
    bright_cols = np.flatnonzero(first["ras.nii.gz"].max(axis=0) > 200)
    assert bright_cols.max() < 8  # the bright block (x 2..4) is on the image's left half


def test_phantom_volumes_give_back_the_phantom_slices(phantom_volumes):
    found = _decode(phantom_volumes, slices="all")
    generated = phantom.generate(64, seed=0, size=SIZE)
    assert found.layout == "volume-folders" and len(found) == 64
    assert len(set(found.subjects)) == 8 and found.subjects[0] == Path(found.paths[0].split("#")[0]).stem[:-4]
    rows = [generated.subjects.index(s) + int(p.rpartition("=")[2]) for s, p in zip(found.subjects, found.paths)]
    ours, theirs = found.images[:, 0].numpy().astype(float), generated.images[rows].astype(float)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.98
    mirrored = theirs[:, :, ::-1]
    assert np.abs(ours - theirs).mean() < 0.5 * np.abs(ours - mirrored).mean()  # not left-right flipped
    assert [found.classes[y] for y in found.labels] == [p.split("/")[0] for p in found.paths]
    # slice positions along the axis, in mm: 3 mm apart within a volume
    np.testing.assert_allclose(np.diff(found.positions[:8]), phantom_files.VOLUME_SLICE_MM)


# --------------------------------------------------------------------------- layouts

def test_presplit_layout_of_volumes(phantom_volumes, tmp_path):
    root = tmp_path / "presplit"
    for k, path in enumerate(sorted(phantom_volumes.glob("*/*.nii.gz"))):
        split = "test" if k % 3 == 0 else "train"
        (root / split / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / split / path.parent.name / path.name)
    for split in ("train", "test"):  # the class folders must agree between splits
        for name in phantom.CLASSES:
            if not (root / split / name).exists():
                (root / split / name).mkdir(parents=True)
                shutil.copy(next(phantom_volumes.glob(f"{name}/*.nii.gz")), root / split / name / f"x-{split}.nii.gz")
    found = data.scan(root)
    assert found.layout == "volume-pre-split" and set(found.presplit) == {"train", "test"}
    made = splits.make_splits(data.decode(found, SIZE), val_frac=0.2, test_frac=0.2)
    assert made["group_by"] == "subject"
    assert all(p.startswith("test/") for p in made["test"])


def test_csv_layout_by_subject_and_by_path(phantom_volumes, tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    files = sorted(phantom_volumes.glob("*/*.nii.gz"))
    for path in files:
        shutil.copy(path, root / path.name)
    rows = [f"{volumes.volume_stem(p)},{p.parent.name}" for p in files]
    (root / "labels.csv").write_text("subject,label\n" + "\n".join(rows) + "\n")
    found = data.scan(root)
    assert found.layout == "volume-csv" and len(set(found.subjects)) == 8 and len(found.classes) == 4
    (root / "labels.csv").unlink()
    (root / "manifest.csv").write_text("subject,label,path\n" + "\n".join(
        f"patient-{k},{p.parent.name},{p.name}" for k, p in enumerate(files)) + "\n")
    found = data.scan(root)
    assert found.layout == "volume-csv" and found.subjects[0] == "patient-0"
    (root / "manifest.csv").unlink()
    with pytest.raises(DataError, match="need labels"):
        data.scan(root)


def test_dicom_series_equal_the_nifti_and_apply_rescale_slope(phantom_volumes, tmp_path):
    """Class folders whose entries are DICOM series folders; per-slice RescaleSlope must be applied."""
    generated = phantom.generate(64, seed=0, size=SIZE)
    root = tmp_path / "dicom"
    for subject in sorted(set(generated.subjects))[:4]:
        rows = [i for i, s in enumerate(generated.subjects) if s == subject]
        label = phantom.CLASSES[generated.labels[rows[0]]]
        # DICOM pixel columns run toward the patient's left: mirror the displayed slice
        slices = generated.images[rows][:, :, ::-1].astype(np.float64)
        write_dicom_series(root / label / subject, slices, patient=subject, series_uid=pydicom.uid.generate_uid(),
                           pixel_mm=(180 / SIZE, 180 / SIZE), slopes=[1.0, 0.5] * 4)
    ours = _decode(root, slices="all")
    assert ours.layout == "volume-folders" and len(ours) == 32 and len(set(ours.subjects)) == 4
    nifti = _decode(phantom_volumes, slices="all")
    for i, path in enumerate(ours.paths):
        subject, index = Path(path.split("#")[0]).name, int(path.rpartition("=")[2])
        j = next(k for k, p in enumerate(nifti.paths) if f"/{subject}.nii.gz#axial={index}" in p)
        diff = (ours.images[i, 0].int() - nifti.images[j, 0].int()).abs()
        assert diff.max() <= 2, path
    np.testing.assert_allclose(np.diff(ours.positions[:8]), 3.0)


def test_loose_dicom_files_are_grouped_by_series_uid(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "loose"
    for k, patient in enumerate(["p1", "p2", "p3"]):
        write_dicom_series(root / "tmp", rng.integers(0, 800, (3, 24, 24)).astype(float), patient,
                           pydicom.uid.generate_uid())
        for f in (root / "tmp").iterdir():
            f.rename(root / f"{patient}_{f.name}")
    (root / "tmp").rmdir()
    (root / "labels.csv").write_text("subject,label\np1,AD\np2,CN\np3,CN\n")
    found = data.scan(root, slicing=Slicing(slices="all"))
    assert found.layout == "volume-csv" and sorted(set(found.subjects)) == ["p1", "p2", "p3"]
    assert len(found) == 9 and all("@" in p for p in found.paths)
    assert data.decode(found, SIZE).images.shape == (9, 1, SIZE, SIZE)


def test_one_class_of_volumes_is_an_error(phantom_volumes, tmp_path):
    shutil.copytree(phantom_volumes / "Non_Demented", tmp_path / "only" / "Non_Demented")
    with pytest.raises(DataError, match="only one class"):
        data.scan(tmp_path / "only")


def test_real_bundled_volumes(tmp_path):
    """nibabel's real T1 volume (LAS, big-endian int16) and pydicom's real MR slice, as one dataset."""
    volume = volumes.read_nifti(REAL_NIFTI)
    assert volume.data.shape == (33, 41, 25) and volume.spacing == (2.0, 2.0, 2.0)
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    shutil.copy(REAL_NIFTI, (tmp_path / "CN").mkdir() or tmp_path / "CN" / "anatomical.nii")
    shutil.copy(_real_dicom(), (tmp_path / "AD" / "series").mkdir(parents=True) or tmp_path / "AD" / "series")
    found = data.decode(data.scan(tmp_path), SIZE)
    per_class = {c: sum(found.classes[y] == c for y in found.labels) for c in found.classes}
    assert per_class == {"AD": 1, "CN": 25}  # a brain cropped to its box: every axial slice is mostly brain
    assert set(found.subjects) == {"anatomical", "4MR1"}  # NIfTI: file stem; DICOM: PatientID
    assert found.images.float().mean() > 10 and found.info[-1] == ((33, 41), ">i2")
    assert len(data.scan(tmp_path, slicing=Slicing(slices="central:9"))) == 9 + 1


# --------------------------------------------------------------------------- subjects, splits, cache

def test_split_groups_by_volume_subject_automatically_and_audit_runs(phantom_volumes, tmp_path, capsys):
    found = data.decode(data.scan(phantom_volumes), SIZE)
    made = splits.make_splits(found, "default", 0.2, 0.2, 0)
    assert made["group_by"] == "subject" and made["grouping"] is None
    train_subjects = {made["groups"][p] for p in made["train"]}
    assert not train_subjects & {made["groups"][p] for p in made["test"]}
    out = tmp_path / "splits.json"
    data_cli.main(["split", "--data-dir", str(phantom_volumes), "--out", str(out), "--image-size", str(SIZE)])
    data_cli.main(["audit", "--data-dir", str(phantom_volumes), "--splits", str(out), "--image-size", str(SIZE)])
    assert "group_by subject" in capsys.readouterr().out
    central = tmp_path / "central.json"
    data_cli.main(["split", "--data-dir", str(phantom_volumes), "--out", str(central), "--image-size", str(SIZE),
               "--slices", "central:4", "--json"])
    assert sum(json.loads(central.read_text())["counts"]["train"].values()) % 4 == 0


def test_volume_slices_share_the_content_keyed_cache(phantom_volumes, tmp_path):
    cache = tmp_path / "cache"
    first = data.decode(data.scan(phantom_volumes), SIZE, cache)
    assert len(list((cache / "decoded").glob("*.npz"))) == 1
    again = data.decode(data.scan(phantom_volumes), SIZE, cache)
    assert torch.equal(first.images, again.images) and len(list((cache / "decoded").glob("*.npz"))) == 1
    copy_root = tmp_path / "copy"
    shutil.copytree(phantom_volumes, copy_root)
    victim = next(copy_root.glob("*/*.nii.gz"))
    array = nib.load(str(victim)).get_fdata().astype(np.int16)
    nib.save(nib.Nifti1Image(array // 2, nib.load(str(victim)).affine), str(victim))  # new content, same name
    data.decode(data.scan(copy_root), SIZE, cache)
    assert len(list((cache / "decoded").glob("*.npz"))) == 2


def test_config_keys_reach_the_slicing(phantom_volumes):
    from simclr_ad.config import ConfigError, PretrainConfig

    cfg = PretrainConfig(data_dir=str(phantom_volumes), image_size=SIZE, slices="central:3", slice_axis="axial",
                         progress=False)
    found = data.load_dataset(cfg)
    assert len(found) == 8 * 3 and found.slicing == Slicing("axial", "central:3", (0.5, 99.5))
    coronal = data.load_dataset(PretrainConfig(data_dir=str(phantom_volumes), image_size=SIZE, slices="central:2",
                                               slice_axis="coronal", progress=False))
    assert len(coronal) == 16 and coronal.paths[0].endswith("#coronal=15")
    with pytest.raises(ConfigError, match="slice_axis"):
        PretrainConfig(slice_axis="oblique")
    with pytest.raises(ConfigError, match="'slices'"):
        PretrainConfig(slices="brain")


# --------------------------------------------------------------------------- bad input

def _bad_inputs(root: Path) -> dict[str, str]:
    """A class of good volumes plus one bad entry of each kind; returns entry -> expected reason."""
    good = np.zeros((12, 12, 6), dtype=np.int16)
    good[3:9, 3:9] = 300
    for k in range(2):
        _save_nifti(root / "CN" / f"good{k}.nii.gz", good + k)
        _save_nifti(root / "AD" / f"good{k}.nii.gz", good * 2 + k)
    (root / "AD" / "corrupt.nii.gz").write_bytes((root / "CN" / "good0.nii.gz").read_bytes()[:60])
    _save_nifti(root / "AD" / "fmri.nii.gz", np.ones((6, 6, 6, 3), dtype=np.int16))
    nans = good.astype(np.float32)
    nans[0, 0, 0] = np.nan
    _save_nifti(root / "AD" / "nans.nii.gz", nans)
    _save_nifti(root / "AD" / "empty.nii.gz", np.zeros((8, 8, 4), dtype=np.int16))
    rng = np.random.default_rng(0)
    write_dicom_series(root / "AD" / "mixed", rng.integers(0, 500, (2, 16, 16)).astype(float), "p", "1.2.3.1")
    write_dicom_series(root / "tmp", rng.integers(0, 500, (1, 16, 16)).astype(float), "p", "1.2.3.2")
    (root / "tmp" / "im000.dcm").rename(root / "AD" / "mixed" / "other.dcm")
    (root / "tmp").rmdir()
    return {"AD/corrupt.nii.gz": "unreadable NIfTI", "AD/fmri.nii.gz": "4-D volume",
            "AD/nans.nii.gz": "NaN", "AD/empty.nii.gz": "empty volume", "AD/mixed": "2 DICOM series"}


def test_bad_volumes_are_skipped_by_name_and_strict_is_one_error(tmp_path):
    expected = _bad_inputs(tmp_path / "ds")
    with pytest.warns(UserWarning, match="skipping 5 unusable volume"):
        found = data.scan(tmp_path / "ds")
    reasons = dict(found.skipped)
    for entry, reason in expected.items():
        assert reason in reasons[entry], (entry, reasons[entry])
    decoded = data.decode(found, SIZE)
    assert len(set(decoded.subjects)) == 2 and len(decoded) > 0  # good0/good1 of both classes share stems
    with pytest.raises(DataError, match="5 unusable volume"):
        data.decode(found, SIZE, strict=True)


def test_csv_naming_a_missing_volume_is_a_named_skip(tmp_path):
    good = np.zeros((12, 12, 4), dtype=np.int16)
    good[3:9, 3:9] = 300
    _save_nifti(tmp_path / "a.nii.gz", good)
    _save_nifti(tmp_path / "b.nii.gz", good * 2)
    (tmp_path / "labels.csv").write_text("subject,label,path\na,CN,a.nii.gz\nb,AD,b.nii.gz\nc,AD,gone.nii.gz\n")
    found = data.scan(tmp_path)
    assert dict(found.skipped) == {"gone.nii.gz": "listed in the CSV but missing"}
    (tmp_path / "labels.csv").write_text("subject,label\na,CN\nzz,AD\n")
    _save_nifti(tmp_path / "c.nii.gz", good * 3)
    with pytest.raises(DataError, match="only one class"):
        data.scan(tmp_path)
    (tmp_path / "labels.csv").write_text("subject,label\na,CN\nb,AD\nzz,AD\n")
    skipped = dict(data.scan(tmp_path).skipped)
    assert "no volume found" in skipped["zz"] and skipped["c.nii.gz"] == "not listed in the CSV (no label)"


def test_cli_on_only_bad_volumes_is_one_error_line(tmp_path):
    root = tmp_path / "bad"
    for name in ("AD", "CN"):
        (root / name).mkdir(parents=True)
        (root / name / "x.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    out = subprocess.run([sys.executable, "-m", "simclr_ad.data", "inspect", "--data-dir", str(root),
                          "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no usable volumes" in lines[0] and "x.nii.gz" in lines[0]


# --------------------------------------------------------------------------- CLI: inspect, synth, predict

def test_inspect_json_and_preview_figure(phantom_volumes, tmp_path, capsys):
    png = tmp_path / "kept.png"
    data_cli.main(["inspect", "--data-dir", str(phantom_volumes), "--json", "--cache-dir", str(tmp_path / "c"),
               "--slices", "central:4", "--preview", str(png)])
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "volume-folders" and report["n_subjects"] == 8 and report["n_images"] == 32
    assert report["volumes"]["slices_per_volume"] == {"min": 4, "median": 4, "max": 4}
    from PIL import Image

    with Image.open(png) as figure:
        assert figure.size[0] > 300 and figure.size[1] > 150
    with pytest.raises(DataError, match="2-D images"):
        volume_data.preview(data.scan(phantom_files.write_dataset(tmp_path / "png", n=16, size=SIZE)), tmp_path / "x.png")


def test_synth_format_nifti_cli(tmp_path, capsys):
    out = tmp_path / "synth"
    data_cli.main(["synth", "--out", str(out), "--n", "64", "--size", "32", "--format", "nifti"])
    assert "NIfTI volumes" in capsys.readouterr().out
    volume = nib.load(str(next(out.glob("*/*.nii.gz"))))
    assert volume.shape == (32, 32, 8) and nib.aff2axcodes(volume.affine) == ("L", "A", "S")
    assert volume.header.get_zooms() == pytest.approx((180 / 32, 180 / 32, 3.0))
    assert phantom_files.write_volumes(out, n=64, size=32) == out  # a finished set is reused


@pytest.fixture(scope="module")
def classifier_pt(tmp_path_factory) -> Path:
    from simclr_ad import checkpoint
    from simclr_ad.config import FinetuneConfig, config_to_dict
    from simclr_ad.models import build_classifier

    torch.manual_seed(0)
    model = build_classifier("resnet18", 2)
    cfg = config_to_dict(FinetuneConfig(arch="resnet18", image_size=SIZE, epochs=1, slices="central:3"))
    path = tmp_path_factory.mktemp("run") / "best.pt"
    checkpoint.save(checkpoint.make(model, None, None, 1, 1, 0.5, cfg, "resnet18",
                                    {"classes": ["AD", "CN"], "image_size": SIZE, "task": "multiclass"}), path)
    return path


def test_predict_a_volume_per_slice_and_subject_with_gradcam(phantom_volumes, classifier_pt, tmp_path, capsys):
    from simclr_ad import predict
    from tests.conftest import write_png

    volume = str(next(phantom_volumes.glob("*/*.nii.gz")))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"nope")
    png = str(write_png(tmp_path / "a.png"))
    series = np.random.default_rng(0).integers(0, 900, (5, 24, 24)).astype(float)
    dicom_dir = str(write_dicom_series(tmp_path / "series", series, "pat-7", pydicom.uid.generate_uid()))
    cams = tmp_path / "cams"
    inputs = [volume, str(broken), png, dicom_dir]
    code = predict.main([*inputs, "--checkpoint", str(classifier_pt), "--json", "--gradcam", str(cams)])
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert code == 1 and [r["path"] for r in results] == inputs
    assert results[3]["subject"] == "pat-7" and [s["slice"] for s in results[3]["slices"]] == [
        "axial=1", "axial=2", "axial=3"]
    scan_result = results[0]
    assert len(scan_result["slices"]) == 3 and scan_result["subject"] == volumes.volume_stem(volume)
    slice_probs = np.array([list(s["probabilities"].values()) for s in scan_result["slices"]])
    np.testing.assert_allclose(list(scan_result["probabilities"].values()), slice_probs.mean(axis=0), rtol=1e-6)
    assert all(Path(s["gradcam"]).is_file() for s in scan_result["slices"])
    assert "unreadable NIfTI" in results[1]["error"] and "broken.nii.gz" in captured.err
    assert results[2]["predicted"] in ("AD", "CN")
    assert predict.main([volume, "--checkpoint", str(classifier_pt)]) == 0
    assert "mean over 3 slices" in capsys.readouterr().out


# --------------------------------------------------------------------------- end to end

def test_pretrain_finetune_sweep_report_on_phantom_volumes(tmp_path):
    """The three stages on a folder of phantom NIfTI volumes, split by subject without being told."""
    from simclr_ad import finetune, pretrain, report

    root = phantom_files.write_volumes(tmp_path / "vols", n=192, seed=0, size=SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrain.main(["--config", TINY, "--data-dir", str(root), "--out", str(tmp_path / "pre"), "--epochs", "1",
                       "--knn-every", "0"])
        finetune.main(["--config", TINY, "--data-dir", str(root), "--sweep", "--encoder",
                       str(tmp_path / "pre" / "encoder.pt"), "--inits", "simclr", "random", "--fractions", "1.0",
                       "--seeds", "0", "--epochs", "1", "--out", str(tmp_path / "ft")])
        report.main(["--runs", str(tmp_path / "ft"), "--out", str(tmp_path / "rep"), "--no-gradcam"])
    made = json.loads((tmp_path / "ft" / "splits.json").read_text())
    assert made["group_by"] == "subject" and made["group_by_requested"] == "default"
    metrics = json.loads((tmp_path / "ft" / "simclr-finetune" / "frac1" / "seed0" / "metrics.json").read_text())
    assert "subject_balanced_accuracy" in metrics
    assert "group_by=subject" in (tmp_path / "rep" / "report.md").read_text()
