"""The segmentation stage: strict encoder loading into the U-Net, masked-patient subsets, a run, resume."""
import json

import pytest
import torch

from simclr_ad import checkpoint, fileio, segment, unet
from simclr_ad.models import ModelError, build_backbone
from tests.conftest import ROOT

SEG_TINY = str(ROOT / "configs" / "seg_tiny.yaml")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _encoder_file(tmp_path, arch="resnet18"):
    """An encoder.pt in pretrain's format: the backbone's plain state_dict (pretrain.save_encoder)."""
    torch.manual_seed(1)
    backbone, _ = build_backbone(arch)
    path = tmp_path / f"{arch}-encoder.pt"
    checkpoint.save({k: v.detach().clone() for k, v in backbone.state_dict().items()}, path)
    return path, backbone.state_dict()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_encoder_pt_loads_strictly_into_the_unet_encoder(tmp_path, arch):
    path, state = _encoder_file(tmp_path, arch)
    model = unet.build_unet(arch)
    unet.init_encoder(model, arch, "simclr", str(path))
    loaded = model.encoder.state_dict()
    assert set(loaded) == set(state)  # exactly the same keys: nothing missing, nothing left over
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_misfitting_encoders_are_named(tmp_path):
    path, state = _encoder_file(tmp_path, "resnet18")
    with pytest.raises(ModelError, match="holds a resnet18 encoder but the U-Net's is resnet50"):
        unet.init_encoder(unet.build_unet("resnet50"), "resnet50", "simclr", str(path))
    state = dict(state)
    state.pop("layer4.1.bn2.running_var")
    checkpoint.save(state, tmp_path / "partial.pt")
    with pytest.raises(ModelError, match="does not fit.*layer4.1.bn2.running_var"):
        unet.init_encoder(unet.build_unet("resnet18"), "resnet18", "simclr", str(tmp_path / "partial.pt"))


def test_imagenet_init_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ModelError, match="not cached.*never downloads"):
        unet.init_encoder(unet.build_unet("resnet18"), "resnet18", "imagenet")


def test_mask_subsets_are_nested_seeded_by_the_split_and_never_empty():
    groups = {f"p{i}/s{k}.png": f"p{i}" for i in range(40) for k in range(3)}
    split = {"train": sorted(groups), "groups": groups, "seed": 0}
    subsets = {f: set(segment.mask_subset(split, f)) for f in (0.01, 0.1, 0.2, 0.5, 1.0)}
    patients = {f: {groups[p] for p in s} for f, s in subsets.items()}
    assert [len(patients[f]) for f in (0.01, 0.1, 0.2, 0.5, 1.0)] == [1, 4, 8, 20, 40]
    assert subsets[0.01] <= subsets[0.1] <= subsets[0.2] <= subsets[0.5] <= subsets[1.0]
    assert all(len(s) == 3 * len(patients[f]) for f, s in subsets.items())  # whole patients
    assert segment.mask_subset(split, 0.1) == segment.mask_subset(dict(split), 0.1)
    assert set(segment.mask_subset({**split, "seed": 1}, 0.1)) != subsets[0.1]


def test_soft_dice_loss_by_hand():
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1
    logits = torch.full((1, 1, 2, 2), -1e4)
    logits[0, 0, 0, 0] = 1e4  # a perfect prediction: 1 - (2 + 1) / (1 + 1 + 1)
    assert segment.soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    # all wrong: no overlap, 3 predicted pixels, 1 true: 1 - (0 + 1) / (3 + 1 + 1)
    assert segment.soft_dice_loss(-logits, target).item() == pytest.approx(0.8, abs=1e-6)


ARGS = ["--config", SEG_TINY, "--deterministic", "--num-threads", "1"]


def test_segment_run_writes_records_and_an_interrupted_run_resumes(tmp_path, monkeypatch):
    encoder, _ = _encoder_file(tmp_path)
    args = ARGS + ["--init", "simclr", "--encoder", str(encoder), "--mask-frac", "0.5"]
    clean = segment.main(args + ["--out", str(tmp_path / "clean")])
    metrics = json.loads((clean / "metrics.json").read_text())
    assert metrics["stage"] == "segment" and metrics["n_train_patients"] == 4 and metrics["group_by"] == "subject"
    assert 0 <= metrics["test_patient_dice"] <= 1 and metrics["encoder_sha256"] == fileio.file_sha256(encoder)
    rows = (clean / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,group,true_area") and len(rows) == metrics["n_test"] + 1
    assert [json.loads(line)["epoch"] for line in (clean / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert any((clean / "tb").iterdir())
    best = checkpoint.load(clean / "best.pt")
    assert best["extra"]["task"] == "segment" and best["config"]["mask_frac"] == 0.5

    real = segment.train_one_epoch

    class Killed(Exception):
        pass

    def killed_in_epoch_two(*args):  # train_one_epoch(..., generator, epoch)
        if args[-1] == 1:
            raise Killed
        return real(*args)

    monkeypatch.setattr(segment, "train_one_epoch", killed_in_epoch_two)
    with pytest.raises(Killed):
        segment.main(args + ["--out", str(tmp_path / "killed")])
    assert checkpoint.load(tmp_path / "killed" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "killed" / "metrics.json").exists()
    monkeypatch.setattr(segment, "train_one_epoch", real)
    resumed = segment.main(args + ["--out", str(tmp_path / "killed")])
    again = json.loads((resumed / "metrics.json").read_text())
    assert [json.loads(line)["epoch"] for line in (resumed / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    a, b = checkpoint.load(clean / "best.pt")["model"], checkpoint.load(resumed / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the uninterrupted one"
    drop = ("wall_s", "git_sha")
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in metrics.items() if k not in drop}
    assert segment.main(args + ["--out", str(tmp_path / "killed")]) == resumed  # finished: not run again
