"""A run directory never lies: the resume rule, the lock on --out, atomic records (issue 18)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from simclr_ad import checkpoint, fileio, finetune, pretrain, rundir
from simclr_ad.models import build_backbone
from simclr_ad.runlog import read_records
from tests.conftest import ROOT, TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FT = ["--config", TINY, "--init", "random", "--epochs", "1"]
PRE = ["--config", TINY, "--epochs", "1", "--knn-every", "0"]


def _epochs(run_dir):
    return [r["epoch"] for r in read_records(run_dir / "metrics.jsonl")]


def _killed(run_dir):
    """As if the run had been killed before it wrote metrics.json (the test split is not yet seen)."""
    (run_dir / "metrics.json").unlink()
    return run_dir


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A finished 1-epoch random-init fine-tune; tests copy it before changing it."""
    return finetune.main([*FT, "--out", str(tmp_path_factory.mktemp("ft") / "run")])


@pytest.fixture
def killed_finetune(finetuned, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finetuned, out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**config, "out": str(out)}, sort_keys=False))
    return _killed(out)


# ----------------------------------------------------------------------------- the rule, as functions

def test_launch_keys_and_keys_a_record_predates_count_as_equal():
    recorded = {"lr": 1e-4, "progress": True, "out": "a", "epochs": 3}
    wanted = rundir.comparable({"lr": 1e-4, "progress": False, "out": "b", "epochs": 3, "new_key": 1})
    assert rundir.differences(rundir.comparable(recorded), wanted) == {}
    assert rundir.differences({"lr": 1e-4, "modes": ["a"]}, rundir.comparable({"lr": 1e-3, "modes": ("b",)})) == \
        {"lr": (1e-4, 1e-3)}  # modes is a grid key
    assert "_LAUNCH_KEYS" not in vars(finetune)  # one list, in rundir


def test_split_digest_ignores_formatting_but_not_content():
    split = {"train": ["a", "b"], "val": ["c"], "test": ["d"], "group_by": "auto", "seed": 0, "notes": ["x"]}
    assert rundir.split_digest(split) == rundir.split_digest({**split, "notes": [], "counts": {}})
    assert rundir.split_digest(split) != rundir.split_digest({**split, "train": ["a"], "test": ["b", "d"]})


# ----------------------------------------------------------------------------- #2, #12: other settings on resume

@pytest.mark.parametrize("args,named", [
    (["--label-frac", "0.5", "--lr", "0.001"], ["label_frac 1.0 -> 0.5", "lr 0.0001 -> 0.001"]),
    (["--task", "binary"], ["task multiclass -> binary"]),  # #12: was a size-mismatch traceback
    (["--epochs", "2", "--dropout", "0.1"], ["dropout 0.5 -> 0.1", "epochs 1 -> 2"]),
])
def test_killed_finetune_resumed_with_other_settings_is_refused(killed_finetune, args, named):
    before = {p.name: p.read_bytes() for p in killed_finetune.iterdir() if p.is_file()}
    with pytest.raises(rundir.RunDirError, match="holds a run made with other settings") as err:
        finetune.main([*FT, "--out", str(killed_finetune), *args])
    for text in named:
        assert text in str(err.value)
    assert "--overwrite" in str(err.value) and "\n" not in str(err.value)
    after = {p.name: p.read_bytes() for p in killed_finetune.iterdir() if p.is_file()}
    assert after == before  # config.yaml still describes the weights


def test_finished_finetune_with_other_settings_is_refused_not_skipped(finetuned):
    with pytest.raises(rundir.RunDirError, match=r"finished: its test split was evaluated.*lr 0.0001 -> 0.01"):
        finetune.main([*FT, "--out", str(finetuned), "--lr", "0.01"])


def test_equal_settings_resume_even_with_other_launch_keys(killed_finetune):
    finetune.main([*FT, "--out", str(killed_finetune), "--no-progress", "--num-threads", "1"])
    assert (killed_finetune / "metrics.json").is_file() and _epochs(killed_finetune) == [1]


def test_overwrite_starts_afresh(killed_finetune):
    (killed_finetune / ".last.pt.abc.tmp").write_bytes(b"x" * 100)
    finetune.main([*FT, "--out", str(killed_finetune), "--lr", "0.001", "--epochs", "2", "--overwrite"])
    config = yaml.safe_load((killed_finetune / "config.yaml").read_text())
    assert config["lr"] == 0.001 and _epochs(killed_finetune) == [1, 2]
    assert json.loads((killed_finetune / "metrics.json").read_text())["epochs"] == 2
    assert not list(killed_finetune.glob(".*.tmp"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return pretrain.main([*PRE, "--out", str(tmp_path_factory.mktemp("pre") / "run")])


@pytest.mark.parametrize("args,named", [
    (["--lr", "0.05", "--temperature", "0.2", "--image-size", "48"],
     ["image_size 32 -> 48", "lr 0.01 -> 0.05", "temperature 0.5 -> 0.2"]),
    (["--optimizer", "sgd"], ["optimizer sam -> sgd"]),  # was resumed silently as a SAM run
    (["--proj-hidden-dim", "32"], ["proj_hidden_dim 64 -> 32"]),  # #12: was a size-mismatch traceback
    (["--epochs", "2", "--temperature", "0.2"], ["epochs 1 -> 2", "temperature 0.5 -> 0.2"]),
])
def test_pretrain_rerun_with_other_settings_is_refused(pretrained, args, named):
    before = {p: p.read_bytes() for p in (pretrained / "config.yaml", pretrained / "encoder.pt",
                                         pretrained / "last.pt")}
    with pytest.raises(rundir.RunDirError) as err:
        pretrain.main([*PRE, "--out", str(pretrained), *args])
    for text in named:
        assert text in str(err.value)
    assert before == {p: p.read_bytes() for p in before}


@pytest.mark.slow
def test_extending_epochs_resumes_says_so_and_records_it(pretrained, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(pretrained, out)
    first = read_records(out / "metrics.jsonl")
    pretrain.main([*PRE, "--out", str(out), "--epochs", "2"])
    assert "extending" in capsys.readouterr().out
    records = read_records(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == first[0]  # epoch 1 kept, not redone
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 2
    ckpt = checkpoint.load(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["epochs"] == 2
    assert ckpt["scheduler"]["base_lrs"] == [0.01, 0.01]  # the LR schedule config.yaml states
    assert all(g["initial_lr"] == 0.01 for g in ckpt["optimizer"]["param_groups"])


def test_a_checkpoint_whose_lr_differs_from_the_config_is_refused(killed_finetune):
    """A run dir of the old code, whose config.yaml was rewritten by a resume with another --lr."""
    config = yaml.safe_load((killed_finetune / "config.yaml").read_text())
    (killed_finetune / "config.yaml").write_text(yaml.safe_dump({**config, "lr": 0.001}, sort_keys=False))
    (killed_finetune / "identity.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"trained with lr 0.0001, the config asks for 0.001"):
        finetune.main([*FT, "--out", str(killed_finetune), "--lr", "0.001"])


def test_optimizer_mismatch_under_a_warmup_schedule_and_sam():
    from simclr_ad import optim

    def built(lr, sam=False, wd=0.0):
        params = [torch.nn.Parameter(torch.zeros(2))]
        opt = optim.SAM(params, torch.optim.SGD, lr=lr, momentum=0.9) if sam else \
            torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
        torch.optim.lr_scheduler.LambdaLR(optim.base_optimizer(opt), lambda step: 0.1)
        return opt.param_groups

    assert checkpoint.optimizer_mismatch(built(0.01), built(0.01)) is None
    assert checkpoint.optimizer_mismatch(built(0.05), built(0.01)) == "lr 0.01, the config asks for 0.05"
    assert checkpoint.optimizer_mismatch(built(0.01), built(0.01, sam=True)).startswith("adaptive True")
    assert checkpoint.optimizer_mismatch(built(0.01, wd=1e-4), built(0.01)).startswith("weight_decay 0.0")
    plateau_built = [{"lr": 1e-3}]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))],
                                                                           lr=1e-3), factor=0.5)
    assert checkpoint.optimizer_mismatch(plateau_built, [{"lr": 2.5e-4}], scheduler) is None  # two plateaus
    assert checkpoint.optimizer_mismatch(plateau_built, [{"lr": 1e-4}], scheduler) is not None


# ----------------------------------------------------------------------------- #3: the encoder's SHA-256

def _encoder(path, seed):
    torch.manual_seed(seed)
    backbone, _ = build_backbone("resnet18")
    checkpoint.save(backbone.state_dict(), path)
    return str(path)


def test_simclr_cell_resumed_with_another_encoder_is_refused(tmp_path):
    first, other = _encoder(tmp_path / "a.pt", 0), _encoder(tmp_path / "b.pt", 1)
    args = ["--config", TINY, "--init", "simclr", "--epochs", "1", "--out", str(tmp_path / "run")]
    _killed(finetune.main([*args, "--encoder", first]))
    recorded = json.loads((tmp_path / "run" / "identity.json").read_text())["encoder_sha256"]
    assert recorded == fileio.file_sha256(first)
    with pytest.raises(rundir.RunDirError, match="encoder_sha256 " + recorded[:12]):
        finetune.main([*args, "--encoder", other])
    finetune.main([*args, "--encoder", str(tmp_path / "a.pt")])  # the same encoder: resumes
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["encoder_sha256"] == recorded


# ----------------------------------------------------------------------------- #1: the sweep's split file

SWEEP = ["--config", TINY, "--sweep", "--inits", "random", "--fractions", "1.0", "--seeds", "0", "--epochs", "1"]


@pytest.mark.slow
def test_sweep_rerun_with_another_group_by_never_trains_on_its_test_set(tmp_path):
    root = finetune.main([*SWEEP, "--out", str(tmp_path / "sw")])
    cell = _killed(root / "random-finetune" / "frac1" / "seed0")
    split_bytes, config_bytes = (root / "splits.json").read_bytes(), (cell / "config.yaml").read_bytes()
    with pytest.raises(rundir.RunDirError, match=r"splits.json holds another split \(group_by subject.*"
                                                 r"than these settings give \(group_by image"):
        finetune.main([*SWEEP, "--out", str(root), "--group-by", "image"])
    assert (root / "splits.json").read_bytes() == split_bytes and (cell / "config.yaml").read_bytes() == config_bytes
    assert not (cell / "metrics.json").exists()

    other = tmp_path / "other.json"  # the cell alone, pointed at another split file
    from simclr_ad import splits
    split = json.loads(split_bytes)
    splits.write_splits({**split, "val": split["test"], "test": split["val"]}, other)  # valid, but another split
    with pytest.raises(rundir.RunDirError, match="splits_sha256"):
        finetune.main([*FT, "--out", str(cell), "--splits", str(other)])

    finetune.main([*SWEEP, "--out", str(root), "--group-by", "image", "--overwrite"])
    metrics = json.loads((cell / "metrics.json").read_text())
    assert json.loads((root / "splits.json").read_text())["group_by"] == "image" == metrics["group_by"]
    assert _epochs(cell) == [1]  # trained afresh on the new split, not resumed from the old one


@pytest.mark.slow
def test_old_run_dirs_without_identity_resume_and_restore(tmp_path):
    from simclr_ad import report

    root = finetune.main([*SWEEP, "--out", str(tmp_path / "sw")])
    cell = root / "random-finetune" / "frac1" / "seed0"
    (cell / "identity.json").unlink()  # as made before identity.json existed
    _killed(cell)
    finetune.main([*SWEEP, "--out", str(root), "--epochs", "2"])  # extends
    assert _epochs(cell) == [1, 2] and not (cell / "identity.json").exists()

    report.main(["--runs", str(root), "--out", str(tmp_path / "rec"), "--copy-runs", "--no-gradcam"])
    restored = finetune.main([*SWEEP, "--epochs", "2", "--out", str(tmp_path / "b"),
                              "--restore-from", str(tmp_path / "rec" / "runs")])
    again = restored / "random-finetune" / "frac1" / "seed0"
    assert (again / "metrics.json").read_bytes() == (cell / "metrics.json").read_bytes()
    assert not (again / "best.pt").exists()
    stamp = (again / "metrics.json").stat().st_mtime_ns
    finetune.main([*SWEEP, "--epochs", "2", "--out", str(restored)])  # restored records count as finished
    assert (again / "metrics.json").stat().st_mtime_ns == stamp and not (again / "best.pt").exists()


# ----------------------------------------------------------------------------- #6: the lock

_HOLDER = ("import sys, time; from pathlib import Path; from simclr_ad import rundir; "
           "rundir.acquire(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)")


def test_a_second_process_on_the_same_out_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunDirError, match=f"in use by another process \\(pid {holder.pid}"):
            finetune.main([*FT, "--out", str(out)])
        with pytest.raises(rundir.RunDirError, match="in use"):
            pretrain.main([*PRE, "--out", str(out)])
        with pytest.raises(rundir.RunDirError, match="in use"):
            finetune.main([*SWEEP, "--out", str(out)])
        assert not (out / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".lock").read_text().split()[0] == str(holder.pid)  # SIGKILL left it behind
    finetune.main([*FT, "--out", str(out)])
    assert f"taking over the stale lock of pid {holder.pid}" in capsys.readouterr().out
    assert (out / "metrics.json").is_file() and not (out / ".lock").exists()  # released on return


def test_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(Exception):
        finetune.main([*FT, "--out", str(tmp_path / "run"), "--label-unit", "slice", "--label-frac", "0.0001"])
    assert not (tmp_path / "run" / ".lock").exists()
    fd = rundir.acquire(tmp_path / "run")  # free again
    rundir.release(fd, tmp_path / "run")


# ----------------------------------------------------------------------------- #7, #9: records

@pytest.mark.slow
def test_kill_during_the_first_save_leaves_no_temp_file_and_no_repeated_epochs(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_replace = os.replace

    def killed_while_saving_last(src, dst):
        if str(dst).endswith("last.pt"):
            raise KeyboardInterrupt  # SIGINT/SIGKILL land here: the temp file is written, not renamed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_while_saving_last)
    with pytest.raises(SystemExit):
        finetune.main([*FT, "--out", str(out), "--epochs", "2"])
    monkeypatch.undo()
    assert list(out.glob(".last.pt.*.tmp")) and _epochs(out) == [1] and not (out / "last.pt").exists()
    finetune.main([*FT, "--out", str(out), "--epochs", "2"])
    assert not list(out.glob(".*.tmp"))
    assert _epochs(out) == [1, 2]


def test_a_torn_last_line_is_dropped_on_resume_and_report(killed_finetune):
    with open(killed_finetune / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 2, "train_lo')  # a full disk during an append of the old code
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["epoch"] for r in read_records(killed_finetune / "metrics.jsonl")] == [1]
    with pytest.warns(UserWarning, match="torn last line"):
        finetune.main([*FT, "--out", str(killed_finetune), "--epochs", "2"])
    assert _epochs(killed_finetune) == [1, 2]
    (killed_finetune / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(rundir.UserError, match="line 2 is not JSON"):
        read_records(killed_finetune / "metrics.jsonl")
