"""torchrun with 2 CPU ranks (gloo): gathered negatives, one checkpoint, resume."""
import os
import subprocess
import sys

import pytest

from simclr_ad import checkpoint
from simclr_ad.models import build_backbone
from tests.conftest import ROOT, TINY

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

pytestmark = pytest.mark.slow  # torchrun subprocesses


def _env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1", "SIMCLR_AD_NO_REEXEC": "1",
            "SIMCLR_AD_CACHE": str(tmp_path / "cache")}


def test_two_ranks_gather_negatives_like_one_process(tmp_path):
    out = subprocess.run([*TORCHRUN, str(ROOT / "tests" / "ddp_ntxent_check.py")], capture_output=True,
                         text=True, cwd=ROOT, env=_env(tmp_path), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ok=True" in out.stdout


def test_pretrain_under_torchrun_writes_one_checkpoint_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    command = [*TORCHRUN, "-m", "simclr_ad.pretrain", "--config", TINY, "--out", str(run_dir),
               "--batch-size", "16", "--knn-every", "0"]
    out = subprocess.run(command + ["--epochs", "1"], capture_output=True, text=True, cwd=ROOT, env=_env(tmp_path), timeout=180)
    assert out.returncode == 0, "\n".join(l for l in out.stderr.splitlines() if "error" in l.lower())[-3000:]
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["encoder.pt", "last.pt"]  # one checkpoint, not one per rank
    ckpt = checkpoint.load(run_dir / "last.pt")
    assert ckpt["epoch"] == 1 and not any(k.startswith("module.") for k in ckpt["model"])
    backbone, _ = build_backbone("resnet18")
    backbone.load_state_dict(checkpoint.load(run_dir / "encoder.pt"), strict=True)
    resumed = subprocess.run(command + ["--epochs", "2"],
                             capture_output=True, text=True, cwd=ROOT, env=_env(tmp_path), timeout=180)
    assert resumed.returncode == 0, "\n".join(l for l in resumed.stderr.splitlines() if "error" in l.lower())[-3000:]
    assert checkpoint.load(run_dir / "last.pt")["epoch"] == 2
