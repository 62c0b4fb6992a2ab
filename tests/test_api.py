"""The Python API: the stages' run(cfg), report.run, simclr_ad.embed; the package leaves matplotlib alone."""
import subprocess
import sys

import torch

import simclr_ad
from simclr_ad import checkpoint, finetune, pretrain, report
from simclr_ad.models import build_backbone
from tests.conftest import ROOT


def test_the_stages_have_run_functions():
    for module in (pretrain, finetune, report):
        assert callable(module.run) and callable(module.main)


def test_embed_with_a_module_and_with_an_encoder_file(tmp_path):
    torch.manual_seed(0)
    backbone, dim = build_backbone("resnet18")
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    feats = simclr_ad.embed(images, backbone)
    assert feats.shape == (3, dim) and torch.allclose(feats.norm(dim=1), torch.ones(3), atol=1e-5)
    assert backbone.training  # its mode is restored
    checkpoint.save(backbone.state_dict(), tmp_path / "encoder.pt")
    assert torch.allclose(simclr_ad.embed(images[:, 0], tmp_path, image_size=32), feats, atol=1e-5)


def test_importing_every_module_leaves_matplotlibs_backend_alone():
    code = ("import matplotlib, pkgutil, importlib, simclr_ad\n"
            "before = matplotlib.get_backend()\n"
            "for m in pkgutil.iter_modules(simclr_ad.__path__):\n"
            "    importlib.import_module('simclr_ad.' + m.name)\n"
            "assert matplotlib.get_backend() == before == 'svg', matplotlib.get_backend()\n")
    env = {"MPLBACKEND": "svg", "PATH": "", "PYTHONPATH": str(ROOT), "SIMCLR_AD_NO_REEXEC": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
