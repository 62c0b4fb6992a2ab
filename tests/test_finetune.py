import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from simclr_ad import checkpoint, fileio, finetune, pretrain, report, runs
from simclr_ad.config import ConfigError, FinetuneConfig
from simclr_ad.errors import UserError
from simclr_ad.models import ModelError, build_classifier
from tests.conftest import TINY

METRIC_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "classes",
               "label_frac", "n_train", "init", "mode", "arch", "seed", "best_epoch", "wall_s",
               "subject_accuracy", "subject_balanced_accuracy", "subject_macro_f1", "subject_confusion_matrix"}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    pretrain.main(["--config", TINY, "--out", str(out), "--epochs", "1", "--knn-every", "0"])
    return out / "encoder.pt"


@pytest.fixture(scope="module")
def arms(encoder, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    runs = {}
    for init in ("simclr", "random"):
        runs[init] = finetune.main(["--config", TINY, "--out", str(root / init), "--label-frac", "0.1",
                                    "--init", init, "--encoder", str(encoder)])
    return runs


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_metrics_have_every_field(arms):
    for run_dir in arms.values():
        metrics = _metrics(run_dir)
        assert METRIC_KEYS <= set(metrics)
        assert (run_dir / "predictions.csv").read_text().splitlines()[0].startswith("path,group,true,pred,p_")
        for name in ("best.pt", "last.pt", "config.yaml", "metrics.jsonl"):
            assert (run_dir / name).is_file()


def test_simclr_runs_name_their_encoder_by_content(arms, encoder):
    expected = hashlib.sha256(encoder.read_bytes()).hexdigest()
    assert _metrics(arms["simclr"])["encoder_sha256"] == expected
    assert _metrics(arms["random"])["encoder_sha256"] is None  # random init uses no encoder


def test_arms_see_identical_label_subsets(arms):
    simclr, random = _metrics(arms["simclr"]), _metrics(arms["random"])
    assert simclr["train_subset_sha1"] == random["train_subset_sha1"]
    assert simclr["n_train"] == random["n_train"] >= 4
    # a grouped split labels whole subjects by default (issue 20): the same ones in both arms
    assert simclr["label_unit"] == random["label_unit"] == "subject"
    assert simclr["n_train_subjects"] == random["n_train_subjects"] >= 1


@pytest.mark.slow
def test_selection_on_val_and_test_evaluated_once(encoder, tmp_path, monkeypatch):
    calls = []
    original = finetune.evaluate_split
    monkeypatch.setattr(finetune, "evaluate_split", lambda model, x, *a, **k: calls.append(len(x)) or original(model, x, *a, **k))
    out = finetune.main(["--config", TINY, "--out", str(tmp_path / "r"), "--init", "random", "--epochs", "4"])
    metrics = _metrics(out)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val_sizes, test_size = calls[:-1], calls[-1]
    assert len(val_sizes) == 4 and len(set(val_sizes)) == 1 and test_size == metrics["n_test"]
    best = max(epochs, key=lambda e: (e["val_balanced_accuracy"], -e["val_loss"]))
    assert metrics["best_epoch"] == best["epoch"]


def test_linear_probe_leaves_backbone_unchanged(encoder, tmp_path):
    out = finetune.main(["--config", TINY, "--out", str(tmp_path / "lin"), "--mode", "linear",
                         "--encoder", str(encoder), "--label-frac", "0.5"])
    trained = checkpoint.load(out / "last.pt")["model"]
    original = checkpoint.load(encoder)
    for key, value in original.items():
        assert torch.equal(trained["backbone." + key], value), key
    assert not torch.equal(trained["head.1.weight"], torch.zeros_like(trained["head.1.weight"]))


def test_binary_task(tmp_path):
    out = finetune.main(["--config", TINY, "--out", str(tmp_path / "bin"), "--init", "random", "--task", "binary",
                         "--epochs", "1"])
    metrics = _metrics(out)
    assert metrics["classes"] == ["Non_Demented", "Demented"] and len(metrics["confusion_matrix"]) == 2


@pytest.mark.parametrize("args,error,message", [
    (["--label-frac", "0"], ConfigError, "label_frac"),
    (["--label-frac", "1.5"], ConfigError, "label_frac"),
    (["--label-frac", "0.0001", "--label-unit", "slice"], UserError, "0.0001"),  # subject budgets: >= 1 per class
    (["--init", "simclr"], ModelError, "needs --encoder"),
    (["--positive-classes", "Nope", "--task", "binary"], UserError, "must match some but not all"),
])
def test_bad_inputs(tmp_path, args, error, message):
    with pytest.raises(error, match=message):
        finetune.main(["--config", TINY, "--out", str(tmp_path / "r"), "--epochs", "1", "--init", "random", *args])


def test_encoder_from_another_arch(encoder, tmp_path):
    with pytest.raises(ModelError, match="resnet18 encoder but the model is mobilenet_v2"):
        finetune.main(["--config", TINY, "--out", str(tmp_path / "r"), "--arch", "mobilenet_v2",
                       "--encoder", str(encoder)])


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save([1, 2, 3], bad)
    with pytest.raises(checkpoint.CheckpointError, match="does not hold a dict"):
        finetune.main(["--config", TINY, "--out", str(tmp_path / "r"), "--init", str(bad)])


@pytest.mark.slow
def test_sweep_runs_grid_and_resumes(encoder, tmp_path):
    args = ["--config", TINY, "--sweep", "--out", str(tmp_path / "sw"), "--encoder", str(encoder),
            "--fractions", "0.2", "1.0", "--inits", "simclr", "random", "--seeds", "0", "--epochs", "1"]
    root = finetune.main(args)
    done = sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("metrics.json"))
    assert done == ["random-finetune/frac0.2/seed0", "random-finetune/frac1/seed0",
                    "simclr-finetune/frac0.2/seed0", "simclr-finetune/frac1/seed0"]
    assert (root / "splits.json").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json")}
    finetune.main(args)
    assert stamps == {p: p.stat().st_mtime_ns for p in root.rglob("metrics.json")}


@pytest.mark.slow
def test_sweep_restores_matching_records_and_reruns_the_rest(encoder, tmp_path):
    grid = ["--config", TINY, "--sweep", "--fractions", "0.2", "--inits", "simclr", "random", "--seeds", "0",
            "--epochs", "1"]
    first = finetune.main([*grid, "--out", str(tmp_path / "a"), "--encoder", str(encoder)])
    report.main(["--runs", str(first), "--out", str(tmp_path / "rec"), "--copy-runs", "--no-gradcam"])
    records = tmp_path / "rec" / "runs"

    again = finetune.main([*grid, "--out", str(tmp_path / "b"), "--encoder", str(encoder),
                           "--restore-from", str(records)])
    for arm in ("simclr-finetune", "random-finetune"):
        cell = again / arm / "frac0.2" / "seed0"
        assert (cell / "metrics.json").read_bytes() == (first / arm / "frac0.2" / "seed0" / "metrics.json").read_bytes()
        assert not (cell / "best.pt").exists()  # restored, not re-run

    other = tmp_path / "other_encoder.pt"
    state = torch.load(encoder, weights_only=True)
    first_key = next(iter(state))
    state[first_key] = state[first_key] + 1
    torch.save(state, other)
    mixed = finetune.main([*grid, "--out", str(tmp_path / "c"), "--encoder", str(other),
                           "--restore-from", str(records)])
    assert not (mixed / "random-finetune" / "frac0.2" / "seed0" / "best.pt").exists()
    assert (mixed / "simclr-finetune" / "frac0.2" / "seed0" / "best.pt").is_file()  # another encoder: re-run
    assert _metrics(mixed / "simclr-finetune" / "frac0.2" / "seed0")["encoder_sha256"] == fileio.file_sha256(other)

    cell_cfg = yaml.safe_load((again / "random-finetune" / "frac0.2" / "seed0" / "config.yaml").read_text())
    def cell(**changes):
        return finetune.FinetuneConfig(**{**cell_cfg, **{k: tuple(v) for k, v in cell_cfg.items()
                                                         if isinstance(v, list)}, **changes})

    record = records / "random-finetune" / "frac0.2" / "seed0"
    assert runs.restore_cell(cell(out=str(tmp_path / "e")), record) and (tmp_path / "e" / "metrics.json").is_file()
    assert not runs.restore_cell(cell(out=str(tmp_path / "d"), lr=1e-3), record)
    assert not (tmp_path / "d").exists()
    moved = Path(shutil.copytree(record, tmp_path / "moved"))  # recorded from another checkout's ../shared
    (moved / "config.yaml").write_text(yaml.safe_dump({**cell_cfg, "data_dir": "/work/wt/../shared/data"}))
    assert runs.restore_cell(cell(out=str(tmp_path / "f"), data_dir="/work/shared/data"), moved)
    assert not runs.restore_cell(cell(out=str(tmp_path / "f2"), data_dir="/work/other/data"), moved)
    (record / "predictions.csv").unlink()  # records the report could not pool are not this run
    assert not runs.restore_cell(cell(out=str(tmp_path / "g")), record)


def test_min_steps_per_epoch_repeats_small_subsets():
    from simclr_ad import runtime

    rt = runtime.Runtime(device=torch.device("cpu"), dtype=None, channels_last=False)
    plain = runtime.epoch_batches(10, 4, 0, 0, rt, drop_last=False)
    assert [len(b) for b in plain] == [4, 4, 2] and sorted(torch.cat(plain).tolist()) == list(range(10))
    longer = runtime.epoch_batches(10, 4, 0, 0, rt, drop_last=False, min_batches=5)
    assert [len(b) for b in longer] == [4] * 5 and torch.equal(longer[0], plain[0])
    big, reference = runtime.epoch_batches(100, 4, 0, 0, rt, min_batches=5), runtime.epoch_batches(100, 4, 0, 0, rt)
    assert len(big) == 25 and all(torch.equal(a, b) for a, b in zip(big, reference))  # no effect on large sets


def test_finished_run_never_touches_the_test_split_again(arms, encoder, capsys):
    run_dir = arms["random"]
    stamp = (run_dir / "metrics.json").stat().st_mtime_ns
    finetune.main(["--config", TINY, "--out", str(run_dir), "--label-frac", "0.1", "--init", "random",
                   "--encoder", str(encoder)])
    assert "already finished" in capsys.readouterr().out
    assert (run_dir / "metrics.json").stat().st_mtime_ns == stamp


def test_cosine_schedule_warms_up_then_decays_per_step():
    from simclr_ad.config import FinetuneConfig
    from simclr_ad.optim import cosine_with_warmup

    cfg = FinetuneConfig(epochs=3, lr=0.1, lr_schedule="cosine", warmup_epochs=1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = finetune.build_scheduler(cfg, optimizer, steps_per_epoch=4)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # linear warmup over the first epoch
    assert seen == pytest.approx([0.1 * cosine_with_warmup(s, 12, 4) for s in range(12)])
    assert seen[-1] < 0.01 and all(a >= b for a, b in zip(seen[3:], seen[4:]))  # then down towards zero
    plateau = finetune.build_scheduler(FinetuneConfig(), optimizer, steps_per_epoch=4)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)  # the paper recipe's default


@pytest.mark.slow
def test_cosine_run_logs_the_epochs_starting_lr_and_resumes_it(tmp_path):
    out = tmp_path / "cos"
    args = ["--config", TINY, "--out", str(out), "--init", "random", "--lr", "0.01", "--lr-schedule", "cosine",
            "--warmup-epochs", "1", "--label-smoothing", "0.1", "--dropout", "0"]
    finetune.main(args + ["--epochs", "2"])
    (out / "metrics.json").unlink()  # as if killed after epoch 2 of 3
    finetune.main(args + ["--epochs", "3"])
    from simclr_ad.runlog import read_records

    lrs = [r["lr"] for r in read_records(out / "metrics.jsonl")]
    assert len(lrs) == 3 and lrs[0] < lrs[1] and lrs[2] < lrs[1]


def test_param_groups_give_the_backbone_lr_times_encoder_lr_mult():
    model = build_classifier("resnet18", 3)
    groups = finetune.param_groups(model, FinetuneConfig(lr=1e-3, encoder_lr_mult=0.1))
    assert [g["lr"] for g in groups] == [pytest.approx(1e-3), pytest.approx(1e-4)]
    assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for p in model.head.parameters())
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(finetune.param_groups(model, FinetuneConfig())) == 1  # mult 1: one group, as old checkpoints have
    model.backbone.requires_grad_(False)  # a linear probe: the head alone
    assert len(finetune.param_groups(model, FinetuneConfig(encoder_lr_mult=0.1))) == 1
