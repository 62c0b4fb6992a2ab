import json

import pytest
import torch

from simclr_ad import checkpoint, pretrain
from simclr_ad.models import build_backbone
from tests.conftest import TINY


def _lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    pretrain.main(["--config", TINY, "--out", str(out), "--deterministic"])
    return out


def test_writes_every_output(tiny_run):
    for name in ("config.yaml", "checkpoints/last.pt", "encoder.pt", "metrics.jsonl"):
        assert (tiny_run / name).is_file(), name
    assert list((tiny_run / "tb").glob("events.out.tfevents.*"))
    at_init, *lines = _lines(tiny_run)
    assert at_init["epoch"] == 0 and set(at_init) == {"epoch", "knn_accuracy", "knn_balanced_accuracy", "time"}
    assert [line["epoch"] for line in lines] == [1, 2]
    for key in ("loss", "lr", "img_per_s", "knn_accuracy"):
        assert all(key in line for line in lines), key
    ckpt = checkpoint.load(tiny_run / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "step", "rng", "best_metric", "config", "git_sha"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["config"]["arch"] == "resnet18"


def test_encoder_loads_strictly(tiny_run):
    backbone, _ = build_backbone("resnet18")
    backbone.load_state_dict(checkpoint.load(tiny_run / "encoder.pt"), strict=True)


def test_finished_run_says_so(tiny_run, capsys):
    before = (tiny_run / "checkpoints" / "last.pt").stat().st_mtime_ns
    pretrain.main(["--config", TINY, "--out", str(tiny_run), "--deterministic"])
    assert "already finished" in capsys.readouterr().out
    assert (tiny_run / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_interrupted_run_resumes_at_the_right_epoch_and_matches(tiny_run, tmp_path):
    out = tmp_path / "run"
    pretrain.main(["--config", TINY, "--out", str(out), "--deterministic", "--epochs", "1"])
    assert checkpoint.load(out / "checkpoints" / "last.pt")["epoch"] == 1
    pretrain.main(["--config", TINY, "--out", str(out), "--deterministic", "--epochs", "2"])  # extends
    assert [line["epoch"] for line in _lines(out)] == [0, 1, 2]  # the kNN at initialisation only once
    resumed, clean = checkpoint.load(out / "encoder.pt"), checkpoint.load(tiny_run / "encoder.pt")
    # Extending a 1-epoch schedule to 2 changes the cosine horizon, so the LR after epoch 1 differs
    # from the clean run: compare weights only loosely here; exact resume is tested in test_reliability.
    assert resumed.keys() == clean.keys()


def test_pretrain_on_train_uses_fewer_images(tmp_path):
    out = tmp_path / "run"
    pretrain.main(["--config", TINY, "--out", str(out), "--epochs", "1", "--pretrain-on", "train", "--knn-every", "0"])
    assert _lines(out)[0]["n_images"] < 192 * 0.8


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    pretrain.main(["--config", TINY, "--out", str(out), "--epochs", "1", "--knn-every", "0"])
    good = checkpoint.load(out / "checkpoints" / "last.pt")
    monkeypatch.setattr(pretrain.losses, "nt_xent", lambda *a, **k: (lambda z0, z1: (z0 * float("nan")).sum()))
    with pytest.raises(pretrain.NonFiniteLoss, match=r"loss became nan at epoch 2, step 7"):
        pretrain.main(["--config", TINY, "--out", str(out), "--epochs", "2", "--knn-every", "0"])
    kept = checkpoint.load(out / "checkpoints" / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])


def test_plain_sgd_without_sam(tmp_path):
    out = tmp_path / "run"
    pretrain.main(["--config", TINY, "--out", str(out), "--epochs", "1", "--optimizer", "sgd", "--knn-every", "0",
                   "--precision", "fp32", "--no-channels-last"])
    assert (out / "encoder.pt").is_file()


def test_subject_partners_by_hand():
    groups = torch.tensor([0, 0, 1, 1, 1, 2])  # pairs within {0,1}, {2,3,4}; 5 is alone
    index = torch.tensor([0, 1, 5] + [2] * 300)
    partners = pretrain.subject_partners(index, groups, torch.Generator().manual_seed(0))
    assert partners[:3].tolist() == [1, 0, 5]  # the only other member; a singleton is its own partner
    drawn = partners[3:].tolist()
    assert set(drawn) == {3, 4} and 120 < drawn.count(3) < 180  # never itself, uniform over the others
    again = pretrain.subject_partners(index, groups, torch.Generator().manual_seed(0))
    assert torch.equal(partners, again)


def test_subject_positives_pretrain_runs(tmp_path):
    out = pretrain.main(["--config", TINY, "--out", str(tmp_path / "run"), "--epochs", "1", "--knn-every", "0",
                         "--positives", "subject"])
    (line,) = _lines(out)
    assert line["n_groups"] >= 4 and line["loss"] > 0  # phantoms carry subject ids: one group per subject


def test_masked_negatives_get_each_batchs_subject_ids(tmp_path, monkeypatch):
    from simclr_ad import losses

    calls = []
    real = losses.nt_xent_masked

    def spy(z0, z1, groups, temperature):
        calls.append(groups.clone())
        return real(z0, z1, groups, temperature)

    monkeypatch.setattr(losses, "nt_xent_masked", spy)
    out = pretrain.main(["--config", TINY, "--out", str(tmp_path / "masked"), "--epochs", "1", "--knn-every", "0",
                         "--negatives", "other_subjects"])
    lines = _lines(out)
    assert lines[-1]["n_groups"] >= 2  # phantom subject ids are known: they are the groups
    assert calls and all(len(g) == 32 for g in calls)  # one group id per sample of each batch
    assert any(len(torch.unique(g)) < len(g) for g in calls)  # a batch does hold same-subject slices
