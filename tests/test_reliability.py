"""Crash-safe resume and bad inputs. Each bad-input case is one line in CASES."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from simclr_ad import checkpoint, finetune, pretrain
from simclr_ad.errors import UserError
from tests.conftest import ROOT, TINY

# ----------------------------------------------------------------------------- kill / resume


def _env(tmp_path):
    return {**os.environ, "SIMCLR_AD_NO_REEXEC": "1", "SIMCLR_AD_CACHE": str(tmp_path / "cache")}


def _clean_and_killed(stage_args: list[str], watch: str, tmp_path, kills: int = 2):
    """Run a stage once cleanly and once under repeated SIGKILL + resume; return both run dirs.

    Each kill lands soon after ``watch`` (a checkpoint inside the run dir) changes.
    """
    base = [sys.executable, "-m", *stage_args, "--config", TINY, "--deterministic", "--num-threads", "1"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    subprocess.run(base + ["--out", str(clean)], cwd=ROOT, env=_env(tmp_path), check=True, capture_output=True)
    command, watched = base + ["--out", str(killed)], killed / watch
    for attempt in range(kills):
        before = watched.stat().st_mtime_ns if watched.exists() else 0
        proc = subprocess.Popen(command, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if watched.exists() and watched.stat().st_mtime_ns != before:
                time.sleep(0.3 * (attempt + 1))  # land somewhere after the save, mid-step
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = subprocess.run(command, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return clean, killed


@pytest.mark.slow
def test_pretrain_killed_and_resumed_equals_clean_run(tmp_path):
    clean, killed = _clean_and_killed(["simclr_ad.pretrain", "--epochs", "3", "--checkpoint-every-steps", "2",
                                       "--knn-every", "0"], "last.pt", tmp_path)
    a, b = checkpoint.load(clean / "encoder.pt"), checkpoint.load(killed / "encoder.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed encoder differs from the uninterrupted run"


@pytest.mark.slow
def test_finetune_killed_and_resumed_equals_clean_run(tmp_path):
    clean, killed = _clean_and_killed(["simclr_ad.finetune", "--epochs", "5", "--init", "random",
                                       "--label-frac", "0.5"], "last.pt", tmp_path)
    a, b = checkpoint.load(clean / "best.pt")["model"], checkpoint.load(killed / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (clean / "metrics.json").read_text().split('"wall_s"')[0] == (killed / "metrics.json").read_text().split('"wall_s"')[0]


# ----------------------------------------------------------------------------- bad inputs

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if unpickled


def _pickle_payload(tmp_path):
    torch.save({"model": _Payload(str(tmp_path / "PWNED"))}, tmp_path / "evil.pt")
    return ["--init", str(tmp_path / "evil.pt")]


def _truncated(tmp_path):
    out = tmp_path / "r"
    finetune.main(["--config", TINY, "--out", str(out), "--init", "random", "--epochs", "1"])
    data = (out / "last.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    return ["--init", str(tmp_path / "trunc.pt")]


def _newer_format(tmp_path):
    torch.save({"format": 99, "model": {}}, tmp_path / "new.pt")
    return ["--init", str(tmp_path / "new.pt")]


def _arch_mismatch_resume(tmp_path):
    finetune.main(["--config", TINY, "--out", str(tmp_path / "run"), "--init", "random", "--epochs", "1"])
    (tmp_path / "run" / "metrics.json").unlink()  # as if it had been killed before the end
    return ["--arch", "mobilenet_v2", "--epochs", "2"]


def _out_is_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    return ["--out", str(tmp_path / "afile")]


def _no_validation_images(tmp_path):
    from tests.conftest import write_png

    for c in ("A", "B"):
        for i in range(2):  # two images a class: one for train, one for test, none for val
            write_png(tmp_path / "ds" / c / f"{i}.png", seed=i + (50 if c == "B" else 0))
    return ["--data-dir", str(tmp_path / "ds"), "--group-by", "image"]


def _garbage_zip(tmp_path):
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save({"model": {}}, buffer)
    source, out = zipfile.ZipFile(io.BytesIO(buffer.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            target.writestr(name, b"\x00garbage" if name.endswith("data.pkl") else source.read(name))
    (tmp_path / "garbage.pt").write_bytes(out.getvalue())
    return ["--init", str(tmp_path / "garbage.pt")]


def _torchvision_rgb_encoder(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18-rgb.pth")
    return ["--init", "simclr", "--encoder", str(tmp_path / "resnet18-rgb.pth")]


def _yaml(text):
    def setup(tmp_path):
        (tmp_path / "c.yaml").write_text(text)
        return ["--config", str(tmp_path / "c.yaml")]
    return setup


# (id, setup(tmp_path) -> extra argv, expected message). Adding a case is one line.
CASES = [
    ("unknown-key", lambda t: ["--epoch", "3"], "unrecognized arguments: --epoch"),
    ("unknown-yaml-key", _yaml("lr_max: 1\n"), "unknown config key 'lr_max'"),
    ("wrong-type", _yaml("epochs: many\n"), "'epochs' expects int"),
    ("negative-epochs", lambda t: ["--epochs", "-1"], "'epochs' must be >= 0"),
    ("batch-size-range", lambda t: ["--batch-size", "0"], "'batch_size' must be between"),
    ("label-frac-too-small", lambda t: ["--label-unit", "slice", "--label-frac", "0.001"], "0.001"),
    ("label-frac-out-of-range", lambda t: ["--label-frac", "2"], "label_frac"),
    ("out-is-a-file", _out_is_file, "is a file"),
    ("read-only-out", lambda t: ["--out", "/proc/simclr_ad_run"], "cannot write to run dir"),
    ("missing-data-dir", lambda t: ["--data-dir", str(t / "nope")], "data dir not found"),
    ("pickle-payload", _pickle_payload, "refusing to load"),
    ("truncated-checkpoint", _truncated, "truncated or not a torch file"),
    ("newer-checkpoint", _newer_format, "newer simclr_ad"),
    ("newer-config", _yaml("format: 99\n"), "newer than this simclr_ad"),
    ("arch-mismatch-on-resume", _arch_mismatch_resume, "holds a resnet18 run but --arch is mobilenet_v2"),
    ("encoder-missing", lambda t: ["--init", "simclr", "--encoder", str(t / "none.pt")], "checkpoint not found"),
    # issue 18
    ("no-validation-images", _no_validation_images, "needs validation and test images, but the split has no val"),
    ("garbage-zip-is-corrupt", _garbage_zip, "it is corrupt"),
    ("torchvision-rgb-encoder", _torchvision_rgb_encoder, "holds 3-channel \\(RGB\\) weights.*--init imagenet"),
]


@pytest.mark.parametrize("setup,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(tmp_path, setup, message):
    extra = setup(tmp_path)
    with pytest.raises(UserError, match=message):
        finetune.main(["--config", TINY, "--out", str(tmp_path / "run"), "--init", "random", "--epochs", "1", *extra])
    assert not (tmp_path / "PWNED").exists(), "the pickle payload ran"


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_cli_errors_are_one_line_exit_2(tmp_path, stage):
    out = subprocess.run([sys.executable, "-m", f"simclr_ad.{stage}", "--config", TINY, "--data-dir",
                          str(tmp_path / "missing")], capture_output=True, text=True, cwd=ROOT, env=_env(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"error: data dir not found: {tmp_path / 'missing'}"]


def test_bad_images_are_skipped_by_name_and_training_goes_on(tmp_path):
    from tests.conftest import write_png

    root = tmp_path / "ds"
    for c in ("A", "B"):
        for i in range(12):
            write_png(root / c / f"{i}.png", seed=i + (50 if c == "B" else 0))
    (root / "A" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "B" / "zero.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="broken.jpg"):
        run = pretrain.main(["--config", TINY, "--data-dir", str(root), "--out", str(tmp_path / "p"), "--epochs", "1",
                             "--batch-size", "8", "--knn-every", "0", "--group-by", "image"])
    assert (run / "encoder.pt").is_file()
