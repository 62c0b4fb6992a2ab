"""Run directories: a run made by an older simclr_ad still resumes and still restores.

tests/fixtures/rundirs was written by the code at d0093f3, before the issue-19 refactor
(tests/fixtures/make_rundirs.py says how). It is copied, never run in place.
"""
import json
import shutil
from pathlib import Path

import pytest

from simclr_ad import checkpoint, finetune, pretrain
from simclr_ad.errors import UserError
from tests.conftest import TINY

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rundirs"
COMMON = ["--config", TINY, "--deterministic"]


def _copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_old_pretrain_run_resumes(tmp_path):
    run_dir = _copy("pretrain", tmp_path)
    before = (run_dir / "metrics.jsonl").read_text().splitlines()
    pretrain.main([*COMMON, "--epochs", "2", "--out", str(run_dir)])
    after = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert after[:2] == before and _epochs(run_dir) == [0, 1, 2]  # resumed after epoch 1, not redone
    assert (run_dir / "encoder.pt").is_file()
    assert checkpoint.load(run_dir / "last.pt")["epoch"] == 2
    assert not (run_dir / "checkpoints").exists()  # one layout: the old checkpoints/last.pt is gone


@pytest.mark.slow
def test_old_finetune_run_resumes(tmp_path):
    run_dir = _copy("finetune", tmp_path)
    before = (run_dir / "metrics.jsonl").read_text().splitlines()
    # recorded before label budgets counted subjects and before precise BN: it resumes with the slice budget
    # and the running averages it was made with
    finetune.main([*COMMON, "--init", "random", "--epochs", "2", "--label-frac", "0.5", "--label-unit", "slice",
                   "--bn-recalibrate", "0", "--out", str(run_dir)])
    assert (run_dir / "metrics.jsonl").read_text().splitlines()[:1] == before and _epochs(run_dir) == [1, 2]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["best_epoch"] in (1, 2)


@pytest.mark.slow
def test_old_sweep_records_restore(tmp_path, capsys):
    cell = Path("random-finetune") / "frac0.5" / "seed0"
    records = _copy("sweep", tmp_path)
    grid = [*COMMON, "--sweep", "--fractions", "0.5", "--inits", "random", "--seeds", "0", "--epochs", "1",
            "--label-unit", "slice", "--bn-recalibrate", "0",  # the records' budget counted slices; no precise BN
            "--restore-from", str(records)]
    finetune.main([*grid, "--out", str(tmp_path / "without")])  # the fixture's records hold no predictions:
    assert "restored from" not in capsys.readouterr().out and (tmp_path / "without" / cell / "best.pt").is_file()
    (records / cell / "predictions.csv").write_text("path,group,true,pred\n")  # with them it restores
    root = finetune.main([*grid, "--out", str(tmp_path / "restored")])
    assert "restored from" in capsys.readouterr().out
    for name in ("config.yaml", "metrics.jsonl", "metrics.json"):
        assert (root / cell / name).read_bytes() == (FIXTURES / "sweep" / cell / name).read_bytes(), name
    assert not (root / cell / "best.pt").exists()  # restored, not re-run


@pytest.mark.slow
def test_old_finetune_run_made_without_precise_bn_is_not_resumed_with_it(tmp_path):
    run_dir = _copy("finetune", tmp_path)
    with pytest.raises(UserError, match="bn_recalibrate 0 -> 512"):
        finetune.main([*COMMON, "--init", "random", "--epochs", "2", "--label-frac", "0.5", "--label-unit", "slice",
                       "--out", str(run_dir)])
