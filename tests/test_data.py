import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from simclr_ad import data, data_cli
from simclr_ad.data import DataError, class_key, decode, scan
from tests.conftest import ROOT, write_png


def test_class_names_normalised():
    assert class_key("Mild_Demented") == class_key("MildDemented") == class_key("Mild Demented") == "milddemented"


def test_class_folders_layout(class_folders):
    found = decode(scan(class_folders), 32)
    assert found.layout == "class-folders"
    assert found.classes == ["Mild_Demented", "Non_Demented", "Very_Mild_Demented"]
    assert found.images.shape == (18, 1, 32, 32) and found.images.dtype == torch.uint8
    assert np.bincount(found.labels).tolist() == [6, 6, 6]


def test_single_wrapper_folder_is_descended(class_folders, tmp_path):
    wrapper = tmp_path / "Dataset"
    class_folders.rename(tmp_path / "ds_moved")
    (tmp_path / "outer").mkdir()
    (tmp_path / "ds_moved").rename(tmp_path / "outer" / "Dataset")
    assert scan(tmp_path / "outer").classes == ["Mild_Demented", "Non_Demented", "Very_Mild_Demented"]
    assert not wrapper.exists()


def test_presplit_layout_merges_spellings(tmp_path):
    for split in ("train", "test"):
        write_png(tmp_path / split / ("MildDemented" if split == "test" else "Mild_Demented") / "a.png")
        write_png(tmp_path / split / "Non_Demented" / "b.png")
    found = scan(tmp_path)
    assert found.layout == "pre-split" and len(found.classes) == 2
    assert sorted(set(found.presplit)) == ["test", "train"]


def test_presplit_classes_must_agree(tmp_path):
    write_png(tmp_path / "train" / "A" / "a.png")
    write_png(tmp_path / "train" / "B" / "b.png")
    write_png(tmp_path / "test" / "A" / "c.png")
    with pytest.raises(DataError, match="classes differ between splits"):
        scan(tmp_path)


def test_manifest_layout_with_subjects(tmp_path):
    write_png(tmp_path / "img" / "x 1.png")
    write_png(tmp_path / "img" / "y.PNG", seed=1)
    (tmp_path / "list.csv").write_text("path,label,subject\nimg/x 1.png,AD,s1\nimg/y.PNG,CN,s2\n")
    found = decode(scan(tmp_path / "list.csv"), 16)
    assert found.layout == "manifest" and found.subjects == ["s1", "s2"] and found.classes == ["AD", "CN"]


@pytest.mark.parametrize("mode,size", [("L", (40, 40)), ("RGB", (50, 30)), ("RGBA", (20, 20)), ("P", (33, 33)),
                                       ("I;16", (64, 64)), ("L", (1, 1)), ("L", (900, 700))])
def test_any_mode_and_size_loads_as_gray(tmp_path, mode, size):
    write_png(tmp_path / "A" / "a.png", size=size, mode=mode)
    write_png(tmp_path / "B" / "b.png")
    found = decode(scan(tmp_path), 32)
    assert found.images.shape == (2, 1, 32, 32)


def test_sixteen_bit_uses_full_range(tmp_path):
    write_png(tmp_path / "A" / "a.png", size=(16, 16), mode="I;16")
    write_png(tmp_path / "B" / "b.png")
    found = decode(scan(tmp_path), 16)
    assert found.images[0].max() > 200  # 16-bit values rescaled, not clipped to 255 or truncated to 0


BAD_FILES = {
    "truncated.jpg": lambda p: p.write_bytes(_jpeg_bytes()[:200]),
    "empty.png": lambda p: p.write_bytes(b""),
    "text.jpg": lambda p: p.write_text("this is not an image"),
}


def _jpeg_bytes():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_image_is_skipped_by_name_or_strict_error(class_folders, name):
    BAD_FILES[name](class_folders / "Non_Demented" / name)
    with pytest.warns(UserWarning, match=name):
        found = decode(scan(class_folders), 32)
    assert len(found) == 18 and any(name in p for p, _ in found.skipped)
    with pytest.raises(DataError, match=name):
        decode(scan(class_folders), 24, strict=True)


@pytest.mark.parametrize("setup,message", [
    (lambda root: (root / "A").mkdir(parents=True), "No images found under"),
    (lambda root: write_png(root / "A" / "a.png"), "only one class"),
    (lambda root: root.mkdir(), "No images found under"),
    (lambda root: None, "data dir not found"),
    (lambda root: (write_png(root / "A" / "a.png"), write_png(root / "B" / "b.png"), (root / "C").mkdir()),
     "No images found under .*C"),
    (lambda root: (root.mkdir(), (root / "m.csv").write_text("file,y\na.png,A\n")), "needs columns 'path' and 'label'"),
    (lambda root: (write_png(root / "a.png"), (root / "manifest.csv").write_text("path,label\na.png,\n")), "empty label"),
    (lambda root: (root.mkdir(), (root / "manifest.csv").write_text("path,label\n../x.png,A\n")), "outside"),
    (lambda root: (root.mkdir(), (root / "manifest.csv").write_text("path,label\n/etc/passwd,A\n")), "absolute path"),
])
def test_bad_dataset_is_one_clear_error(tmp_path, setup, message):
    root = tmp_path / "ds"
    setup(root)
    target = root / "m.csv" if (root / "m.csv").exists() else root
    with pytest.raises(DataError, match=message):
        decode(scan(target), 16)


def test_manifest_missing_path_is_named(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png", seed=2)
    (tmp_path / "manifest.csv").write_text("path,label\na.png,A\nb.png,B\ngone.png,B\n")
    found = scan(tmp_path)
    assert ("gone.png", "listed in the manifest but missing") in found.skipped


def test_disk_cache_is_keyed_by_content(class_folders, tmp_path):
    cache = tmp_path / "cache"
    first = decode(scan(class_folders), 32, cache)
    assert len(list((cache / "decoded").glob("*.npz"))) == 1
    second = decode(scan(class_folders), 32, cache)
    assert torch.equal(first.images, second.images)
    write_png(class_folders / "Non_Demented" / "img_0.png", seed=999)  # same name, new content
    third = decode(scan(class_folders), 32, cache)
    assert len(list((cache / "decoded").glob("*.npz"))) == 2
    assert not torch.equal(first.images, third.images)


def _messy(root):
    write_png(root / "Mild Demented" / "big rgb.JPG", size=(300, 200), mode="RGB")
    write_png(root / "Mild Demented" / "ü-ñ.png", mode="P")
    write_png(root / "NonDemented" / "a.tif", size=(17, 17))
    write_png(root / "NonDemented" / "b.bmp", mode="RGB")
    (root / "NonDemented" / "broken.jpg").write_bytes(_jpeg_bytes()[:300])
    (root / "NonDemented" / "notes.jpg").write_text("hello")


def test_inspect_cli_json_on_messy_folder(tmp_path):
    _messy(tmp_path / "messy")
    out = subprocess.run([sys.executable, "-m", "simclr_ad.data", "inspect", "--data-dir", str(tmp_path / "messy"),
                          "--json", "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    report = json.loads(out.stdout)
    assert report["layout"] == "class-folders" and report["n_images"] == 4
    assert report["classes"] == {"Mild Demented": 2, "NonDemented": 2}
    assert sorted(p.rsplit("/", 1)[-1] for p in report["unreadable"]) == ["broken.jpg", "notes.jpg"]


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "simclr_ad.data", "inspect", "--data-dir", str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: data dir not found") and "Traceback" not in out.stderr


def test_synthetic_default_dataset(tmp_path):
    class Cfg:
        data_dir, synth_n, synth_seed, image_size, cache_dir, strict, progress = None, 64, 0, 32, str(tmp_path), False, False
        allow_absolute_paths = False
    found = data.load_dataset(Cfg)
    assert found.layout == "synthetic" and len(found) == 64 and found.subjects is not None
    assert found.masks is not None and found.masks.shape == found.images.shape


def test_absolute_manifest_paths_only_when_allowed(tmp_path):
    outside = write_png(tmp_path / "elsewhere" / "a.png")
    write_png(tmp_path / "ds" / "b.png", seed=3)
    (tmp_path / "ds" / "manifest.csv").write_text(f"path,label\n{outside},A\nb.png,B\n")
    with pytest.raises(DataError, match="absolute path"):
        scan(tmp_path / "ds")
    assert len(scan(tmp_path / "ds", allow_absolute=True)) == 2


# ----------------------------------------------------------------------------- issue 18: leaks and blow-ups

def _two_class_manifest(root, rows):
    for i in range(4):
        write_png(root / f"a{i}.png", seed=i)
        write_png(root / f"b{i}.png", seed=10 + i)
    (root / "manifest.csv").write_text("path,label\n" + rows)
    return root


def test_duplicate_manifest_rows_are_refused_by_line(tmp_path):
    rows = "".join(f"a{i}.png,A\nb{i}.png,B\n" for i in range(4))
    _two_class_manifest(tmp_path, rows + rows)  # every row twice: the same image in train and test
    with pytest.raises(DataError, match=r"line 10: 'a0.png' is already listed on line 2"):
        scan(tmp_path)
    (tmp_path / "manifest.csv").write_text("path,label\na0.png,A\nb0.png,B\n./a0.png,B\n")  # one image, two labels
    with pytest.raises(DataError, match=r"line 4: './a0.png' is already listed on line 2"):
        scan(tmp_path)


@pytest.mark.parametrize("mask", ["../../../etc/passwd", "/etc/passwd"])
def test_manifest_masks_are_confined_to_the_data_root(tmp_path, mask):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png", seed=2)
    (tmp_path / "manifest.csv").write_text(f"path,label,mask\na.png,A,{mask}\nb.png,B,a.png\n")
    with pytest.raises(DataError, match="line 2: (absolute path '/etc/passwd'|'../../../etc/passwd' points outside)"):
        scan(tmp_path)


@pytest.mark.parametrize("content,message", [(None, "mask 'gone.png' of 'a.png' does not exist"),
                                             (b"junk", "mask 'gone.png' of 'a.png' cannot be read")])
def test_missing_or_junk_mask_is_one_clear_error(tmp_path, content, message):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png", seed=2)
    if content is not None:
        (tmp_path / "gone.png").write_bytes(content)
    (tmp_path / "manifest.csv").write_text("path,label,mask\na.png,A,gone.png\nb.png,B,a.png\n")
    with pytest.raises(DataError, match=message):
        decode(scan(tmp_path), 16, tmp_path / "cache")


def test_manifest_with_bom_is_read_and_non_utf8_is_one_error(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png", seed=2)
    (tmp_path / "manifest.csv").write_bytes(b"\xef\xbb\xbfpath,label\na.png,A\nb.png,B\n")  # Excel's CSV UTF-8
    assert scan(tmp_path).classes == ["A", "B"]
    (tmp_path / "manifest.csv").write_bytes("path,label\na.png,Démence\nb.png,B\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8 text"):
        scan(tmp_path)


def test_an_absurd_aspect_ratio_is_skipped_by_name_not_padded(class_folders, tmp_path):
    from PIL import Image

    strip = class_folders / "Mild_Demented" / "strip.png"
    Image.new("L", (1, 150000), 255).save(strip)  # a few hundred bytes; padded square it is 22.5 GB
    assert strip.stat().st_size < 2000
    with pytest.warns(UserWarning, match="strip.png"):
        found = decode(scan(class_folders), 32, tmp_path / "cache")
    assert len(found) == 18 and "aspect ratio 1x150000" in dict(found.skipped)["Mild_Demented/strip.png"]
    with pytest.raises(ValueError, match="aspect ratio"):
        data.decode_image(strip.read_bytes(), 32)


def test_non_utf8_broken_symlink_fifo_and_outside_symlink_are_named(class_folders, tmp_path):
    import os

    folder = class_folders / "Non_Demented"
    write_png(tmp_path / "outside.png", seed=7)
    with open(os.path.join(os.fsencode(folder), b"bad\xff.png"), "wb") as handle:
        handle.write((folder / "img_0.png").read_bytes())
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (folder / "outside.png").symlink_to(tmp_path / "outside.png")
    os.mkfifo(folder / "pipe.png")
    found = scan(class_folders)
    reasons = {path.rsplit("/", 1)[-1]: why for path, why in found.skipped}
    assert reasons["bad\\xff.png"].startswith("file name is not valid UTF-8")
    assert reasons["dangling.png"] == "broken symlink"
    assert reasons["pipe.png"].startswith("not a regular file")
    assert "outside the data root" in reasons["outside.png"]
    assert len(found) == 18
    json.dumps(found.skipped, ensure_ascii=False).encode("utf-8")  # printable and writable
    data_cli.main(["split", "--data-dir", str(class_folders), "--out", str(tmp_path / "s.json"), "--image-size", "32",
               "--cache-dir", str(tmp_path / "cache"), "--group-by", "image"])  # crashed writing the name
    assert len(json.loads((tmp_path / "s.json").read_text())["groups"]) == 18


def test_unreadable_file_is_skipped_by_name(class_folders, tmp_path, monkeypatch):
    real = data._read_bytes

    def no_permission(root, rel):
        if rel.endswith("img_3.png"):
            raise PermissionError(13, "Permission denied")
        return real(root, rel)

    monkeypatch.setattr(data, "_read_bytes", no_permission)
    with pytest.warns(UserWarning, match="img_3.png"):
        found = decode(scan(class_folders), 32, tmp_path / "cache")
    assert len(found) == 15 and all("Permission denied" in why for p, why in found.skipped if "img_3" in p)


def test_a_corrupt_image_cache_is_rebuilt(class_folders, tmp_path):
    first = decode(scan(class_folders), 32, tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache" / "decoded").glob("*.npz")
    cache_file.write_bytes(b"PK\x03\x04 not a real npz")
    with pytest.warns(UserWarning, match="corrupt"):
        again = decode(scan(class_folders), 32, tmp_path / "cache")
    assert torch.equal(first.images, again.images)
    assert torch.equal(decode(scan(class_folders), 32, tmp_path / "cache").images, first.images)  # rewritten
